"""The bounds of every field murmur accepts: one table, used by the exchange, the ledger and their APIs.

What it is for: a fill is born at the exchange and recorded by the ledger. If the two checked
their inputs against different numbers, the exchange could create a fill the ledger refuses, and
the fill pipeline would stop for good. So every validator (the exchange core's commands, the
order book's `Order.validate`, the ledger's fill and reservation parsers, the HTTP layers) takes
its limits from here, and the ledger's fill check accepts everything the exchange can make.

| field | bound | why |
|---|---|---|
| price (`limit_price`, `bid_price`, `ask_price`, a fill's `price`) | 1 ..= MAX_PRICE (10**9 ticks) | price × quantity ≤ 10**15 < 2**53: a fill's value is exact as a JSON number (a double) and in SQLite's 64-bit INTEGER |
| quantity (an order's, a quote side's, a fill's, a reservation side's) | 1 ..= MAX_QUANTITY (10**6); a quote or reservation side may be 0 | the same product; and a position moves by at most 10**6 a fill |
| counters (`epoch`, `seq`, sequence numbers) | 0 or 1 ..= MAX_COUNT (2**53 − 1) | exact as a JSON number, and far below SQLite's 2**63 |
| position (`net_quantity`) | −MAX_POSITION ..= MAX_POSITION (2**53 − 1) | exact as a JSON number; it takes 9·10**9 fills of the maximum quantity on one side to reach it; the ledger refuses a fill that would go past it (409 `position-bound`) |
| ids (`order_id`, `quote_id`, `holder`, `fill_id`, `reservation_id`, ...) | 1 ..= MAX_ID_LENGTH (128) characters | bounded rows, log lines and tape records |
| symbol | 1 ..= MAX_SYMBOL_LENGTH (16) letters or digits | the ledger's table key and the URL path segment |
| times (`created_at`, `expires_at`, `ttl`, ...) | finite, 0 ..= MAX_SECONDS (10**11 s, the year 5138) | a float holds it to the microsecond; more is a unit mistake (ms, ns) |

Each check takes the value and the field's name and returns the value or raises `error(field,
message)`, where `error` is the caller's own validation error (`book.exchange.CommandError`,
`ledger.exposure.InvalidInput`): a caller sees only its own error type. The checks are exact
about types: a bool, a float or a string is never a whole number, and a huge integer is refused
by its size before anything converts it. `fields` checks that a value is a JSON object with no
field outside a list. Reading a request into such a value (its size, the strict JSON decoder,
query parameters, the 400 answer) is peer/http/inputs.py's part. It must never do I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

MAX_PRICE = 10**9
MAX_QUANTITY = 10**6
MAX_NOTIONAL = MAX_PRICE * MAX_QUANTITY  # 10**15, below 2**53
MAX_COUNT = 2**53 - 1
MAX_POSITION = 2**53 - 1
MAX_ID_LENGTH = 128
MAX_SYMBOL_LENGTH = 16
MAX_SECONDS = 10**11

assert MAX_NOTIONAL < 2**53

# Builds the caller's own error from (field, message): a class like CommandError, or a function.
Error = Callable[[str, str], Exception]


class FieldError(ValueError):
    """Input refused because of one field, which `field` names. Each layer's own error type
    (CommandError, BodyError, InvalidInput) is one of these, so every 400 has the same shape."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfBounds(FieldError):
    """A value outside its field's bound (or of the wrong type)."""


def short(value: Any) -> str:
    """A value for an error message: never 4,000 digits or a megabyte of text."""
    if type(value) is int and value.bit_length() > 64:
        return f"a whole number of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_name(key: Any) -> str:
    """An unknown field's name as an error names it: at most 60 characters, never empty."""
    name = key[:60] if isinstance(key, str) else short(key)
    return name or '""'


def fields(value: Any, allowed: Iterable[str], *, where: str = "",
           error: Error = OutOfBounds) -> dict[str, Any]:
    """A JSON object with no field outside `allowed`. The error names the first unknown field
    (alphabetically), prefixed with `where` (e.g. "fills[3]."), or `where` itself / `body` when
    the value is not an object at all."""
    if not isinstance(value, dict):
        raise error(where.rstrip(".") or "body", "must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise error(f"{where}{field_name(unknown[0])}",
                    f"unknown field; allowed: {', '.join(allowed)}")
    return value


def whole(value: Any, field: str, *, minimum: int = 0, maximum: int = MAX_COUNT,
          error: Error = OutOfBounds) -> int:
    """A whole number in [minimum, maximum]: an int, never a bool, a float or a string."""
    if type(value) is not int or not minimum <= value <= maximum:
        raise error(field, f"must be a whole number from {minimum} to {maximum} "
                    f"(not a float, a string or a bool), got {short(value)}")
    return value


def price(value: Any, field: str = "price", *, error: Error = OutOfBounds) -> int:
    """A price in whole ticks, 1 ..= MAX_PRICE."""
    return whole(value, field, minimum=1, maximum=MAX_PRICE, error=error)


def quantity(value: Any, field: str = "quantity", *, minimum: int = 1,
             error: Error = OutOfBounds) -> int:
    """A quantity, minimum (1, or 0 for one side of a quote) ..= MAX_QUANTITY."""
    return whole(value, field, minimum=minimum, maximum=MAX_QUANTITY, error=error)


def count(value: Any, field: str, *, minimum: int = 0, error: Error = OutOfBounds) -> int:
    """An epoch, a seq, a sequence number: minimum ..= MAX_COUNT."""
    return whole(value, field, minimum=minimum, maximum=MAX_COUNT, error=error)


def ident(value: Any, field: str, *, max_length: int = MAX_ID_LENGTH, error: Error = OutOfBounds) -> str:
    """An id or a name: a non-empty string of at most MAX_ID_LENGTH characters."""
    if type(value) is not str or not value or len(value) > max_length:
        raise error(field, f"must be a non-empty string of at most {max_length} characters, "
                    f"got {short(value)}")
    return value


def symbol(value: Any, field: str = "symbol", *, error: Error = OutOfBounds) -> str:
    """A symbol: 1 ..= MAX_SYMBOL_LENGTH ASCII letters or digits."""
    if (type(value) is not str or not value or len(value) > MAX_SYMBOL_LENGTH or not value.isascii()
            or not value.isalnum()):
        raise error(field, f"must be a symbol of 1 to {MAX_SYMBOL_LENGTH} letters or digits, got {short(value)}")
    return value


def seconds(value: Any, field: str, *, maximum: float = MAX_SECONDS,
            error: Error = OutOfBounds) -> float:
    """A time or a duration in seconds: a finite int or float in [0, maximum], as a float."""
    # The range is checked before any conversion: float() of a 4,000-digit int overflows.
    if type(value) not in (int, float) or not (0 <= value <= maximum) or not math.isfinite(value):
        raise error(field, f"must be a finite number of seconds from 0 to {maximum:g}, got {short(value)}")
    return float(value)
