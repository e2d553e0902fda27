"""What a partition means for each peer: from `'mm-1,mm-2 | mm-3,exchange'` to each peer's link rules.

What it is for: `murmur partition` reads a spec of groups, checks it against the cluster's peers
(cluster.json), and turns it into one rule a peer (the JSON `/admin/links` takes: the remote
peers, the direction, cut or degraded). Every peer of a group gets a rule naming the peers of the
other groups, so both ends of every cut link hold it. `restart` recomputes a restarted peer's
rules from the faults still active, with the same function.

It must never talk to peers or read files: the caller brings the cluster's peers and the time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_DELAY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:(?:±|\+-|~)\s*(\d+(?:\.\d+)?))?\s*(?:ms)?\s*")


class PlanError(ValueError):
    """A partition spec or link option that cannot be applied; the message says why."""


@dataclass(frozen=True)
class LinkEffect:
    """What happens on the cut links: a cut, or a degradation (loss, delay, duplication)."""

    cut: bool = True
    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    duplicate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"cut": self.cut, "loss": self.loss, "delay_ms": self.delay_ms,
                "jitter_ms": self.jitter_ms, "duplicate": self.duplicate}


@dataclass
class Partition:
    groups: list[list[str]]
    one_way: bool = False
    effect: LinkEffect = field(default_factory=LinkEffect)

    @property
    def summary(self) -> str:
        arrow = " -> " if self.one_way else " | "
        return arrow.join(",".join(g) for g in self.groups)


def parse_groups(spec: str, known: list[str]) -> list[list[str]]:
    """`'a,b | c'` -> [["a", "b"], ["c"]]; every name known, none twice, at least two groups."""
    groups = []
    for part in spec.split("|"):
        names = [n.strip() for n in part.split(",") if n.strip()]
        if not names:
            raise PlanError(f"empty group in {spec!r}: write groups of peer names split by '|', "
                            "e.g. 'mm-1,mm-2 | mm-3,exchange,ledger'")
        groups.append(names)
    if len(groups) < 2:
        raise PlanError(f"a partition needs at least two groups split by '|', got {spec!r}")
    seen: set[str] = set()
    for name in (n for g in groups for n in g):
        if name not in known:
            raise PlanError(f"no peer named {name!r} in the cluster (peers: {', '.join(known)})")
        if name in seen:
            raise PlanError(f"{name!r} is in more than one group")
        seen.add(name)
    return groups


def parse_probability(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"--{what} takes a probability from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise PlanError(f"--{what} takes a probability from 0 to 1, got {text!r}")
    return value


def parse_delay(text: str) -> tuple[float, float]:
    """`'50'`, `'50ms'`, `'50±10'`, `'50+-10'` -> (delay_ms, jitter_ms)."""
    match = _DELAY.fullmatch(text)
    if match is None:
        raise PlanError(f"--delay takes MS or MS±JITTER (e.g. 50 or 50±10), got {text!r}")
    delay, jitter = float(match.group(1)), float(match.group(2) or 0.0)
    if not (math.isfinite(delay) and delay <= 60_000 and jitter <= delay):
        raise PlanError(f"--delay must be at most 60000 ms with the jitter at most the delay, got {text!r}")
    return delay, jitter


def rules_for(partition: Partition, peers: list[dict[str, Any]], *, rule_id: str,
              until: float | None) -> dict[str, dict[str, Any]]:
    """Each affected peer's rule: {peer name: rule}. `peers` are cluster.json's entries.

    Both ways: every peer gets a rule naming every peer of the other groups, direction both.
    One way (two groups, left -> right): the left group's rule says `out`, the right's `in`.
    """
    by_name = {p["name"]: p for p in peers}
    if partition.one_way and len(partition.groups) != 2:
        raise PlanError("--one-way needs exactly two groups: LEFT | RIGHT (cut from left to right)")
    rules: dict[str, dict[str, Any]] = {}
    for i, group in enumerate(partition.groups):
        others = [n for j, g in enumerate(partition.groups) if j != i for n in g]
        direction = "both"
        if partition.one_way:
            direction = "out" if i == 0 else "in"
        for name in group:
            rules[name] = {
                "id": rule_id,
                "peers": [_remote(by_name[o]) for o in others],
                "direction": direction,
                **partition.effect.to_json(),
                "until": until,
            }
    return rules


def _remote(peer: dict[str, Any]) -> dict[str, str]:
    return {"name": peer["name"], "gossip": peer["gossip"], "http": peer["http"]}


def partition_from_record(record: dict[str, Any]) -> Partition:
    """The partition a faults.jsonl record describes (for re-applying it after a restart)."""
    effect = LinkEffect(
        cut=bool(record.get("cut", True)),
        loss=float(record.get("loss", 0.0)),
        delay_ms=float(record.get("delay_ms", 0.0)),
        jitter_ms=float(record.get("jitter_ms", 0.0)),
        duplicate=float(record.get("duplicate", 0.0)),
    )
    return Partition([list(g) for g in record["groups"]], bool(record.get("one_way")), effect)
