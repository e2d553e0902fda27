"""A deterministic market: reference prices and external order flow, as functions of a seed.

What it is for: the exchange needs a price per symbol for market makers to quote around, and a
stream of external orders that trade against those quotes so that fills happen. Both must be
reproducible (invariant 7): the same seed gives the same prices and the same order intents, in
any process, on any run, however the caller slices time into batches.

- `ReferencePrices` is a seeded random walk in integer ticks: one step every `step` seconds,
  each step moves by at most `volatility_ticks`, never below `floor`.
- `OrderFlow` is a Poisson stream of `OrderIntent`s whose rate follows a schedule of regimes
  (calm, burst, cancel-storm). Most orders cross a quote near the reference price; some rest
  away from it; in a cancel storm most intents cancel the flow's own resting orders.

Time `t` is in seconds since the market's start (0.0): callers subtract their own start instant.

It must never do I/O, read a clock, or use global or salted randomness (`random`, `hash()`):
every draw is a blake2b digest of (seed, what is drawn, its index), so nothing depends on
PYTHONHASHSEED, on call order across symbols, or on how often the caller asks.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from book.orders import Kind, Side, request_fields

__all__ = [
    "DEFAULT_REGIMES",
    "OrderFlow",
    "OrderIntent",
    "ReferencePrices",
    "Regime",
    "RegimeSegment",
    "RegimeSpec",
]

# Domain separation: digests of this module never collide with blake2b uses elsewhere.
_PERSON = b"murmur.market.1"
# The walk keeps a price every this many steps, so going back in time costs at most this many
# steps instead of a walk from the start.
_CHECKPOINT_EVERY = 64
# Order-flow time is kept in whole microseconds: sums of integers do not drift, and a last-bit
# difference in `math.log` between platforms cannot reorder two intents.
_MICROS = 1_000_000
_UNIT = 2.0**-53


def _encode(*parts: int | str) -> bytes:
    """An unambiguous byte encoding of the parts: type tag, length, value."""
    out = bytearray()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise TypeError(f"cannot hash {type(part).__name__} into a market draw")
        tag = b"i" if isinstance(part, int) else b"s"
        data = str(part).encode()
        out += tag + str(len(data)).encode() + b":" + data
    return bytes(out)


def _hasher(*parts: int | str, words: int = 1) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=8 * words, person=_PERSON)
    h.update(_encode(*parts))
    return h


def _words(*parts: int | str, words: int = 1) -> tuple[int, ...]:
    """`words` independent unsigned 64-bit integers drawn from the parts."""
    return struct.unpack(f"<{words}Q", _hasher(*parts, words=words).digest())


def _uniform(word: int) -> float:
    """A float in [0, 1) from a 64-bit word (its top 53 bits, exactly representable)."""
    return (word >> 11) * _UNIT


def _between(word: int, low: int, high: int) -> int:
    """An integer in [low, high]; the modulo bias of a 64-bit word is below 2**-50."""
    return low + word % (high - low + 1)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")


def _check_symbols(symbols: Sequence[str]) -> list[str]:
    symbols = list(symbols)
    if not symbols:
        raise ValueError("at least one symbol is needed")
    if any(not isinstance(s, str) or not s for s in symbols):
        raise ValueError("symbols must be non-empty strings")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols must be unique: {symbols}")
    return symbols


def _check_range(name: str, value: tuple[int, int], minimum: int) -> tuple[int, int]:
    low, high = value
    if not (isinstance(low, int) and isinstance(high, int)) or not minimum <= low <= high:
        raise ValueError(f"{name} must be a (low, high) pair of ints with {minimum} <= low <= high")
    return low, high


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")


# --------------------------------------------------------------------------- reference prices


class _Walk:
    """One symbol's walk: the checkpoints passed so far and the last step computed."""

    __slots__ = ("prefix", "checkpoints", "step", "price")

    def __init__(self, prefix: hashlib.blake2b, start: int):
        self.prefix = prefix
        self.checkpoints = [start]  # price at step i * _CHECKPOINT_EVERY
        self.step = 0
        self.price = start


class ReferencePrices:
    """Per-symbol reference prices in integer ticks, a seeded random walk of time.

    Step k covers t in [k * step, (k + 1) * step). Step 0 is the symbol's start price, itself
    drawn from the seed within `start_spread` ticks of `start_price` so that symbols differ;
    every later step adds an increment in [-volatility_ticks, +volatility_ticks] drawn from
    (seed, symbol, k), and the price is held at `floor` when the walk would go below it.

    Asking for increasing `t` costs O(1) amortised per step walked; asking for an earlier `t`
    walks at most `_CHECKPOINT_EVERY` steps from a kept checkpoint. The answers never depend on
    the order of the questions.
    """

    def __init__(
        self,
        seed: int,
        symbols: Sequence[str],
        *,
        start_price: int = 10_000,
        step: float = 0.5,
        volatility_ticks: int = 3,
        floor: int = 100,
        start_spread: int | None = None,
    ):
        _check_seed(seed)
        if not (isinstance(floor, int) and floor >= 1):
            raise ValueError("floor must be a whole number of ticks >= 1")
        if not (isinstance(start_price, int) and start_price >= floor):
            raise ValueError("start_price must be a whole number of ticks >= floor")
        if not (isinstance(volatility_ticks, int) and volatility_ticks >= 0):
            raise ValueError("volatility_ticks must be a whole number >= 0")
        if not (math.isfinite(step) and step > 0):
            raise ValueError("step must be a positive number of seconds")
        if start_spread is None:
            start_spread = start_price // 5
        if not (isinstance(start_spread, int) and start_spread >= 0):
            raise ValueError("start_spread must be a whole number of ticks >= 0")
        self.seed = seed
        self.symbols = _check_symbols(symbols)
        self.start_price = start_price
        self.step = step
        self.volatility_ticks = volatility_ticks
        self.floor = floor
        self.start_spread = start_spread
        self._walks = {}
        for symbol in self.symbols:
            (word,) = _words("start", seed, symbol)
            start = max(
                floor, _between(word, start_price - start_spread, start_price + start_spread)
            )
            # The digest of ("step", seed, symbol, k) is this prefix plus k: copying a hasher
            # that has already absorbed the prefix is the cheap way to draw step after step.
            self._walks[symbol] = _Walk(_hasher("step", seed, symbol), start)

    def step_at(self, t: float) -> int:
        """The index of the step that covers time `t` (seconds since the market's start)."""
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"t must be a finite time >= 0 since the market's start, got {t}")
        return math.floor(t / self.step)

    def price(self, symbol: str, t: float) -> int:
        """The reference price of `symbol` at time `t`, in ticks."""
        return self.price_at_step(symbol, self.step_at(t))

    def snapshot(self, t: float) -> dict[str, int]:
        """Every symbol's reference price at time `t`, in the order the symbols were given."""
        k = self.step_at(t)
        return {symbol: self.price_at_step(symbol, k) for symbol in self.symbols}

    def increment(self, symbol: str, k: int) -> int:
        """The move drawn for step `k` (>= 1), before the floor is applied."""
        return self._increment(self._walk(symbol), k)

    def price_at_step(self, symbol: str, k: int) -> int:
        walk = self._walk(symbol)
        if k < 0:
            raise ValueError(f"step must be >= 0, got {k}")
        # Start from the nearest known point at or before k: the last step asked for, or the
        # checkpoint below k (always known when k is behind the last step asked for).
        index = min(k // _CHECKPOINT_EVERY, len(walk.checkpoints) - 1)
        at, price = index * _CHECKPOINT_EVERY, walk.checkpoints[index]
        if at < walk.step <= k:
            at, price = walk.step, walk.price
        floor, checkpoints = self.floor, walk.checkpoints
        while at < k:
            at += 1
            price = max(floor, price + self._increment(walk, at))
            if at % _CHECKPOINT_EVERY == 0 and at // _CHECKPOINT_EVERY == len(checkpoints):
                checkpoints.append(price)
        walk.step, walk.price = k, price
        return price

    def _walk(self, symbol: str) -> _Walk:
        try:
            return self._walks[symbol]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}") from None

    def _increment(self, walk: _Walk, k: int) -> int:
        h = walk.prefix.copy()
        h.update(_encode(k))
        (word,) = struct.unpack("<Q", h.digest())
        return _between(word, -self.volatility_ticks, self.volatility_ticks)


# --------------------------------------------------------------------------- order flow


class Regime(enum.Enum):
    CALM = "calm"
    BURST = "burst"
    CANCEL_STORM = "cancel-storm"


@dataclass(frozen=True, slots=True)
class RegimeSpec:
    """How the flow behaves while `regime` lasts, and how the schedule picks and sizes it.

    rate_multiplier: scales the flow's base rate (0 pauses the flow).
    mean_duration:   seconds; a segment lasts uniformly 0.5x to 1.5x this.
    weight:          relative chance of being picked when the current regime ends.
    cancel_fraction: chance that an intent cancels one of the flow's resting orders.
    """

    regime: Regime
    rate_multiplier: float
    mean_duration: float
    weight: float
    cancel_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_multiplier) and self.rate_multiplier >= 0):
            raise ValueError(f"{self.regime.value}: rate_multiplier must be >= 0")
        if not (math.isfinite(self.mean_duration) and self.mean_duration > 0):
            raise ValueError(f"{self.regime.value}: mean_duration must be > 0 seconds")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"{self.regime.value}: weight must be >= 0")
        _check_fraction(f"{self.regime.value}: cancel_fraction", self.cancel_fraction)

    def to_json(self) -> dict:
        return {
            "regime": self.regime.value,
            "rate_multiplier": self.rate_multiplier,
            "mean_duration": self.mean_duration,
            "weight": self.weight,
            "cancel_fraction": self.cancel_fraction,
        }


# Calm most of the time; bursts at five times the rate; short storms that spend the resting
# orders built up in calm (a few calm cancels keep the resting pool from only ever growing).
DEFAULT_REGIMES: tuple[RegimeSpec, ...] = (
    RegimeSpec(
        Regime.CALM, rate_multiplier=1.0, mean_duration=20.0, weight=6.0, cancel_fraction=0.02
    ),
    RegimeSpec(Regime.BURST, rate_multiplier=5.0, mean_duration=4.0, weight=2.0),
    RegimeSpec(
        Regime.CANCEL_STORM, rate_multiplier=2.0, mean_duration=3.0, weight=1.0, cancel_fraction=0.9
    ),
)


@dataclass(frozen=True, slots=True)
class RegimeSegment:
    """One stretch of the schedule: `spec` holds for start <= t < end (seconds)."""

    start_us: int
    end_us: int
    spec: RegimeSpec

    @property
    def regime(self) -> Regime:
        return self.spec.regime

    @property
    def start(self) -> float:
        return self.start_us / _MICROS

    @property
    def end(self) -> float:
        return self.end_us / _MICROS

    def to_json(self) -> dict:
        return {"regime": self.regime.value, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An external order the flow wants sent to the exchange at time `at`.

    A cancel has `cancel_of` set to the id of the flow's own order it cancels; its other fields
    repeat that order's (for logs) and the exchange ignores them. `order_id` is unique for every
    intent, cancels included.
    """

    at: float
    order_id: str
    symbol: str
    side: Side
    kind: Kind
    quantity: int
    limit_price: int | None
    cancel_of: str | None = None

    @property
    def is_cancel(self) -> bool:
        return self.cancel_of is not None

    def to_json(self) -> dict:
        """The request body for the exchange (field names of docs/interface.md), or a cancel's target."""
        if self.cancel_of is not None:
            return {"order_id": self.cancel_of, "symbol": self.symbol}
        return request_fields(self)


class OrderFlow:
    """A deterministic stream of external order intents, Poisson in time, shaped by regimes.

    Arrivals: exponential inter-arrival times at `rate * rate_multiplier` of the regime in force;
    an arrival that would fall past the end of its regime is redrawn from that boundary at the
    next regime's rate (exact for a Poisson process, which is memoryless).

    The schedule of regimes opens with the first entry of `regimes` and then, at each end, picks
    another regime by weight, each lasting 0.5x to 1.5x its mean duration, all drawn from the
    seed. A `script` of (regime, seconds) pairs replaces the drawn schedule and repeats forever.

    Each new order: symbol uniform among `symbols` (sorted, so their order does not matter),
    side even, quantity uniform in `quantity`; a market order with `market_fraction`; a passive
    limit order resting `passive_ticks` away from the reference price on its own side with
    `passive_fraction`; otherwise a limit order crossing the reference price by `cross_ticks`
    (a buy at reference + ticks, a sell at reference - ticks), which trades against any quote
    whose half-spread is below the low end of `cross_ticks`.

    Cancels target the flow's own passive orders not yet cancelled (the orders meant to rest),
    chosen at random. In a regime with cancels and no resting order left, the intent places a
    passive order instead, so a storm flickers rather than falling silent. When `max_resting`
    passive orders are outstanding, a new passive order is replaced by a cancel of the oldest,
    which keeps the flow's footprint in the book bounded.

    The stream is the same whatever the sequence of `next_batch` calls that reads it.
    """

    def __init__(
        self,
        seed: int,
        symbols: Sequence[str],
        prices: ReferencePrices,
        *,
        rate: float = 20.0,
        regimes: Sequence[RegimeSpec] = DEFAULT_REGIMES,
        script: Sequence[tuple[Regime, float]] | None = None,
        quantity: tuple[int, int] = (1, 5),
        market_fraction: float = 0.10,
        passive_fraction: float = 0.15,
        cross_ticks: tuple[int, int] = (2, 8),
        passive_ticks: tuple[int, int] = (5, 30),
        max_resting: int = 200,
        id_prefix: str = "x",
    ):
        _check_seed(seed)
        symbols = _check_symbols(symbols)
        unknown = sorted(set(symbols) - set(prices.symbols))
        if unknown:
            raise ValueError(f"symbols without reference prices: {unknown}")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError("rate must be a positive number of intents per second")
        regimes = tuple(regimes)
        if not regimes:
            raise ValueError("at least one regime is needed")
        if len({spec.regime for spec in regimes}) != len(regimes):
            raise ValueError("each regime may be specified once")
        if script is not None:
            script = tuple((Regime(regime), float(seconds)) for regime, seconds in script)
            if not script:
                raise ValueError("a script needs at least one (regime, seconds) entry")
            known = {spec.regime for spec in regimes}
            for regime, seconds in script:
                if regime not in known:
                    raise ValueError(f"script names {regime.value!r}, which regimes do not specify")
                if not (math.isfinite(seconds) and seconds > 0):
                    raise ValueError("every scripted duration must be > 0 seconds")
        _check_fraction("market_fraction", market_fraction)
        _check_fraction("passive_fraction", passive_fraction)
        if market_fraction + passive_fraction > 1.0:
            raise ValueError("market_fraction + passive_fraction must not exceed 1")
        if not (isinstance(max_resting, int) and max_resting >= 1):
            raise ValueError("max_resting must be a whole number >= 1")
        if not isinstance(id_prefix, str) or not id_prefix:
            raise ValueError("id_prefix must be a non-empty string")

        self.seed = seed
        self.symbols = sorted(symbols)
        self.prices = prices
        self.rate = float(rate)
        self.regimes = regimes
        self.script = script
        self.quantity = _check_range("quantity", quantity, 1)
        self.market_fraction = market_fraction
        self.passive_fraction = passive_fraction
        self.cross_ticks = _check_range("cross_ticks", cross_ticks, 0)
        self.passive_ticks = _check_range("passive_ticks", passive_ticks, 1)
        self.max_resting = max_resting
        self.id_prefix = id_prefix

        self._spec_of = {spec.regime: spec for spec in regimes}
        self._segments: list[RegimeSegment] = []
        self._segment_starts: list[int] = []
        self._search_us = 0  # where the search for the next arrival resumes
        self._arrival_draws = 0  # index of the next inter-arrival draw
        self._next_arrival_us: int | None = None  # found, not yet emitted
        self._issued = 0  # intents emitted; also the next intent's number
        self._resting: list[OrderIntent] = []  # own passive orders not yet cancelled, oldest first

    # ------------------------------------------------------------------ reading the stream

    def next_batch(self, until: float) -> list[OrderIntent]:
        """Every intent with `at <= until` not returned before, in time order."""
        if not math.isfinite(until):
            raise ValueError(f"until must be a finite time, got {until}")
        # Searching past `limit_us` is never needed: any arrival there is later than `until`.
        limit_us = math.floor(until * _MICROS) + 1
        batch = []
        while True:
            at_us = self._peek_arrival(limit_us)
            if at_us is None or at_us / _MICROS > until:
                return batch
            self._next_arrival_us = None
            batch.append(self._make_intent(at_us))

    def intents_between(self, t0: float, t1: float) -> list[OrderIntent]:
        """The intents with t0 < at <= t1, from a fresh replay of this flow's stream.

        Windows (t0, t1], (t1, t2], ... tile the stream exactly as successive `next_batch`
        calls do. It leaves this flow's own position untouched and costs a replay from 0.
        """
        replay = self._fresh()
        replay.next_batch(t0)
        return replay.next_batch(t1)

    @property
    def issued(self) -> int:
        """How many intents this flow has returned so far."""
        return self._issued

    def resting_order_ids(self) -> list[str]:
        """The flow's passive orders not yet cancelled, oldest first."""
        return [intent.order_id for intent in self._resting]

    # ------------------------------------------------------------------ the regime schedule

    def regime_at(self, t: float) -> Regime:
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"t must be a finite time >= 0, got {t}")
        return self._segment_at(math.floor(t * _MICROS)).regime

    def segments(self, until: float) -> list[RegimeSegment]:
        """The schedule's segments that start at or before `until`."""
        if not math.isfinite(until):
            raise ValueError(f"until must be a finite time, got {until}")
        until_us = math.floor(until * _MICROS)
        self._segment_at(max(0, until_us))
        return [s for s in self._segments if s.start_us <= until_us]

    def describe(self, until: float = 60.0) -> dict:
        """The flow's configuration and its schedule up to `until`, as one JSON-able record."""
        return {
            "seed": self.seed,
            "symbols": self.symbols,
            "rate": self.rate,
            "regimes": [spec.to_json() for spec in self.regimes],
            "script": None
            if self.script is None
            else [{"regime": r.value, "seconds": s} for r, s in self.script],
            "quantity": list(self.quantity),
            "market_fraction": self.market_fraction,
            "passive_fraction": self.passive_fraction,
            "cross_ticks": list(self.cross_ticks),
            "passive_ticks": list(self.passive_ticks),
            "max_resting": self.max_resting,
            "schedule": [segment.to_json() for segment in self.segments(until)],
        }

    # ------------------------------------------------------------------ internals

    def _fresh(self) -> OrderFlow:
        return OrderFlow(
            self.seed,
            self.symbols,
            self.prices,
            rate=self.rate,
            regimes=self.regimes,
            script=self.script,
            quantity=self.quantity,
            market_fraction=self.market_fraction,
            passive_fraction=self.passive_fraction,
            cross_ticks=self.cross_ticks,
            passive_ticks=self.passive_ticks,
            max_resting=self.max_resting,
            id_prefix=self.id_prefix,
        )

    def _segment_at(self, t_us: int) -> RegimeSegment:
        while not self._segments or self._segments[-1].end_us <= t_us:
            self._segments.append(self._next_segment())
            self._segment_starts.append(self._segments[-1].start_us)
        return self._segments[bisect.bisect_right(self._segment_starts, t_us) - 1]

    def _next_segment(self) -> RegimeSegment:
        index = len(self._segments)
        start_us = self._segments[-1].end_us if self._segments else 0
        if self.script is not None:
            regime, seconds = self.script[index % len(self.script)]
            return RegimeSegment(
                start_us, start_us + max(1, round(seconds * _MICROS)), self._spec_of[regime]
            )
        pick_word, length_word = _words("regime", self.seed, index, words=2)
        if index == 0:
            spec = self.regimes[0]
        else:
            spec = self._pick_next_regime(self._segments[-1].spec, _uniform(pick_word))
        # Uniform in [0.5, 1.5] x mean: segments are neither vanishing nor endless.
        seconds = spec.mean_duration * (0.5 + _uniform(length_word))
        return RegimeSegment(start_us, start_us + max(1, round(seconds * _MICROS)), spec)

    def _pick_next_regime(self, current: RegimeSpec, u: float) -> RegimeSpec:
        # Another regime than the current one, by weight; a lone regime simply continues.
        others = [spec for spec in self.regimes if spec is not current and spec.weight > 0]
        if not others:
            return current
        target = u * sum(spec.weight for spec in others)
        for spec in others:
            target -= spec.weight
            if target < 0:
                return spec
        return others[-1]

    def _peek_arrival(self, limit_us: int) -> int | None:
        """The next arrival's time, or None when none falls at or before `limit_us`."""
        if self._next_arrival_us is not None:
            return self._next_arrival_us
        t_us = self._search_us
        while t_us <= limit_us:
            segment = self._segment_at(t_us)
            intensity = self.rate * segment.spec.rate_multiplier
            if intensity > 0:
                (word,) = _words("arrival", self.seed, self._arrival_draws)
                self._arrival_draws += 1
                gap_us = max(1, round(-math.log1p(-_uniform(word)) / intensity * _MICROS))
                if t_us + gap_us < segment.end_us:
                    self._search_us = self._next_arrival_us = t_us + gap_us
                    return self._next_arrival_us
            # Nothing in this segment: start afresh at the next one's rate.
            t_us = segment.end_us
        self._search_us = t_us
        return None

    def _make_intent(self, at_us: int) -> OrderIntent:
        number = self._issued
        self._issued += 1
        at = at_us / _MICROS
        order_id = f"{self.id_prefix}-{self.seed}-{number}"
        spec = self._segment_at(at_us).spec
        w_symbol, w_cancel, w_target, w_kind, w_side, w_quantity, w_ticks = _words(
            "intent", self.seed, number, words=7
        )
        wants_cancel = _uniform(w_cancel) < spec.cancel_fraction
        if wants_cancel and self._resting:
            return self._cancel(at, order_id, self._resting.pop(w_target % len(self._resting)))

        symbol = self.symbols[w_symbol % len(self.symbols)]
        side = Side.BUY if _uniform(w_side) < 0.5 else Side.SELL
        quantity = _between(w_quantity, *self.quantity)
        u_kind = _uniform(w_kind)
        if not wants_cancel and u_kind < self.market_fraction:
            return OrderIntent(at, order_id, symbol, side, Kind.MARKET, quantity, None)

        reference = self.prices.price(symbol, at)
        sign = 1 if side is Side.BUY else -1
        # A storm with nothing left to cancel places something it can cancel next.
        if wants_cancel or u_kind < self.market_fraction + self.passive_fraction:
            if len(self._resting) >= self.max_resting:
                return self._cancel(at, order_id, self._resting.pop(0))
            ticks = _between(w_ticks, *self.passive_ticks)
            limit = max(1, reference - sign * ticks)
            intent = OrderIntent(at, order_id, symbol, side, Kind.LIMIT, quantity, limit)
            self._resting.append(intent)
            return intent
        ticks = _between(w_ticks, *self.cross_ticks)
        return OrderIntent(
            at, order_id, symbol, side, Kind.LIMIT, quantity, max(1, reference + sign * ticks)
        )

    @staticmethod
    def _cancel(at: float, order_id: str, target: OrderIntent) -> OrderIntent:
        return OrderIntent(
            at,
            order_id,
            target.symbol,
            target.side,
            target.kind,
            target.quantity,
            target.limit_price,
            cancel_of=target.order_id,
        )
