"""Plain data shared by the gossip core, its shells and its readers.

What it is for: the vocabulary of membership (addresses, states, members, events) as frozen
values. It must never hold behaviour that touches sockets, clocks or randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# A network address as the transports see it: (host, port). The simulated network uses the same
# shape with made-up hosts, so the core cannot tell the two apart.
Address = tuple[str, int]


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def is_up(self) -> bool:
        """Alive or suspect: still counted as a member (SWIM keeps suspects in the view)."""
        return self in (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass(frozen=True, slots=True)
class Member:
    """One row of a node's membership view, as the core holds it at a moment."""

    name: str
    addr: Address
    incarnation: int
    state: MemberState
    meta: dict[str, Any] = field(default_factory=dict)
    # Core time (the `now` passed in) of the last state or incarnation change.
    changed_at: float = 0.0

    @property
    def role(self) -> str | None:
        return self.meta.get("role")

    @property
    def http(self) -> str | None:
        return self.meta.get("http")


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A membership transition, with the reason a person needs to follow it.

    `old` is None when the node was not known before. `reason` is a short code
    (``join``, ``alive``, ``suspected``, ``refuted``, ``suspicion-timeout``, ``dead-gossip``,
    ``left``, ``meta``, ``reaped``...) and `detail` holds who/how many.
    """

    at: float
    node: str
    old: MemberState | None
    new: MemberState | None
    incarnation: int
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "node": self.node,
            "old": self.old.value if self.old else None,
            "new": self.new.value if self.new else None,
            "incarnation": self.incarnation,
            "reason": self.reason,
            **({"detail": self.detail} if self.detail else {}),
        }
