"""Orders and their lifecycle, written as a transition table.

What it is for: the one definition of an order (an external order, or one leg of a market
maker's quote resting in the book) and of the states it may pass through:

    new ──► resting ──► partially_filled ──► filled
     │         │              │
     │         └──────────────┴──────────► cancelled     (cancel, expiry, withdrawal, IOC rest)
     ├──► filled                                          (crossed at once)
     ├──► partially_filled                                (crossed in part, rests the remainder)
     └──► rejected                                        (invalid, or nothing to match a market order)

An illegal transition raises `IllegalTransition`; nothing changes silently. Quantities are whole
numbers and prices integer ticks: no binary floats anywhere. It must never do I/O or read a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from book import bounds

if TYPE_CHECKING:
    from book.market import OrderIntent


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class Kind(enum.Enum):
    LIMIT = "limit"
    MARKET = "market"


class Status(enum.Enum):
    NEW = "new"
    RESTING = "resting"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (Status.FILLED, Status.CANCELLED, Status.REJECTED)

    @property
    def is_live(self) -> bool:
        return self in (Status.RESTING, Status.PARTIALLY_FILLED)


# Every legal transition, as data (h11's style): anything not listed is an error.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.RESTING, Status.PARTIALLY_FILLED, Status.FILLED, Status.REJECTED, Status.CANCELLED}),
    Status.RESTING: frozenset({Status.PARTIALLY_FILLED, Status.FILLED, Status.CANCELLED}),
    Status.PARTIALLY_FILLED: frozenset({Status.PARTIALLY_FILLED, Status.FILLED, Status.CANCELLED}),
    Status.FILLED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.REJECTED: frozenset(),
}


class BookError(Exception):
    """Base of every typed error the book raises; `reason` is a short machine-readable code."""

    reason = "book-error"


class IllegalTransition(BookError):
    reason = "illegal-transition"

    def __init__(self, order_id: str, old: Status, new: Status):
        super().__init__(f"order {order_id}: {old.value} -> {new.value} is not a legal transition")
        self.order_id, self.old, self.new = order_id, old, new


class InvalidOrder(BookError):
    reason = "invalid-order"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field  # the order's field at fault, when one is


def _invalid_field(field: str, message: str) -> InvalidOrder:
    return InvalidOrder(f"{field}: {message}", field)


class UnknownOrder(BookError):
    reason = "unknown-order"


class DuplicateOrder(BookError):
    reason = "duplicate-order"


def request_fields(order: Order | OrderIntent) -> dict:
    """An order (or the flow's intent of one) as `POST /orders` takes it (field names of
    docs/interface.md)."""
    return {
        "order_id": order.order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.kind.value,
        "quantity": order.quantity,
        "limit_price": order.limit_price,
    }


@dataclass(slots=True, eq=False)
class Order:
    """An order, or a quote leg when `quote_id` is set. Mutable only through `fill`/`move`."""

    order_id: str
    symbol: str
    side: Side
    kind: Kind
    quantity: int
    limit_price: int | None  # ticks; None for a market order
    created_at: float
    filled: int = 0
    status: Status = Status.NEW
    # Set for a market maker's quote leg: its quote, the authority epoch it was published
    # under, and the instant after which it must never execute.
    quote_id: str | None = None
    epoch: int | None = None
    expires_at: float | None = None

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled

    @property
    def is_quote(self) -> bool:
        return self.quote_id is not None

    def move(self, new: Status) -> None:
        if new not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.order_id, self.status, new)
        self.status = new

    def fill(self, quantity: int) -> None:
        """Execute `quantity` of this order; filled quantity only grows, never past the total."""
        if quantity <= 0 or quantity > self.remaining:
            raise InvalidOrder(f"order {self.order_id}: cannot fill {quantity} of {self.remaining} remaining")
        new = Status.FILLED if quantity == self.remaining else Status.PARTIALLY_FILLED
        if new not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.order_id, self.status, new)  # checked before anything changes
        self.filled += quantity
        self.status = new

    def validate(self) -> None:
        """The bounds of book/bounds.py: the ledger accepts every fill an order can make."""
        # A quote leg's id is its quote's id and "/buy" or "/sell": a quote_id at the bound fits.
        longest = bounds.MAX_ID_LENGTH + (len("/sell") if self.quote_id is not None else 0)
        bounds.ident(self.order_id, "order_id", max_length=longest, error=_invalid_field)
        bounds.quantity(self.quantity, "quantity", error=_invalid_field)
        if self.kind is Kind.LIMIT:
            bounds.price(self.limit_price, "limit_price", error=_invalid_field)
        if self.kind is Kind.MARKET and self.limit_price is not None:
            raise InvalidOrder("limit_price: a market order takes no limit_price", "limit_price")

    def to_json(self) -> dict:
        out = {
            **request_fields(self),
            "filled_quantity": self.filled,
            "remaining_quantity": self.remaining,
            "status": self.status.value,
            "created_at": self.created_at,
        }
        if self.quote_id is not None:
            out.update(quote_id=self.quote_id, epoch=self.epoch, expires_at=self.expires_at)
        return out


@dataclass(frozen=True, slots=True)
class Execution:
    """One match between a resting order (maker) and an incoming one (taker), at the maker's price."""

    maker: Order
    taker: Order
    price: int
    quantity: int
