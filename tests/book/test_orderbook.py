"""The order book's rules, driven directly: price-time priority, fills, cancels, expiry, refusals."""

from __future__ import annotations

import itertools

import pytest

from book import orders
from book.orderbook import NO_LIQUIDITY, OrderBook
from book.orders import TRANSITIONS, Kind, Order, Side, Status

BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = Kind.LIMIT, Kind.MARKET


def limit(oid: str, side: Side, price: int, qty: int, **kw) -> Order:
    return Order(oid, "ABC", side, LIMIT, qty, price, created_at=0.0, **kw)


def market(oid: str, side: Side, qty: int) -> Order:
    return Order(oid, "ABC", side, MARKET, qty, None, created_at=0.0)


def leg(oid: str, side: Side, price: int, qty: int, expires_at: float) -> Order:
    return limit(oid, side, price, qty, quote_id="q1", epoch=1, expires_at=expires_at)


def fills(executions) -> list[tuple[str, str, int, int]]:
    return [(e.maker.order_id, e.taker.order_id, e.price, e.quantity) for e in executions]


def snapshot(book: OrderBook):
    return (
        book.depth(1000),
        len(book),
        [o.to_json() for o in book.live_orders()],
        book.best_bid(),
        book.best_ask(),
    )


@pytest.fixture
def book() -> OrderBook:
    return OrderBook("ABC")


def submit_all(book: OrderBook, *batch: Order, now: float = 0.0) -> list:
    out = []
    for o in batch:
        out += book.submit(o, now)
        book.check_invariants()
    return out


# -- priority --------------------------------------------------------------------------------


def test_orders_at_one_price_fill_in_arrival_order(book):
    submit_all(book, limit("a", SELL, 100, 2), limit("b", SELL, 100, 2), limit("c", SELL, 100, 2))
    execs = book.submit(limit("t", BUY, 100, 3), 1.0)
    assert fills(execs) == [("a", "t", 100, 2), ("b", "t", 100, 1)]
    assert book.get("a") is None
    assert book.get("b").status is Status.PARTIALLY_FILLED and book.get("b").remaining == 1
    assert book.get("c").status is Status.RESTING
    book.check_invariants()


def test_better_price_fills_before_an_earlier_order_at_a_worse_price(book):
    submit_all(book, limit("early", BUY, 99, 5), limit("better", BUY, 100, 5))
    execs = book.submit(limit("t", SELL, 99, 6), 0.0)
    assert fills(execs) == [("better", "t", 100, 5), ("early", "t", 99, 1)]
    book.check_invariants()


def test_executions_happen_at_the_makers_price_not_the_takers_limit(book):
    submit_all(book, limit("m", SELL, 101, 1))
    execs = book.submit(limit("t", BUY, 105, 1), 0.0)
    assert fills(execs) == [("m", "t", 101, 1)]


def test_limit_order_matches_only_while_the_price_crosses(book):
    submit_all(
        book, limit("s1", SELL, 100, 1), limit("s2", SELL, 101, 1), limit("s3", SELL, 102, 1)
    )
    execs = book.submit(limit("t", BUY, 101, 5), 0.0)
    assert fills(execs) == [("s1", "t", 100, 1), ("s2", "t", 101, 1)]
    assert book.get("t").status is Status.PARTIALLY_FILLED
    assert book.best_bid() == 101 and book.best_ask() == 102
    book.check_invariants()


def test_sell_limit_stops_at_its_limit(book):
    submit_all(book, limit("b1", BUY, 100, 1), limit("b2", BUY, 98, 1))
    execs = book.submit(limit("t", SELL, 99, 3), 0.0)
    assert fills(execs) == [("b1", "t", 100, 1)]
    assert book.best_ask() == 99 and book.best_bid() == 98
    book.check_invariants()


def test_non_crossing_limit_order_rests_with_status_resting(book):
    execs = submit_all(book, limit("b", BUY, 99, 3), limit("s", SELL, 101, 3))
    assert execs == []
    assert book.get("b").status is Status.RESTING and book.get("s").status is Status.RESTING
    assert (book.best_bid(), book.best_ask(), len(book)) == (99, 101, 2)


# -- partial fills ---------------------------------------------------------------------------


def test_taker_sweeps_several_makers_and_partially_fills_the_last(book):
    submit_all(book, limit("a", SELL, 100, 3), limit("b", SELL, 100, 4), limit("c", SELL, 101, 5))
    execs = book.submit(limit("t", BUY, 101, 10), 0.0)
    assert fills(execs) == [("a", "t", 100, 3), ("b", "t", 100, 4), ("c", "t", 101, 3)]
    assert [e.maker.status for e in execs] == [
        Status.FILLED,
        Status.FILLED,
        Status.PARTIALLY_FILLED,
    ]
    t = execs[0].taker
    assert t.status is Status.FILLED and t.filled == 10
    assert book.depth() == {"bids": [], "asks": [[101, 2]]}
    book.check_invariants()


def test_limit_remainder_rests_partially_filled_with_its_filled_quantity(book):
    submit_all(book, limit("a", SELL, 100, 2))
    book.submit(limit("t", BUY, 100, 5), 0.0)
    t = book.get("t")
    assert t.status is Status.PARTIALLY_FILLED and (t.filled, t.remaining) == (2, 3)
    assert book.depth() == {"bids": [[100, 3]], "asks": []}
    book.check_invariants()


def test_partially_filled_resting_order_fills_again_and_leaves_when_done(book):
    submit_all(book, limit("m", SELL, 100, 5))
    submit_all(book, limit("t1", BUY, 100, 2), limit("t2", BUY, 100, 3))
    assert book.get("m") is None and len(book) == 0
    book.check_invariants()


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_before_any_fill(book):
    submit_all(book, limit("a", BUY, 99, 3), limit("b", BUY, 99, 4))
    order = book.cancel("a")
    assert order.status is Status.CANCELLED and order.filled == 0
    assert book.get("a") is None and book.depth()["bids"] == [[99, 4]]
    book.check_invariants()


def test_cancel_after_partial_fill_removes_only_the_remainder(book):
    submit_all(book, limit("m", SELL, 100, 5), limit("t", BUY, 100, 2))
    order = book.cancel("m")
    assert order.status is Status.CANCELLED and (order.filled, order.remaining) == (2, 3)
    assert len(book) == 0 and book.depth() == {"bids": [], "asks": []}
    book.check_invariants()


def test_cancelled_order_never_executes_and_keeps_others_priority(book):
    submit_all(book, limit("a", SELL, 100, 1), limit("b", SELL, 100, 1), limit("c", SELL, 100, 1))
    book.cancel("b")
    execs = book.submit(limit("t", BUY, 100, 3), 0.0)
    assert fills(execs) == [("a", "t", 100, 1), ("c", "t", 100, 1)]
    book.check_invariants()


@pytest.mark.parametrize("what", ["never-seen", "filled", "cancelled"])
def test_cancel_of_an_order_that_is_not_live_raises_unknown_order(book, what):
    submit_all(book, limit("f", SELL, 100, 1), limit("t", BUY, 100, 1), limit("c", BUY, 90, 1))
    book.cancel("c")
    oid = {"never-seen": "zzz", "filled": "f", "cancelled": "c"}[what]
    before = snapshot(book)
    with pytest.raises(orders.UnknownOrder):
        book.cancel(oid)
    assert snapshot(book) == before


def test_many_cancels_at_one_level_keep_the_queue_compact(book):
    submit_all(book, limit("head", BUY, 99, 1))
    for i in range(200):
        book.submit(limit(f"x{i}", BUY, 99, 1), 0.0)
        book.cancel(f"x{i}")
    book.check_invariants()
    level = book._bids[99]
    assert level.count == 1 and len(level.queue) < 20


# -- market orders ---------------------------------------------------------------------------


def test_market_order_fills_what_there_is_and_cancels_the_remainder(book):
    submit_all(book, limit("a", SELL, 100, 2), limit("b", SELL, 105, 1))
    execs = book.submit(market("m", BUY, 5), 0.0)
    assert fills(execs) == [("a", "m", 100, 2), ("b", "m", 105, 1)]
    m = execs[0].taker
    assert m.status is Status.CANCELLED and m.filled == 3
    assert book.get("m") is None and len(book) == 0
    book.check_invariants()


def test_market_order_filled_in_full(book):
    submit_all(book, limit("a", BUY, 100, 5))
    execs = book.submit(market("m", SELL, 3), 0.0)
    assert fills(execs) == [("a", "m", 100, 3)] and execs[0].taker.status is Status.FILLED


def test_market_order_with_no_liquidity_is_rejected_without_raising(book):
    submit_all(book, limit("b", BUY, 100, 5))
    m = market("m", BUY, 1)
    assert book.submit(m, 0.0) == []
    assert m.status is Status.REJECTED and NO_LIQUIDITY == "no-liquidity"
    assert len(book) == 1 and book.get("m") is None
    book.check_invariants()


# -- quote legs and expiry -------------------------------------------------------------------


def test_expired_quote_leg_never_executes_and_is_withdrawn(book):
    submit_all(book, leg("q-ask", SELL, 100, 5, expires_at=10.0), limit("ext", SELL, 101, 5))
    execs = book.submit(limit("t", BUY, 101, 3), 10.0)  # expires_at == now counts as expired
    assert fills(execs) == [("ext", "t", 101, 3)]
    withdrawn = book.pop_withdrawn()
    assert [o.order_id for o in withdrawn] == ["q-ask"]
    assert withdrawn[0].status is Status.CANCELLED and withdrawn[0].filled == 0
    assert book.get("q-ask") is None and book.pop_withdrawn() == []
    book.check_invariants()


def test_market_order_that_meets_only_expired_legs_is_rejected_and_withdraws_them(book):
    submit_all(book, leg("q-bid", BUY, 99, 5, expires_at=5.0))
    m = market("m", SELL, 1)
    assert book.submit(m, 6.0) == []
    assert m.status is Status.REJECTED
    assert [o.order_id for o in book.pop_withdrawn()] == ["q-bid"] and len(book) == 0
    book.check_invariants()


def test_quote_leg_executes_until_it_expires(book):
    submit_all(book, leg("q-ask", SELL, 100, 5, expires_at=10.0))
    execs = book.submit(limit("t", BUY, 100, 2), 9.999)
    assert fills(execs) == [("q-ask", "t", 100, 2)]
    assert book.get("q-ask").remaining == 3 and book.pop_withdrawn() == []


def test_refreshed_quote_leg_keeps_its_priority_and_its_new_expiry(book):
    submit_all(book, leg("q-ask", SELL, 100, 2, expires_at=10.0), limit("ext", SELL, 100, 2))
    book.get("q-ask").expires_at = 40.0  # refresh: mutate the live order in place
    execs = book.submit(limit("t", BUY, 100, 3), 20.0)
    assert fills(execs) == [("q-ask", "t", 100, 2), ("ext", "t", 100, 1)]
    assert book.pop_withdrawn() == []
    assert book.expire(20.0) == []
    book.check_invariants()


def test_quote_leg_crosses_resting_orders_as_a_taker_and_rests_the_rest(book):
    submit_all(book, limit("ext", SELL, 100, 2))
    q = leg("q-bid", BUY, 101, 5, expires_at=30.0)
    execs = book.submit(q, 0.0)
    assert fills(execs) == [("ext", "q-bid", 100, 2)]
    assert book.get("q-bid") is q and q.status is Status.PARTIALLY_FILLED and q.remaining == 3
    book.check_invariants()


def test_quote_leg_that_arrives_expired_is_rejected(book):
    q = leg("q", BUY, 100, 1, expires_at=5.0)
    with pytest.raises(orders.InvalidOrder):
        book.submit(q, 5.0)
    assert q.status is Status.REJECTED and len(book) == 0


def test_expire_cancels_every_due_order_and_only_those(book):
    submit_all(
        book,
        leg("q1", SELL, 100, 1, expires_at=5.0),
        leg("q2", BUY, 90, 1, expires_at=7.0),
        leg("q3", SELL, 101, 1, expires_at=9.0),
        limit("ext", SELL, 100, 1),
    )
    due = book.expire(7.0)
    assert [o.order_id for o in due] == ["q1", "q2"]
    assert all(o.status is Status.CANCELLED for o in due)
    assert sorted(o.order_id for o in book.live_orders()) == ["ext", "q3"]
    assert book.expire(7.0) == [] and book.pop_withdrawn() == []
    book.check_invariants()


def test_expire_after_partial_fill_cancels_the_remainder(book):
    submit_all(book, leg("q", SELL, 100, 5, expires_at=5.0), limit("t", BUY, 100, 2))
    (order,) = book.expire(5.0)
    assert order.status is Status.CANCELLED and order.filled == 2 and len(book) == 0


# -- lifecycle: illegal transitions ----------------------------------------------------------

ILLEGAL = [
    (old, new) for old, new in itertools.product(Status, Status) if new not in TRANSITIONS[old]
]


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{o.value}->{n.value}" for o, n in ILLEGAL])
def test_every_illegal_transition_raises_and_changes_nothing(old, new):
    order = limit("o", BUY, 100, 5)
    order.status = old
    with pytest.raises(orders.IllegalTransition) as err:
        order.move(new)
    assert order.status is old and (err.value.old, err.value.new) == (old, new)


def test_cancel_a_filled_order_is_an_illegal_transition(book):
    (execution,) = submit_all(book, limit("m", SELL, 100, 1), limit("t", BUY, 100, 1))
    with pytest.raises(orders.IllegalTransition):
        execution.maker.move(Status.CANCELLED)
    assert execution.maker.status is Status.FILLED
    with pytest.raises(orders.UnknownOrder):  # through the book it is simply no longer live
        book.cancel("m")


def test_fill_a_cancelled_order_is_an_illegal_transition(book):
    submit_all(book, limit("m", SELL, 100, 3))
    order = book.cancel("m")
    with pytest.raises(orders.IllegalTransition):
        order.fill(1)
    assert order.status is Status.CANCELLED


@pytest.mark.parametrize(
    "status", [Status.FILLED, Status.CANCELLED, Status.REJECTED, Status.RESTING]
)
def test_submitting_an_order_that_is_not_new_is_an_illegal_transition(book, status):
    submit_all(book, limit("a", SELL, 100, 1))
    order = limit("o", BUY, 100, 1)
    order.status = status
    before = snapshot(book)
    with pytest.raises(orders.IllegalTransition):
        book.submit(order, 0.0)
    assert order.status is status and snapshot(book) == before


def test_resubmitting_a_live_order_is_refused_and_leaves_it_live(book):
    o = limit("a", BUY, 99, 1)
    submit_all(book, o)
    with pytest.raises(orders.IllegalTransition):
        book.submit(o, 0.0)
    assert o.status is Status.RESTING and book.get("a") is o
    book.check_invariants()


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["live", "filled", "cancelled", "no-liquidity"])
def test_an_order_id_used_before_is_a_duplicate(book, state):
    submit_all(
        book, limit("live", BUY, 90, 1), limit("filled", SELL, 100, 1), limit("t", BUY, 100, 1)
    )
    submit_all(book, limit("cancelled", BUY, 91, 1), market("no-liquidity", BUY, 1))
    book.cancel("cancelled")
    before = snapshot(book)
    again = limit(state, SELL, 95, 1)
    with pytest.raises(orders.DuplicateOrder) as err:
        book.submit(again, 0.0)
    assert err.value.reason == "duplicate-order"
    assert again.status is Status.REJECTED and snapshot(book) == before
    book.check_invariants()


INVALID = {
    "zero-quantity": dict(quantity=0),
    "negative-quantity": dict(quantity=-3),
    "float-quantity": dict(quantity=1.5),
    "bool-quantity": dict(quantity=True),
    "no-limit-price": dict(limit_price=None),
    "zero-limit-price": dict(limit_price=0),
    "float-limit-price": dict(limit_price=100.5),
    "empty-id": dict(order_id=""),
    "long-id": dict(order_id="x" * 129),
    "other-symbol": dict(symbol="XYZ"),
    "market-with-price": dict(kind=MARKET, limit_price=100),
}


@pytest.mark.parametrize("change", INVALID.values(), ids=INVALID.keys())
def test_invalid_order_is_rejected_and_changes_nothing(book, change):
    submit_all(book, limit("a", SELL, 100, 2), limit("b", BUY, 99, 2))
    before = snapshot(book)
    fields = dict(
        order_id="bad",
        symbol="ABC",
        side=BUY,
        kind=LIMIT,
        quantity=1,
        limit_price=100,
        created_at=0.0,
    )
    bad = Order(**{**fields, **change})
    with pytest.raises(orders.InvalidOrder) as err:
        book.submit(bad, 0.0)
    assert err.value.reason == "invalid-order"
    assert bad.status is Status.REJECTED and bad.filled == 0
    assert snapshot(book) == before
    book.check_invariants()


def test_a_refused_order_id_may_be_used_again(book):
    with pytest.raises(orders.InvalidOrder):
        book.submit(limit("x", BUY, 100, 0), 0.0)
    assert book.submit(limit("x", BUY, 100, 1), 0.0) == []
    assert book.get("x").status is Status.RESTING


# -- queries ---------------------------------------------------------------------------------


def test_empty_book_has_no_best_prices_and_empty_depth(book):
    assert (book.best_bid(), book.best_ask(), len(book)) == (None, None, 0)
    assert book.depth() == {"bids": [], "asks": []} and book.live_orders() == []
    book.check_invariants()


def test_depth_aggregates_each_level_best_first_and_stops_at_levels(book):
    submit_all(
        book,
        limit("b1", BUY, 98, 1),
        limit("b2", BUY, 99, 2),
        limit("b3", BUY, 99, 3),
        limit("b4", BUY, 97, 4),
        limit("a1", SELL, 102, 5),
        limit("a2", SELL, 101, 6),
        limit("a3", SELL, 101, 7),
    )
    assert book.depth() == {"bids": [[99, 5], [98, 1], [97, 4]], "asks": [[101, 13], [102, 5]]}
    assert book.depth(levels=1) == {"bids": [[99, 5]], "asks": [[101, 13]]}
    book.submit(limit("t", SELL, 99, 3), 0.0)
    assert book.depth(levels=2) == {"bids": [[99, 2], [98, 1]], "asks": [[101, 13], [102, 5]]}


def test_get_live_orders_and_len_see_only_live_orders(book):
    submit_all(book, limit("a", BUY, 99, 1), limit("b", SELL, 101, 1), limit("c", BUY, 98, 1))
    book.cancel("c")
    assert [o.order_id for o in book.live_orders()] == ["a", "b"] and len(book) == 2
    assert book.get("c") is None and book.get("a").order_id == "a"


def test_check_invariants_catches_a_corrupted_level(book):
    submit_all(book, limit("a", BUY, 99, 3))
    book._bids[99].total = 7
    with pytest.raises(AssertionError, match="level 99"):
        book.check_invariants()


def test_filling_a_cancelled_order_raises_and_changes_nothing():
    from book.orders import IllegalTransition, Kind, Order, Side, Status

    o = Order("o1", "AAPL", Side.BUY, Kind.LIMIT, 5, 100, 0.0)
    o.move(Status.RESTING)
    o.move(Status.CANCELLED)
    with pytest.raises(IllegalTransition):
        o.fill(1)
    assert o.filled == 0 and o.status is Status.CANCELLED
