"""Symbol authority at the exchange: epochs (fencing tokens), leases, and the quote-op fence.

What it is for: the rules that make "two peers never quote one symbol at once" true at the one
place where it matters. Per symbol the exchange holds the current epoch, its holder, the lease
expiry and the highest quote sequence number accepted in that epoch.

- A claim needs an epoch above the current one, and is accepted only when the symbol is vacant,
  released, its lease has expired, its holder is dead or gone in the exchange's own membership
  view, or the claimant already holds it (a restarted holder re-claiming). Epochs only grow.
- Renew extends the holder's lease, for the current epoch only, and only before it expired.
- Release gives the symbol up (and the exchange withdraws the holder's quote).
- Every quote publish/replace/cancel carries (holder, epoch, seq) and passes `check_quote_op`:
  another epoch, another holder, a released symbol, an expired lease, or a seq not above the
  last accepted one is rejected with a reason.

It must never do I/O or read a clock: `now` and the membership verdict come in as arguments,
which also makes a tape replay reproduce every decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AuthorityState(enum.Enum):
    VACANT = "vacant"
    HELD = "held"
    RELEASED = "released"


@dataclass(slots=True)
class Authority:
    symbol: str
    epoch: int = 0
    holder: str | None = None
    lease_expires_at: float = 0.0
    state: AuthorityState = AuthorityState.VACANT
    last_seq: int = 0

    def lease_left(self, now: float) -> float:
        return max(0.0, self.lease_expires_at - now) if self.state is AuthorityState.HELD else 0.0

    def is_live(self, now: float) -> bool:
        """Held, with a lease that has not run out."""
        return self.state is AuthorityState.HELD and now < self.lease_expires_at

    def to_json(self, now: float) -> dict:
        state = self.state.value
        if self.state is AuthorityState.HELD and now >= self.lease_expires_at:
            state = "expired"
        return {
            "symbol": self.symbol,
            "epoch": self.epoch,
            "holder": self.holder,
            "state": state,
            "lease_expires_at": self.lease_expires_at if self.holder else None,
            "lease_left": round(self.lease_left(now), 3),
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    reason: str  # "claimed", "renewed", "released", "ok", or why not

    def __bool__(self) -> bool:
        return self.accepted


class AuthorityTable:
    def __init__(self, symbols: list[str], lease_duration: float):
        if lease_duration <= 0:
            raise ValueError("lease_duration must be positive")
        self.lease_duration = lease_duration
        self._by_symbol: dict[str, Authority] = {s: Authority(s) for s in symbols}

    def __getitem__(self, symbol: str) -> Authority:
        return self._by_symbol[symbol]

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._by_symbol

    def all(self) -> list[Authority]:
        return list(self._by_symbol.values())

    def claim(self, symbol: str, claimant: str, epoch: int, now: float, holder_alive: bool) -> Decision:
        a = self._by_symbol[symbol]
        if epoch <= a.epoch:
            if epoch == a.epoch and a.holder == claimant and a.is_live(now):
                return Decision(True, "already-held")  # a retried claim: same answer, no change
            return Decision(False, "stale-epoch")
        free = (
            a.state is not AuthorityState.HELD
            or now >= a.lease_expires_at
            or not holder_alive
            or a.holder == claimant
        )
        if not free:
            return Decision(False, "held")
        a.epoch = epoch
        a.holder = claimant
        a.lease_expires_at = now + self.lease_duration
        a.state = AuthorityState.HELD
        a.last_seq = 0
        return Decision(True, "claimed")

    def renew(self, symbol: str, claimant: str, epoch: int, now: float) -> Decision:
        a = self._by_symbol[symbol]
        verdict = self._fence(a, claimant, epoch, now)
        if verdict is not None:
            return verdict
        a.lease_expires_at = now + self.lease_duration
        return Decision(True, "renewed")

    def release(self, symbol: str, claimant: str, epoch: int, now: float) -> Decision:
        a = self._by_symbol[symbol]
        if a.state is AuthorityState.RELEASED and a.holder == claimant and a.epoch == epoch:
            return Decision(True, "already-released")
        if a.epoch != epoch:
            return Decision(False, "stale-epoch")
        if a.holder != claimant:
            return Decision(False, "not-holder")
        if a.state is not AuthorityState.HELD:
            return Decision(False, a.state.value)
        # Releasing an expired lease is still allowed: it only makes the symbol free sooner.
        a.state = AuthorityState.RELEASED
        return Decision(True, "released")

    def check_quote_op(self, symbol: str, claimant: str, epoch: int, seq: int, now: float) -> Decision:
        a = self._by_symbol[symbol]
        verdict = self._fence(a, claimant, epoch, now)
        if verdict is not None:
            return verdict
        if seq <= a.last_seq:
            return Decision(False, "stale-seq")
        return Decision(True, "ok")

    def accept_seq(self, symbol: str, seq: int) -> None:
        self._by_symbol[symbol].last_seq = seq

    def expire(self, now: float) -> list[Authority]:
        """Leases that ran out: the exchange withdraws their quotes. State stays HELD (expired)."""
        return [a for a in self._by_symbol.values() if a.state is AuthorityState.HELD and now >= a.lease_expires_at]

    @staticmethod
    def _fence(a: Authority, claimant: str, epoch: int, now: float) -> Decision | None:
        if epoch != a.epoch:
            return Decision(False, "stale-epoch" if epoch < a.epoch else "unknown-epoch")
        if a.holder != claimant:
            return Decision(False, "not-holder")
        if a.state is not AuthorityState.HELD:
            return Decision(False, a.state.value)
        if now >= a.lease_expires_at:
            return Decision(False, "lease-expired")
        return None
