"""One market maker's symbol authority: claim, renew, release and back off, as a core.

What it is for: deciding, per symbol, what this market maker asks the exchange about its
authority and whether it may quote right now. It is driven by four inputs only:

- `set_owners(owners, now)`: the rendezvous assignment over the local gossip view;
- `on_answer(action, answer, sent_at=, now=)` / `on_no_answer(action, now=)`: what the exchange
  said to a Claim, Renew or Release this core asked for (or that it said nothing in time);
- `observe_authority(rows, now)`: a `GET /authority` snapshot (epochs to claim above, and
  whether a symbol taken from us is free again);
- `poll(now)`: time passing (renewals, back-off retries, local lease expiry).

Each returns an `Outcome`: actions for the shell to perform (`Claim`, `Renew`, `Release`,
`StopQuoting`, `CheckAuthority`) and transitions, each with a reason to log. `next_deadline()` tells the shell when
to call `poll` again, and `may_quote(symbol, now)` is the check made immediately before every
publish, replace or cancel.

The lease this core believes in is never longer than the one the exchange granted: it runs from
the *send* time of the request that the exchange answered (the exchange granted it later than
that) for the lease the exchange reported, minus a margin for clock-rate drift. The exchange is
still the one that enforces exclusivity; this core only keeps a peer from sending what the fence
would reject, and from disturbing a holder the exchange still considers alive.

No flapping. A claim is granted only if the exchange finds the symbol free or its holder dead in
the exchange's own view, so a peer whose view disagrees keeps backing off without disturbing a
holder the exchange considers alive. One case remains: the exchange wrongly considers *both*
claimants dead while both keep talking to it; each claim would then take the symbol from the
other. So a peer whose authority was taken by a newer epoch while its view did not change
*yields*: it claims again only once a snapshot shows that epoch's lease over (nobody renewed it)
or its own view changes. A live holder's renewals are proof enough that it is not dead.

It must never do I/O, sleep, read a clock or draw unseeded randomness: `now` and a seeded
`random.Random` come in as arguments, so the same inputs give the same actions.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from book.exchange import LEASE_DURATION
from peer.backoff import Backoff


class Phase(enum.Enum):
    IDLE = "idle"  # not mine (or not yet): nothing asked, nothing held
    CLAIMING = "claiming"  # a Claim is out, its answer not yet in
    HELD = "held"  # the exchange granted it; renewing while the view says it is mine
    RELEASING = "releasing"  # another peer owns it now: giving it up, quoting stopped
    BACKING_OFF = "backing-off"  # a claim was refused or unanswered; retrying later while mine
    YIELDED = "yielded"  # a newer epoch took it from us: claim only once that lease is over


# Which phase may follow which. Anything else is a bug in this module and raises at once, so a
# wrong transition can never slip silently into a live cluster. HELD -> HELD is a renewal.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.CLAIMING}),
    Phase.CLAIMING: frozenset({Phase.HELD, Phase.BACKING_OFF, Phase.IDLE, Phase.RELEASING,
                               Phase.YIELDED}),
    Phase.HELD: frozenset({Phase.HELD, Phase.CLAIMING, Phase.RELEASING, Phase.YIELDED}),
    Phase.RELEASING: frozenset({Phase.IDLE}),
    Phase.BACKING_OFF: frozenset({Phase.CLAIMING, Phase.IDLE}),
    Phase.YIELDED: frozenset({Phase.CLAIMING, Phase.IDLE}),
}


class IllegalTransition(AssertionError):
    pass


# --- what the shell is asked to do --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """POST /authority/{symbol}/claim {holder, epoch}."""

    symbol: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Renew:
    """POST /authority/{symbol}/renew {holder, epoch}."""

    symbol: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Release:
    """POST /authority/{symbol}/release {holder, epoch}."""

    symbol: str
    epoch: int


@dataclass(frozen=True, slots=True)
class StopQuoting:
    """Authority is gone or going: send no more quote operations for this symbol, and forget the
    active quote (the exchange withdraws it on release, on a newer epoch or at lease expiry)."""

    symbol: str


@dataclass(frozen=True, slots=True)
class CheckAuthority:
    """GET /authority, handed back through `observe_authority`: read-only, takes nothing."""

    symbol: str


ExchangeRequest = Claim | Renew | Release
Action = Claim | Renew | Release | StopQuoting | CheckAuthority


@dataclass(frozen=True, slots=True)
class Transition:
    symbol: str
    old: Phase
    new: Phase
    reason: str  # "claimed", "claim-rejected:held", "renewed", "released:hand-over", ...
    epoch: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "from": self.old.value, "to": self.new.value,
                "reason": self.reason, "epoch": self.epoch, "at": self.at}


@dataclass(slots=True)
class Outcome:
    actions: list[Action] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.actions or self.transitions)


# --- what the exchange said ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExchangeAnswer:
    """The exchange's answer to a claim, renew or release, as this core needs it."""

    accepted: bool
    reason: str
    epoch: int | None = None  # the symbol's current epoch at the exchange, when it said
    holder: str | None = None
    lease_left: float | None = None  # seconds, as of when the exchange decided

    @classmethod
    def from_exchange(cls, answer: Mapping[str, Any]) -> ExchangeAnswer:
        """From `book.exchange.ExchangeCore`'s answer dict (the HTTP body is the same dict)."""
        auth = answer.get("authority") or {}
        epoch = auth.get("epoch")
        lease_left = auth.get("lease_left")
        return cls(
            accepted=bool(answer.get("accepted")),
            reason=str(answer.get("reason", "")),
            epoch=epoch if type(epoch) is int else None,
            holder=auth.get("holder"),
            lease_left=float(lease_left) if isinstance(lease_left, int | float) else None,
        )


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorityConfig:
    lease_duration: float = LEASE_DURATION  # the exchange's --lease; never trust a longer one
    drift_margin: float = 0.1  # taken off every lease: the exchange's clock may run faster than ours
    quote_margin: float = 0.1  # no quote op this close to the local lease end: it may land late
    renew_fraction: float = 1 / 3  # renew after this share of the lease
    # Retries of a refused or unanswered claim: from 50 ms, never longer than 2 s, equal jitter.
    retry: Backoff = Backoff(first=0.05, cap=2.0, jitter=0.5)
    check_interval: float = 0.5  # a yielded peer reads the exchange's authority this often

    def __post_init__(self) -> None:
        if self.lease_duration <= 0:
            raise ValueError("lease_duration must be positive")
        if not 0 < self.renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        if self.drift_margin < 0 or self.quote_margin < 0:
            raise ValueError("margins must not be negative")
        if self.drift_margin + self.quote_margin >= self.lease_duration * (1 - self.renew_fraction):
            # Otherwise a holder would stop quoting before its first renewal could land.
            raise ValueError("margins leave no room between renewal and lease end")
        if self.check_interval <= 0:
            raise ValueError("check_interval must be positive")


# --- per-symbol state ---------------------------------------------------------------------------


@dataclass(slots=True)
class SymbolAuthority:
    symbol: str
    phase: Phase = Phase.IDLE
    mine: bool = False  # does the latest assignment name this peer?
    epoch: int = 0  # the epoch claimed, held or being released
    highest_seen: int = 0  # the highest epoch the exchange has shown us for this symbol
    lease_end: float = 0.0  # local, conservative: the exchange's lease ends no earlier
    renew_at: float = math.inf
    retry_at: float = math.inf
    give_up_at: float = math.inf  # RELEASING: past it, the lease is over anyway
    release_why: str = ""
    attempts: int = 0  # consecutive refused or unanswered claims: drives the back-off
    # The epoch we held when it was taken from us without a view change (None otherwise): any
    # newer epoch held by another peer is then one we yield to instead of claiming over.
    taken_from: int | None = None
    awaiting: ExchangeRequest | None = None  # the one request whose answer we act on


class MarketMakerAuthority:
    """The authority state of market maker `name` over `symbols`."""

    def __init__(self, name: str, symbols: Iterable[str], config: AuthorityConfig,
                 rng: random.Random):
        self.name = name
        self.config = config
        self._rng = rng  # seeded by the caller: back-off jitter is replayable
        self._symbols: dict[str, SymbolAuthority] = {s: SymbolAuthority(s) for s in symbols}

    # --- reading ------------------------------------------------------------------------------

    def __getitem__(self, symbol: str) -> SymbolAuthority:
        return self._symbols[symbol]

    def phase(self, symbol: str) -> Phase:
        return self._symbols[symbol].phase

    def may_quote(self, symbol: str, now: float) -> bool:
        """True only while held and the local lease is not within `quote_margin` of its end."""
        st = self._symbols[symbol]
        return st.phase is Phase.HELD and now + self.config.quote_margin < st.lease_end

    def held_epoch(self, symbol: str) -> int | None:
        st = self._symbols[symbol]
        return st.epoch if st.phase is Phase.HELD else None

    def next_deadline(self) -> float | None:
        """The earliest `now` at which `poll` would do something, or None."""
        deadlines = [math.inf]
        for st in self._symbols.values():
            if st.phase is Phase.HELD:
                deadlines.append(st.lease_end)
                if st.awaiting is None:
                    deadlines.append(st.renew_at)
            elif st.phase in (Phase.BACKING_OFF, Phase.YIELDED):
                deadlines.append(st.retry_at)
            elif st.phase is Phase.RELEASING and st.awaiting is None:
                deadlines += [st.retry_at, st.give_up_at]
        d = min(deadlines)
        return None if d == math.inf else d

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """What `GET /authority` on a market maker shows."""
        return [
            {
                "symbol": st.symbol,
                "state": st.phase.value,
                "owner_in_view": st.mine,
                "epoch": st.epoch or None,
                "lease_left": round(max(0.0, st.lease_end - now), 3) if st.phase is Phase.HELD else 0.0,
                "may_quote": self.may_quote(st.symbol, now),
            }
            for st in self._symbols.values()
        ]

    # --- inputs -------------------------------------------------------------------------------

    def set_owners(self, owners: Mapping[str, str | None], now: float) -> Outcome:
        """The latest assignment (symbol -> owner) computed over the local gossip view."""
        out = Outcome()
        for st in self._symbols.values():
            mine = owners.get(st.symbol) == self.name
            if mine == st.mine:
                continue
            st.mine = mine
            st.taken_from = None  # the view moved: whatever took it from us is old news
            if mine:
                st.attempts = 0  # a new reason to own it: take it at once, not after old back-off
                if st.phase is Phase.IDLE:
                    self._claim(st, "claiming:owner", now, out)
                # RELEASING: claim again once the release is answered (see _finish_release).
                # CLAIMING: the answer in flight is now handled as the owner's.
            elif st.phase is Phase.HELD:
                self._release(st, "hand-over", now, out)
            elif st.phase in (Phase.BACKING_OFF, Phase.YIELDED):
                st.retry_at = math.inf
                self._move(st, Phase.IDLE, "idle:not-owner", now, out)
            # CLAIMING: wait for the answer and release at once if granted. A release sent now
            # could overtake the claim and be refused, and the claim would then hold the symbol
            # against its new owner for a whole lease.
        return out

    def observe_authority(self, rows: Iterable[Mapping[str, Any]], now: float) -> Outcome:
        """A `GET /authority` snapshot (rows as the exchange's `Authority.to_json`): learn epochs
        so the next claim goes above them, and claim a symbol we yielded once it is free."""
        out = Outcome()
        for row in rows:
            st = self._symbols.get(row.get("symbol"))  # type: ignore[arg-type]
            epoch = row.get("epoch")
            if st is None or type(epoch) is not int:
                continue
            # A snapshot older than the epoch we yielded to says nothing about that epoch's lease.
            fresh = epoch >= st.highest_seen
            st.highest_seen = max(st.highest_seen, epoch)
            if st.phase is Phase.YIELDED and fresh and row.get("state") in ("vacant", "released", "expired"):
                st.attempts = 0
                st.retry_at = math.inf
                self._claim(st, f"claiming:{row['state']}", now, out)
        return out

    def on_answer(self, request: ExchangeRequest, answer: ExchangeAnswer, *, sent_at: float,
                  now: float) -> Outcome:
        """The exchange's answer to `request`, which the shell sent at `sent_at`."""
        out = Outcome()
        st = self._symbols[request.symbol]
        if st.awaiting != request:
            return out  # superseded (a hand-over, a lost lease): acting on it now would be wrong
        st.awaiting = None
        if answer.epoch is not None:
            st.highest_seen = max(st.highest_seen, answer.epoch)
        if isinstance(request, Claim):
            self._claim_answered(st, request, answer, sent_at, now, out)
        elif isinstance(request, Renew):
            self._renew_answered(st, answer, sent_at, now, out)
        else:
            self._finish_release(st, "released:" + st.release_why if answer.accepted
                                 else "release-rejected:" + answer.reason, now, out)
        return out

    def on_no_answer(self, request: ExchangeRequest, *, now: float) -> Outcome:
        """`request` timed out or failed in transport: the exchange may or may not have acted."""
        out = Outcome()
        st = self._symbols[request.symbol]
        if st.awaiting != request:
            return out
        st.awaiting = None
        if isinstance(request, Claim):
            if st.mine:
                # Retried with the same epoch: if the lost claim was granted, the retry is answered
                # "already-held" with the lease left, so nothing is claimed twice.
                self._back_off(st, "claim-unanswered", now, out)
            else:
                # It may have been granted; give it back rather than leave the new owner waiting
                # for our lease to run out. The lease cannot outlast a claim sent before `now`.
                st.lease_end = now + self.config.lease_duration
                self._release(st, "claim-unanswered", now, out)
        elif isinstance(request, Renew):
            # Still held until the local lease says otherwise; try again soon.
            st.renew_at = now + self.config.retry.first
            self._move(st, Phase.HELD, "renew-unanswered", now, out)
        else:
            st.retry_at = now + self._backoff_delay(1)
        return out

    def poll(self, now: float) -> Outcome:
        """Time has reached `now`: renew, retry, or notice a lease that ran out."""
        out = Outcome()
        for st in self._symbols.values():
            if st.phase is Phase.HELD:
                if now >= st.lease_end:
                    # A renew may still be out; its answer is ignored from here on.
                    st.awaiting = None
                    st.taken_from = st.epoch
                    self._claim(st, "lost:lease-expired", now, out)
                elif st.awaiting is None and now >= st.renew_at:
                    st.awaiting = Renew(st.symbol, st.epoch)
                    out.actions.append(st.awaiting)
            elif st.phase is Phase.BACKING_OFF and now >= st.retry_at:
                self._claim(st, "retrying", now, out)
            elif st.phase is Phase.YIELDED and now >= st.retry_at:
                st.retry_at = now + self.config.check_interval
                out.actions.append(CheckAuthority(st.symbol))
            elif st.phase is Phase.RELEASING and st.awaiting is None:
                if now >= st.give_up_at:
                    self._finish_release(st, "released:lease-expired", now, out)
                elif now >= st.retry_at:
                    st.awaiting = Release(st.symbol, st.epoch)
                    out.actions.append(st.awaiting)
        return out

    # --- transitions --------------------------------------------------------------------------

    def _claim_answered(self, st: SymbolAuthority, request: Claim, answer: ExchangeAnswer,
                        sent_at: float, now: float, out: Outcome) -> None:
        if answer.accepted:
            st.highest_seen = max(st.highest_seen, request.epoch)
            st.attempts = 0
            st.taken_from = None
            st.lease_end = -math.inf
            self._extend_lease(st, answer, sent_at)
            self._move(st, Phase.HELD, "claimed" if answer.reason == "claimed" else f"claimed:{answer.reason}",
                       now, out)
            if not st.mine:
                self._release(st, "hand-over", now, out)
            return
        if answer.reason == "stale-epoch":
            # Whatever the exchange holds is at least this epoch, even if it did not say which.
            st.highest_seen = max(st.highest_seen, request.epoch)
        if not st.mine:
            self._move(st, Phase.IDLE, f"claim-rejected:{answer.reason}", now, out)
        elif self._taken_by_newer(st, answer):
            self._yield(st, f"yielded:{answer.holder}", now, out)
        else:
            self._back_off(st, f"claim-rejected:{answer.reason}", now, out)

    def _renew_answered(self, st: SymbolAuthority, answer: ExchangeAnswer, sent_at: float,
                        now: float, out: Outcome) -> None:
        if answer.accepted:
            self._extend_lease(st, answer, sent_at)
            self._move(st, Phase.HELD, "renewed", now, out)
        else:
            # Someone holds a newer epoch, or the lease ran out at the exchange first.
            st.taken_from = st.epoch
            if self._taken_by_newer(st, answer):
                self._yield(st, f"lost:taken-by:{answer.holder}", now, out)
            else:
                self._claim(st, f"lost:renew-rejected:{answer.reason}", now, out)

    def _taken_by_newer(self, st: SymbolAuthority, answer: ExchangeAnswer) -> bool:
        return (st.taken_from is not None and answer.epoch is not None and answer.epoch > st.taken_from
                and answer.holder not in (None, self.name))

    def _yield(self, st: SymbolAuthority, reason: str, now: float, out: Outcome) -> None:
        # Claiming now could take it back only if the exchange thinks the new holder dead; if it
        # is in fact alive, that is a flap. Wait for its lease to be seen over instead.
        st.retry_at = now + self.config.check_interval
        self._move(st, Phase.YIELDED, reason, now, out)

    def _extend_lease(self, st: SymbolAuthority, answer: ExchangeAnswer, sent_at: float) -> None:
        granted = self.config.lease_duration
        if answer.lease_left is not None:
            granted = min(granted, answer.lease_left)
        # The exchange decided no earlier than we sent, so its lease ends no earlier than this.
        st.lease_end = max(st.lease_end, sent_at + granted - self.config.drift_margin)
        st.renew_at = sent_at + granted * self.config.renew_fraction

    def _claim(self, st: SymbolAuthority, reason: str, now: float, out: Outcome) -> None:
        """Ask for the symbol with an epoch above any seen; only ever called while it is mine."""
        assert st.mine, f"{st.symbol}: claiming a symbol that is not ours"
        epoch = st.highest_seen + 1
        self._move(st, Phase.CLAIMING, reason, now, out, epoch=epoch)
        st.awaiting = Claim(st.symbol, epoch)
        out.actions.append(st.awaiting)

    def _back_off(self, st: SymbolAuthority, reason: str, now: float, out: Outcome) -> None:
        st.attempts += 1
        st.retry_at = now + self._backoff_delay(st.attempts)
        self._move(st, Phase.BACKING_OFF, reason, now, out)

    def _release(self, st: SymbolAuthority, why: str, now: float, out: Outcome) -> None:
        st.release_why = why
        # Past the lease's end at the exchange there is nothing left to give back.
        st.give_up_at = st.lease_end + self.config.drift_margin
        st.retry_at = math.inf
        self._move(st, Phase.RELEASING, f"releasing:{why}", now, out)
        st.awaiting = Release(st.symbol, st.epoch)
        out.actions.append(st.awaiting)

    def _finish_release(self, st: SymbolAuthority, reason: str, now: float, out: Outcome) -> None:
        st.awaiting = None
        st.give_up_at = st.retry_at = math.inf
        self._move(st, Phase.IDLE, reason, now, out)
        if st.mine:
            # The view came back to us while we were releasing: claim anew, above what we held.
            st.highest_seen = max(st.highest_seen, st.epoch)
            st.attempts = 0
            self._claim(st, "claiming:owner", now, out)

    def _move(self, st: SymbolAuthority, new: Phase, reason: str, now: float, out: Outcome, *,
              epoch: int | None = None) -> None:
        old = st.phase
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"{st.symbol}: {old.value} -> {new.value} ({reason})")
        if old is Phase.HELD and new is not Phase.HELD:
            # Before anything else goes out: no quote op may follow a decision to give it up.
            out.actions.append(StopQuoting(st.symbol))
        if new is not Phase.HELD:
            st.renew_at = math.inf
        if epoch is not None:
            st.epoch = epoch
        st.phase = new
        out.transitions.append(Transition(st.symbol, old, new, reason, st.epoch, now))

    def _backoff_delay(self, attempt: int) -> float:
        # The jitter keeps two disagreeing peers from hammering the exchange in lock-step.
        return self.config.retry.delay(attempt, self._rng)
