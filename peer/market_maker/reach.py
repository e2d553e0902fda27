"""Can this market maker reach the exchange? The rule that makes it step aside, and come back.

What it is for: a market maker cut from the exchange but not from the other market makers is
still alive in their gossip views, so rendezvous hashing keeps naming it the owner of its
symbols, and nobody else claims them: they would stay unquoted for as long as the cut lasts. So
the shell feeds this core the outcome of every call to the exchange (ok: an answer came, of any
status; failed: no answer in time, no connection, or no exchange in the view), and when the core
says unreachable the peer marks itself "aside" in its gossip meta; rendezvous then skips it and
the others take its symbols over (docs/market-makers.md, "Stepping aside").

The rule, with hysteresis:
- unreachable when a call sent after the last success failed, and `aside_after` seconds have
  passed since the first such call was sent with still no success. Idle is not failure: time in
  which nothing was asked counts for nothing, only time since a call that went unanswered.
  A failure of a call sent before the last success says nothing new about the link (it
  overlapped a call that got through) and is ignored.
- reachable again once calls have kept succeeding for `back_after` seconds with no new failure
  (the first and the latest success of an unbroken run at least that far apart): one success is
  not enough, so a link that comes back for a moment between cuts does not pull the symbols back
  only to push them out again a second later.

It must never read the clock, sleep or touch the network: every time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

UNREACHABLE = "exchange-unreachable"


@dataclass(frozen=True, slots=True)
class ReachConfig:
    """The figures of the rule, chosen against the exchange's lease (2.0 s, book/exchange.py)
    and the market maker's request timeout (1.0 s, MarketMakerService).

    aside_after = 2.0 s, the lease. Stepping aside sooner gains nothing: the exchange refuses
    the next owner's claim until the holder's lease has run out, and that lease was granted by
    a renewal answered at the latest at the last success, so it ends no later than
    `aside_after` after the first unanswered call (clock rates equal). Stepping aside later only
    leaves the symbol unquoted longer. And it is twice the request timeout: one call that times
    out (its failure arrives 1.0 s after it was sent) can never on its own make a peer step aside,
    a second one sent after it must also go unanswered.

    back_after = 0.5 s: two to three answered calls at the probe and price-poll rate (every
    0.25 s), enough to tell a healed link from a flapping one coming up for a moment, and short
    next to the cost it adds where it matters (every market maker aside because the exchange was
    down: the cluster quotes again this much later after the exchange is back).

    probe_interval = 0.25 s: a probe (`GET /health`) goes out whenever no call has been answered
    for this long, so an aside peer hears of recovery without waiting on its other loops, and
    a cut is noticed by a call sent at most this long after it, whatever else the peer is doing.
    """

    aside_after: float = 2.0
    back_after: float = 0.5
    probe_interval: float = 0.25

    @classmethod
    def for_lease(cls, lease: float, request_timeout: float = 1.0) -> ReachConfig:
        """The defaults' reasoning applied to another `--lease`: aside after the lease, and
        never sooner than two request timeouts."""
        return cls(aside_after=max(lease, 2 * request_timeout))

    def __post_init__(self) -> None:
        if self.aside_after <= 0:
            raise ValueError("aside_after must be positive")
        if self.back_after < 0:
            raise ValueError("back_after must not be negative")
        if self.probe_interval <= 0:
            raise ValueError("probe_interval must be positive")


@dataclass(frozen=True, slots=True)
class ReachChange:
    """A decision changed: what the shell logs and gossips."""

    reachable: bool
    at: float
    reason: str | None  # UNREACHABLE when stepping aside, None when coming back
    last_ok: float  # the last answered call (or the start, if none yet)
    failing_since: float | None  # when the first unanswered call after it was sent
    failures: int  # unanswered calls sent since the last success
    successes: int  # answered calls in the run that brought it back (0 when stepping aside)

    def to_json(self) -> dict[str, object]:
        return {"reachable": self.reachable, "reason": self.reason,
                "silent_s": round(self.at - self.last_ok, 3),
                "failing_s": None if self.failing_since is None else round(self.at - self.failing_since, 3),
                "failures": self.failures, "successes": self.successes}


class ExchangeReach:
    """The reach decision for one market maker; starts reachable, as of `now`."""

    def __init__(self, config: ReachConfig | None = None, *, now: float) -> None:
        self.config = config or ReachConfig()
        self.reachable = True
        self.last_ok = now  # the start counts as a success: nothing was asked before it
        self.failing_since: float | None = None  # sent time of the first failure after last_ok
        self.failures = 0  # failures of calls sent after last_ok
        # While unreachable: the first and the number of answers of the current unbroken run.
        self.run_start: float | None = None
        self.run_successes = 0

    def record(self, ok: bool, *, sent_at: float, now: float) -> ReachChange | None:
        """The outcome of one call to the exchange sent at `sent_at`, known at `now`."""
        if ok:
            self.last_ok = max(self.last_ok, now)
            self.failing_since = None
            self.failures = 0
            if not self.reachable:
                if self.run_start is None:
                    self.run_start = now
                    self.run_successes = 0
                self.run_successes += 1
        else:
            if sent_at >= self.last_ok:
                self.failures += 1
                if self.failing_since is None or sent_at < self.failing_since:
                    self.failing_since = sent_at
            if self.run_start is not None and sent_at >= self.run_start:
                # Sent while the run was going: the link failed again, the run starts over.
                self.run_start = None
                self.run_successes = 0
        return self.poll(now)

    def poll(self, now: float) -> ReachChange | None:
        """The change due at `now`, if any (also called by `record`)."""
        cfg = self.config
        if self.reachable:
            if self.failing_since is not None and now - self.failing_since >= cfg.aside_after:
                self.reachable = False
                self.run_start = None
                self.run_successes = 0
                return ReachChange(False, now, UNREACHABLE, self.last_ok, self.failing_since, self.failures, 0)
            return None
        if self.run_start is not None and self.last_ok - self.run_start >= cfg.back_after:
            change = ReachChange(True, now, None, self.last_ok, None, 0, self.run_successes)
            self.reachable = True
            self.run_start = None
            self.run_successes = 0
            return change
        return None

    def next_deadline(self) -> float | None:
        """When `poll` may next change the decision with no new outcome: only stepping aside
        waits on time; coming back waits on an answer."""
        if self.reachable and self.failing_since is not None:
            return self.failing_since + self.config.aside_after
        return None

    def wants_probe(self, now: float) -> bool:
        """No call answered for a probe interval: time to ask the exchange something."""
        return now - self.last_ok >= self.config.probe_interval

    def snapshot(self, now: float) -> dict[str, object]:
        return {"reachable": self.reachable, "silent_s": round(now - self.last_ok, 3),
                "failures": self.failures,
                "failing_s": None if self.failing_since is None else round(now - self.failing_since, 3)}
