"""Rendezvous hashing: every peer computes the same owners, and membership changes move few."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.types import Member, MemberState
from peer.market_maker.rendezvous import assignment, candidates_from_view, owner, weight

ROOT = Path(__file__).resolve().parents[3]
SYMBOLS_1000 = [f"S{i:04d}" for i in range(1000)]
FOUR = ["mm-1", "mm-2", "mm-3", "mm-4"]

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


def test_weight_is_pinned_so_peers_of_any_version_agree():
    # The weight is part of the cluster's contract: a change here would make two versions of
    # murmur disagree about every owner. If this fails on purpose, it is a breaking change.
    assert weight("mm-1", "AAPL") == 0x976E9B91CFDEEC5C
    assert weight("mm-2", "AAPL") == 0x64665807D9516340
    assert weight("mm-1", "AAPL") != weight("mm-2", "AAPL")
    assert weight("mm-1", "AAPL") != weight("mm-1", "MSFT")


def test_name_and_symbol_boundaries_cannot_collide():
    assert weight("ab", "c") != weight("a", "bc")


def test_assignment_is_the_same_in_processes_with_different_hash_seeds():
    symbols = [f"S{i}" for i in range(50)]
    peers = ["mm-1", "mm-2", "mm-3", "exchange-west", "peer-ünïcode"]
    here = assignment(symbols, peers)
    code = (
        "import json, sys; from peer.market_maker.rendezvous import assignment; "
        "print(json.dumps(assignment(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))"
    )
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(symbols), json.dumps(peers)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=30,
        )
        assert json.loads(out.stdout) == here, f"PYTHONHASHSEED={seed} disagrees"


def test_owner_is_the_candidate_with_the_highest_weight():
    for symbol in ("AAPL", "MSFT", "S0007", "S0999"):
        assert owner(symbol, FOUR) == max(FOUR, key=lambda n: weight(n, symbol))


def test_owner_does_not_depend_on_candidate_order():
    for symbol in ("AAPL", "MSFT", "S0007"):
        assert owner(symbol, FOUR) == owner(symbol, list(reversed(FOUR))) == owner(symbol, set(FOUR))


def test_no_candidates_means_no_owner():
    assert owner("AAPL", []) is None
    assert assignment(["AAPL", "MSFT"], []) == {"AAPL": None, "MSFT": None}


def test_join_moves_only_the_symbols_the_newcomer_wins_and_they_move_to_it():
    before = assignment(SYMBOLS_1000, FOUR)
    after = assignment(SYMBOLS_1000, FOUR + ["mm-5"])
    moved = {s for s in SYMBOLS_1000 if before[s] != after[s]}
    assert moved == {s for s in SYMBOLS_1000 if after[s] == "mm-5"}
    assert moved  # the newcomer does win some


def test_leave_moves_only_the_leavers_symbols():
    before = assignment(SYMBOLS_1000, FOUR)
    after = assignment(SYMBOLS_1000, ["mm-1", "mm-2", "mm-4"])
    moved = {s for s in SYMBOLS_1000 if before[s] != after[s]}
    assert moved == {s for s in SYMBOLS_1000 if before[s] == "mm-3"}
    assert "mm-3" not in after.values()


def test_fifth_peer_joining_four_moves_about_a_fifth_of_the_symbols():
    before = assignment(SYMBOLS_1000, FOUR)
    after = assignment(SYMBOLS_1000, FOUR + ["mm-5"])
    moved = sum(before[s] != after[s] for s in SYMBOLS_1000)
    # Expected 200, standard deviation about 12.6: +-40 is three of them.
    assert 160 <= moved <= 240, moved


def test_symbols_spread_roughly_evenly():
    symbols = [f"SYM{i}" for i in range(64)]
    peers = [f"mm-{i}" for i in range(1, 6)]
    counts = Counter(assignment(symbols, peers).values())
    assert set(counts) == set(peers)  # every peer owns something
    # 64/5 = 12.8 expected each; a hash that favoured a peer would break these bounds.
    assert all(5 <= c <= 22 for c in counts.values()), counts


@settings(max_examples=60, deadline=None)
@given(
    peers=st.sets(names, min_size=1, max_size=8),
    newcomer=names,
    symbols=st.lists(names, min_size=1, max_size=40, unique=True),
)
def test_join_and_leave_move_nothing_else_for_any_names(peers, newcomer, symbols):
    peers = sorted(peers - {newcomer})
    if not peers:
        return
    before = assignment(symbols, peers)
    joined = assignment(symbols, peers + [newcomer])
    for s in symbols:
        assert joined[s] in (before[s], newcomer)
    # The newcomer leaving again restores exactly the previous assignment.
    assert assignment(symbols, peers) == before
    leaver = peers[0]
    left = assignment(symbols, peers[1:])
    for s in symbols:
        if before[s] != leaver:
            assert left[s] == before[s]


def _m(name: str, state: MemberState, role: str = "mm") -> Member:
    return Member(name, ("127.0.0.1", 1), 1, state, {"role": role})


def test_candidates_are_up_market_makers_only():
    view = [
        _m("mm-alive", MemberState.ALIVE),
        _m("mm-suspect", MemberState.SUSPECT),
        _m("mm-dead", MemberState.DEAD),
        _m("mm-left", MemberState.LEFT),
        _m("exchange", MemberState.ALIVE, role="exchange"),
        _m("ledger", MemberState.ALIVE, role="ledger"),
    ]
    assert candidates_from_view(view) == ["mm-alive", "mm-suspect"]


def test_a_suspect_keeps_its_symbols_until_declared_dead():
    symbols = [f"S{i}" for i in range(40)]
    alive = [_m(n, MemberState.ALIVE) for n in FOUR]
    base = assignment(symbols, candidates_from_view(alive))
    suspected = [_m("mm-2", MemberState.SUSPECT) if m.name == "mm-2" else m for m in alive]
    assert assignment(symbols, candidates_from_view(suspected)) == base
    dead = [_m("mm-2", MemberState.DEAD) if m.name == "mm-2" else m for m in alive]
    after_death = assignment(symbols, candidates_from_view(dead))
    assert "mm-2" in base.values() and "mm-2" not in after_death.values()


def test_a_member_aside_is_no_candidate():
    view = [
        _m("mm-1", MemberState.ALIVE),
        Member("mm-2", ("127.0.0.1", 1), 2, MemberState.ALIVE, {"role": "mm", "aside": "exchange-unreachable"}),
        Member("mm-3", ("127.0.0.1", 1), 2, MemberState.SUSPECT, {"role": "mm", "aside": True}),
        # A falsy value is not aside: only a reason (or true) takes a member out.
        Member("mm-4", ("127.0.0.1", 1), 2, MemberState.ALIVE, {"role": "mm", "aside": None}),
        Member("mm-5", ("127.0.0.1", 1), 2, MemberState.ALIVE, {"role": "mm", "aside": ""}),
    ]
    assert candidates_from_view(view) == ["mm-1", "mm-4", "mm-5"]


states = st.sampled_from(list(MemberState))
asides = st.sampled_from([None, "", "exchange-unreachable", True, False, 0, 1])


@settings(max_examples=100, deadline=None)
@given(
    rows=st.dictionaries(names, st.tuples(states, asides, st.sampled_from(["mm", "exchange", "ledger"])),
                         max_size=8),
    symbols=st.lists(names, min_size=1, max_size=30, unique=True),
)
def test_assignment_without_the_aside_members_is_the_assignment_over_the_others(rows, symbols):
    """Marking members aside is exactly removing them from the view: the others keep every
    symbol they had, and only the aside members' symbols move, to the same owners as if those
    members had left."""
    view = [Member(n, ("127.0.0.1", 1), 1, s, {"role": r} if a is None else {"role": r, "aside": a})
            for n, (s, a, r) in rows.items()]
    not_aside = [m for m in view if not m.meta.get("aside")]
    assert assignment(symbols, candidates_from_view(view)) == assignment(symbols, candidates_from_view(not_aside))
    expected = sorted(m.name for m in view if m.role == "mm" and m.state.is_up and not m.meta.get("aside"))
    assert candidates_from_view(view) == expected
    plain = [Member(m.name, m.addr, m.incarnation, m.state, {"role": m.role}) for m in view]
    before = assignment(symbols, candidates_from_view(plain))
    after = assignment(symbols, candidates_from_view(view))
    aside = {m.name for m in view if m.meta.get("aside")}
    for s in symbols:
        if before[s] not in aside:
            assert after[s] == before[s]
