"""Fills and quotes: the exchange's records of what a market maker offered and what executed.

What it is for: the immutable `Fill` (born once, with a unique `fill_id`, never changed) and the
`Quote` a market maker keeps in the book (a bid leg and an ask leg resting as orders). Field
names are murmur's interface (docs/interface.md). Prices are integer ticks, quantities whole numbers. It must never do I/O.

A fill's `side` is the market maker's side: "buy" when the quote's bid was hit (the market maker
bought; its position rises), "sell" when its ask was lifted. `order_id` is the external order
it executed against.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from book.orders import Order


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    order_id: str
    symbol: str
    side: str
    quantity: int
    price: int
    quote_id: str
    epoch: int
    holder: str
    reservation_id: str | None
    created_at: float
    seq: int  # position in the exchange's fill sequence, from 1; `GET /fills?after=` pages on it

    @property
    def signed_quantity(self) -> int:
        return self.quantity if self.side == "buy" else -self.quantity

    def to_json(self) -> dict:
        return {
            "fill_id": self.fill_id,
            "seq": self.seq,
            "order_id": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": self.quantity,
            "price": self.price,
            "quote_id": self.quote_id,
            "epoch": self.epoch,
            "holder": self.holder,
            "reservation_id": self.reservation_id,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, d: dict) -> Fill:
        return cls(**{k: d[k] for k in cls.__slots__})


class QuoteState(enum.Enum):
    ACTIVE = "active"
    REPLACED = "replaced"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # by the exchange: a newer epoch, a release, a lease that ran out
    FILLED = "filled"


@dataclass(slots=True, eq=False)
class Quote:
    quote_id: str
    symbol: str
    holder: str
    epoch: int
    seq: int
    bid_price: int
    bid_quantity: int
    ask_price: int
    ask_quantity: int
    reservation_id: str | None
    activated_at: float
    expires_at: float
    state: QuoteState = QuoteState.ACTIVE
    legs: list[Order] = field(default_factory=list)
    ended_reason: str | None = None

    def same_terms(self, bid_price: int, bid_quantity: int, ask_price: int, ask_quantity: int) -> bool:
        return (self.bid_price, self.bid_quantity, self.ask_price, self.ask_quantity) == (
            bid_price,
            bid_quantity,
            ask_price,
            ask_quantity,
        )

    def remaining(self, side: str) -> int:
        return sum(leg.remaining for leg in self.legs if leg.side.value == side and leg.status.is_live)

    def to_json(self, now: float | None = None) -> dict:
        out = {
            "quote_id": self.quote_id,
            "symbol": self.symbol,
            "holder": self.holder,
            "epoch": self.epoch,
            "seq": self.seq,
            "bid_price": self.bid_price,
            "bid_quantity": self.bid_quantity,
            "bid_remaining": self.remaining("buy"),
            "ask_price": self.ask_price,
            "ask_quantity": self.ask_quantity,
            "ask_remaining": self.remaining("sell"),
            "reservation_id": self.reservation_id,
            "activated_at": self.activated_at,
            "expires_at": self.expires_at,
            "state": self.state.value,
        }
        if self.ended_reason:
            out["ended_reason"] = self.ended_reason
        return out
