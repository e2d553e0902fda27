"""The link filter's core (peer/faults/links.py): what a rule may be, and what it decides."""

from __future__ import annotations

import random

import pytest

from peer.faults.links import (
    MAX_PEERS,
    MAX_RULES,
    OPEN,
    RETRANSMIT,
    BadRule,
    Link,
    LinkFilter,
    parse_rule,
)

NOW = 1_764_160_000.0
MM3 = {"name": "mm-3", "gossip": "127.0.0.1:7001", "http": "http://127.0.0.1:7002"}
MM4 = {"name": "mm-4", "gossip": "127.0.0.1:7003", "http": "http://127.0.0.1:7004"}
G3, G4, OTHER = ("127.0.0.1", 7001), ("127.0.0.1", 7003), ("127.0.0.1", 9999)


def rule(**fields) -> dict:
    return {"id": "p-1", "peers": [MM3], **fields}


def links(*rules: dict, seed: int = 1) -> LinkFilter:
    f = LinkFilter(random.Random(seed))
    for r in rules:
        f.set(r)
    return f


# --- what a rule may be -------------------------------------------------------------------------


def test_a_full_rule_reads_back_as_the_same_json():
    raw = {"id": "p-1", "peers": [MM3, MM4], "direction": "out", "cut": False, "loss": 0.25,
           "duplicate": 0.5, "delay_ms": 40.0, "jitter_ms": 10.0, "until": NOW + 5}
    assert parse_rule(raw).to_json() == raw


def test_fields_left_out_take_their_defaults():
    assert parse_rule({"id": "x", "peers": [{"name": "mm-3"}]}).to_json() == {
        "id": "x", "peers": [{"name": "mm-3", "gossip": None, "http": None}], "direction": "both",
        "cut": False, "loss": 0.0, "duplicate": 0.0, "delay_ms": 0.0, "jitter_ms": 0.0, "until": None}


def test_addresses_are_spelled_one_way():
    r = parse_rule(rule(peers=[{"name": "a", "gossip": "[0:0::1]:7001", "http": "http://LocalHost:80"},
                               {"name": "b", "http": "http://10.0.0.2"}]))
    assert [p.to_json() for p in r.peers] == [
        {"name": "a", "gossip": "[::1]:7001", "http": "http://localhost:80"},
        {"name": "b", "gossip": None, "http": "http://10.0.0.2:80"}]


BAD = [
    ([], "rule", "JSON object"),
    ({"peers": [MM3]}, "id", "required"),
    (rule(id=""), "id", "1 to 64"),
    (rule(id="x" * 65), "id", "1 to 64"),
    (rule(id=7), "id", "printable"),
    (rule(id="a\nb"), "id", "printable"),
    ({"id": "p"}, "peers", "required"),
    (rule(peers=[]), "peers", "1 to 1000"),
    (rule(peers=MM3), "peers", "list"),
    (rule(peers=[MM3] * (MAX_PEERS + 1)), "peers", "1001 of them"),
    (rule(peers=["mm-3"]), "peers[0]", "object"),
    (rule(peers=[{"gossip": "127.0.0.1:1"}]), "peers[0].name", "required"),
    (rule(peers=[{"name": "-x"}]), "peers[0].name", "node name"),
    (rule(peers=[{"name": 3}]), "peers[0].name", "node name"),
    (rule(peers=[MM3, {"name": "a", "port": 1}]), "peers[1].port", "unknown field"),
    (rule(peers=[{"name": "a", "gossip": "127.0.0.1"}]), "peers[0].gossip", "HOST:PORT"),
    (rule(peers=[{"name": "a", "gossip": "127.0.0.1:0"}]), "peers[0].gossip", "port from 1"),
    (rule(peers=[{"name": "a", "gossip": "127.0.0.1:70000"}]), "peers[0].gossip", "0 to 65535"),
    (rule(peers=[{"name": "a", "gossip": "0.0.0.0:7001"}]), "peers[0].gossip", "reached at"),
    (rule(peers=[{"name": "a", "gossip": "bad host!:7001"}]), "peers[0].gossip", "reached at"),
    (rule(peers=[{"name": "a", "gossip": ["127.0.0.1", 7001]}]), "peers[0].gossip", "host:port"),
    (rule(peers=[{"name": "a", "http": "https://127.0.0.1:1"}]), "peers[0].http", "http://host:port"),
    (rule(peers=[{"name": "a", "http": "http://127.0.0.1:99999"}]), "peers[0].http", "not an http"),
    (rule(peers=[{"name": "a", "http": "http://:80"}]), "peers[0].http", "http://host:port"),
    (rule(peers=[{"name": "a", "http": 80}]), "peers[0].http", "http://host:port"),
    (rule(direction="sideways"), "direction", "both, out, in"),
    (rule(direction=None), "direction", "both, out, in"),
    (rule(cut=1), "cut", "true or false"),
    (rule(cut="yes"), "cut", "true or false"),
    (rule(loss=1.5), "loss", "probability"),
    (rule(loss=-0.1), "loss", "probability"),
    (rule(loss=float("nan")), "loss", "finite"),
    (rule(loss=True), "loss", "probability"),
    (rule(loss="0.5"), "loss", "probability"),
    (rule(duplicate=2), "duplicate", "probability"),
    (rule(duplicate=float("inf")), "duplicate", "finite"),
    (rule(delay_ms=-1), "delay_ms", "milliseconds"),
    (rule(delay_ms=float("inf")), "delay_ms", "finite"),
    (rule(delay_ms=10**400), "delay_ms", "finite"),
    (rule(jitter_ms=-0.5), "jitter_ms", "milliseconds"),
    (rule(jitter_ms=float("nan")), "jitter_ms", "finite"),
    (rule(until=-1), "until", "wall-clock"),
    (rule(until=float("nan")), "until", "wall-clock"),
    (rule(until="soon"), "until", "wall-clock"),
    (rule(kind="cut"), "kind", "unknown field"),
]


@pytest.mark.parametrize("raw, field, words", BAD, ids=[f"{f}:{w}" for _, f, w in BAD])
def test_each_bad_field_is_refused_by_name_and_nothing_changes(raw, field, words):
    f = links(rule(id="keep", cut=True))
    before = f.to_json()
    with pytest.raises(BadRule) as caught:
        f.set(raw, where="rule.")
    assert caught.value.field == "rule." + field if field != "rule" else caught.value.field == "rule"
    assert words in str(caught.value)
    assert f.to_json() == before
    assert f.stream(G3, NOW).blocked


def test_a_peer_holds_a_bounded_number_of_rules_and_a_replacement_is_always_taken():
    f = links(*(rule(id=f"r{i}") for i in range(MAX_RULES)))
    with pytest.raises(BadRule) as caught:
        f.set(rule(id="one-more"))
    assert caught.value.field == "id" and len(f) == MAX_RULES
    assert f.set(rule(id="r0", cut=True)) is True


# --- changes ------------------------------------------------------------------------------------


def test_a_rule_with_the_same_id_replaces_the_old_one():
    f = links(rule(cut=True))
    assert f.packet("out", G3, NOW) == []
    assert f.set(rule(peers=[MM4], cut=True)) is True
    assert len(f) == 1
    assert f.packet("out", G3, NOW) == [0.0]
    assert f.packet("out", G4, NOW) == []


def test_remove_and_clear():
    f = links(rule(id="a", cut=True), rule(id="b", peers=[MM4], cut=True))
    assert f.remove("a") is True and f.remove("a") is False
    assert f.packet("out", G3, NOW) == [0.0] and f.packet("out", G4, NOW) == []
    assert f.clear() == 1 and not f and f.to_json() == []
    assert f.packet("out", G4, NOW) == [0.0]


def test_a_rule_stops_applying_at_until_and_expire_removes_it():
    f = links(rule(id="short", cut=True, until=NOW + 5), rule(id="long", peers=[MM4], cut=True, until=NOW + 9),
              rule(id="forever", peers=[{"name": "mm-9", "gossip": "127.0.0.1:9"}], cut=True))
    assert f.next_expiry() == NOW + 5
    assert f.packet("in", G3, NOW + 4.999) == [] and f.stream(G3, NOW + 4.999).blocked
    assert f.blocks_name("mm-3", NOW + 4.999)
    # Past `until` it no longer applies, even before anyone calls expire.
    assert f.packet("in", G3, NOW + 5) == [0.0] and f.stream(G3, NOW + 5) == OPEN
    assert not f.blocks_name("mm-3", NOW + 5)
    assert [r.id for r in f.expire(NOW + 5)] == ["short"]
    assert [r["id"] for r in f.to_json()] == ["long", "forever"]
    assert f.next_expiry() == NOW + 9
    assert f.expire(NOW + 5) == []


# --- decisions ----------------------------------------------------------------------------------


def test_no_rules_lets_everything_through():
    f = LinkFilter(random.Random(1))
    assert f.packet("out", G3, NOW) == [0.0] and f.packet("in", "127.0.0.1:7001", NOW) == [0.0]
    assert f.stream(G3, NOW) == OPEN and f.http("http://127.0.0.1:7002", NOW) == OPEN
    assert not f.blocks_name("mm-3", NOW)


def test_a_cut_both_ways_drops_every_packet_and_blocks_every_connection_of_that_peer_only():
    f = links(rule(cut=True))
    for direction in ("out", "in"):
        assert f.packet(direction, G3, NOW) == []
        assert f.packet(direction, "127.0.0.1:7001", NOW) == []
        assert f.packet(direction, G4, NOW) == [0.0]
        assert f.packet(direction, OTHER, NOW) == [0.0]
    assert f.stream(G3, NOW) == Link(True, 0.0) and f.stream("127.0.0.1:7001", NOW).blocked
    assert f.http("http://127.0.0.1:7002", NOW).blocked and f.http(("127.0.0.1", 7002), NOW).blocked
    assert f.http("http://127.0.0.1:7002/", NOW).blocked
    assert f.blocks_name("mm-3", NOW)
    assert f.stream(G4, NOW) == OPEN and f.http("http://127.0.0.1:7004", NOW) == OPEN
    assert not f.blocks_name("mm-4", NOW)
    # The HTTP port is no gossip port and the other way round.
    assert f.packet("out", ("127.0.0.1", 7002), NOW) == [0.0] and f.http("http://127.0.0.1:7001", NOW) == OPEN


def test_a_one_way_cut_drops_packets_one_way_and_blocks_tcp_both_ways():
    out = links(rule(direction="out", cut=True))
    assert out.packet("out", G3, NOW) == [] and out.packet("in", G3, NOW) == [0.0]
    inbound = links(rule(direction="in", cut=True))
    assert inbound.packet("in", G3, NOW) == [] and inbound.packet("out", G3, NOW) == [0.0]
    # A TCP connection needs both directions.
    for f in (out, inbound):
        assert f.stream(G3, NOW).blocked and f.http("http://127.0.0.1:7002", NOW).blocked
        assert f.blocks_name("mm-3", NOW)


def test_loss_drops_about_that_share_of_packets_with_a_seeded_rng():
    f = links(rule(loss=0.3), seed=7)
    decisions = [f.packet("out", G3, NOW) for _ in range(10_000)]
    dropped = decisions.count([])
    assert 2_800 < dropped < 3_200
    assert all(d in ([], [0.0]) for d in decisions)
    # The same seed, the same decisions.
    g = links(rule(loss=0.3), seed=7)
    assert [g.packet("out", G3, NOW) for _ in range(10_000)] == decisions


def test_losses_of_two_rules_are_independent_drops():
    f = links(rule(id="a", loss=0.5), rule(id="b", loss=0.5), seed=3)
    kept = sum(f.packet("in", G3, NOW) == [0.0] for _ in range(10_000))
    assert 2_300 < kept < 2_700  # 0.5 * 0.5


def test_delay_with_jitter_stays_within_its_bounds_and_never_goes_below_zero():
    f = links(rule(delay_ms=50, jitter_ms=10), seed=2)
    delays = [f.packet("out", G3, NOW)[0] for _ in range(2_000)]
    assert all(0.040 <= d <= 0.060 for d in delays)
    assert max(delays) - min(delays) > 0.015
    g = links(rule(delay_ms=5, jitter_ms=20), seed=2)
    delays = [g.packet("out", G3, NOW)[0] for _ in range(2_000)]
    assert min(delays) == 0.0 and max(delays) <= 0.025


def test_duplicate_sends_two_copies_with_their_own_delay():
    f = links(rule(duplicate=1.0, delay_ms=20))
    assert f.packet("out", G3, NOW) == [0.02, 0.02]
    g = links(rule(duplicate=0.25), seed=5)
    copies = [len(g.packet("in", G3, NOW)) for _ in range(8_000)]
    assert set(copies) == {1, 2} and 1_800 < copies.count(2) < 2_200


def test_rules_combine_any_cut_cuts_and_delays_add():
    f = links(rule(id="slow", delay_ms=30), rule(id="slower", peers=[MM3, MM4], delay_ms=20))
    assert f.packet("out", G3, NOW) == [pytest.approx(0.05)]
    assert f.packet("out", G4, NOW) == [pytest.approx(0.02)]
    f.set(rule(id="cut", peers=[MM4], cut=True))
    assert f.packet("out", G4, NOW) == [] and f.packet("out", G3, NOW) == [pytest.approx(0.05)]
    assert f.stream(G4, NOW).blocked and not f.stream(G3, NOW).blocked


def test_a_degraded_tcp_link_pays_its_delay_once_per_affected_direction():
    both = links(rule(delay_ms=40))
    assert both.stream(G3, NOW) == Link(False, pytest.approx(0.08))
    assert both.http("http://127.0.0.1:7002", NOW) == Link(False, pytest.approx(0.08))
    one = links(rule(delay_ms=40, direction="in"))
    assert one.stream(G3, NOW) == Link(False, pytest.approx(0.04))
    lossy = links(rule(loss=1.0, direction="out"))
    assert lossy.stream(G3, NOW) == Link(False, pytest.approx(RETRANSMIT))
    assert links(rule(loss=1.0)).stream(G3, NOW) == Link(False, pytest.approx(2 * RETRANSMIT))
    assert not links(rule(loss=1.0)).blocks_name("mm-3", NOW)


def test_a_packet_direction_must_be_out_or_in():
    with pytest.raises(ValueError):
        links(rule(cut=True)).packet("both", G3, NOW)


def test_unreadable_targets_match_no_rule():
    f = links(rule(cut=True))
    assert f.packet("out", "not an address", NOW) == [0.0]
    assert f.http("http://[broken", NOW) == OPEN
    assert f.stream(("Not A Host!", 1), NOW) == OPEN
