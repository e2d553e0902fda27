"""A stand-in for `gossip.node.GossipNode` with a fixed view, for HTTP and CLI tests."""

from __future__ import annotations

from collections import Counter

from gossip.types import Member, MemberState

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def member(name, state, *, port, incarnation=1, role="mm", changed_at=100.0, http=True):
    meta = {"role": role, "version": 1}
    if http:
        meta["http"] = f"http://127.0.0.1:{port + 1000}"
    return Member(name, ("127.0.0.1", port), incarnation, state, meta, changed_at)


def sample_members() -> list[Member]:
    return [
        member("exchange", ALIVE, port=7001, role="exchange"),
        member("ledger", ALIVE, port=7002, role="ledger", changed_at=105.0),
        member("mm-1", ALIVE, port=7003, incarnation=3),
        member("mm-2", SUSPECT, port=7004, incarnation=2, changed_at=110.5),
        member("mm-3", DEAD, port=7005, changed_at=111.0),
        member("mm-4", LEFT, port=7006, incarnation=4, changed_at=112.0),
    ]


class FakeNode:
    def __init__(self, name: str = "mm-1", members: list[Member] | None = None) -> None:
        self.name = name
        self.incarnation = 3
        self.addr = ("127.0.0.1", 7003)
        self.health = 2
        self._members = sorted(members or sample_members(), key=lambda m: m.name)
        self._stats = {
            "packets_in": 120,
            "packets_out": 118,
            "dropped_malformed": 1,
            "suspicions": 2,
            "local_health": 2,
        }

    def members(self) -> list[Member]:
        return list(self._members)

    def counts(self) -> dict[str, int]:
        counts = Counter(m.state.value for m in self._members)
        return {s.value: counts.get(s.value, 0) for s in MemberState}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)


class FakeTransport:
    def __init__(self) -> None:
        self.stats = {"packets_in": 130, "bytes_in": 9000, "send_errors": 0}
