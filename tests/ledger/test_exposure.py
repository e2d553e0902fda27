"""The exposure rules (ledger/exposure.py): grant, reduce, reject, retry, replace, fill, expire."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import exposure
from ledger.exposure import (
    ACTIVE,
    EXPIRED,
    GRANTED,
    REDUCED,
    REJECTED,
    RELEASED,
    AppliedFill,
    ExposureBook,
    Refusal,
    Reservation,
    ReservationRequest,
)

T0 = 1_000.0


class Desk:
    """Plays the store's part: remembers every reservation and applied fill, hands them in."""

    def __init__(self, limit=100):
        self.book = ExposureBook(limit)
        self.by_id: dict[str, Reservation] = {}
        self.by_quote: dict[str, str] = {}
        self.applied: dict[str, AppliedFill] = {}
        self.n = 0

    def keep(self, answer):
        for r in answer.changed:
            self.by_id[r.reservation_id] = r
            self.by_quote[r.quote_id] = r.reservation_id
        if answer.applied is not None:
            self.applied[answer.applied.fill_id] = answer.applied
        return answer

    def reserve(self, now=T0, **kw):
        req = ReservationRequest(**{"holder": "mm-1", "symbol": "AAPL", "ttl": 30.0, **kw})
        existing = self.by_id.get(self.by_quote.get(req.quote_id, ""))
        replaced = self.by_id.get(req.replaces) if req.replaces else None
        answer = self.book.reserve(req, now, reservation_id=f"R{self.n + 1}", existing=existing, replaced=replaced)
        if not answer.duplicate:
            self.n += 1
        return self.keep(answer)

    def fill(self, rid, fill_id, side, quantity, now=T0):
        return self.keep(self.book.apply_fill(self.by_id[rid], fill_id, side, quantity, now,
                                              recorded=self.applied.get(fill_id)))

    def release(self, rid, now=T0):
        return self.keep(self.book.release(self.by_id[rid], now))

    def used(self, now=T0):
        u = self.book.usage(now)
        return u.used_bid, u.used_ask


def test_a_request_within_capacity_is_granted_in_full():
    desk = Desk()
    a = desk.reserve(quote_id="q1", bid_quantity=30, ask_quantity=40)
    assert a.decision == GRANTED and a.reservation.state == ACTIVE
    assert (a.reservation.reserved_bid_quantity, a.reservation.reserved_ask_quantity) == (30, 40)
    assert desk.used() == (30, 40)


def test_beyond_the_limit_each_side_is_capped_at_what_is_free():
    desk = Desk()
    desk.reserve(quote_id="q1", bid_quantity=90, ask_quantity=10)
    a = desk.reserve(quote_id="q2", bid_quantity=20, ask_quantity=20)
    assert a.decision == REDUCED
    assert (a.reservation.reserved_bid_quantity, a.reservation.reserved_ask_quantity) == (10, 20)
    assert desk.used() == (100, 30)


def test_no_capacity_on_any_side_asked_for_is_rejected_and_reserves_nothing():
    desk = Desk()
    desk.reserve(quote_id="q1", bid_quantity=100, ask_quantity=0)
    a = desk.reserve(quote_id="q2", bid_quantity=5, ask_quantity=0)
    assert a.decision == REJECTED and a.reservation.state == "rejected"
    assert (a.reservation.reserved_bid_quantity, a.reservation.reserved_ask_quantity) == (0, 0)
    assert desk.used() == (100, 0)
    # Free ask capacity does not help a request that asked for none.
    assert desk.reserve(quote_id="q3", bid_quantity=1, ask_quantity=0).decision == REJECTED


def test_a_retried_request_gets_the_original_answer_and_reserves_nothing_twice():
    desk = Desk()
    first = desk.reserve(quote_id="q1", bid_quantity=60, ask_quantity=60)
    again = desk.reserve(quote_id="q1", bid_quantity=60, ask_quantity=60)
    assert again.duplicate and again.reservation.reservation_id == first.reservation.reservation_id
    assert again.changed == () and desk.used() == (60, 60)
    # Even a rejected answer is the answer: capacity freed meanwhile is not a second chance.
    desk.reserve(quote_id="q2", bid_quantity=40, ask_quantity=40)
    rejected = desk.reserve(quote_id="q3", bid_quantity=5, ask_quantity=5)
    assert rejected.decision == REJECTED
    desk.release(first.reservation.reservation_id)
    assert desk.reserve(quote_id="q3", bid_quantity=5, ask_quantity=5).decision == REJECTED


def test_the_same_quote_id_with_other_content_is_a_conflict_naming_the_fields():
    desk = Desk()
    desk.reserve(quote_id="q1", bid_quantity=5, ask_quantity=5)
    with pytest.raises(Refusal) as err:
        desk.reserve(quote_id="q1", bid_quantity=6, ask_quantity=5)
    assert err.value.reason == "quote-id-conflict"
    assert err.value.details["differences"] == {"bid_quantity": {"recorded": 5, "received": 6}}
    assert desk.used() == (5, 5)


def test_a_replacement_reuses_the_replaced_capacity_in_the_same_step():
    desk = Desk()
    old = desk.reserve(quote_id="q1", bid_quantity=100, ask_quantity=100).reservation
    new = desk.reserve(quote_id="q2", bid_quantity=100, ask_quantity=100, replaces=old.reservation_id)
    assert new.decision == GRANTED and desk.used() == (100, 100)
    assert new.released.state == RELEASED and new.released.ended_reason == f"replaced-by-{new.reservation.reservation_id}"
    assert desk.by_id[old.reservation_id].state == RELEASED


def test_a_rejected_replacement_leaves_the_old_reservation_holding_its_capacity():
    desk = Desk(limit=10)
    held = desk.reserve(quote_id="a", bid_quantity=10, ask_quantity=0).reservation
    desk.reserve(quote_id="b", bid_quantity=0, ask_quantity=10, holder="mm-2")
    # Its quote stays live at the exchange until replaced for real: the capacity is still used.
    answer = desk.reserve(quote_id="c", bid_quantity=0, ask_quantity=5, replaces=held.reservation_id)
    assert answer.decision == REJECTED and desk.by_id[held.reservation_id].state == ACTIVE
    assert desk.used() == (10, 10)


def test_replacing_another_holders_or_an_unknown_reservation_is_refused():
    desk = Desk()
    r = desk.reserve(quote_id="q1", bid_quantity=5, ask_quantity=5).reservation
    with pytest.raises(Refusal) as err:
        desk.reserve(quote_id="q2", bid_quantity=5, ask_quantity=5, holder="mm-2", replaces=r.reservation_id)
    assert err.value.reason == "replaces-mismatch" and "holder" in err.value.details["differences"]
    with pytest.raises(Refusal) as err:
        desk.reserve(quote_id="q3", bid_quantity=5, ask_quantity=5, replaces="R-nope")
    assert err.value.reason == "unknown-reservation" and err.value.field == "replaces"
    assert desk.used() == (5, 5)


def test_fills_reduce_the_remaining_quantity_once_per_fill_id():
    desk = Desk()
    rid = desk.reserve(quote_id="q1", bid_quantity=10, ask_quantity=10).reservation.reservation_id
    a = desk.fill(rid, "F1", "buy", 4)
    assert a.reservation.remaining_bid_quantity == 6 and desk.used() == (6, 10)
    again = desk.fill(rid, "F1", "bid", 4)  # "bid" and "buy" are the same side
    assert again.duplicate and desk.used() == (6, 10)
    with pytest.raises(Refusal) as err:
        desk.fill(rid, "F1", "buy", 5)
    assert err.value.reason == "fill-conflict" and "quantity" in err.value.details["differences"]
    over = desk.fill(rid, "F2", "sell", 12)
    assert over.excess == 2 and over.reservation.remaining_ask_quantity == 0


def test_a_completely_filled_reservation_is_released_by_itself():
    desk = Desk()
    rid = desk.reserve(quote_id="q1", bid_quantity=3, ask_quantity=2).reservation.reservation_id
    desk.fill(rid, "F1", "buy", 3)
    last = desk.fill(rid, "F2", "sell", 2)
    assert last.reservation.state == RELEASED and last.reservation.ended_reason == "filled"
    assert desk.used() == (0, 0) and rid not in desk.book.active


def test_a_retry_after_its_reservation_ended_is_refused_not_granted_again():
    # The market maker once put a quote on a released reservation because the retry of its
    # quote_id came back "granted": nothing may read as held capacity once it has ended.
    desk = Desk()
    rid = desk.reserve(quote_id="q1", bid_quantity=5, ask_quantity=5).reservation.reservation_id
    desk.release(rid)
    with pytest.raises(Refusal) as released:
        desk.reserve(quote_id="q1", bid_quantity=5, ask_quantity=5)
    assert released.value.reason == "not-active" and released.value.details["reservation"]["state"] == RELEASED
    desk.reserve(quote_id="q2", bid_quantity=5, ask_quantity=5, ttl=1.0)
    with pytest.raises(Refusal) as expired:
        desk.reserve(quote_id="q2", bid_quantity=5, ask_quantity=5, ttl=1.0, now=T0 + 2)
    assert expired.value.reason == "not-active" and expired.value.details["reservation"]["state"] == EXPIRED
    assert desk.used(T0 + 2) == (0, 0)


def test_release_frees_capacity_and_is_safe_to_repeat():
    desk = Desk()
    rid = desk.reserve(quote_id="q1", bid_quantity=50, ask_quantity=50).reservation.reservation_id
    first = desk.release(rid)
    assert not first.duplicate and first.reservation.state == RELEASED and desk.used() == (0, 0)
    again = desk.release(rid)
    assert again.duplicate and again.changed == ()


def test_an_expired_reservation_counts_for_nothing_at_once_and_the_sweep_records_it():
    desk = Desk()
    r = desk.reserve(quote_id="q1", bid_quantity=100, ask_quantity=100, ttl=5.0).reservation
    assert desk.used(T0 + 4.9) == (100, 100)
    assert desk.used(T0 + 5.0) == (0, 0)
    # Capacity is reusable before any sweep ran.
    assert desk.reserve(quote_id="q2", bid_quantity=100, ask_quantity=100, now=T0 + 6).decision == GRANTED
    swept = desk.book.sweep(T0 + 7)
    assert [s.reservation_id for s in swept] == [r.reservation_id]
    assert swept[0].state == EXPIRED and swept[0].ended_at == r.expires_at and swept[0].ended_reason == "ttl"
    assert desk.book.sweep(T0 + 8) == []


def test_release_after_the_expiry_records_an_expiry_not_a_release():
    desk = Desk()
    rid = desk.reserve(quote_id="q1", bid_quantity=1, ask_quantity=1, ttl=1.0).reservation.reservation_id
    assert desk.release(rid, now=T0 + 2).reservation.state == EXPIRED


def test_renew_moves_the_expiry_of_an_active_reservation_only():
    desk = Desk()
    r = desk.reserve(quote_id="q1", bid_quantity=1, ask_quantity=1, ttl=5.0).reservation
    renewed = desk.book.renew(r, T0 + 4, ttl=5.0)
    assert renewed.reservation.expires_at == T0 + 9
    assert desk.book.renew(renewed.reservation, T0 + 4, ttl=1.0).duplicate  # shortens nothing
    with pytest.raises(Refusal) as err:
        desk.book.renew(renewed.reservation, T0 + 10, ttl=5.0)
    assert err.value.reason == "not-active"


def test_a_request_that_would_expire_at_once_or_too_late_is_invalid():
    desk = Desk()
    with pytest.raises(Refusal) as err:
        desk.book.reserve(ReservationRequest("q1", "mm-1", "AAPL", 1, 1, expires_at=T0 - 1), T0, reservation_id="R1")
    assert err.value.reason == "invalid" and err.value.field == "expires_at"
    with pytest.raises(Refusal) as err:
        desk.book.reserve(ReservationRequest("q1", "mm-1", "AAPL", 1, 1, ttl=3600.0), T0, reservation_id="R1")
    assert err.value.field == "ttl"
    assert desk.book.active == {}


@pytest.mark.parametrize("body, field", [
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 1.0, "ask_quantity": 1, "ttl": 5}, "bid_quantity"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": True, "ask_quantity": 1, "ttl": 5}, "bid_quantity"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": "1", "ttl": 5}, "ask_quantity"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": -1, "ask_quantity": 1, "ttl": 5}, "bid_quantity"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 0, "ask_quantity": 0, "ttl": 5}, "bid_quantity"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": 1}, "expires_at"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": 1, "ttl": 5,
      "expires_at": 9}, "expires_at"),
    ({"quote_id": "", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": 1, "ttl": 5}, "quote_id"),
    ({"quote_id": "q", "holder": "h", "symbol": "A-B", "bid_quantity": 1, "ask_quantity": 1, "ttl": 5}, "symbol"),
    ({"quote_id": "q", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": 1, "ttl": 5, "x": 1}, "x"),
    ({"holder": "h", "symbol": "AAPL", "bid_quantity": 1, "ask_quantity": 1, "ttl": 5}, "quote_id"),
])
def test_malformed_requests_name_the_field(body, field):
    with pytest.raises(exposure.InvalidInput) as err:
        exposure.parse_request(body)
    assert err.value.field == field


# --- property: under any sequence, usage never exceeds the limit and retries never double up ---

_ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 11), st.integers(0, 70), st.integers(0, 70),
              st.floats(0.5, 20.0), st.one_of(st.none(), st.integers(0, 11))),
    st.tuples(st.just("retry"), st.integers(0, 30)),
    st.tuples(st.just("fill"), st.integers(0, 11), st.integers(0, 15), st.sampled_from(["buy", "sell"]),
              st.integers(1, 40)),
    st.tuples(st.just("release"), st.integers(0, 11)),
    st.tuples(st.just("advance"), st.floats(0.0, 8.0)),
    st.tuples(st.just("sweep"),),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(1, 100))
def test_usage_never_exceeds_the_limit_and_retries_never_double_reserve(ops, limit):
    desk = Desk(limit)
    now = T0
    sent: list[dict] = []
    ids: list[str] = []
    for op in ops:
        before = desk.used(now)
        kind = op[0]
        try:
            if kind == "reserve":
                _, q, bid, ask, ttl, rep = op
                if bid == 0 and ask == 0:
                    continue
                kw = {"quote_id": f"q{q}-{len(sent)}", "bid_quantity": bid, "ask_quantity": ask, "ttl": ttl}
                if rep is not None and rep < len(ids):
                    kw["replaces"] = ids[rep]
                answer = desk.reserve(now=now, **kw)
                sent.append(kw)
                ids.append(answer.reservation.reservation_id)
                r = answer.reservation
                if answer.decision == GRANTED:
                    assert (r.reserved_bid_quantity, r.reserved_ask_quantity) == (bid, ask)
                elif answer.decision == REDUCED:
                    assert r.reserved_bid_quantity <= bid and r.reserved_ask_quantity <= ask
                    assert r.reserved_bid_quantity + r.reserved_ask_quantity > 0
                else:
                    assert desk.used(now) == before, "a rejection reserves and releases nothing"
            elif kind == "retry" and sent:
                kw = sent[op[1] % len(sent)]
                answer = desk.reserve(now=now, **kw)
                assert answer.duplicate and answer.changed == ()
                assert answer.reservation.state in (ACTIVE, "rejected"), "an ended one is never handed back"
                assert desk.used(now) == before, "a retry reserves nothing"
            elif kind == "fill" and ids:
                desk.fill(ids[op[1] % len(ids)], f"F{op[2]}", op[3], op[4], now=now)
            elif kind == "release" and ids:
                desk.release(ids[op[1] % len(ids)], now=now)
            elif kind == "advance":
                now += op[1]
            elif kind == "sweep":
                for r in desk.book.sweep(now):
                    desk.by_id[r.reservation_id] = r
                    assert r.state == EXPIRED
        except Refusal as exc:
            assert exc.reason in ("fill-conflict", "not-active")
            assert desk.used(now) == before, "a refusal changes nothing"
        used_bid, used_ask = desk.used(now)
        assert used_bid <= limit and used_ask <= limit
        # What counts is exactly the active, unexpired reservations the store would hold.
        counting = [r for r in desk.by_id.values() if r.state == ACTIVE and now < r.expires_at]
        assert {r.reservation_id for r in counting} == {r.reservation_id for r in desk.book.usage(now).active}
        assert all(dataclasses.replace(r) == desk.book.active[r.reservation_id] for r in counting)
