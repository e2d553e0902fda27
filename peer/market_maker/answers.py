"""The exchange's and the ledger's answers as the market maker reads them, checked field by field.

What it is for: a market maker acts on what other peers answer — a reservation, a quote verdict,
a position update, a fill. Each reader here takes one answer's status and body bytes and returns
exactly the fields the market maker uses, with their types checked, or raises `AnswerError`
naming what is wrong. A peer that answers garbage (a bug, an impostor in the ledger's place, a
proxy's error page) then costs one failed request, counted and logged, never the process.

It must never trust a field it has not checked, nor raise anything but `AnswerError` for any
body (bytes that are not JSON, JSON of the wrong shape, a field missing or of the wrong type).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from peer.market_maker.quoting import Reservation


class AnswerError(ValueError):
    """An answer from another peer that is not what its API promises."""


# --- generic checks --------------------------------------------------------------------------------


def body_of(body: bytes) -> dict[str, Any]:
    """The JSON object of an answer body."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise AnswerError(f"answer is not JSON: {str(exc)[:80]}") from None
    if type(obj) is not dict:
        raise AnswerError(f"answer is a JSON {type(obj).__name__}, not an object")
    return obj


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in obj:
        if optional:
            return None
        raise AnswerError(f"answer lacks {name!r}")
    value = obj[name]
    if optional and value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; an answer that says true where a count belongs is malformed.
    if type(value) not in kinds:
        raise AnswerError(f"{name!r} is {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}")
    return value


def whole(obj: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    value = field(obj, name, int)
    if value < minimum:
        raise AnswerError(f"{name!r} is {value}, below {minimum}")
    return value


def number(obj: dict[str, Any], name: str) -> float:
    value = field(obj, name, (int, float))
    if not math.isfinite(value):
        raise AnswerError(f"{name!r} is not a finite number")
    return float(value)


def rows(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = field(obj, name, list)
    for item in items:
        if type(item) is not dict:
            raise AnswerError(f"{name!r} holds a {type(item).__name__}, not an object")
    return items


# --- the ledger ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReservationAnswer:
    reservation: Reservation
    state: str  # the ledger's state of the reservation: active, released, expired, rejected
    expires_at: float


def reservation_answer(body: bytes) -> ReservationAnswer:
    """`POST /reservations` (201 new, 200 a retry, 409 rejected for capacity)."""
    obj = body_of(body)
    decision = field(obj, "decision", str)
    if decision not in ("granted", "reduced", "rejected"):
        raise AnswerError(f"unknown decision {decision!r}")
    r = field(obj, "reservation", dict)
    reservation = Reservation(decision, field(r, "reservation_id", str),  # type: ignore[arg-type]
                              whole(r, "reserved_bid_quantity"), whole(r, "reserved_ask_quantity"))
    return ReservationAnswer(reservation, field(r, "state", str), number(r, "expires_at"))


@dataclass(frozen=True, slots=True)
class PositionRow:
    symbol: str
    net_quantity: int
    position_version: int


def _position(row: dict[str, Any]) -> PositionRow:
    return PositionRow(field(row, "symbol", str), field(row, "net_quantity", int),
                       whole(row, "position_version"))


def positions(body: bytes) -> tuple[list[PositionRow], int]:
    """`GET /positions`: the rows and the last committed update's seq."""
    obj = body_of(body)
    return [_position(r) for r in rows(obj, "positions")], whole(obj, "last_seq")


def updates(body: bytes) -> tuple[list[PositionRow], int]:
    """`GET /updates`: committed position updates in order, and where to resume."""
    obj = body_of(body)
    return [_position(r) for r in rows(obj, "updates")], whole(obj, "next_after")


# --- the exchange ----------------------------------------------------------------------------------


def prices(body: bytes) -> dict[str, int]:
    """`GET /prices`: symbol -> reference price in ticks."""
    obj = field(body_of(body), "prices", dict)
    for symbol, price in obj.items():
        if type(price) is not int or price <= 0:
            raise AnswerError(f"price of {symbol!r} is not a positive integer")
    return obj


def authority_rows(body: bytes) -> list[dict[str, Any]]:
    """`GET /authority`: one row a symbol (read further by the authority core, which checks
    each field it uses)."""
    return rows(body_of(body), "authority")


def fills_total(body: bytes) -> int:
    """`GET /fills`: how many fills the exchange has created."""
    return whole(body_of(body), "total")


@dataclass(frozen=True, slots=True)
class FillNotice:
    fill_id: str
    holder: str
    symbol: str
    side: str
    quantity: int
    price: int
    quote_id: str | None
    epoch: int | None


def fills(body: bytes) -> tuple[list[FillNotice], int]:
    """`GET /fills?after=`: the fills after a position, and where to resume."""
    obj = body_of(body)
    out = []
    for f in rows(obj, "fills"):
        out.append(FillNotice(field(f, "fill_id", str), field(f, "holder", str, optional=True) or "",
                              field(f, "symbol", str), field(f, "side", str), whole(f, "quantity"),
                              whole(f, "price"), field(f, "quote_id", str, optional=True),
                              field(f, "epoch", int, optional=True)))
    return out, whole(obj, "next_after")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The exchange's answer to a quote operation."""

    accepted: bool
    reason: str
    fills: int


def verdict(status: int, body: bytes) -> Verdict:
    """`PUT /quotes/{symbol}` or `DELETE /quotes/{symbol}`: accepted only on 200 with
    `accepted: true`."""
    obj = body_of(body)
    accepted = field(obj, "accepted", bool, optional=True)
    reason = obj.get("reason", status)
    fill_list = obj.get("fills")
    return Verdict(status == 200 and accepted is True, str(reason)[:200],
                   len(fill_list) if type(fill_list) is list else 0)


def authority_answer(body: bytes) -> dict[str, Any]:
    """`POST /authority/{symbol}/{op}` (200 or 409): the object the authority core reads with
    `ExchangeAnswer.from_exchange`, which checks each field's type itself."""
    obj = body_of(body)
    if "authority" in obj and obj["authority"] is not None and type(obj["authority"]) is not dict:
        raise AnswerError("'authority' is not an object")
    return obj


def grant_of(body: bytes) -> dict[str, Any] | None:
    """The ledger's signed `grant` in a reservation's answer, passed on to the exchange as it
    came (the exchange verifies it); None when there is none (an insecure ledger). Never raises."""
    try:
        value = body_of(body).get("grant")
    except AnswerError:
        return None
    return value if type(value) is dict else None


def reason_of(body: bytes) -> str | None:
    """The `reason` of a refusal, if the body has one; never raises."""
    try:
        value = body_of(body).get("reason")
    except AnswerError:
        return None
    return value if type(value) is str else None
