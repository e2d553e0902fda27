"""Lifeguard's suspicion timer: starts long, shrinks with independent confirmations.

What it is for: a member suspected by one node is given the maximum timeout to refute; every other
member that independently suspects it brings the deadline closer, down to the minimum once `k`
confirmations arrived (timeout = max(min, max - (max - min) * log(n + 1) / log(k + 1))). It must
never read the clock: the start time and "now" are handed in.
"""

from __future__ import annotations

import math


class Suspicion:
    def __init__(self, suspector: str, k: int, min_timeout: float, max_timeout: float, start: float):
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout if k > 0 else min_timeout
        self.start = start
        self.first_suspector = suspector
        # Insertion-ordered so that traces are deterministic; the first suspector is not a
        # confirmation of itself.
        self._from: dict[str, None] = {suspector: None}

    @property
    def confirmations(self) -> int:
        return len(self._from) - 1

    def confirm(self, suspector: str) -> bool:
        """Record an independent suspicion; True if it was new (and so moved the deadline)."""
        if suspector in self._from or self.confirmations >= self.k:
            return False
        self._from[suspector] = None
        return True

    def timeout(self) -> float:
        if self.k <= 0:
            return self.min_timeout
        frac = math.log(self.confirmations + 1) / math.log(self.k + 1)
        return max(self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac)

    @property
    def deadline(self) -> float:
        return self.start + self.timeout()
