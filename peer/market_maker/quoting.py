"""The quoting strategy: what to quote (deterministic terms) and when to (re)quote, as cores.

What it is for:

- `compute_quote(reference_price, position, config)`: bid and ask around the exchange's reference
  price, skewed by the committed position (long lowers both prices, short raises them), with
  quantities that never take the position past `max_position`. Same inputs, same quote.
- `cap_by_reservation(terms, reservation)`: the ledger's exposure answer applied to those terms;
  a rejected reservation means no quote.
- `QuotePlanner`: one per symbol, deciding *when* to send a quote attempt (a new quote, a refresh
  of the active one, or a cancel) and with which idempotency keys (`quote_id`, `seq`), so that a
  retry after a timeout has no second effect.

It must never do I/O, sleep, read a clock or draw randomness, and never use binary floats for
prices or quantities: ticks and quantities are integers, the skew an exact `Fraction`. It must
never issue an attempt computed from an older position version than one it already quoted from.
The planner does not know about leases: the shell checks `MarketMakerAuthority.may_quote`
immediately before sending what the planner asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from book.exchange import QUOTE_TTL

# --- what to quote ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteConfig:
    half_spread: int = 2  # ticks from the (skewed) centre to each side
    size: int = 5  # quantity per side when the position leaves room
    skew_per_unit: Fraction = Fraction(1, 2)  # ticks the centre moves per unit of position
    max_position: int = 20  # |net_quantity| the quotes never push beyond

    def __post_init__(self) -> None:
        skew = self.skew_per_unit
        if isinstance(skew, bool) or not isinstance(skew, int | Fraction | str):
            # A float cannot say 0.1 exactly; prices must come out the same on every machine.
            raise ValueError("skew_per_unit must be an int, a Fraction or a decimal string")
        object.__setattr__(self, "skew_per_unit", Fraction(skew))
        if self.skew_per_unit < 0:
            raise ValueError("skew_per_unit must not be negative")
        for name in ("half_spread", "size", "max_position"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1")


@dataclass(frozen=True, slots=True)
class Position:
    """A committed position update from the ledger."""

    net_quantity: int
    position_version: int


@dataclass(frozen=True, slots=True)
class QuoteTerms:
    bid_price: int
    bid_quantity: int
    ask_price: int
    ask_quantity: int

    @property
    def is_empty(self) -> bool:
        return self.bid_quantity == 0 and self.ask_quantity == 0

    def to_json(self) -> dict[str, int]:
        return {"bid_price": self.bid_price, "bid_quantity": self.bid_quantity,
                "ask_price": self.ask_price, "ask_quantity": self.ask_quantity}


def inventory_skew(net_quantity: int, skew_per_unit: Fraction) -> int:
    """Ticks to move the centre *down* by: positive when long, negative when short.

    Truncated toward zero so that +n and -n move it by the same amount in opposite directions.
    """
    exact = net_quantity * skew_per_unit
    return math.floor(exact) if exact >= 0 else -math.floor(-exact)


def compute_quote(reference_price: int, position: Position, config: QuoteConfig) -> QuoteTerms:
    """The quote for this reference price and committed position: a pure function."""
    if type(reference_price) is not int or reference_price < 1:
        raise ValueError("reference_price must be a whole number of ticks >= 1")
    net = position.net_quantity
    centre = reference_price - inventory_skew(net, config.skew_per_unit)
    bid_price = centre - config.half_spread
    ask_price = centre + config.half_spread
    # Room left on each side: a bid filled in full must not take the position past +max.
    bid_quantity = max(0, min(config.size, config.max_position - net))
    ask_quantity = max(0, min(config.size, config.max_position + net))
    if bid_price < 1:
        # The exchange needs positive prices and bid < ask; a bid this low would be no bid.
        bid_price, bid_quantity = 1, 0
        ask_price = max(ask_price, 2)
    return QuoteTerms(bid_price, bid_quantity, ask_price, ask_quantity)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The ledger's answer to `POST /reservations` for one quote_id."""

    outcome: Literal["granted", "reduced", "rejected"]
    reservation_id: str | None
    reserved_bid_quantity: int = 0
    reserved_ask_quantity: int = 0


def cap_by_reservation(terms: QuoteTerms, reservation: Reservation) -> QuoteTerms | None:
    """The terms the reservation covers, or None when there is nothing to quote.

    A quote never offers more than was reserved on either side (invariant 4).
    """
    if reservation.outcome == "rejected" or reservation.reservation_id is None:
        return None
    capped = QuoteTerms(
        terms.bid_price,
        max(0, min(terms.bid_quantity, reservation.reserved_bid_quantity)),
        terms.ask_price,
        max(0, min(terms.ask_quantity, reservation.reserved_ask_quantity)),
    )
    return None if capped.is_empty else capped


# --- when to quote ------------------------------------------------------------------------------


def make_quote_id(holder: str, symbol: str, epoch: int, counter: int) -> str:
    """Unique without any stored state: epochs only grow and each claim is a new epoch, so a
    restarted peer (which always claims anew) can restart its counter at 1."""
    return f"{holder}.{symbol}.e{epoch}.q{counter}"


AttemptKind = Literal["new", "refresh", "cancel"]


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    refresh_interval: float = 5.0  # an active quote is refreshed at least this often
    quote_ttl: float = QUOTE_TTL  # the exchange's --quote-ttl
    ttl_margin: float = 2.0  # a quote is never left this close to its TTL
    price_threshold: int = 2  # ticks the reference must move to requote at once
    retry_interval: float = 0.25  # after a refused attempt or a timeout
    fill_position_wait: float = 1.0  # a filled-out quote waits this long for its position update

    def __post_init__(self) -> None:
        if not 0 < self.refresh_interval <= self.quote_ttl - self.ttl_margin:
            raise ValueError("refresh_interval must come before quote_ttl - ttl_margin")
        if self.ttl_margin < 0 or self.retry_interval <= 0 or self.fill_position_wait < 0:
            raise ValueError("margins and waits must not be negative")
        if type(self.price_threshold) is not int or self.price_threshold < 1:
            raise ValueError("price_threshold must be a whole number of ticks >= 1")


@dataclass(frozen=True, slots=True)
class QuoteAttempt:
    """One request for the exchange. A retry of it is the same object: same quote_id, same seq,
    same terms, so the exchange (and the ledger's reservation by quote_id) see one request."""

    symbol: str
    holder: str
    epoch: int
    seq: int
    quote_id: str
    kind: AttemptKind
    terms: QuoteTerms | None  # None for a cancel; for a new quote, before the reservation cap
    position_version: int  # the committed position the terms were computed from
    net_quantity: int
    reference_price: int
    reason: str  # what triggered it: "no-active-quote", "position", "fill", "price-move", ...


@dataclass(slots=True)
class ActiveQuote:
    quote_id: str
    terms: QuoteTerms  # as live at the exchange (after the reservation cap)
    requested: QuoteTerms  # as computed, to tell a refresh from a replace
    position_version: int
    reference_price: int
    sent_at: float  # first send of its activation or latest refresh: the TTL ran from later
    filled: bool = False  # a fill took some of it: its legs no longer offer the terms


@dataclass(slots=True)
class _Pending:
    attempt: QuoteAttempt
    first_sent_at: float
    resend_at: float | None = None  # set once it timed out: in flight until then
    filled: bool = False  # a fill of its quote arrived before the exchange's answer did


@dataclass(slots=True)
class _FillNotice:
    at: float
    version_at_fill: int  # the newest position version known when the fill was seen


@dataclass(slots=True)
class QuotePlanner:
    """When to (re)quote one symbol, and with which keys. Drive it with the `on_*` inputs and
    `poll(now)`; send what `poll` returns, then report with `on_result` or `on_timeout`."""

    holder: str
    symbol: str
    quote_config: QuoteConfig = field(default_factory=QuoteConfig)
    config: PlannerConfig = field(default_factory=PlannerConfig)
    epoch: int | None = field(default=None, init=False)  # held epoch; None: may not quote
    position: Position | None = field(default=None, init=False)
    reference_price: int | None = field(default=None, init=False)
    active: ActiveQuote | None = field(default=None, init=False)
    _counter: int = field(default=0, init=False)  # quote_ids issued in this epoch
    _seq: int = field(default=0, init=False)  # quote ops issued in this epoch (the seq fence)
    _pending: _Pending | None = field(default=None, init=False)
    _retry_at: float = field(default=-math.inf, init=False)
    _fill: _FillNotice | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, value in (("holder", self.holder), ("symbol", self.symbol)):
            if not value or "/" in value:
                # The exchange names a quote's legs "{quote_id}/buy" and "{quote_id}/sell".
                raise ValueError(f"{name} must be non-empty and contain no '/'")

    # --- inputs -------------------------------------------------------------------------------

    def start(self, epoch: int, now: float) -> None:
        """Authority held at `epoch`: quote from scratch (a new epoch withdrew any older quote)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self._counter = self._seq = 0
        self.active = None
        self._pending = None
        self._retry_at = -math.inf

    def stop(self, now: float) -> None:
        """Authority gone (StopQuoting): nothing more is sent, the exchange withdraws the quote."""
        self.epoch = None
        self.active = None
        self._pending = None
        self._fill = None

    def on_position(self, net_quantity: int, position_version: int, now: float) -> bool:
        """A committed position update; False (and ignored) if not newer than one already known."""
        if self.position is not None and position_version <= self.position.position_version:
            return False
        self.position = Position(net_quantity, position_version)
        return True

    def resync_position(self, net_quantity: int, position_version: int, now: float) -> None:
        """The ledger's positions replace ours whole, even at a lower version (it was restored
        from a backup): the one exception to "never older". The active quote, priced from a
        position the ledger no longer has, is replaced at once."""
        self.position = Position(net_quantity, position_version)
        if self.active is not None:
            self.active.filled = True  # never refreshed: the next attempt is a new quote
            self.active.position_version = -1  # stale against any version: due at once
        self._fill = None

    def on_reference_price(self, price: int, now: float) -> None:
        self.reference_price = price

    def on_fill(self, quote_id: str, now: float) -> None:
        """A fill of one of our quotes. The replacement waits for the position that reflects it."""
        ours = (self.active is not None and self.active.quote_id == quote_id) or (
            self._pending is not None and self._pending.attempt.quote_id == quote_id)
        if not ours or self.position is None:
            return  # a quote already replaced: its successor came from a newer position anyway
        if self.active is not None and self.active.quote_id == quote_id:
            self.active.filled = True  # never refreshed again: a refresh would keep depleted legs
        if self._pending is not None and self._pending.attempt.quote_id == quote_id:
            self._pending.filled = True  # it filled on arrival; its answer is still on the way
        if self._fill is None:
            self._fill = _FillNotice(now, self.position.position_version)

    def next_quote_id(self) -> str | None:
        """The quote_id the next new quote will carry (None while not quoting): lets the shell
        reserve its exposure early, while the position that will price it is on its way."""
        if self.epoch is None:
            return None
        return make_quote_id(self.holder, self.symbol, self.epoch, self._counter + 1)

    def retire_quote_id(self, quote_id: str) -> None:
        """`quote_id` must never be sent: its reservation was asked for early and then released
        (or the ledger says it has ended). The next new quote carries the id after it, since
        the ledger answers a repeated quote_id with that quote_id's first reservation."""
        if quote_id == self.next_quote_id():
            self._counter += 1

    def on_quote_ended(self, quote_id: str, now: float) -> None:
        """The exchange ended the quote (expired, withdrawn, filled in full)."""
        if self.active is not None and self.active.quote_id == quote_id:
            self.active = None

    def on_result(self, attempt: QuoteAttempt, *, accepted: bool, reason: str, now: float,
                  live_terms: QuoteTerms | None = None) -> bool:
        """The exchange's (or the ledger's) verdict on `attempt`; False if it is not the attempt
        in flight (a late answer to something superseded). `live_terms` are the terms actually
        sent after the reservation cap; they default to the attempt's."""
        p = self._pending
        if p is None or p.attempt != attempt:
            return False
        self._pending = None
        if not accepted:
            if attempt.kind == "refresh":
                # It is not live as we thought (expired, filled out, its reservation used up):
                # a new quote at once, not after the retry interval with nothing quoted.
                self.active = None
                return True
            # "reservation-rejected", a fence reason, "quote-id-reused"...: try again later; the
            # authority core stops us if the fence said we no longer hold the symbol.
            self._retry_at = now + self.config.retry_interval
            return True
        if attempt.kind == "cancel":
            self.active = None
        elif attempt.kind == "refresh" and self.active is not None:
            self.active.sent_at = p.first_sent_at
            self.active.position_version = attempt.position_version
            self.active.reference_price = attempt.reference_price
        else:
            assert attempt.terms is not None
            self.active = ActiveQuote(attempt.quote_id, live_terms or attempt.terms, attempt.terms,
                                      attempt.position_version, attempt.reference_price,
                                      p.first_sent_at, filled=p.filled)
        return True

    def on_timeout(self, attempt: QuoteAttempt, now: float) -> None:
        """No answer: resend the very same attempt later, unless newer inputs supersede it."""
        p = self._pending
        if p is not None and p.attempt == attempt:
            p.resend_at = now + self.config.retry_interval

    # --- decisions ----------------------------------------------------------------------------

    def poll(self, now: float) -> QuoteAttempt | None:
        """The attempt to send now, or None."""
        if self.epoch is None or self.position is None or self.reference_price is None:
            return None
        p = self._pending
        if p is not None:
            if p.resend_at is None or now < p.resend_at:
                return None  # one request in flight per symbol keeps seq order simple
            if not self._superseded(p.attempt):
                p.resend_at = None
                return p.attempt
            self._pending = None  # newer inputs: a new attempt replaces whatever that one did
        due = self._due()
        if due is None:
            return None
        at, reason = due
        if now < max(at, self._retry_at):
            return None
        attempt = self._attempt(reason)
        if attempt is None:
            self._retry_at = now + self.config.retry_interval  # nothing to quote; look again later
            return None
        if reason.startswith("fill"):
            self._fill = None
        self._pending = _Pending(attempt, now)
        return attempt

    def next_deadline(self) -> float | None:
        """The earliest `now` at which `poll` may return an attempt, or None until an input."""
        if self.epoch is None or self.position is None or self.reference_price is None:
            return None
        p = self._pending
        if p is not None:
            return p.resend_at
        due = self._due()
        return None if due is None else max(due[0], self._retry_at)

    def _due(self) -> tuple[float, str] | None:
        assert self.position is not None and self.reference_price is not None
        a = self.active
        version = self.position.position_version
        if self._fill is not None:
            if version > self._fill.version_at_fill:
                return -math.inf, "fill"  # the committed position that reflects the fill is here
            if a is None:
                # Nothing live: wait for the position update, but not forever.
                return self._fill.at + self.config.fill_position_wait, "fill:position-late"
        if a is None:
            return -math.inf, "no-active-quote"
        if version > a.position_version:
            return -math.inf, "position"
        if abs(self.reference_price - a.reference_price) >= self.config.price_threshold:
            return -math.inf, "price-move"
        # PlannerConfig guarantees refresh_interval <= quote_ttl - ttl_margin, and the TTL ran
        # from no earlier than sent_at: the refresh always comes before the margin.
        return a.sent_at + self.config.refresh_interval, "refresh"

    def _superseded(self, attempt: QuoteAttempt) -> bool:
        assert self.position is not None and self.reference_price is not None
        return (self.position.position_version > attempt.position_version
                or abs(self.reference_price - attempt.reference_price) >= self.config.price_threshold)

    def _attempt(self, reason: str) -> QuoteAttempt | None:
        assert self.epoch is not None and self.position is not None and self.reference_price is not None
        terms = compute_quote(self.reference_price, self.position, self.quote_config)
        a = self.active
        if terms.is_empty:
            if a is None:
                return None
            kind: AttemptKind = "cancel"
            quote_id, sent_terms = a.quote_id, None
        elif (a is not None and terms == a.requested and not a.filled
              and a.position_version == self.position.position_version):
            # Only an untouched quote is refreshed: a newer position means one of its legs was
            # filled (even if the fill notice has not come yet), so its legs are not the terms.
            # Same terms: a refresh keeps the legs' time priority and the quote's reservation.
            kind, quote_id, sent_terms = "refresh", a.quote_id, a.terms
        else:
            self._counter += 1
            kind, quote_id, sent_terms = "new", make_quote_id(self.holder, self.symbol, self.epoch,
                                                             self._counter), terms
        self._seq += 1
        return QuoteAttempt(self.symbol, self.holder, self.epoch, self._seq, quote_id, kind, sent_terms,
                            self.position.position_version, self.position.net_quantity,
                            self.reference_price, reason)
