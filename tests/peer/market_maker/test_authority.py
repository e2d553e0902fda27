"""The market maker's authority core: claim, renew, release, back off, and never flap.

The first half drives the core alone with hand-written exchange answers; the second half runs
several cores against the real exchange rules (`book.exchange.ExchangeCore`) on simulated time.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.exchange import ExchangeCore
from peer.backoff import Backoff
from peer.market_maker.authority import (
    TRANSITIONS,
    AuthorityConfig,
    CheckAuthority,
    Claim,
    ExchangeAnswer,
    MarketMakerAuthority,
    Phase,
    Release,
    Renew,
    StopQuoting,
)

CFG = AuthorityConfig(lease_duration=2.0, drift_margin=0.1, quote_margin=0.1, renew_fraction=1 / 3,
                      retry=Backoff(first=0.05, cap=2.0, jitter=0.5))
ME, OTHER, SYM = "mm-1", "mm-2", "AAA"


def core(seed: int = 7, symbols=(SYM,)) -> MarketMakerAuthority:
    return MarketMakerAuthority(ME, list(symbols), CFG, random.Random(seed))


def granted(epoch: int, lease_left: float = 2.0, reason: str = "claimed") -> ExchangeAnswer:
    return ExchangeAnswer(True, reason, epoch, ME, lease_left)


def refused(reason: str, epoch: int | None = None, holder: str | None = OTHER) -> ExchangeAnswer:
    return ExchangeAnswer(False, reason, epoch, holder, None)


def held_core(epoch: int = 1, at: float = 0.0) -> MarketMakerAuthority:
    c = core()
    c.observe_authority([{"symbol": SYM, "epoch": epoch - 1}], at)
    (claim,) = c.set_owners({SYM: ME}, at).actions
    assert claim == Claim(SYM, epoch)
    c.on_answer(claim, granted(epoch), sent_at=at, now=at)
    assert c.phase(SYM) is Phase.HELD
    return c


# --- claiming -----------------------------------------------------------------------------------


def test_owner_claims_with_an_epoch_above_any_seen_in_a_snapshot():
    c = core()
    assert not c.observe_authority([{"symbol": SYM, "epoch": 7, "holder": OTHER}, {"symbol": "ZZZ", "epoch": 99}], 0.0)
    out = c.set_owners({SYM: ME}, 0.0)
    assert out.actions == [Claim(SYM, 8)]
    assert [(t.old, t.new, t.reason) for t in out.transitions] == [(Phase.IDLE, Phase.CLAIMING, "claiming:owner")]


def test_not_owner_asks_for_nothing():
    c = core()
    assert not c.set_owners({SYM: OTHER}, 0.0)
    assert not c.poll(100.0)
    assert c.next_deadline() is None


def test_rejected_claim_learns_the_current_epoch_and_retries_above_it_after_back_off():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    out = c.on_answer(claim, refused("held", epoch=9), sent_at=0.0, now=0.01)
    assert out.actions == [] and out.transitions[0].reason == "claim-rejected:held"
    assert c.phase(SYM) is Phase.BACKING_OFF
    retry_at = c.next_deadline()
    assert 0.01 + CFG.retry.first / 2 <= retry_at <= 0.01 + CFG.retry.first
    assert not c.poll(retry_at - 1e-6)
    assert c.poll(retry_at).actions == [Claim(SYM, 10)]


def test_stale_epoch_without_a_reported_epoch_still_moves_the_next_claim_up():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.on_answer(claim, refused("stale-epoch"), sent_at=0.0, now=0.0)
    assert c.poll(10.0).actions == [Claim(SYM, 2)]


def test_back_off_doubles_up_to_the_cap_with_seeded_jitter():
    def delays(seed: int) -> list[float]:
        c = core(seed)
        (claim,) = c.set_owners({SYM: ME}, 0.0).actions
        now, out = 0.0, []
        for _ in range(10):
            c.on_answer(claim, refused("held", epoch=1), sent_at=now, now=now)
            retry = c.next_deadline()
            out.append(retry - now)
            now = retry
            (claim,) = c.poll(now).actions
        return out

    d = delays(1)
    for k, delay in enumerate(d, start=1):
        nominal = min(CFG.retry.cap, CFG.retry.first * 2 ** (k - 1))
        assert nominal / 2 <= delay <= nominal
    assert max(d[-3:]) <= CFG.retry.cap and min(d[-3:]) >= CFG.retry.cap / 2
    assert delays(1) == d  # replayable
    assert delays(2) != d  # and jittered: two peers do not retry in lock-step


def test_rejected_claim_after_losing_ownership_goes_idle_and_stops_retrying():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    assert not c.set_owners({SYM: OTHER}, 0.01)  # the claim is in flight: wait for its answer
    out = c.on_answer(claim, refused("held", epoch=3), sent_at=0.0, now=0.02)
    assert c.phase(SYM) is Phase.IDLE and out.actions == []
    assert not c.poll(1000.0)


def test_backing_off_peer_that_loses_ownership_goes_idle():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.on_answer(claim, refused("held", epoch=3), sent_at=0.0, now=0.0)
    out = c.set_owners({SYM: OTHER}, 0.01)
    assert [t.reason for t in out.transitions] == ["idle:not-owner"] and out.actions == []
    assert not c.poll(1000.0)


def test_unanswered_claim_is_retried_with_the_same_epoch_and_already_held_counts_as_granted():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    out = c.on_no_answer(claim, now=1.0)
    assert out.transitions[0].reason == "claim-unanswered"
    (retry,) = c.poll(c.next_deadline()).actions
    assert retry == claim  # same epoch: if the first was granted, this one is a harmless retry
    # The exchange had granted the first one; 0.7 s of its lease are left when the retry lands.
    out = c.on_answer(retry, granted(1, lease_left=0.7, reason="already-held"), sent_at=1.05, now=1.1)
    assert out.transitions[0].reason == "claimed:already-held"
    assert c[SYM].lease_end == pytest.approx(1.05 + 0.7 - CFG.drift_margin)


def test_unanswered_claim_after_losing_ownership_is_released_in_case_it_was_granted():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.set_owners({SYM: OTHER}, 0.5)
    out = c.on_no_answer(claim, now=1.0)
    assert out.actions == [Release(SYM, 1)]
    assert out.transitions[0].reason == "releasing:claim-unanswered"
    out = c.on_answer(Release(SYM, 1), refused("stale-epoch", epoch=0), sent_at=1.0, now=1.01)
    assert c.phase(SYM) is Phase.IDLE and out.transitions[0].reason == "release-rejected:stale-epoch"


# --- holding ------------------------------------------------------------------------------------


def test_local_lease_runs_from_send_time_minus_drift_margin_not_from_the_answer():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.on_answer(claim, granted(1), sent_at=0.0, now=0.5)  # a slow answer shortens what we believe
    assert c[SYM].lease_end == pytest.approx(2.0 - 0.1)
    assert c.may_quote(SYM, 0.5)
    assert c.may_quote(SYM, 1.79)
    assert not c.may_quote(SYM, 1.81)  # within quote_margin of the local lease end


def test_exchange_reported_lease_never_extends_beyond_the_configured_lease():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.on_answer(claim, granted(1, lease_left=60.0), sent_at=0.0, now=0.0)
    assert c[SYM].lease_end == pytest.approx(CFG.lease_duration - CFG.drift_margin)


def test_renews_at_a_third_of_the_lease_and_extends_from_the_renew_send_time():
    c = held_core()
    assert c.next_deadline() == pytest.approx(2.0 / 3)
    assert not c.poll(0.66)
    (renew,) = c.poll(0.67).actions
    assert renew == Renew(SYM, 1)
    assert not c.poll(0.7)  # one renew in flight at a time
    out = c.on_answer(renew, granted(1), sent_at=0.67, now=0.69)
    assert [t.reason for t in out.transitions] == ["renewed"]
    assert c[SYM].lease_end == pytest.approx(0.67 + 1.9)
    assert c.may_quote(SYM, 2.4) and not c.may_quote(SYM, 2.5)


def test_renew_rejected_for_an_expired_lease_stops_quoting_then_claims_again():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    out = c.on_answer(renew, ExchangeAnswer(False, "lease-expired", 1, ME, 0.0), sent_at=0.7, now=0.71)
    assert out.actions == [StopQuoting(SYM), Claim(SYM, 2)]
    assert out.transitions[0].reason == "lost:renew-rejected:lease-expired"
    assert not c.may_quote(SYM, 0.72)


def test_authority_taken_by_a_newer_epoch_yields_until_its_lease_is_seen_over():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    out = c.on_answer(renew, refused("stale-epoch", epoch=4, holder=OTHER), sent_at=0.7, now=0.71)
    assert out.actions == [StopQuoting(SYM)]  # no claim: that could take it from a live holder
    assert c.phase(SYM) is Phase.YIELDED and out.transitions[0].reason == f"lost:taken-by:{OTHER}"
    assert c.poll(c.next_deadline()).actions == [CheckAuthority(SYM)]
    live = {"symbol": SYM, "epoch": 4, "holder": OTHER, "state": "held", "lease_left": 1.5}
    assert not c.observe_authority([live], 1.3)
    # A snapshot older than the epoch we yielded to says nothing about that epoch's lease.
    assert not c.observe_authority([{**live, "epoch": 1, "holder": ME, "state": "expired"}], 1.4)
    assert c.poll(c.next_deadline()).actions == [CheckAuthority(SYM)]  # keeps looking
    out = c.observe_authority([{**live, "state": "expired", "lease_left": 0.0}], 3.0)
    assert out.actions == [Claim(SYM, 5)] and out.transitions[0].reason == "claiming:expired"


def test_reclaim_after_a_local_lease_expiry_yields_to_a_newer_holder():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    c.on_no_answer(renew, now=1.5)
    (stop, claim) = c.poll(1.9).actions  # lost:lease-expired; it does not know who has it now
    assert claim == Claim(SYM, 2)
    out = c.on_answer(claim, refused("stale-epoch", epoch=4, holder=OTHER), sent_at=1.9, now=1.95)
    assert c.phase(SYM) is Phase.YIELDED and out.transitions[0].reason == f"yielded:{OTHER}"
    assert out.actions == []


def test_yielded_peer_reclaims_at_once_when_its_view_changes():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    c.on_answer(renew, refused("stale-epoch", epoch=4, holder=OTHER), sent_at=0.7, now=0.71)
    out = c.set_owners({SYM: OTHER}, 1.0)
    assert c.phase(SYM) is Phase.IDLE and out.transitions[0].reason == "idle:not-owner"
    assert c.set_owners({SYM: ME}, 2.0).actions == [Claim(SYM, 5)]


def test_first_claim_of_a_newcomer_never_yields():
    # Only a peer that lost the symbol yields; a fresh owner meeting a holder backs off and
    # retries, so it takes over as soon as the exchange sees that holder dead.
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.on_answer(claim, refused("stale-epoch", epoch=4, holder=OTHER), sent_at=0.0, now=0.0)
    assert c.phase(SYM) is Phase.BACKING_OFF
    assert c.poll(10.0).actions == [Claim(SYM, 5)]


def test_lease_running_out_locally_stops_quoting_and_reclaims():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    out = c.on_no_answer(renew, now=1.2)
    assert out.transitions[0].reason == "renew-unanswered" and c.may_quote(SYM, 1.2)
    (renew2,) = c.poll(c.next_deadline()).actions
    assert renew2 == renew  # tried again soon
    c.on_no_answer(renew2, now=1.85)
    assert c.may_quote(SYM, 1.79) and not c.may_quote(SYM, 1.85)
    out = c.poll(1.9)  # the local lease end: 0 + 2.0 - 0.1
    assert out.actions == [StopQuoting(SYM), Claim(SYM, 2)]
    assert out.transitions[0].reason == "lost:lease-expired"
    # A renew answer arriving now is about a lease we already gave up on: ignored.
    assert not c.on_answer(renew2, granted(1), sent_at=1.3, now=1.95)
    assert c.phase(SYM) is Phase.CLAIMING


# --- releasing ----------------------------------------------------------------------------------


def test_hand_over_stops_quoting_and_releases_at_once():
    c = held_core(epoch=3)
    out = c.set_owners({SYM: OTHER}, 0.3)
    assert out.actions == [StopQuoting(SYM), Release(SYM, 3)]  # stop first, then give it back
    assert out.transitions[0].reason == "releasing:hand-over"
    assert not c.may_quote(SYM, 0.3)
    out = c.on_answer(Release(SYM, 3), ExchangeAnswer(True, "released", 3, ME, 0.0), sent_at=0.3, now=0.31)
    assert c.phase(SYM) is Phase.IDLE and out.transitions[0].reason == "released:hand-over"
    assert not c.poll(100.0)


def test_hand_over_during_a_renew_releases_without_waiting_and_ignores_the_renew_answer():
    c = held_core()
    (renew,) = c.poll(0.7).actions
    out = c.set_owners({SYM: OTHER}, 0.71)
    assert out.actions == [StopQuoting(SYM), Release(SYM, 1)]
    assert not c.on_answer(renew, granted(1), sent_at=0.7, now=0.72)
    assert c.phase(SYM) is Phase.RELEASING


def test_hand_over_during_a_claim_releases_as_soon_as_the_claim_is_granted():
    c = core()
    (claim,) = c.set_owners({SYM: ME}, 0.0).actions
    c.set_owners({SYM: OTHER}, 0.01)
    out = c.on_answer(claim, granted(1), sent_at=0.0, now=0.02)
    assert out.actions == [StopQuoting(SYM), Release(SYM, 1)]
    assert [t.reason for t in out.transitions] == ["claimed", "releasing:hand-over"]
    assert not c.may_quote(SYM, 0.02)


def test_unanswered_release_is_retried_until_the_lease_is_over_anyway():
    c = held_core()
    (stop, release) = c.set_owners({SYM: OTHER}, 0.5).actions
    c.on_no_answer(release, now=0.6)
    (again,) = c.poll(c.next_deadline()).actions
    assert again == release
    c.on_no_answer(again, now=1.0)
    out = c.poll(2.0)  # past lease_end + drift margin = 2.0
    assert c.phase(SYM) is Phase.IDLE and out.transitions[0].reason == "released:lease-expired"


def test_ownership_returning_during_a_release_claims_again_with_a_higher_epoch():
    c = held_core(epoch=2)
    c.set_owners({SYM: OTHER}, 0.5)
    assert not c.set_owners({SYM: ME}, 0.6)  # wait for the release in flight
    out = c.on_answer(Release(SYM, 2), ExchangeAnswer(True, "released", 2, ME, 0.0), sent_at=0.5, now=0.61)
    assert out.actions == [Claim(SYM, 3)]
    assert [t.reason for t in out.transitions] == ["released:hand-over", "claiming:owner"]


def test_snapshot_shows_state_epoch_and_lease_left():
    c = held_core(epoch=5)
    (row,) = c.snapshot(0.4)
    assert row == {"symbol": SYM, "state": "held", "owner_in_view": True, "epoch": 5,
                   "lease_left": 1.5, "may_quote": True}


# --- properties over arbitrary inputs -----------------------------------------------------------

events = st.lists(
    st.one_of(
        st.tuples(st.just("owners"), st.sampled_from([ME, OTHER, None])),
        st.tuples(st.just("answer"), st.booleans(), st.sampled_from(["held", "stale-epoch", "lease-expired", "not-holder"]),
                  st.integers(0, 12)),
        st.tuples(st.just("no-answer")),
        st.tuples(st.just("snapshot"), st.sampled_from(["vacant", "held", "released", "expired"]),
                  st.integers(0, 12)),
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events=events, seed=st.integers(0, 1000))
def test_any_sequence_of_inputs_keeps_the_core_consistent(events, seed):
    c = core(seed)
    now = 0.0
    awaiting = None
    seen_epoch = 0
    owner = None
    for ev in events:
        before = c.phase(SYM)
        if ev[0] == "owners":
            owner = ev[1]
            out = c.set_owners({SYM: owner}, now)
        elif ev[0] == "answer" and awaiting is not None:
            _, ok, reason, epoch = ev
            if isinstance(awaiting, Claim):
                ans = granted(awaiting.epoch) if ok else refused(reason, epoch=min(epoch, seen_epoch) if reason == "held" else epoch)
            else:
                ans = granted(awaiting.epoch) if ok else refused(reason, epoch=epoch)
            if ans.epoch is not None:
                seen_epoch = max(seen_epoch, ans.epoch)
            if ok and isinstance(awaiting, Claim):
                seen_epoch = max(seen_epoch, awaiting.epoch)
            out = c.on_answer(awaiting, ans, sent_at=now, now=now)
            awaiting = None
        elif ev[0] == "no-answer" and awaiting is not None:
            out = c.on_no_answer(awaiting, now=now)
            awaiting = None
        elif ev[0] == "snapshot":
            _, state, epoch = ev
            seen_epoch = max(seen_epoch, epoch)
            out = c.observe_authority([{"symbol": SYM, "epoch": epoch, "holder": OTHER, "state": state}], now)
        elif ev[0] == "advance":
            now += ev[1]
            out = c.poll(now)
        else:
            continue
        # Every transition is in the table, and leaving HELD always says StopQuoting first.
        phase = before
        for t in out.transitions:
            assert t.old is phase and t.new in TRANSITIONS[t.old]
            phase = t.new
        left_held = before is Phase.HELD and c.phase(SYM) is not Phase.HELD
        if left_held:
            assert out.actions[0] == StopQuoting(SYM)
        for a in out.actions:
            if isinstance(a, CheckAuthority):
                assert c.phase(SYM) is Phase.YIELDED
                continue
            if isinstance(a, Claim):
                assert owner == ME, "claims only what the view says is ours"
                assert a.epoch > seen_epoch or a == awaiting, "a claim goes above every epoch seen"
            if not isinstance(a, StopQuoting):
                awaiting = a  # the core keeps one request per symbol in flight
        # Only held-and-owned may quote.
        if c.may_quote(SYM, now):
            assert c.phase(SYM) is Phase.HELD and owner == ME
        assert c.phase(SYM) is not Phase.HELD or owner == ME


# --- against the exchange's own rules, on simulated time ----------------------------------------


class AuthoritySim:
    """Market makers' cores against a real `ExchangeCore`, with one step of latency each way.

    `exchange_dead` is the exchange's own membership verdict; `crashed` peers stop being driven.
    Each peer that may quote keeps one quote live at its epoch, so the exchange's invariant
    check (quotes of at most one epoch live) covers the whole run.
    """

    def __init__(self, names, symbols=(SYM,), *, step=0.05, seed=1):
        self.symbols = list(symbols)
        self.ex = ExchangeCore(self.symbols, lease_duration=CFG.lease_duration)
        self.cores = {n: MarketMakerAuthority(n, self.symbols, CFG, random.Random(f"{seed}:{n}")) for n in names}
        self.step = step
        self.now = 0.0
        self.crashed: set[str] = set()
        self.exchange_dead: set[str] = set()
        self.to_exchange: list = []
        self.to_peer: list = []
        self.holders: dict[str, list[tuple[float, str]]] = {s: [] for s in self.symbols}
        self.sent: Counter = Counter()
        self.answers: list[tuple[str, str, bool, str]] = []
        self.quoted: dict[tuple[str, str], int] = {}
        self.quote_n = 0
        self.transitions = []

    def set_view(self, name, owners):
        self._act(name, self.cores[name].set_owners(owners, self.now))

    def _act(self, name, out):
        self.transitions += [(name, t) for t in out.transitions]
        for a in out.actions:
            if isinstance(a, StopQuoting):
                continue
            self.sent[(name, type(a).__name__)] += 1
            self.to_exchange.append((self.now + self.step, name, a, self.now))

    def _execute(self, name, req):
        if isinstance(req, CheckAuthority):
            return {"rows": [a.to_json(self.now) for a in self.ex.authority.all()]}
        args = {"symbol": req.symbol, "holder": name, "epoch": req.epoch}
        kind = type(req).__name__.lower()
        if kind == "claim":
            args["holder_alive"] = self.ex.authority[req.symbol].holder not in self.exchange_dead
        return self.ex.execute(kind, args, self.now)

    def tick(self):
        self.now = round(self.now + self.step, 9)
        due, self.to_exchange = ([m for m in self.to_exchange if m[0] <= self.now],
                                 [m for m in self.to_exchange if m[0] > self.now])
        for _, name, req, sent_at in due:
            answer = self._execute(name, req)
            if "rows" not in answer:
                self.answers.append((name, type(req).__name__, answer["accepted"], answer["reason"]))
            self.to_peer.append((self.now + self.step, name, req, answer, sent_at))
        due, self.to_peer = ([m for m in self.to_peer if m[0] <= self.now],
                             [m for m in self.to_peer if m[0] > self.now])
        for _, name, req, answer, sent_at in due:
            if name in self.crashed:
                continue
            if "rows" in answer:
                self._act(name, self.cores[name].observe_authority(answer["rows"], self.now))
            else:
                self._act(name, self.cores[name].on_answer(req, ExchangeAnswer.from_exchange(answer),
                                                           sent_at=sent_at, now=self.now))
        for name, c in self.cores.items():
            if name not in self.crashed:
                self._act(name, c.poll(self.now))
                self._quote(name, c)
        self.ex.tick(now=self.now)
        self.ex.check_invariants(self.now)
        for s in self.symbols:
            holder = self.ex.authority[s].holder
            if holder is not None and (not self.holders[s] or self.holders[s][-1][1] != holder):
                self.holders[s].append((self.now, holder))

    def _quote(self, name, c):
        for s in self.symbols:
            epoch = c.held_epoch(s)
            if epoch is None or not c.may_quote(s, self.now) or self.quoted.get((name, s)) == epoch:
                continue
            self.quote_n += 1
            self.ex.put_quote(now=self.now, symbol=s, holder=name, epoch=epoch, seq=1,
                              quote_id=f"q{self.quote_n}", bid_price=99, bid_quantity=1, ask_price=101,
                              ask_quantity=1)
            self.quoted[(name, s)] = epoch

    def run_until(self, t):
        while self.now < t - 1e-9:
            self.tick()

    def holder_at(self, s=SYM):
        return self.ex.authority[s].holder if self.ex.authority[s].is_live(self.now) else None


def test_sole_owner_claims_once_and_keeps_the_symbol_by_renewing():
    sim = AuthoritySim([ME])
    sim.set_view(ME, {SYM: ME})
    quotable = []
    for _ in range(400):  # 20 s
        sim.tick()
        quotable.append(sim.cores[ME].may_quote(SYM, sim.now))
    assert sim.holders[SYM] == [(0.05, ME)]
    assert sim.ex.authority[SYM].epoch == 1
    assert all(quotable[2:])  # from the first answer on, never a gap
    assert 25 <= sim.sent[(ME, "Renew")] <= 35  # every lease/3 (0.67 s) for 20 s
    assert all(ok for n, kind, ok, _ in sim.answers)


def test_two_peers_with_disagreeing_views_never_disturb_the_live_holder():
    sim = AuthoritySim([ME, OTHER])
    sim.set_view(ME, {SYM: ME})
    sim.run_until(0.5)
    sim.set_view(OTHER, {SYM: OTHER})  # its view misses mm-1; the exchange sees both alive
    quotable = []
    for _ in range(1200):  # 60 s
        sim.tick()
        quotable.append(sim.cores[ME].may_quote(SYM, sim.now))
    assert [h for _, h in sim.holders[SYM]] == [ME]
    assert all(quotable)  # the holder never lost a moment of its lease
    other = [(ok, why) for n, kind, ok, why in sim.answers if n == OTHER]
    # Its first claim learns the epoch (stale-epoch); every later one finds the holder alive.
    assert other[0] == (False, "stale-epoch")
    assert len(other) > 5 and all(a == (False, "held") for a in other[1:])
    # Backed off up to the cap: about one try every 1-2 s, not one a step.
    assert sim.sent[(OTHER, "Claim")] <= 60 / (CFG.retry.cap / 2) + 10
    assert sim.ex.authority[SYM].epoch == 1  # rejected claims burn no epochs


def test_join_hands_over_at_once_and_the_new_owner_holds_within_half_a_second():
    sim = AuthoritySim([ME, OTHER])
    sim.set_view(ME, {SYM: ME})
    sim.set_view(OTHER, {SYM: ME})
    sim.run_until(5.0)
    assert sim.holder_at() == ME
    sim.set_view(OTHER, {SYM: OTHER})  # the newcomer wins the symbol; the old owner sees it too
    sim.set_view(ME, {SYM: OTHER})
    assert sim.cores[ME].phase(SYM) is Phase.RELEASING and not sim.cores[ME].may_quote(SYM, sim.now)
    sim.run_until(5.5)
    assert sim.holder_at() == OTHER and sim.cores[OTHER].may_quote(SYM, sim.now)
    assert [h for _, h in sim.holders[SYM]] == [ME, OTHER]
    assert any(t.reason == "released:hand-over" for n, t in sim.transitions if n == ME)


def test_crashed_holder_is_replaced_as_soon_as_the_exchange_sees_it_dead():
    sim = AuthoritySim([ME, OTHER])
    sim.set_view(ME, {SYM: ME})
    sim.set_view(OTHER, {SYM: ME})
    sim.run_until(5.0)
    sim.crashed.add(ME)
    sim.run_until(6.0)
    sim.set_view(OTHER, {SYM: OTHER})  # its gossip declared mm-1 dead
    sim.run_until(6.2)
    assert sim.holder_at() == ME  # the exchange's view lags: its lease is still live, still held
    sim.exchange_dead.add(ME)
    sim.run_until(6.7)
    assert sim.holder_at() == OTHER
    assert [h for _, h in sim.holders[SYM]] == [ME, OTHER]


def test_crashed_holder_is_replaced_once_its_lease_runs_out_if_the_exchange_never_hears():
    sim = AuthoritySim([ME, OTHER])
    sim.set_view(ME, {SYM: ME})
    sim.set_view(OTHER, {SYM: ME})
    sim.run_until(5.0)
    sim.crashed.add(ME)
    sim.set_view(OTHER, {SYM: OTHER})
    expiry = sim.ex.authority[SYM].lease_expires_at
    assert expiry <= 5.0 + CFG.lease_duration
    sim.run_until(expiry - 0.05)
    assert sim.holders[SYM][-1][1] == ME
    sim.run_until(expiry + CFG.retry.cap + 0.1)
    assert sim.holder_at() == OTHER


def test_exchange_wrongly_seeing_both_claimants_dead_does_not_make_them_flap():
    # Each view names itself, and the exchange's gossip holds both dead while both keep talking to
    # it: every claim would be granted. The one that lost yields instead of taking it back.
    sim = AuthoritySim([ME, OTHER])
    sim.exchange_dead |= {ME, OTHER}
    sim.set_view(ME, {SYM: ME})
    sim.run_until(1.0)
    sim.set_view(OTHER, {SYM: OTHER})
    sim.run_until(30.0)
    assert [h for _, h in sim.holders[SYM]] == [ME, OTHER]
    assert sim.cores[ME].phase(SYM) is Phase.YIELDED
    # Views converge on mm-1: mm-2 hands over and the yielded mm-1 sees it released, and claims.
    sim.set_view(OTHER, {SYM: ME})
    sim.run_until(31.0)
    assert sim.holder_at() == ME and sim.cores[ME].may_quote(SYM, sim.now)


schedule = st.lists(
    st.tuples(
        st.floats(0.0, 30.0),
        st.sampled_from(["view-a", "view-b", "exchange-a", "exchange-b"]),
        st.sampled_from([ME, OTHER]),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(schedule=schedule, seed=st.integers(0, 10_000))
def test_holder_changes_at_most_as_often_as_some_view_changes(schedule, seed):
    """Two peers, each with its own view of who owns the symbol, and the exchange with its own
    view of who is alive, all changing at random instants: the holder changes at most once per
    change of some view (the first claim counting as the initial views)."""
    sim = AuthoritySim([ME, OTHER], seed=seed)
    views = {ME: ME, OTHER: ME}
    sim.set_view(ME, {SYM: ME})
    sim.set_view(OTHER, {SYM: ME})
    view_changes = 1
    for at, what, value in sorted(schedule, key=lambda e: e[0]):
        sim.run_until(at)
        if what.startswith("view"):
            peer = ME if what == "view-a" else OTHER
            if views[peer] != value:
                views[peer] = value
                view_changes += 1
                sim.set_view(peer, {SYM: value})
        else:
            peer = ME if what == "exchange-a" else OTHER
            dead = value == OTHER  # reuse the drawn value as "dead" or "alive" at the exchange
            if (peer in sim.exchange_dead) != dead:
                view_changes += 1
                (sim.exchange_dead.add if dead else sim.exchange_dead.discard)(peer)
    sim.run_until(40.0)
    assert len(sim.holders[SYM]) <= view_changes, (sim.holders[SYM], view_changes)
