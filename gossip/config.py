"""Named protocol profiles, with every tunable of the gossip layer in one place.

What it is for: `lan` carries HashiCorp memberlist's DefaultLANConfig values; `local` is for many
peers on one machine (probe every 200 ms). Every field can be overridden by name. It must never
read the environment or the clock: a profile is plain data handed to the core.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# 2: packets and push-pull states carry the cluster's name (1 did not; a peer of 1 is dropped
# and counted as dropped_version). docs/membership.md, "Wire format", keeps the history.
PROTOCOL_VERSION = 2
MAX_META_BYTES = 512
# The cluster's name when none is given; every packet and stream carries it, and one of another
# cluster is dropped. At most MAX_CLUSTER_NAME characters (it also goes into mDNS TXT records).
DEFAULT_CLUSTER = "murmur"
MAX_CLUSTER_NAME = 63

# Incarnations. No message carries one above MAX_INCARNATION and no peer ever holds or stores one
# above it: the largest integer every JSON reader keeps exactly (incarnations reach /members and
# the logs). Above HEADROOM_FLOOR lies the headroom, where incarnations only creep: a message
# there is taken only a little above what is held (an alive at most HEADROOM_STEP above, a suspect
# or dead no higher than held, nothing about oneself above one's own), so one forged message can
# never push a live member to where it could not refute. docs/membership.md, "Incarnations and
# their bound", has the reasoning and what a peer does at the bound.
MAX_INCARNATION = 2**53 - 1
HEADROOM_FLOOR = MAX_INCARNATION - 2**48
HEADROOM_STEP = 2**16


@dataclass(frozen=True, slots=True)
class GossipConfig:
    name: str = "lan"
    # Failure detection (SWIM + Lifeguard).
    probe_interval: float = 1.0  # one probe target per period
    probe_timeout: float = 0.5  # direct ack wait before asking others
    indirect_checks: int = 3  # k members asked to ping-req
    suspicion_mult: int = 4  # min suspicion = mult * log10(max(1, N)) * probe_interval
    suspicion_max_timeout_mult: int = 6  # max suspicion = this * min suspicion
    awareness_max_multiplier: int = 8  # Lifeguard local health: scale up to this factor
    # Dissemination.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    retransmit_mult: int = 4  # each update sent about retransmit_mult * log10(N+1) times
    gossip_to_the_dead_time: float = 30.0  # keep gossiping to dead nodes this long
    max_packet: int = 1400
    # Anti-entropy and rejoin.
    push_pull_interval: float = 30.0  # full state exchange with one random member
    reconnect_interval: float = 30.0  # push-pull to a random dead member or seed
    # A peer that knows no other member retries its seeds after a failed push-pull: first after
    # this (jittered down to half), doubling each time, never more than reconnect_interval.
    join_retry_min: float = 0.2
    stream_timeout: float = 10.0
    # How long dead and left members stay visible in the view before they are forgotten.
    dead_retention: float = 300.0

    def with_overrides(self, **overrides: Any) -> GossipConfig:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown gossip parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Derived quantities: functions of the cluster size N (members in the view, self included).

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        node_scale = max(1.0, math.log10(max(1, n)))
        lo = self.suspicion_mult * node_scale * self.probe_interval
        return lo, lo * self.suspicion_max_timeout_mult

    def expected_confirmations(self, n: int) -> int:
        # Lifeguard: suspicion_mult - 2 independent confirmations bring the timeout to its
        # minimum, but never more than there are other members who could confirm.
        return max(0, min(self.suspicion_mult - 2, n - 2))


# memberlist DefaultLANConfig.
LAN = GossipConfig()

# Many peers on one machine: fast probes, fast gossip, short anti-entropy.
LOCAL = GossipConfig(
    name="local",
    probe_interval=0.2,
    probe_timeout=0.1,
    indirect_checks=3,
    suspicion_mult=3,  # memberlist's DefaultLocalConfig: loopback latency is tiny and steady
    suspicion_max_timeout_mult=6,
    gossip_interval=0.05,
    gossip_nodes=3,
    retransmit_mult=4,
    gossip_to_the_dead_time=10.0,
    push_pull_interval=5.0,
    reconnect_interval=2.0,
    stream_timeout=2.0,
    dead_retention=120.0,
)

PROFILES: dict[str, GossipConfig] = {"lan": LAN, "local": LOCAL}


def profile(name: str, **overrides: Any) -> GossipConfig:
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
    return base.with_overrides(**overrides) if overrides else base
