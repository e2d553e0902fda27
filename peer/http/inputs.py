"""How every API reads a request: its body and query parameters, and the answer to a refused one.

What it is for: the exchange (its Starlette routes and its direct `POST /orders`), the ledger and
any other role read their requests through this module only, so that one input is refused the
same way everywhere, with the same answer: status 400 (`STATUS`) and the JSON body
`{"error": "<field>: <what is wrong>", "field": "<field>"}` (`refusal`). `field` names the body
field (`quantity`, `fills[3].price`), the query parameter (`after`), or `body` when the request
as a whole is unreadable. The market maker's and the common endpoints (`/health`, `/status`,
`/members`, `/metrics`) take no body and no query parameter.

- `json_body(raw, max_bytes=...)`: the size bound, then `loads`; `json_object` adds the check
  that the body is a JSON object of the endpoint's fields only (`book.bounds.fields`), with
  those it requires (a missing one is `"<field>: required"`).
- `loads`, the strict JSON decoder, refuses:
  - bytes that are not JSON (or not UTF-8): field `body`; a string holding a lone surrogate
    (`"\\ud800"`), which no store, tape or answer could encode: the path of the string;
  - nesting deeper than MAX_DEPTH (32) containers: the path of the first container too deep, or
    `body` when the decoder itself gave up (Python's decoder raises RecursionError near 1,000);
  - `NaN`, `Infinity`, `-Infinity`, a number that overflows a float (`1e400`) and a number
    literal longer than MAX_NUMBER_LENGTH characters (no field takes one: the largest bound is a
    16-digit number; a 4,000-digit integer would cost a conversion, and at 4,300 digits Python
    refuses it with a ValueError): the path of the field that holds it, e.g. `fills[0].created_at`.
- `page` (`after`, `limit`, `wait` of the paged reads and long polls), `query_int`,
  `query_seconds`, `query_symbol` and `known_query`: query parameters, ASCII digits only.

The type and range of each field (a whole number is an int, never a bool or `1.0`; ids of at
most 128 characters...) are checked with book/bounds.py by the endpoint's parser or core, which
raise the same `FieldError`s. Errors are built by `error(field, message)`: the caller's own
validation error (`BodyError` if none is given). It must never do I/O: bytes and strings in,
values or errors out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from book import bounds
from book.bounds import Error, FieldError, field_name, short

MAX_DEPTH = 32
MAX_NUMBER_LENGTH = 40
# The status of every refused input, in every API (a well-formed request the rules refuse is a
# 409, an unknown symbol or id a 404: those are the endpoint's business).
STATUS = 400
# The paged reads and long polls (`GET /fills`, `/updates`, ...).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_WAIT = 60.0


class BodyError(FieldError):
    """A request input that no endpoint accepts; `field` names where it is."""


def refusal(exc: FieldError) -> tuple[int, dict[str, str]]:
    """The answer to a refused input: the same status and the same two keys in every API."""
    return STATUS, {"error": str(exc), "field": exc.field}


def json_body(raw: bytes, *, max_bytes: int, empty_ok: bool = False,
              error: Error = BodyError) -> Any:
    """A request body's JSON value, through `loads`: at most `max_bytes`; an empty body is `{}`
    where the endpoint allows it (`empty_ok`), else refused as required."""
    if len(raw) > max_bytes:
        raise error("body", f"larger than {max_bytes} bytes")
    if not raw:
        if empty_ok:
            return {}
        raise error("body", "required (a JSON object)")
    return loads(raw, error=error)


def json_object(raw: bytes, allowed: Iterable[str], *, required: Iterable[str] = (), max_bytes: int,
                empty_ok: bool = False, error: Error = BodyError) -> dict[str, Any]:
    """`json_body`, which must be a JSON object with no field outside `allowed` and each of
    `required` (the first missing one is named, in the order given)."""
    value = bounds.fields(json_body(raw, max_bytes=max_bytes, empty_ok=empty_ok, error=error), allowed,
                          error=error)
    for name in required:
        if name not in value:
            raise error(name, "required")
    return value


class _Refused:
    """A number the decoder met that no field accepts, kept to be reported with its path."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        if len(self.text) > MAX_NUMBER_LENGTH:
            return f"a number of {len(self.text)} characters"
        return self.text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent or 'body'}[{key}]"
    key = field_name(key)
    return f"{parent}.{key}" if parent else key


# An escaped surrogate (`\ud800`): a valid pair is two of them, a lone one is no character.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str, *, error: Error = BodyError) -> Any:
    """The JSON value in `raw`, checked as the module docstring says; raises error(field, message)."""
    refused: list[_Refused] = []

    def parse_int(literal: str) -> int | _Refused:
        if len(literal) <= MAX_NUMBER_LENGTH:
            return int(literal)
        refused.append(_Refused(literal))
        return refused[-1]

    def parse_float(literal: str) -> float | _Refused:
        if len(literal) <= MAX_NUMBER_LENGTH:
            value = float(literal)
            if math.isfinite(value):
                return value
        refused.append(_Refused(literal))
        return refused[-1]

    def parse_constant(literal: str) -> _Refused:
        refused.append(_Refused(literal))
        return refused[-1]

    try:
        # UTF-8 only (RFC 8259), strictly: json.loads would let encoded surrogates through.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except RecursionError:
        raise error("body", f"is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error("body", f"is not valid JSON ({short(str(exc))})") from None
    # The common case costs little: a refused number or an escaped surrogate was seen, or more
    # containers than the depth bound could be nested; only then is the value walked to name
    # the place (the walk is explicit, not recursive: a body 900 deep decodes, and is refused).
    if refused or _ESCAPED_SURROGATE.search(text) or (
            text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH)):
        _name_the_problem(value, error)
    return value


def _deeper_than(value: Any, bound: int) -> bool:
    """Is a container nested `bound` levels or more inside the top one (containers only)?"""
    stack = [(value, 0)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth >= bound:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _name_the_problem(value: Any, error: Error) -> None:
    """Raise error(path, ...) for the first problem in document order, if there is one."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                raise error(path or "body", "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is no character")
            continue
        if isinstance(item, _Refused):
            raise error(path or "body", f"{item!r} is not a number this API accepts "
                        f"(no NaN or Infinity, at most {MAX_NUMBER_LENGTH} characters)")
        if isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise error(path or "body", f"is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    if not key.isascii() and not _encodable(key):
                        raise error(path or "body", "has a field name with a lone UTF-16 surrogate")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            # Pushed in reverse, so the first offending field in document order is reported.
            stack.extend((v, _path(path, k), depth + 1) for k, v in reversed(list(pairs)))


_WHOLE = re.compile(r"[0-9]{1,19}")
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def query_int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int, *,
              error: Error = BodyError) -> int:
    """A whole-number query parameter: ASCII digits only (no sign, space or `_`), in [lo, hi]."""
    raw = params.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw):
        raise error(name, f"must be a whole number from {lo} to {hi}, got {short(raw)}")
    value = int(raw)
    if not lo <= value <= hi:
        raise error(name, f"must be from {lo} to {hi}, got {value}")
    return value


def query_seconds(params: Mapping[str, str], name: str, default: float, hi: float, *,
                  error: Error = BodyError) -> float:
    """A number of seconds as a query parameter (`5`, `0.25`), in [0, hi]."""
    raw = params.get(name)
    if raw is None:
        return default
    if not _SECONDS.fullmatch(raw):
        raise error(name, f"must be a number of seconds from 0 to {hi:g}, got {short(raw)}")
    value = float(raw)
    if value > hi:
        raise error(name, f"must be from 0 to {hi:g} seconds, got {raw}")
    return value


def query_symbol(params: Mapping[str, str], name: str = "symbol", *,
                 error: Error = BodyError) -> str | None:
    """A symbol as a query parameter (book.bounds.symbol), or None when it is not given."""
    raw = params.get(name)
    return None if raw is None else bounds.symbol(raw, name, error=error)


class Page(NamedTuple):
    """Where a paged read starts, how much it returns, and how long it may wait for more."""

    after: int
    limit: int
    wait: float


def page(params: Mapping[str, str], allowed: tuple[str, ...], *, after: str = "after",
         error: Error = BodyError) -> Page:
    """The paging parameters of a read: only `allowed` parameters; `after` (named `after` or,
    e.g., `after_version`) 0 ..= MAX_COUNT, `limit` 1 ..= MAX_LIMIT, `wait` 0 ..= MAX_WAIT s."""
    known_query(params, allowed, error=error)
    return Page(query_int(params, after, 0, 0, bounds.MAX_COUNT, error=error),
                query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, error=error),
                query_seconds(params, "wait", 0.0, MAX_WAIT, error=error))


def known_query(params: Mapping[str, str], allowed: tuple[str, ...], *, error: Error = BodyError) -> None:
    """Refuse a query parameter the endpoint does not take, by name."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise error(field_name(unknown[0]), f"unknown query parameter; allowed: {', '.join(allowed)}")
