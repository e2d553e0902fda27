"""The global exposure limit: reservations for proposed quotes, granted, reduced or rejected.

What it is for: the one definition of the exposure rules (invariant 4, docs/invariants.md). A
market maker asks for a reservation before a quote may become active; the sum of the remaining bid
quantities of active reservations never exceeds the bid limit (100 by default), nor the ask sum the ask
limit. A request is granted in full, reduced (each side capped at what is free, at least one
side above 0) or rejected (nothing free on any side it asked for; nothing reserved). Fills
reduce a reservation's remaining quantity (once per `fill_id`); a release, a replacement or a
complete fill frees it; a reservation whose `expires_at` has passed counts for nothing at once
and a sweep records it as expired.

It must never do I/O or read a clock: `now` is an argument, and everything the rules need to
know about earlier reservations (the one with the same `quote_id`, the one being replaced, the
fill already applied) is handed in by the caller, who also persists the changed reservations
the answers list. Only `ExposureBook.active` is held here: the reservations that may still count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from book import bounds

LIMIT = 100
# A request may not hold capacity longer than this without a renewal: a market maker that dies
# without releasing gives its capacity back within this bound at most.
MAX_TTL = 300.0

GRANTED, REDUCED, REJECTED = "granted", "reduced", "rejected"
ACTIVE, RELEASED, EXPIRED = "active", "released", "expired"
# A rejected request is recorded too (state "rejected", nothing reserved), so that its retry
# gets the same answer instead of a second chance at capacity freed meanwhile.
REJECTED_STATE = "rejected"
STATES = (ACTIVE, RELEASED, EXPIRED, REJECTED_STATE)

# What each event does to a reservation's state. Events on a state not listed here change
# nothing (a second release, the release of an expired one, a sweep of a released one): that is
# what makes every operation safe to retry.
TRANSITIONS: dict[str, dict[str, str]] = {
    ACTIVE: {"release": RELEASED, "replace": RELEASED, "filled": RELEASED, "expire": EXPIRED},
}

# The request fields a retry must repeat exactly (the idempotency fingerprint of a quote_id).
REQUEST_FIELDS = ("quote_id", "holder", "symbol", "bid_quantity", "ask_quantity", "expires_at", "ttl", "replaces")

# A fill's side and a reservation's side: the market maker buys on its bid, sells on its ask.
SIDES = {"buy": "bid", "bid": "bid", "sell": "ask", "ask": "ask"}


class Refusal(Exception):
    """A well-formed operation the rules refuse; nothing changed.

    `reason` is a short code the HTTP layer maps to a status: `quote-id-conflict`,
    `fill-conflict`, `replaces-mismatch`, `not-active` (409), `unknown-reservation` (404),
    `invalid` (400, with `field`). `details` go into the JSON answer as they are.
    """

    def __init__(self, reason: str, message: str, *, field: str | None = None, **details: Any):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field
        self.details = details

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.field is not None:
            out["field"] = self.field
        out.update(self.details)
        return out


class InvalidInput(bounds.FieldError):
    """Malformed input (a wrong type, a missing field): refused before anything runs."""


# --- input: exact types only (a float or a bool is never a quantity) ------------------------------
# The bounds are book.bounds', shared with the exchange: the ledger accepts every fill it makes.

MAX_QUANTITY = bounds.MAX_QUANTITY


def whole(value: Any, field: str, *, minimum: int = 0, maximum: int = bounds.MAX_COUNT) -> int:
    return bounds.whole(value, field, minimum=minimum, maximum=maximum, error=InvalidInput)


def text(value: Any, field: str) -> str:
    return bounds.ident(value, field, error=InvalidInput)


def symbol_name(value: Any, field: str = "symbol") -> str:
    return bounds.symbol(value, field, error=InvalidInput)


def seconds(value: Any, field: str) -> float:
    return bounds.seconds(value, field, error=InvalidInput)


def only(body: dict[str, Any], allowed: Iterable[str], where: str = "") -> None:
    bounds.fields(body, allowed, where=where, error=InvalidInput)


def parse_request(body: Any) -> ReservationRequest:
    """A reservation request from its JSON body; raises InvalidInput naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    only(body, REQUEST_FIELDS)
    for name in ("quote_id", "holder", "symbol", "bid_quantity", "ask_quantity"):
        if name not in body:
            raise InvalidInput(name, "required")
    if (body.get("expires_at") is None) == (body.get("ttl") is None):
        raise InvalidInput("expires_at", "give exactly one of expires_at (wall-clock seconds) and ttl (seconds)")
    bid = whole(body["bid_quantity"], "bid_quantity", maximum=MAX_QUANTITY)
    ask = whole(body["ask_quantity"], "ask_quantity", maximum=MAX_QUANTITY)
    if bid == 0 and ask == 0:
        raise InvalidInput("bid_quantity", "a reservation needs a bid or an ask quantity above 0")
    return ReservationRequest(
        quote_id=text(body["quote_id"], "quote_id"),
        holder=text(body["holder"], "holder"),
        symbol=symbol_name(body["symbol"]),
        bid_quantity=bid,
        ask_quantity=ask,
        expires_at=seconds(body["expires_at"], "expires_at") if body.get("expires_at") is not None else None,
        ttl=seconds(body["ttl"], "ttl") if body.get("ttl") is not None else None,
        replaces=text(body["replaces"], "replaces") if body.get("replaces") is not None else None,
    )


def parse_side(value: Any, field: str = "side") -> str:
    if type(value) is not str or value not in SIDES:
        raise InvalidInput(field, f"must be one of {', '.join(SIDES)}, got {bounds.short(value)}")
    return SIDES[value]


def differences(recorded: dict[str, Any], received: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Fields whose values differ, as {field: {"recorded": a, "received": b}}."""
    return {f: {"recorded": recorded.get(f), "received": received.get(f)}
            for f in fields if recorded.get(f) != received.get(f)}


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """What a market maker asks for one proposed quote. Exactly one of expires_at and ttl."""

    quote_id: str
    holder: str
    symbol: str
    bid_quantity: int
    ask_quantity: int
    expires_at: float | None = None
    ttl: float | None = None
    replaces: str | None = None

    def expiry(self, now: float) -> float:
        return self.expires_at if self.expires_at is not None else now + (self.ttl or 0.0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Capacity held for one quote. Remaining = reserved - filled, never below 0."""

    reservation_id: str
    quote_id: str
    holder: str
    symbol: str
    bid_quantity: int  # as requested
    ask_quantity: int
    requested_expires_at: float | None  # as requested: exactly one of this and ttl is set
    ttl: float | None
    replaces: str | None
    decision: str
    reserved_bid_quantity: int
    reserved_ask_quantity: int
    expires_at: float
    state: str
    created_at: float
    filled_bid_quantity: int = 0
    filled_ask_quantity: int = 0
    ended_at: float | None = None
    ended_reason: str | None = None

    @property
    def remaining_bid_quantity(self) -> int:
        return max(0, self.reserved_bid_quantity - self.filled_bid_quantity)

    @property
    def remaining_ask_quantity(self) -> int:
        return max(0, self.reserved_ask_quantity - self.filled_ask_quantity)

    def remaining(self, side: str) -> int:
        return self.remaining_bid_quantity if side == "bid" else self.remaining_ask_quantity

    def counts(self, now: float) -> bool:
        """Does it hold capacity at `now`? Lapsed ones count for nothing, swept or not."""
        return self.state == ACTIVE and now < self.expires_at

    def request(self) -> ReservationRequest:
        return ReservationRequest(self.quote_id, self.holder, self.symbol, self.bid_quantity, self.ask_quantity,
                                  self.requested_expires_at, self.ttl, self.replaces)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["remaining_bid_quantity"] = self.remaining_bid_quantity
        out["remaining_ask_quantity"] = self.remaining_ask_quantity
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Reservation:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class AppliedFill:
    """A fill already counted against a reservation: the idempotency record of apply-fill."""

    fill_id: str
    reservation_id: str
    side: str  # "bid" or "ask"
    quantity: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Usage:
    limit_bid: int
    limit_ask: int
    used_bid: int
    used_ask: int
    active: tuple[Reservation, ...]

    @property
    def available_bid(self) -> int:
        return max(0, self.limit_bid - self.used_bid)

    @property
    def available_ask(self) -> int:
        return max(0, self.limit_ask - self.used_ask)

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": {"bid": self.limit_bid, "ask": self.limit_ask},
            "used": {"bid": self.used_bid, "ask": self.used_ask},
            "available": {"bid": self.available_bid, "ask": self.available_ask},
            "active": [r.to_json() for r in self.active],
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one operation: the reservation as it now stands, and what to persist.

    `changed` lists every reservation whose record changed (the caller writes them in the same
    transaction); `applied` is a new AppliedFill record to write, if any.
    """

    reservation: Reservation
    duplicate: bool = False
    changed: tuple[Reservation, ...] = ()
    applied: AppliedFill | None = None
    released: Reservation | None = None  # the reservation a request replaced, as it now stands
    excess: int = 0  # fill quantity beyond what was still reserved on that side

    @property
    def decision(self) -> str:
        return self.reservation.decision

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "reservation": self.reservation.to_json(),
                               "duplicate": self.duplicate}
        if self.released is not None:
            out["released"] = self.released.to_json()
        if self.applied is not None or self.excess:
            out["excess"] = self.excess
        return out


def _check_times(request: ReservationRequest, now: float, max_ttl: float) -> float:
    expires_at = request.expiry(now)
    if not math.isfinite(expires_at) or expires_at <= now:
        field = "ttl" if request.ttl is not None else "expires_at"
        raise Refusal("invalid", f"{field}: the reservation would expire at once "
                      f"(expires_at {expires_at!r} is not after now {now!r})", field=field)
    if expires_at - now > max_ttl:
        field = "ttl" if request.ttl is not None else "expires_at"
        raise Refusal("invalid", f"{field}: at most {max_ttl:g} s ahead (renew to keep it longer)",
                      field=field)
    return expires_at


class ExposureBook:
    """The active reservations and the limits; every rule of the exposure service.

    Methods change `active` and return an `Answer`; they raise Refusal (changing
    nothing) when the rules refuse. `copy()` is cheap (the values are frozen), so a caller can
    work on a copy and keep or drop it with its transaction.
    """

    def __init__(self, limit: int | tuple[int, int] = LIMIT, active: Iterable[Reservation] = (),
                 *, max_ttl: float = MAX_TTL):
        self.limit_bid, self.limit_ask = (limit, limit) if isinstance(limit, int) else limit
        if type(self.limit_bid) is not int or type(self.limit_ask) is not int or min(self.limit_bid, self.limit_ask) < 0:
            raise ValueError(f"exposure limits must be whole numbers >= 0, got {limit!r}")
        self.max_ttl = max_ttl
        self.active: dict[str, Reservation] = {r.reservation_id: r for r in active if r.state == ACTIVE}

    def copy(self) -> ExposureBook:
        book = ExposureBook((self.limit_bid, self.limit_ask), max_ttl=self.max_ttl)
        book.active = dict(self.active)
        return book

    # --- reading ------------------------------------------------------------------------------

    def usage(self, now: float) -> Usage:
        counting = tuple(r for r in self.active.values() if r.counts(now))
        return Usage(self.limit_bid, self.limit_ask,
                     sum(r.remaining_bid_quantity for r in counting),
                     sum(r.remaining_ask_quantity for r in counting), counting)

    def next_expiry(self) -> float | None:
        return min((r.expires_at for r in self.active.values()), default=None)

    # --- the rules ----------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest, now: float, *, reservation_id: str,
                existing: Reservation | None = None, replaced: Reservation | None = None) -> Answer:
        """Decide a request. `existing`: the reservation already recorded for request.quote_id;
        `replaced`: the reservation named by request.replaces (None if there is none)."""
        if existing is not None:
            diff = differences(existing.request().to_json(), request.to_json(), REQUEST_FIELDS)
            if diff:
                raise Refusal("quote-id-conflict", f"quote_id {request.quote_id!r} was already used for "
                              f"another request (differs in {', '.join(diff)})", differences=diff)
            current = self.view(existing, now)
            if current.state in (RELEASED, EXPIRED):
                # A retry that comes after the end of its reservation must not read as a grant:
                # whoever asks would take it for capacity held and put a quote on it. A quote_id
                # whose reservation has ended is spent; a new quote needs a new quote_id.
                raise Refusal("not-active", f"quote_id {request.quote_id!r} already had reservation "
                              f"{current.reservation_id!r}, which is {current.state} "
                              f"({current.ended_reason}); a new quote needs a new quote_id",
                              reservation=current.to_json())
            # A retry: the original decision, the reservation as it stands now, nothing reserved.
            return Answer(current, duplicate=True)
        expires_at = _check_times(request, now, self.max_ttl)
        if request.replaces is not None:
            if replaced is None:
                raise Refusal("unknown-reservation", f"replaces: no reservation {request.replaces!r}",
                              field="replaces")
            diff = differences({"holder": replaced.holder, "symbol": replaced.symbol},
                               {"holder": request.holder, "symbol": request.symbol}, ("holder", "symbol"))
            if diff:
                raise Refusal("replaces-mismatch", f"replaces: reservation {request.replaces!r} belongs "
                              "to another holder or symbol", field="replaces", differences=diff)
        changed: list[Reservation] = []
        # The replaced reservation's capacity is reusable in this very step.
        without = self.active
        if replaced is not None and replaced.reservation_id in self.active:
            without = {k: v for k, v in self.active.items() if k != replaced.reservation_id}
        used_bid = sum(r.remaining_bid_quantity for r in without.values() if r.counts(now))
        used_ask = sum(r.remaining_ask_quantity for r in without.values() if r.counts(now))
        bid = min(request.bid_quantity, max(0, self.limit_bid - used_bid))
        ask = min(request.ask_quantity, max(0, self.limit_ask - used_ask))
        if (bid, ask) == (request.bid_quantity, request.ask_quantity):
            decision = GRANTED
        elif bid > 0 or ask > 0:
            decision = REDUCED
        else:
            decision = REJECTED
        reservation = Reservation(
            reservation_id, request.quote_id, request.holder, request.symbol, request.bid_quantity,
            request.ask_quantity, request.expires_at, request.ttl, request.replaces, decision,
            bid if decision != REJECTED else 0, ask if decision != REJECTED else 0, expires_at,
            ACTIVE if decision != REJECTED else REJECTED_STATE, now,
        )
        released = None
        # A rejected replacement leaves the old reservation alone: its quote stays live at the
        # exchange until it is replaced for real or expires, so its capacity is still in use.
        if replaced is not None and decision != REJECTED:
            released, ended = self._end(replaced, "replace", f"replaced-by-{reservation_id}", now)
            if ended:
                changed.append(released)
        elif replaced is not None:
            released = self.view(replaced, now)
        changed.append(reservation)
        if reservation.state == ACTIVE:
            self.active[reservation_id] = reservation
        return Answer(reservation, changed=tuple(changed), released=released)

    def apply_fill(self, reservation: Reservation, fill_id: str, side: str, quantity: int, now: float, *,
                   recorded: AppliedFill | None = None) -> Answer:
        """Count a fill against a reservation, once per fill_id (`recorded`: the earlier record)."""
        side = SIDES[side]
        applied = AppliedFill(fill_id, reservation.reservation_id, side, quantity)
        if recorded is not None:
            diff = differences(recorded.to_json(), applied.to_json(), ("reservation_id", "side", "quantity"))
            if diff:
                raise Refusal("fill-conflict", f"fill {fill_id!r} was already applied with other content "
                              f"(differs in {', '.join(diff)})", differences=diff)
            return Answer(self.view(reservation, now), duplicate=True)
        current = self.active.get(reservation.reservation_id, reservation)
        excess = max(0, quantity - current.remaining(side))
        filled = {f"filled_{side}_quantity": getattr(current, f"filled_{side}_quantity") + quantity}
        updated = dataclasses.replace(current, **filled)
        if updated.state == ACTIVE:
            self.active[updated.reservation_id] = updated
        # Fully filled: nothing left to hold, so the capacity goes back without anyone's help.
        if updated.state == ACTIVE and updated.remaining_bid_quantity == 0 and updated.remaining_ask_quantity == 0:
            updated, _ = self._end(updated, "filled", "filled", now)
        elif updated.state == ACTIVE and now >= updated.expires_at:
            updated, _ = self._end(updated, "expire", "ttl", now)
        return Answer(updated, changed=(updated,), applied=applied, excess=excess)

    def release(self, reservation: Reservation, now: float, reason: str = "released") -> Answer:
        current = self.active.get(reservation.reservation_id, reservation)
        updated, changed = self._end(current, "release", reason, now)
        return Answer(updated, duplicate=not changed, changed=(updated,) if changed else ())

    def renew(self, reservation: Reservation, now: float, *, expires_at: float | None = None,
              ttl: float | None = None) -> Answer:
        """Move an active reservation's expiry later (its quote was refreshed at the exchange)."""
        current = self.view(reservation, now)
        if current.state != ACTIVE:
            raise Refusal("not-active", f"reservation {current.reservation_id!r} is {current.state}: "
                          "ask for a new one")
        target = _check_times(ReservationRequest("", "", "", 0, 0, expires_at, ttl), now, self.max_ttl)
        if target <= current.expires_at:
            return Answer(current, duplicate=True)  # a retry, or a renewal that shortens nothing
        updated = dataclasses.replace(current, expires_at=target)
        self.active[updated.reservation_id] = updated
        return Answer(updated, changed=(updated,))

    def sweep(self, now: float) -> list[Reservation]:
        """Record as expired every active reservation whose expires_at has passed."""
        out = []
        for r in list(self.active.values()):
            if now >= r.expires_at:
                out.append(self._end(r, "expire", "ttl", now)[0])
        return out

    # --- transitions --------------------------------------------------------------------------

    def view(self, reservation: Reservation, now: float) -> Reservation:
        """The reservation as it stands at `now` (lapsed = expired), without recording anything:
        the sweep records the expiry."""
        current = self.active.get(reservation.reservation_id, reservation)
        if current.state == ACTIVE and now >= current.expires_at:
            return dataclasses.replace(current, state=EXPIRED, ended_at=current.expires_at, ended_reason="ttl")
        return current

    def _end(self, reservation: Reservation, event: str, reason: str, now: float) -> tuple[Reservation, bool]:
        """Apply one transition of TRANSITIONS; (reservation as it now stands, whether it changed)."""
        reservation = self.active.get(reservation.reservation_id, reservation)
        # An active reservation past its expiry is expired, whatever happens to it next.
        if event != "expire" and reservation.state == ACTIVE and now >= reservation.expires_at:
            event, reason = "expire", "ttl"
        new_state = TRANSITIONS.get(reservation.state, {}).get(event)
        if new_state is None:
            return reservation, False
        # An expiry happened at expires_at, whenever it is recorded: that is when it stopped counting.
        ended_at = min(now, reservation.expires_at) if new_state == EXPIRED else now
        ended = dataclasses.replace(reservation, state=new_state, ended_at=ended_at, ended_reason=reason)
        self.active.pop(reservation.reservation_id, None)
        return ended, True
