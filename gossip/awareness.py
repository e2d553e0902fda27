"""Lifeguard's local health: how much this node distrusts its own timeliness.

What it is for: a node that misses acks or has to refute suspicions of itself is probably the
slow one (CPU starved, paused, lossy link), so it stretches its own probe interval and timeouts
instead of accusing healthy peers. Score 0 is healthy; the scale factor is score + 1. It must
never read the clock: it is a counter.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int):
        self.max_score = max(0, max_multiplier - 1)
        self.score = 0

    def apply(self, delta: int) -> int:
        self.score = min(self.max_score, max(0, self.score + delta))
        return self.score

    def scale(self, duration: float) -> float:
        return duration * (self.score + 1)
