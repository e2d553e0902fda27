"""The reach core: when a market maker steps aside from the exchange, and when it comes back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.market_maker.reach import UNREACHABLE, ExchangeReach, ReachConfig

CFG = ReachConfig(aside_after=2.0, back_after=0.5, probe_interval=0.25)


def test_defaults_are_the_lease_and_twice_the_request_timeout():
    cfg = ReachConfig()
    assert cfg.aside_after == 2.0  # the exchange's lease (book/exchange.py)
    assert cfg.aside_after >= 2 * 1.0  # MarketMakerService's request timeout
    assert 0 < cfg.back_after < cfg.aside_after and cfg.probe_interval < cfg.back_after


def test_steps_aside_after_aside_after_of_failing_calls_and_not_before():
    r = ExchangeReach(CFG, now=0.0)
    assert r.record(True, sent_at=0.9, now=1.0) is None
    # Calls sent from 1.2 on go unanswered; each failure is known a timeout (1.0 s) later.
    assert r.record(False, sent_at=1.2, now=2.2) is None
    assert r.next_deadline() == pytest.approx(3.2)
    assert r.record(False, sent_at=2.45, now=3.1) is None
    assert r.poll(3.19) is None and r.reachable
    change = r.poll(3.2)
    assert change is not None and not change.reachable and change.reason == UNREACHABLE
    assert change.failures == 2 and change.last_ok == 1.0 and change.failing_since == 1.2
    assert change.to_json()["silent_s"] == 2.2 and change.to_json()["failing_s"] == 2.0
    assert not r.reachable and r.poll(10.0) is None  # decided once, not again


def test_idle_is_not_failure():
    r = ExchangeReach(CFG, now=0.0)
    assert r.poll(100.0) is None  # nothing asked for 100 s: still reachable
    assert r.next_deadline() is None
    # The first call after the idle spell fails: the clock starts at its sending, not at 0.
    assert r.record(False, sent_at=100.0, now=101.0) is None
    assert r.poll(101.9) is None
    assert r.poll(102.0) is not None


def test_a_failure_sent_before_the_last_success_is_no_news():
    r = ExchangeReach(CFG, now=0.0)
    r.record(True, sent_at=4.9, now=5.0)
    # A long poll sent at 0 times out at 7: another call got through at 5, the link works.
    assert r.record(False, sent_at=0.0, now=7.0) is None
    assert r.failures == 0 and r.next_deadline() is None
    assert r.poll(20.0) is None


def test_a_success_in_time_keeps_it_reachable():
    r = ExchangeReach(CFG, now=0.0)
    r.record(False, sent_at=0.1, now=1.1)
    r.record(True, sent_at=1.5, now=1.6)  # a 1.5 s blip: fewer than aside_after
    assert r.next_deadline() is None and r.poll(5.0) is None and r.reachable


def test_comes_back_after_answers_for_back_after_and_not_after_one():
    r = ExchangeReach(CFG, now=0.0)
    r.record(False, sent_at=0.0, now=1.0)
    assert r.poll(2.0) is not None and not r.reachable
    assert r.record(True, sent_at=5.0, now=5.01) is None  # one answer: not yet
    assert r.record(True, sent_at=5.25, now=5.26) is None
    assert r.poll(6.0) is None  # time alone does not bring it back: an answer does
    change = r.record(True, sent_at=5.5, now=5.51)
    assert change is not None and change.reachable and change.reason is None and change.successes == 3
    assert r.reachable


def test_a_failure_during_the_run_starts_it_over():
    r = ExchangeReach(CFG, now=0.0)
    r.record(False, sent_at=0.0, now=1.0)
    r.poll(2.0)
    r.record(True, sent_at=5.0, now=5.0)
    r.record(False, sent_at=5.2, now=6.2)  # sent after the run began: the link failed again
    assert r.record(True, sent_at=6.3, now=6.3) is None  # a new run starts here
    assert r.record(True, sent_at=6.7, now=6.7) is None
    assert r.record(True, sent_at=6.8, now=6.8) is not None


def test_a_stale_failure_does_not_break_the_run():
    r = ExchangeReach(CFG, now=0.0)
    r.record(False, sent_at=0.0, now=1.0)
    r.poll(2.0)
    r.record(True, sent_at=5.0, now=5.0)
    r.record(False, sent_at=3.0, now=5.2)  # sent before the run began (in the cut)
    assert r.record(True, sent_at=5.5, now=5.5) is not None


def test_back_after_zero_means_one_answer():
    r = ExchangeReach(ReachConfig(back_after=0.0), now=0.0)
    r.record(False, sent_at=0.0, now=1.0)
    r.poll(2.0)
    assert r.record(True, sent_at=3.0, now=3.0) is not None


def test_flapping_every_second_never_steps_aside():
    """A link cut and healed every second, calls every 0.25 s with a 1.0 s timeout: an answer
    comes within 1.5 s of every cut, fewer than aside_after."""
    r = ExchangeReach(CFG, now=0.0)
    t = 0.0
    changes = []
    while t < 20.0:
        cut = int(t) % 2 == 1
        ok = not cut
        done = t + (0.01 if ok else 1.0)
        change = r.record(ok, sent_at=t, now=done)
        changes.append(change)
        t = done + 0.25
    assert [c for c in changes if c is not None] == []


def test_wants_a_probe_after_a_probe_interval_without_an_answer():
    r = ExchangeReach(CFG, now=0.0)
    assert not r.wants_probe(0.2) and r.wants_probe(0.25)
    r.record(True, sent_at=1.0, now=1.0)
    assert not r.wants_probe(1.1)


def test_config_is_checked():
    with pytest.raises(ValueError):
        ReachConfig(aside_after=0)
    with pytest.raises(ValueError):
        ReachConfig(back_after=-1)
    with pytest.raises(ValueError):
        ReachConfig(probe_interval=0)


outcomes = st.lists(st.tuples(st.booleans(), st.floats(0, 3), st.floats(0, 2)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(outcomes)
def test_decisions_alternate_and_follow_the_rule(steps):
    """Whatever the outcomes: changes alternate aside/back; stepping aside only after a failure
    and aside_after without an answer; coming back only on an answer."""
    r = ExchangeReach(CFG, now=0.0)
    now = 0.0
    expected_next = False
    for ok, gap, duration in steps:
        sent = now + gap
        now = sent + duration
        change = r.record(ok, sent_at=sent, now=now)
        if change is None:
            continue
        assert change.reachable is expected_next
        expected_next = not expected_next
        if change.reachable:
            assert ok
        else:
            assert change.failing_since is not None and now - change.failing_since >= CFG.aside_after
            assert now - change.last_ok >= CFG.aside_after


def test_for_lease_follows_the_lease_but_never_under_two_timeouts():
    assert ReachConfig.for_lease(2.0) == ReachConfig()
    assert ReachConfig.for_lease(5.0).aside_after == 5.0
    assert ReachConfig.for_lease(0.5, request_timeout=1.0).aside_after == 2.0
