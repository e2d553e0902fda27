"""One symbol's order book: price-time priority matching, as a pure core.

What it is for: the exchange keeps one `OrderBook` per symbol. External orders and the legs of a
market maker's quote are submitted to it the same way; each is matched against the opposite side,
best price first and first come, first served within a price, always at the resting (maker's)
price; what a limit order leaves rests with its own time priority. Every status change goes
through `Order.fill` / `Order.move`, so the table in `book/orders.py` stays the only authority on
what may happen to an order.

What it must never do: I/O, logging, or reading a clock (`now` is an argument); execute a quote
leg whose `expires_at` has passed (`expires_at <= now`), whether it rests or arrives; change any
state when it refuses an order.

Rules the caller relies on:

- Refusal. `submit` checks, in this order, that the order is NEW (else `IllegalTransition`), valid
  (`Order.validate`), of this book's symbol, not an already expired quote leg (`InvalidOrder`),
  and has an id this book has never accepted (`DuplicateOrder`). On a refusal the book moves the
  order NEW -> REJECTED and raises; nothing else changes, and the id is not remembered, so a
  corrected order may use it again. The caller records the rejection from the error's `reason`.
- Market orders are immediate-or-cancel: a remainder is CANCELLED. One that matched nothing at all
  is REJECTED with reason `NO_LIQUIDITY` ("no-liquidity"): nothing is raised, `submit` returns []
  and the status says it (`Order` has no field for a reason; a REJECTED order that `submit`
  returned from without raising was refused for this reason only).
- Expiry. A resting order with `expires_at <= now` that the matcher meets is withdrawn (moved to
  CANCELLED, removed, never executed) and kept for `pop_withdrawn()`. Expired orders the matcher
  does not meet stay in the book (and in `depth`) until `expire(now)`, which the exchange calls on
  its timer. A quote refresh is the caller assigning a new `expires_at` to the live order: the
  book reads the field afresh every time, so the order keeps its place in the queue.
- Ownership. Once an order rests, the book owns it. The caller may read it and move its
  `expires_at`, nothing else; cancel through `cancel`, never `order.move`.

Structure, chosen for per-operation cost: a dict of live orders by id; per side a `SortedDict`
price -> `_Level`; a level is a deque in arrival order plus its live count and total remaining.
Cancel is lazy and O(1): the order leaves the id map and the level's count and total at once,
and its deque slot is skipped (and dropped) when it reaches the head; a level whose deque holds
more than twice its live orders is compacted, so dead slots cost O(1) amortised.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from sortedcontainers import SortedDict

from book.orders import (
    BookError,
    DuplicateOrder,
    Execution,
    IllegalTransition,
    InvalidOrder,
    Kind,
    Order,
    Side,
    Status,
    UnknownOrder,
)

__all__ = ["NO_LIQUIDITY", "OrderBook"]

NO_LIQUIDITY = "no-liquidity"

# Module-level names: attribute look-ups on the enums cost more than a global on the hot path.
_BUY = Side.BUY
_LIMIT = Kind.LIMIT
_NEW = Status.NEW
_RESTING = Status.RESTING
_CANCELLED = Status.CANCELLED
_REJECTED = Status.REJECTED

# A level's deque may hold this many dead slots beyond its live orders before it is compacted.
_COMPACT_SLACK = 8


class _Level:
    """The orders resting at one price, oldest first; dead (cancelled) slots are skipped."""

    __slots__ = ("queue", "count", "total")

    def __init__(self) -> None:
        self.queue: deque[Order] = deque()
        self.count = 0  # live orders in `queue`
        self.total = 0  # their remaining quantity


class OrderBook:
    """One symbol's book. See the module docstring for the rules."""

    __slots__ = (
        "symbol",
        "_bids",
        "_asks",
        "_bid_prices",
        "_ask_prices",
        "_live",
        "_expiring",
        "_seen",
        "_withdrawn",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._bids: SortedDict = SortedDict()  # price -> _Level; best is the last key
        self._asks: SortedDict = SortedDict()  # price -> _Level; best is the first key
        self._bid_prices = self._bids.keys()
        self._ask_prices = self._asks.keys()
        self._live: dict[str, Order] = {}
        # Live orders that may expire (quote legs, or anything that rested with `expires_at`),
        # so that `expire` looks at these and not at the whole book.
        self._expiring: dict[str, Order] = {}
        self._seen: set[str] = set()
        self._withdrawn: list[Order] = []

    # -- commands ----------------------------------------------------------------------------

    def submit(self, order: Order, now: float) -> list[Execution]:
        """Match `order`, rest a limit order's remainder; return the executions, oldest first."""
        if order.status is not _NEW:
            raise IllegalTransition(order.order_id, order.status, _RESTING)
        try:
            order.validate()
            if order.symbol != self.symbol:
                raise InvalidOrder(
                    f"symbol {order.symbol!r} does not belong to the {self.symbol!r} book"
                )
            if order.expires_at is not None and order.expires_at <= now:
                raise InvalidOrder(
                    f"order {order.order_id}: expired at {order.expires_at}, now {now}"
                )
            if order.order_id in self._seen:
                raise DuplicateOrder(f"order_id {order.order_id!r} was already used in this book")
        except BookError:
            order.move(_REJECTED)
            raise
        self._seen.add(order.order_id)

        limit = order.limit_price
        if order.side is _BUY:
            opp, opp_prices, best, same = self._asks, self._ask_prices, 0, self._bids
            crosses = bool(opp) and (limit is None or opp_prices[0] <= limit)
        else:
            opp, opp_prices, best, same = self._bids, self._bid_prices, -1, self._asks
            crosses = bool(opp) and (limit is None or opp_prices[-1] >= limit)
        executions = self._match(order, opp, opp_prices, best, limit, now) if crosses else []

        if order.filled == order.quantity:
            return executions
        if order.kind is _LIMIT:
            if order.status is _NEW:
                order.move(_RESTING)
            level = same.get(limit)
            if level is None:
                level = same[limit] = _Level()
            level.queue.append(order)
            level.count += 1
            level.total += order.quantity - order.filled
            self._live[order.order_id] = order
            if order.expires_at is not None or order.quote_id is not None:
                self._expiring[order.order_id] = order
        elif order.filled:
            order.move(_CANCELLED)  # immediate-or-cancel remainder
        else:
            order.move(_REJECTED)  # NO_LIQUIDITY
        return executions

    def cancel(self, order_id: str) -> Order:
        """Cancel a live order (resting or partially filled); UnknownOrder if it is not live."""
        order = self._live.get(order_id)
        if order is None:
            raise UnknownOrder(f"order {order_id!r} is not live in the {self.symbol!r} book")
        order.move(_CANCELLED)
        self._unlink(order)
        return order

    def expire(self, now: float) -> list[Order]:
        """Cancel every live order with `expires_at <= now`; return them in arrival order."""
        due = [
            o for o in self._expiring.values() if o.expires_at is not None and o.expires_at <= now
        ]
        for order in due:
            order.move(_CANCELLED)
            self._unlink(order)
        return due

    def pop_withdrawn(self) -> list[Order]:
        """Expired orders the matcher withdrew since the last call (now CANCELLED), oldest first."""
        out, self._withdrawn = self._withdrawn, []
        return out

    # -- queries -----------------------------------------------------------------------------

    def get(self, order_id: str) -> Order | None:
        return self._live.get(order_id)

    def best_bid(self) -> int | None:
        return self._bid_prices[-1] if self._bids else None

    def best_ask(self) -> int | None:
        return self._ask_prices[0] if self._asks else None

    def depth(self, levels: int = 10) -> dict:
        """Aggregated levels, best first: {"bids": [[price, remaining], ...], "asks": [...]}."""
        bids, asks = self._bids, self._asks
        return {
            "bids": [[p, bids[p].total] for p in islice(reversed(self._bid_prices), levels)],
            "asks": [[p, asks[p].total] for p in islice(self._ask_prices, levels)],
        }

    def live_orders(self) -> list[Order]:
        """Every live order, in the order they came to rest."""
        return list(self._live.values())

    def __len__(self) -> int:
        return len(self._live)

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant; cost is O(book)."""

        def fail(msg: str) -> None:
            raise AssertionError(f"book {self.symbol}: {msg}")

        in_levels: dict[str, Order] = {}
        for side, book in ((Side.BUY, self._bids), (Side.SELL, self._asks)):
            for price, level in book.items():
                count = total = 0
                for o in level.queue:
                    if o.status is _CANCELLED:
                        if self._live.get(o.order_id) is o:
                            fail(f"cancelled order {o.order_id} is still live")
                        continue
                    if not o.status.is_live:
                        fail(f"order {o.order_id} rests with status {o.status.value}")
                    if o.side is not side or o.limit_price != price or o.kind is not _LIMIT:
                        fail(
                            f"order {o.order_id} ({o.side.value} {o.limit_price}) sits in the {side.value} level {price}"
                        )
                    if o.order_id in in_levels:
                        fail(f"order {o.order_id} sits in more than one level slot")
                    if self._live.get(o.order_id) is not o:
                        fail(f"order {o.order_id} rests in a level but is not in the live map")
                    if not 0 < o.remaining <= o.quantity or o.filled < 0:
                        fail(
                            f"order {o.order_id}: filled {o.filled} of {o.quantity}, remaining {o.remaining}"
                        )
                    if o.filled and o.status is _RESTING:
                        fail(f"order {o.order_id} has fills but is still {o.status.value}")
                    in_levels[o.order_id] = o
                    count += 1
                    total += o.remaining
                if count == 0:
                    fail(f"empty {side.value} level {price} was kept")
                if (count, total) != (level.count, level.total):
                    fail(
                        f"{side.value} level {price}: recorded {level.count} orders / {level.total}, actual {count} / {total}"
                    )
        if in_levels.keys() != self._live.keys():
            missing = sorted(self._live.keys() - in_levels.keys())[:5]
            fail(f"live orders missing from every level: {missing}")
        if not self._live.keys() <= self._seen:
            fail("a live order id was never recorded as seen")
        for oid, o in self._expiring.items():
            if self._live.get(oid) is not o:
                fail(f"expiry index holds {oid}, which is not live")
        bid, ask = self.best_bid(), self.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            fail(f"crossed: best bid {bid} >= best ask {ask}")

    # -- internals ---------------------------------------------------------------------------

    def _match(
        self, taker: Order, opp: SortedDict, prices, best: int, limit: int | None, now: float
    ) -> list[Execution]:
        executions: list[Execution] = []
        live, expiring = self._live, self._expiring
        buying = best == 0
        remaining = taker.quantity - taker.filled
        while opp:
            price = prices[best]
            if limit is not None and (price > limit if buying else price < limit):
                break
            level = opp[price]
            queue = level.queue
            while queue:
                maker = queue[0]
                if maker.status is _CANCELLED:  # a lazily cancelled slot
                    queue.popleft()
                    continue
                expires_at = maker.expires_at
                if expires_at is not None and expires_at <= now:
                    maker.move(_CANCELLED)
                    queue.popleft()
                    level.count -= 1
                    level.total -= maker.quantity - maker.filled
                    del live[maker.order_id]
                    expiring.pop(maker.order_id, None)
                    self._withdrawn.append(maker)
                    continue
                available = maker.quantity - maker.filled
                qty = available if available < remaining else remaining
                maker.fill(qty)
                taker.fill(qty)
                executions.append(Execution(maker, taker, price, qty))
                level.total -= qty
                remaining -= qty
                if qty == available:
                    queue.popleft()
                    level.count -= 1
                    del live[maker.order_id]
                    if expiring:
                        expiring.pop(maker.order_id, None)
                if not remaining:
                    break
            if not level.count:
                del opp[price]
            if not remaining:
                break
        return executions

    def _unlink(self, order: Order) -> None:
        """Take a live order (already moved to CANCELLED) out of the id map and its level."""
        oid = order.order_id
        del self._live[oid]
        if self._expiring:
            self._expiring.pop(oid, None)
        book = self._bids if order.side is _BUY else self._asks
        price = order.limit_price
        level = book[price]
        level.count -= 1
        if not level.count:
            del book[price]
            return
        level.total -= order.quantity - order.filled
        queue = level.queue
        if len(queue) > 2 * level.count + _COMPACT_SLACK:
            level.queue = deque([o for o in queue if o.status is not _CANCELLED])
