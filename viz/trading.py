"""What the trading panels of `murmur top` know: the exchange's and the ledger's last good answers,
how each source's last poll went, and the log of authority changes.

What it is for: the state that `viz/sources.py` writes after each poll and `viz/panels.py` draws,
and the one rule here that is more than copying: a symbol whose (holder, epoch) at the exchange
differs from the previous good poll gets a line in the authority-change log. It must never do
I/O or read a clock: every time comes in as an argument, so tests drive it with fixed data.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_CHANGES = 10  # lines kept in the authority-change log
RECENT_FILLS = 10  # fills kept for the "recent fills" panel


@dataclass
class SourceStatus:
    """One source (the exchange or the ledger): where the membership view says it is, and how
    its last poll went. `error` set with `last_ok` set means the data on screen is stale."""

    role: str
    name: str | None = None  # its member name, from the membership view
    url: str | None = None
    member_state: str | None = None  # alive / suspect / dead / left, in the membership view
    last_ok: float | None = None  # local wall time of the last good poll
    error: str | None = None
    polls: int = 0
    # Other up members of the view that claim the same role (a conflict a person must resolve).
    conflict: tuple[str, ...] = ()
    # The source's own alarms (`/status` "alarms"): name -> details.
    alarms: dict[str, Any] = field(default_factory=dict)

    def stale_for(self, now: float) -> float | None:
        """Seconds the data on screen is behind, if the last poll failed; None if it is fresh."""
        if self.error is None or self.last_ok is None:
            return None
        return max(0.0, now - self.last_ok)


@dataclass(frozen=True, slots=True)
class ExchangeSnapshot:
    """One good poll of the exchange: `GET /authority`, `/quotes`, `/prices` and the last fills."""

    polled_at: float  # local wall time the answers arrived
    authority: tuple[dict[str, Any], ...]
    quotes: tuple[dict[str, Any], ...]
    prices: dict[str, int]
    fills: tuple[dict[str, Any], ...]  # the last RECENT_FILLS, oldest first
    fills_total: int
    exchange_now: float | None = None  # the exchange's clock as it answered (`/prices` "at")

    def seconds_left(self, deadline: Any, now: float) -> float | None:
        """Time left until an exchange-clock `deadline`, counted down since the poll.

        Measured against the exchange's own clock at the poll, so a skew between this machine's
        clock and the exchange's does not show up as a wrong lease or expiry."""
        if not isinstance(deadline, (int, float)):
            return None
        base = self.exchange_now if self.exchange_now is not None else self.polled_at
        return deadline - base - max(0.0, now - self.polled_at)


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """One good poll of the ledger: `GET /positions` and `GET /exposure`."""

    polled_at: float
    positions: tuple[dict[str, Any], ...]
    exposure: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuthorityChange:
    """A symbol's (holder, epoch) at the exchange differed from the previous good poll."""

    at: float  # local wall time of the poll that saw it
    symbol: str
    holder: str | None
    epoch: int | None
    was_holder: str | None
    was_epoch: int | None

    def line(self) -> str:
        """`12:00:03 MSFT mm-2 epoch 7 (was mm-1 epoch 6)`, in local time."""
        clock = time.strftime("%H:%M:%S", time.localtime(self.at))
        return (
            f"{clock} {self.symbol} {_holding(self.holder, self.epoch)} "
            f"(was {_holding(self.was_holder, self.was_epoch)})"
        )


def _holding(holder: str | None, epoch: int | None) -> str:
    if holder is None and not epoch:
        return "vacant"
    return f"{holder or 'nobody'} epoch {epoch if epoch is not None else '?'}"


@dataclass
class TradingState:
    """Everything the trading panels draw; written only by the poller, read by the renderer."""

    exchange: SourceStatus = field(default_factory=lambda: SourceStatus("exchange"))
    ledger: SourceStatus = field(default_factory=lambda: SourceStatus("ledger"))
    exchange_data: ExchangeSnapshot | None = None
    ledger_data: LedgerSnapshot | None = None
    changes: deque[AuthorityChange] = field(default_factory=lambda: deque(maxlen=MAX_CHANGES))


def holdings(authority: Iterable[dict[str, Any]]) -> dict[str, tuple[str | None, int | None]]:
    """(holder, epoch) per symbol, from `GET /authority` rows."""
    return {str(a.get("symbol")): (a.get("holder"), a.get("epoch")) for a in authority}


def authority_changes(
    previous: Iterable[dict[str, Any]] | None, current: Iterable[dict[str, Any]], at: float
) -> list[AuthorityChange]:
    """The symbols whose (holder, epoch) differ between two polls, in symbol order.

    No previous poll means nothing to compare with: the first view is the baseline, not a change.
    A symbol that was not in the previous poll counts as coming from vacant."""
    if previous is None:
        return []
    before = holdings(previous)
    out = []
    for symbol, (holder, epoch) in sorted(holdings(current).items()):
        was_holder, was_epoch = before.get(symbol, (None, None))
        if (holder, epoch) != (was_holder, was_epoch):
            out.append(AuthorityChange(at, symbol, holder, epoch, was_holder, was_epoch))
    return out


def record_exchange(state: TradingState, snapshot: ExchangeSnapshot) -> list[AuthorityChange]:
    """A good exchange poll: keep it, log authority changes since the previous good one."""
    previous = state.exchange_data.authority if state.exchange_data is not None else None
    changes = authority_changes(previous, snapshot.authority, snapshot.polled_at)
    state.changes.extend(changes)
    state.exchange_data = snapshot
    _ok(state.exchange, snapshot.polled_at)
    return changes


def record_ledger(state: TradingState, snapshot: LedgerSnapshot) -> None:
    state.ledger_data = snapshot
    _ok(state.ledger, snapshot.polled_at)


def record_failure(status: SourceStatus, reason: str) -> None:
    """A failed poll: say why; the last good data stays (it is drawn as stale)."""
    status.error = reason
    status.polls += 1


def _ok(status: SourceStatus, at: float) -> None:
    status.last_ok = at
    status.error = None
    status.polls += 1
