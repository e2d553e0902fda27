"""Quote terms (skew, limits, reservations) and the planner that decides when to (re)quote."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.market_maker.quoting import (
    PlannerConfig,
    Position,
    QuoteConfig,
    QuotePlanner,
    QuoteTerms,
    Reservation,
    cap_by_reservation,
    compute_quote,
    inventory_skew,
    make_quote_id,
)

CFG = QuoteConfig(half_spread=2, size=5, skew_per_unit=Fraction(1, 2), max_position=20)
REF = 10_000


def quote(net: int, ref: int = REF, cfg: QuoteConfig = CFG) -> QuoteTerms:
    return compute_quote(ref, Position(net, 1), cfg)


# --- terms --------------------------------------------------------------------------------------


def test_flat_position_quotes_symmetrically_around_the_reference():
    assert quote(0) == QuoteTerms(9_998, 5, 10_002, 5)


def test_long_position_lowers_both_prices_and_short_raises_them():
    assert quote(4) == QuoteTerms(9_996, 5, 10_000, 5)  # 4 units * 1/2 tick = 2 ticks down
    assert quote(-4) == QuoteTerms(10_000, 5, 10_004, 5)


def test_skew_is_the_same_size_for_opposite_positions():
    # Truncated toward zero: +3 and -3 both move the centre by one tick.
    assert inventory_skew(3, Fraction(1, 2)) == 1
    assert inventory_skew(-3, Fraction(1, 2)) == -1


def test_position_at_max_stops_the_bid_and_at_minus_max_stops_the_ask():
    at_max, at_min = quote(20), quote(-20)
    assert at_max.bid_quantity == 0 and at_max.ask_quantity == 5
    assert at_min.ask_quantity == 0 and at_min.bid_quantity == 5


def test_quantities_shrink_to_the_room_left_before_max_position():
    q = quote(18)
    assert (q.bid_quantity, q.ask_quantity) == (2, 5)


def test_same_inputs_give_the_same_quote():
    cfg = QuoteConfig(half_spread=3, size=4, skew_per_unit="0.25", max_position=10)
    assert compute_quote(12_345, Position(-7, 9), cfg) == compute_quote(12_345, Position(-7, 3), cfg)
    assert cfg.skew_per_unit == Fraction(1, 4)


def test_config_refuses_float_skew_and_nonsense_sizes():
    with pytest.raises(ValueError, match="skew_per_unit"):
        QuoteConfig(skew_per_unit=0.1)
    with pytest.raises(ValueError, match="half_spread"):
        QuoteConfig(half_spread=0)
    with pytest.raises(ValueError, match="size"):
        QuoteConfig(size=-1)


def test_a_bid_that_would_be_priced_at_zero_is_not_offered():
    q = compute_quote(3, Position(0, 1), QuoteConfig(half_spread=5))
    assert q.bid_quantity == 0 and q.bid_price >= 1 and q.ask_price > q.bid_price


configs = st.builds(
    QuoteConfig,
    half_spread=st.integers(1, 20),
    size=st.integers(1, 50),
    skew_per_unit=st.fractions(min_value=0, max_value=5, max_denominator=10),
    max_position=st.integers(1, 200),
)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, ref=st.integers(100, 1_000_000), a=st.integers(-300, 300), b=st.integers(-300, 300))
def test_a_longer_position_never_quotes_higher_prices(cfg, ref, a, b):
    lo, hi = min(a, b), max(a, b)
    q_lo, q_hi = compute_quote(ref, Position(lo, 1), cfg), compute_quote(ref, Position(hi, 1), cfg)
    assert q_hi.bid_price <= q_lo.bid_price
    assert q_hi.ask_price <= q_lo.ask_price


@settings(max_examples=300, deadline=None)
@given(cfg=configs, ref=st.integers(1, 1_000_000), net=st.integers(-300, 300))
def test_quotes_are_valid_and_never_push_the_position_past_its_limit(cfg, ref, net):
    q = compute_quote(ref, Position(net, 1), cfg)
    assert 1 <= q.bid_price < q.ask_price
    assert 0 <= q.bid_quantity <= cfg.size and 0 <= q.ask_quantity <= cfg.size
    assert net + q.bid_quantity <= max(net, cfg.max_position)  # a full bid fill stays within +max
    assert net - q.ask_quantity >= min(net, -cfg.max_position)  # a full ask fill stays within -max


# --- reservations -------------------------------------------------------------------------------


def test_granted_reservation_keeps_the_quote():
    q = quote(0)
    assert cap_by_reservation(q, Reservation("granted", "r1", 5, 5)) == q


def test_reduced_reservation_caps_each_side():
    assert cap_by_reservation(quote(0), Reservation("reduced", "r1", 2, 0)) == QuoteTerms(9_998, 2, 10_002, 0)


def test_rejected_or_empty_reservation_means_no_quote():
    assert cap_by_reservation(quote(0), Reservation("rejected", None)) is None
    assert cap_by_reservation(quote(0), Reservation("reduced", "r1", 0, 0)) is None


@settings(max_examples=300, deadline=None)
@given(net=st.integers(-30, 30), outcome=st.sampled_from(["granted", "reduced", "rejected"]),
       bid=st.integers(0, 100), ask=st.integers(0, 100))
def test_quantities_never_exceed_the_reservation(net, outcome, bid, ask):
    q = quote(net)
    capped = cap_by_reservation(q, Reservation(outcome, "r1", bid, ask))
    if outcome == "rejected":
        assert capped is None
    elif capped is not None:
        assert capped.bid_quantity <= min(bid, q.bid_quantity)
        assert capped.ask_quantity <= min(ask, q.ask_quantity)
        assert (capped.bid_price, capped.ask_price) == (q.bid_price, q.ask_price)
        assert not capped.is_empty


# --- the planner --------------------------------------------------------------------------------

PCFG = PlannerConfig(refresh_interval=5.0, quote_ttl=30.0, ttl_margin=2.0, price_threshold=2,
                     retry_interval=0.25, fill_position_wait=1.0)


def planner(epoch: int = 3) -> QuotePlanner:
    p = QuotePlanner("mm-1", "AAA", CFG, PCFG)
    p.start(epoch, 0.0)
    p.on_position(0, 1, 0.0)
    p.on_reference_price(REF, 0.0)
    return p


def activate(p: QuotePlanner, now: float, **kw):
    a = p.poll(now)
    assert a is not None
    assert p.on_result(a, accepted=True, reason="activated", now=now, **kw)
    return a


def test_no_attempt_until_authority_and_both_inputs_are_known():
    p = QuotePlanner("mm-1", "AAA", CFG, PCFG)
    p.on_reference_price(REF, 0.0)
    p.start(1, 0.0)
    assert p.poll(0.0) is None and p.next_deadline() is None  # no committed position yet
    p.on_position(0, 1, 0.0)
    assert p.poll(0.0) is not None


def test_first_attempt_is_a_new_quote_with_a_deterministic_key():
    a = planner().poll(0.0)
    assert a.kind == "new" and a.reason == "no-active-quote"
    assert (a.quote_id, a.seq, a.epoch, a.position_version) == ("mm-1.AAA.e3.q1", 1, 3, 1)
    assert a.terms == quote(0)
    assert planner().poll(0.0) == a  # another planner, same inputs: the same request


def test_one_attempt_in_flight_at_a_time():
    p = planner()
    assert p.poll(0.0) is not None
    p.on_position(3, 2, 0.01)
    assert p.poll(0.01) is None and p.next_deadline() is None


def test_new_position_version_requotes_at_once_with_a_new_quote_id():
    p = planner()
    activate(p, 0.0)
    assert p.poll(1.0) is None
    assert p.on_position(6, 2, 1.0)
    a = p.poll(1.0)
    assert (a.kind, a.reason, a.quote_id, a.seq, a.position_version) == ("new", "position", "mm-1.AAA.e3.q2", 2, 2)
    assert a.terms == quote(6)


def test_stale_and_repeated_position_versions_are_ignored():
    p = planner()
    activate(p, 0.0)
    p.on_position(6, 5, 0.5)
    activate(p, 0.5)
    assert not p.on_position(-9, 4, 0.6)  # older, out of order
    assert not p.on_position(6, 5, 0.6)  # the same again
    assert p.poll(0.6) is None
    assert p.position == Position(6, 5)


def test_reference_move_beyond_the_threshold_requotes_and_a_smaller_one_does_not():
    p = planner()
    activate(p, 0.0)
    p.on_reference_price(REF + 1, 0.5)
    assert p.poll(0.5) is None
    p.on_reference_price(REF - 2, 0.6)
    a = p.poll(0.6)
    assert a.reason == "price-move" and a.kind == "new" and a.reference_price == REF - 2


def test_unchanged_quote_is_refreshed_every_five_seconds_with_the_same_id_and_a_new_seq():
    p = planner()
    first = activate(p, 0.0)
    assert p.next_deadline() == 5.0
    assert p.poll(4.99) is None
    r = p.poll(5.0)
    assert (r.kind, r.reason, r.quote_id, r.seq, r.terms) == ("refresh", "refresh", first.quote_id, 2, first.terms)
    p.on_result(r, accepted=True, reason="refreshed", now=5.01)
    assert p.next_deadline() == 10.0


def test_refresh_after_inputs_changed_replaces_the_quote():
    p = planner()
    activate(p, 0.0)
    p.on_reference_price(REF + 1, 1.0)  # below the threshold: no requote on its own
    r = p.poll(5.0)
    assert r.kind == "new" and r.reason == "refresh" and r.terms == quote(0, REF + 1)


def test_refresh_sends_the_terms_that_went_live_after_a_reduced_reservation():
    p = planner()
    reduced = QuoteTerms(9_998, 2, 10_002, 1)
    activate(p, 0.0, live_terms=reduced)
    r = p.poll(5.0)
    assert r.kind == "refresh" and r.terms == reduced


def test_refresh_always_comes_before_the_ttl_margin():
    with pytest.raises(ValueError, match="refresh_interval"):
        PlannerConfig(refresh_interval=29.0, quote_ttl=30.0, ttl_margin=2.0)
    p = planner()
    activate(p, 0.0)
    assert p.next_deadline() <= 0.0 + PCFG.quote_ttl - PCFG.ttl_margin


def test_timed_out_attempt_is_resent_with_the_same_key():
    p = planner()
    a = p.poll(0.0)
    p.on_timeout(a, 1.0)
    assert p.poll(1.1) is None
    assert p.next_deadline() == 1.25
    again = p.poll(1.25)
    assert again == a  # same quote_id, seq and terms: the exchange sees one request
    assert p.on_result(again, accepted=True, reason="activated", now=1.3)
    # The TTL ran from no earlier than the first send: the refresh is due 5 s after it.
    assert p.next_deadline() == 5.0


def test_timed_out_attempt_is_superseded_by_a_newer_position_not_resent():
    p = planner()
    a = p.poll(0.0)
    p.on_timeout(a, 1.0)
    p.on_position(5, 2, 1.1)
    b = p.poll(1.25)
    assert b.position_version == 2 and b.quote_id != a.quote_id and b.seq > a.seq
    assert not p.on_result(a, accepted=True, reason="activated", now=1.3)  # late: ignored


def test_rejected_attempt_means_no_quote_now_and_a_retry_later():
    p = planner()
    a = p.poll(0.0)
    p.on_result(a, accepted=False, reason="reservation-rejected", now=0.1)
    assert p.active is None
    assert p.poll(0.2) is None and p.next_deadline() == pytest.approx(0.35)
    b = p.poll(0.35)
    assert b.kind == "new" and b.quote_id == "mm-1.AAA.e3.q2"


def test_fill_waits_for_the_position_that_reflects_it_then_requotes_at_once():
    p = planner()
    a = activate(p, 0.0)
    p.on_fill(a.quote_id, 1.0)
    p.on_quote_ended(a.quote_id, 1.0)  # filled in full: nothing live now
    assert p.poll(1.0) is None  # not from the position the fill made stale
    p.on_position(5, 2, 1.02)
    b = p.poll(1.02)
    assert (b.reason, b.position_version, b.terms) == ("fill", 2, quote(5))


def test_fill_whose_position_is_late_requotes_after_a_bounded_wait():
    p = planner()
    a = activate(p, 0.0)
    p.on_fill(a.quote_id, 1.0)
    p.on_quote_ended(a.quote_id, 1.0)
    assert p.next_deadline() == 2.0
    b = p.poll(2.0)
    assert b.reason == "fill:position-late" and b.position_version == 1


def test_fill_of_an_already_replaced_quote_changes_nothing():
    p = planner()
    a = activate(p, 0.0)
    p.on_position(5, 2, 0.5)
    activate(p, 0.5)
    p.on_fill(a.quote_id, 0.6)
    assert p.poll(0.6) is None and p.next_deadline() == 5.5


def test_new_epoch_restarts_the_counter_with_ids_that_cannot_collide():
    p = planner(epoch=3)
    activate(p, 0.0)
    p.stop(1.0)
    assert p.poll(1.0) is None and p.next_deadline() is None
    p.start(4, 2.0)
    a = p.poll(2.0)
    assert (a.quote_id, a.seq, a.epoch) == (make_quote_id("mm-1", "AAA", 4, 1), 1, 4)
    assert a.quote_id != make_quote_id("mm-1", "AAA", 3, 1)


def test_names_with_a_slash_are_refused():
    with pytest.raises(ValueError):
        QuotePlanner("mm/1", "AAA")


planner_ops = st.lists(
    st.one_of(
        st.tuples(st.just("position"), st.integers(-25, 25), st.integers(1, 30)),
        st.tuples(st.just("price"), st.integers(9_990, 10_010)),
        st.tuples(st.just("advance"), st.floats(0.0, 7.0)),
        st.tuples(st.just("result"), st.booleans()),
        st.tuples(st.just("timeout")),
        st.tuples(st.just("fill")),
        st.tuples(st.just("ended")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=planner_ops)
def test_attempts_never_go_back_to_an_older_position_and_retries_keep_their_key(ops):
    p = planner()
    now = 0.0
    in_flight = None
    issued: dict[int, object] = {}  # seq -> attempt
    highest_version_quoted = 0
    for op in ops:
        if op[0] == "position":
            p.on_position(op[1], op[2], now)
        elif op[0] == "price":
            p.on_reference_price(op[1], now)
        elif op[0] == "advance":
            now += op[1]
        elif op[0] == "result" and in_flight is not None:
            p.on_result(in_flight, accepted=op[1], reason="activated" if op[1] else "reservation-rejected", now=now)
            in_flight = None
        elif op[0] == "timeout" and in_flight is not None:
            p.on_timeout(in_flight, now)
            in_flight = None
        elif op[0] == "fill" and p.active is not None:
            p.on_fill(p.active.quote_id, now)
        elif op[0] == "ended" and p.active is not None:
            p.on_quote_ended(p.active.quote_id, now)
        a = p.poll(now)
        if a is None:
            continue
        if a.seq in issued:
            assert issued[a.seq] == a  # a resend is the very same request
        else:
            assert a.seq == max(issued, default=0) + 1  # fresh requests take the next seq
            assert a.position_version >= highest_version_quoted
            assert a.position_version == p.position.position_version  # from the newest known
            assert a.terms is None or a.kind == "refresh" or a.terms == compute_quote(
                a.reference_price, Position(a.net_quantity, a.position_version), CFG)
            if a.kind == "new":
                assert all(b.quote_id != a.quote_id for b in issued.values())
            issued[a.seq] = a
            highest_version_quoted = a.position_version
        in_flight = a


def test_a_partly_filled_quote_is_replaced_not_refreshed_even_when_the_terms_come_out_the_same():
    p = planner()
    a = activate(p, 0.0)
    p.on_fill(a.quote_id, 1.0)  # one side partly taken; the quote itself is still live
    p.on_position(0, 2, 1.01)  # fills that net out: the same terms as before
    b = p.poll(1.01)
    assert b.kind == "new" and b.reason == "fill" and b.quote_id != a.quote_id
    assert b.terms == a.terms


def test_a_refused_refresh_becomes_a_new_quote_at_once():
    p = planner()
    a = activate(p, 0.0)
    r = p.poll(5.0)
    assert r.kind == "refresh"
    assert p.on_result(r, accepted=False, reason="reservation-renew-failed", now=5.01)
    n = p.poll(5.01)
    assert n is not None and n.kind == "new" and n.quote_id != a.quote_id


def test_a_quote_filled_before_its_answer_came_back_is_replaced_not_refreshed():
    p = planner()
    a = p.poll(0.0)
    p.on_fill(a.quote_id, 0.001)  # filled on arrival; the PUT's answer is still on the way
    assert p.on_result(a, accepted=True, reason="activated", now=0.002)
    p.on_position(0, 2, 0.01)  # the same terms come out
    b = p.poll(0.01)
    assert b.kind == "new" and b.quote_id != a.quote_id


def test_a_newer_position_before_the_fill_notice_still_means_a_new_quote_not_a_refresh():
    p = planner()
    a = activate(p, 0.0)
    p.on_position(0, 2, 1.0)  # the ledger's update came first; the fill notice is still on the way
    b = p.poll(1.0)
    assert b.kind == "new" and b.reason == "position" and b.terms == a.terms


def test_a_resync_to_a_restored_ledger_takes_a_lower_version_and_requotes_at_once():
    p = planner()
    a = activate(p, 0.0)
    assert p.on_position(8, 9, 0.5)
    b = p.poll(0.5)
    assert p.on_result(b, accepted=True, reason="activated", now=0.5)
    p.resync_position(2, 4, 1.0)  # the ledger came back from a backup, at version 4
    assert p.position == Position(2, 4)
    c = p.poll(1.0)
    assert c is not None and c.kind == "new" and c.position_version == 4 and c.terms == quote(2)
    assert not p.on_position(1, 4, 1.1)  # and from there on, only newer versions count
    assert a.quote_id != c.quote_id


def test_a_retired_quote_id_is_never_issued():
    # The shell retires the quote_id of an early reservation it released: the ledger would
    # answer that quote_id with the released reservation.
    p = QuotePlanner("mm-1", "AAPL")
    p.start(3, 0.0)
    spent = p.next_quote_id()
    p.retire_quote_id(spent)
    p.retire_quote_id("mm-1.AAPL.e3.q99")  # not the next one: no effect
    p.on_position(0, 0, 0.0)
    p.on_reference_price(10_000, 0.0)
    attempt = p.poll(0.0)
    assert attempt is not None and attempt.kind == "new"
    assert attempt.quote_id != spent and attempt.quote_id == "mm-1.AAPL.e3.q2"
