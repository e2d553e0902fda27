"""How long to wait before a retry: one value object for every retry loop of a peer.

What it is for: the market maker's claims, its reads of the exchange and the ledger, and the
exchange's fill outbox all retry something that failed. Each says how with one `Backoff`: the
first delay, the cap, the growth factor and how much jitter. Jitter comes from a `random.Random`
the caller passes in (seeded where replay matters), so a core that uses it stays deterministic.

It must never sleep, read a clock or hold a retry's state: it answers "how long before attempt
n", and the caller counts attempts (and resets the count after a success).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry `n` (1-based) waits `first * factor**(n-1)`, at most `cap`.

    With `jitter` J (0..1) the wait is drawn uniformly from [(1-J)·d, d]: 0 is no jitter, 0.5 is
    "equal jitter" (at least half the delay, so peers that failed together do not retry in
    lock-step, yet none retries much sooner than planned). `factor` 1 makes a fixed delay.
    """

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"need 0 < first <= cap, got first={self.first} cap={self.cap}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within 0..1, got {self.jitter}")

    @property
    def attempts_to_cap(self) -> int:
        """The first attempt whose delay is the cap (1 when the delay never grows)."""
        if self.factor == 1 or self.first >= self.cap:
            return 1
        return 1 + math.ceil(math.log(self.cap / self.first, self.factor) - 1e-9)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        # The exponent is bounded so that a long outage cannot overflow the float.
        delay = min(self.cap, self.first * self.factor ** min(attempt - 1, 64))
        if self.jitter == 0:
            return delay
        if rng is None:
            raise ValueError("a jittered back-off needs the caller's random.Random")
        return delay * (1 - self.jitter) + delay * self.jitter * rng.random()
