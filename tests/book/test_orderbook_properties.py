"""Random operation sequences against the book, checked against a naive model of the rules.

After every step: `check_invariants()`; conservation (what buyers received equals what sellers
gave; each order's `filled` equals the sum of its executions); and the book agrees with a
deliberately simple list-based model on every execution, withdrawal, expiry and depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from book.orderbook import OrderBook
from book.orders import DuplicateOrder, InvalidOrder, Kind, Order, Side, Status, UnknownOrder

SYMBOL = "ABC"
sides = st.sampled_from([Side.BUY, Side.SELL])
prices = st.integers(min_value=95, max_value=105)
quantities = st.integers(min_value=1, max_value=6)


@dataclass
class Resting:
    order_id: str
    side: Side
    price: int
    remaining: int
    seq: int
    expires_at: float | None


class ModelBook:
    """Price-time priority the slow, obvious way: sort every candidate on each submit."""

    def __init__(self) -> None:
        self.resting: list[Resting] = []
        self.seq = 0

    def submit(self, o: Order, now: float) -> tuple[list[tuple], list[str]]:
        executions, withdrawn = [], []
        remaining = o.quantity
        buying = o.side is Side.BUY

        def crosses(r: Resting) -> bool:
            if r.side is o.side:
                return False
            if o.limit_price is None:
                return True
            return r.price <= o.limit_price if buying else r.price >= o.limit_price

        candidates = sorted(
            (r for r in self.resting if crosses(r)),
            key=lambda r: (r.price if buying else -r.price, r.seq),
        )
        for r in candidates:
            if not remaining:
                break
            if r.expires_at is not None and r.expires_at <= now:
                withdrawn.append(r.order_id)
                self.resting.remove(r)
                continue
            qty = min(remaining, r.remaining)
            executions.append((r.order_id, o.order_id, r.price, qty))
            remaining -= qty
            r.remaining -= qty
            if not r.remaining:
                self.resting.remove(r)
        if remaining and o.kind is Kind.LIMIT:
            self.seq += 1
            self.resting.append(
                Resting(o.order_id, o.side, o.limit_price, remaining, self.seq, o.expires_at)
            )
        return executions, withdrawn

    def cancel(self, order_id: str) -> bool:
        for r in self.resting:
            if r.order_id == order_id:
                self.resting.remove(r)
                return True
        return False

    def expire(self, now: float) -> list[str]:
        due = [r for r in self.resting if r.expires_at is not None and r.expires_at <= now]
        for r in due:
            self.resting.remove(r)
        return [r.order_id for r in sorted(due, key=lambda r: r.seq)]

    def depth(self) -> dict:
        out: dict[str, list[list[int]]] = {}
        for side, key in (("bids", Side.BUY), ("asks", Side.SELL)):
            levels: dict[int, int] = {}
            for r in self.resting:
                if r.side is key:
                    levels[r.price] = levels.get(r.price, 0) + r.remaining
            out[side] = [[p, q] for p, q in sorted(levels.items(), reverse=side == "bids")]
        return out


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = OrderBook(SYMBOL)
        self.model = ModelBook()
        self.now = 0.0
        self.next_id = 0
        self.orders: dict[str, Order] = {}
        self.executed: dict[str, int] = {}  # order_id -> sum of its executions

    def _new_id(self) -> str:
        self.next_id += 1
        return f"o{self.next_id}"

    def _submit(self, order: Order) -> None:
        self.orders[order.order_id] = order
        executions = self.book.submit(order, self.now)
        want_execs, want_withdrawn = self.model.submit(order, self.now)
        got = [(e.maker.order_id, e.taker.order_id, e.price, e.quantity) for e in executions]
        assert got == want_execs
        withdrawn = self.book.pop_withdrawn()
        assert [o.order_id for o in withdrawn] == want_withdrawn
        assert all(o.status is Status.CANCELLED for o in withdrawn)
        for e in executions:
            assert e.maker.side is not e.taker.side and e.taker is order
            assert e.maker.expires_at is None or e.maker.expires_at > self.now
            for oid in (e.maker.order_id, e.taker.order_id):
                self.executed[oid] = self.executed.get(oid, 0) + e.quantity
        if order.kind is Kind.MARKET:
            assert order.status in (Status.FILLED, Status.CANCELLED, Status.REJECTED)
            assert (order.status is Status.REJECTED) == (not executions)

    @rule(side=sides, price=prices, qty=quantities)
    def add_limit(self, side, price, qty):
        self._submit(Order(self._new_id(), SYMBOL, side, Kind.LIMIT, qty, price, self.now))

    @rule(side=sides, price=prices, qty=quantities, ttl=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
    def add_quote_leg(self, side, price, qty, ttl):
        oid = self._new_id()
        self._submit(
            Order(
                oid,
                SYMBOL,
                side,
                Kind.LIMIT,
                qty,
                price,
                self.now,
                quote_id=f"q{oid}",
                epoch=1,
                expires_at=self.now + ttl,
            )
        )

    @rule(side=sides, qty=st.integers(min_value=1, max_value=15))
    def add_market(self, side, qty):
        self._submit(Order(self._new_id(), SYMBOL, side, Kind.MARKET, qty, None, self.now))

    @precondition(lambda self: len(self.book) > 0)
    @rule(data=st.data())
    def cancel_live(self, data):
        oid = data.draw(st.sampled_from(sorted(o.order_id for o in self.book.live_orders())))
        order = self.book.cancel(oid)
        assert order.status is Status.CANCELLED and self.model.cancel(oid)

    @rule(data=st.data())
    def cancel_not_live(self, data):
        dead = sorted(oid for oid, o in self.orders.items() if not o.status.is_live)
        oid = data.draw(st.sampled_from(dead + ["never-seen"]))
        try:
            self.book.cancel(oid)
        except UnknownOrder:
            return
        raise AssertionError(f"cancel of {oid} that is not live succeeded")

    @rule(side=sides, price=prices)
    def duplicate_id_refused(self, side, price):
        if not self.orders:
            return
        oid = sorted(self.orders)[self.next_id % len(self.orders)]
        before = self.book.depth(100)
        dup = Order(oid, SYMBOL, side, Kind.LIMIT, 1, price, self.now)
        try:
            self.book.submit(dup, self.now)
        except DuplicateOrder:
            assert dup.status is Status.REJECTED and self.book.depth(100) == before
            return
        raise AssertionError("duplicate order id accepted")

    @rule(qty=st.sampled_from([0, -1]), price=prices)
    def invalid_refused(self, qty, price):
        before = (self.book.depth(100), len(self.book))
        bad = Order(self._new_id(), SYMBOL, Side.BUY, Kind.LIMIT, qty, price, self.now)
        try:
            self.book.submit(bad, self.now)
        except InvalidOrder:
            assert (
                bad.status is Status.REJECTED and (self.book.depth(100), len(self.book)) == before
            )
            return
        raise AssertionError("invalid order accepted")

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance_time(self, dt):
        self.now += dt

    @rule()
    def expire(self):
        got = [o.order_id for o in self.book.expire(self.now)]
        assert got == self.model.expire(self.now)

    @rule(data=st.data(), ttl=st.sampled_from([1.0, 5.0]))
    def refresh_quote_leg(self, data, ttl):
        legs = sorted(o.order_id for o in self.book.live_orders() if o.quote_id is not None)
        if not legs:
            return
        oid = data.draw(st.sampled_from(legs))
        self.book.get(oid).expires_at = self.now + ttl
        for r in self.model.resting:
            if r.order_id == oid:
                r.expires_at = self.now + ttl

    @invariant()
    def book_invariants_hold(self):
        self.book.check_invariants()

    @invariant()
    def book_agrees_with_model(self):
        assert self.book.depth(100) == self.model.depth()
        assert sorted(o.order_id for o in self.book.live_orders()) == sorted(
            r.order_id for r in self.model.resting
        )

    @invariant()
    def quantity_is_conserved(self):
        bought = sum(o.filled for o in self.orders.values() if o.side is Side.BUY)
        sold = sum(o.filled for o in self.orders.values() if o.side is Side.SELL)
        assert bought == sold
        for oid, o in self.orders.items():
            assert o.filled == self.executed.get(oid, 0), oid
            assert 0 <= o.filled <= o.quantity


BookMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBookAgainstModel = BookMachine.TestCase
