"""The SWIM membership protocol with Lifeguard, as a state machine with no I/O.

What it is for: everything a node decides about membership. It is driven by three inputs only —
`receive_packet(data, sender, now)`, `receive_state(data, sender, now)` (push-pull) and
`handle_timer(now)` — plus calls (`join`, `leave`, `update_meta`); it answers with
`pop_packets()`, `pop_exchanges()`, `pop_events()` and `next_deadline()`. The shell (`node.py`)
moves bytes and sleeps; this file decides.

It must never open a socket, sleep, read a clock or use unseeded randomness: time comes in as
`now`, randomness from the `random.Random` handed in. That is what lets a thousand nodes run in
one process under a virtual clock, and the same seed give the same trace.

Rules, after SWIM (Das et al. 2002), Lifeguard (Dadgar et al. 2018) and hashicorp/memberlist:
- one probe target per period, round-robin over a list reshuffled at each wrap; direct ping,
  then ping-req through k members (who nack if the target stays silent);
- a failed probe makes the target suspect; a suspect that does not refute in time is dead;
  a node that hears itself suspected or declared dead refutes with a higher incarnation;
- updates ride on every packet, each sent a bounded number of times, and a periodic gossip
  spreads them when there is no probe traffic; push-pull exchanges full state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gossip import wire
from gossip.awareness import Awareness
from gossip.broadcast import BroadcastQueue
from gossip.config import (
    DEFAULT_CLUSTER,
    HEADROOM_FLOOR,
    HEADROOM_STEP,
    MAX_INCARNATION,
    MAX_META_BYTES,
    GossipConfig,
)
from gossip.suspicion import Suspicion
from gossip.types import Address, Member, MemberEvent, MemberState

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
# After a join, a peer announces itself directly to at most this many of the members it learned.
JOIN_ANNOUNCE = 64


@dataclass(slots=True)
class _Node:
    name: str
    addr: Address
    incarnation: int
    state: MemberState
    meta: dict[str, Any]
    changed_at: float
    suspicion: Suspicion | None = None

    def snapshot(self) -> Member:
        return Member(self.name, self.addr, self.incarnation, self.state, dict(self.meta), self.changed_at)


@dataclass(slots=True)
class _Probe:
    """One probe this node runs: direct until `timeout_at`, indirect until `deadline`."""

    target: str
    started: float
    timeout_at: float
    deadline: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """A ping this node sends on behalf of another's ping-req."""

    requester: Address
    seq: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Exchange:
    """A push-pull the shell must carry out: send `data` to `addr`, feed the answer back."""

    addr: Address
    data: bytes
    reason: str  # "join", "join-retry", "anti-entropy", "reconnect"

    @property
    def joining(self) -> bool:
        """A push-pull with a seed by a peer that knew nobody (see `receive_state`'s `joining`)."""
        return self.reason in ("join", "join-retry")


@dataclass(slots=True)
class _Stats:
    counts: dict[str, int] = field(default_factory=dict)

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class Swim:
    def __init__(
        self,
        config: GossipConfig,
        name: str,
        addr: Address,
        *,
        incarnation: int = 1,
        meta: dict[str, Any] | None = None,
        rng: random.Random,
        now: float,
        cluster: str = DEFAULT_CLUSTER,
    ):
        if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation must be an integer from 0 to {MAX_INCARNATION}")
        self.config = config
        self.name = name
        # Carried by every packet and state; those of another cluster are dropped and counted.
        self.cluster = wire.check_cluster(cluster)
        self.rng = rng
        self.awareness = Awareness(config.awareness_max_multiplier)
        self._broadcasts = BroadcastQueue()
        meta = dict(meta or {})
        self._check_meta(meta)
        self._me = _Node(name, addr, incarnation, ALIVE, meta, now)
        self._nodes: dict[str, _Node] = {name: self._me}
        # Kept incrementally because they are read on every packet: counting or scanning the
        # whole view there would make each packet cost O(N).
        self._n_up = 1
        self._suspected: dict[str, _Node] = {}
        self._seeds: list[Address] = []
        self._packets: list[tuple[bytes, Address]] = []
        self._exchanges: list[Exchange] = []
        self._events: list[MemberEvent] = []
        self._stats = _Stats()
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        # Periodic work; the first tick of each is jittered so nodes started together spread out.
        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_gossip = now + rng.uniform(0, config.gossip_interval)
        self._next_push_pull = now + rng.uniform(0.5, 1.0) * config.push_pull_interval
        self._next_reconnect = now + config.reconnect_interval
        # Seed retries of a peer that knows no other member (see `exchange_failed`).
        self._join_retry_at: float | None = None
        self._join_backoff = config.join_retry_min
        self._next_reap = now + 1.0
        self._leaving = False
        self._events.append(MemberEvent(now, name, None, ALIVE, incarnation, "self", {"addr": list(addr)}))
        self._queue_alive(self._me)

    # --- reading the view -----------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def addr(self) -> Address:
        return self._me.addr

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._me.meta)

    @property
    def leaving(self) -> bool:
        return self._leaving

    def members(self) -> list[Member]:
        return [self._nodes[n].snapshot() for n in sorted(self._nodes)]

    def member(self, name: str) -> Member | None:
        node = self._nodes.get(name)
        return node.snapshot() if node else None

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in MemberState}
        for node in self._nodes.values():
            out[node.state.value] += 1
        return out

    def stats(self) -> dict[str, int]:
        return dict(self._stats.counts)

    def pending_broadcasts(self) -> int:
        return len(self._broadcasts)

    def _up_count(self) -> int:
        return self._n_up

    # --- outputs ----------------------------------------------------------------------------

    def pop_packets(self) -> list[tuple[bytes, Address]]:
        out, self._packets = self._packets, []
        return out

    def pop_exchanges(self) -> list[Exchange]:
        out, self._exchanges = self._exchanges, []
        return out

    def pop_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        if self._leaving:
            return self._next_gossip  # a leaving node only spreads the news of its leave
        deadlines = [self._next_probe, self._next_gossip, self._next_push_pull, self._next_reconnect, self._next_reap]
        if self._join_retry_at is not None:
            deadlines.append(self._join_retry_at)
        deadlines.extend(p.timeout_at if not p.indirect else p.deadline for p in self._probes.values())
        deadlines.extend(r.deadline for r in self._relays.values())
        deadlines.extend(n.suspicion.deadline for n in self._suspected.values() if n.suspicion is not None)
        return min(deadlines)

    # --- calls ------------------------------------------------------------------------------

    def join(self, seeds: list[Address], now: float) -> None:
        """Exchange full state with every seed. While this node knows no other member, a failed
        exchange is retried soon with a back-off (`exchange_failed`), not only on the reconnect tick."""
        self.add_seeds(seeds)
        for addr in self._seeds:
            self._exchanges.append(Exchange(addr, self._encode_state(), "join"))

    def add_seeds(self, seeds: list[Address]) -> None:
        for addr in seeds:
            if addr != self._me.addr and addr not in self._seeds:
                self._seeds.append(addr)

    def leave(self, now: float) -> None:
        """Announce a graceful leave: others record `left`, not `dead`."""
        if self._leaving:
            return
        self._leaving = True
        old = self._me.state
        self._me.state = LEFT
        self._n_up -= 1
        self._me.changed_at = now
        self._events.append(MemberEvent(now, self.name, old, LEFT, self._me.incarnation, "leave"))
        self._queue(self.name, wire.Dead(self.name, self._me.incarnation, self.name))
        # Tell a few members right away rather than waiting for the next gossip tick.
        self._gossip(now)

    def update_meta(self, meta: dict[str, Any], now: float) -> None:
        meta = dict(meta)
        self._check_meta(meta)
        if self._me.incarnation >= MAX_INCARNATION:
            raise ValueError(f"incarnation is at its bound ({MAX_INCARNATION}): metadata can no longer change")
        self._me.meta = meta
        self._me.incarnation += 1
        self._me.changed_at = now
        self._events.append(MemberEvent(now, self.name, ALIVE, ALIVE, self._me.incarnation, "meta"))
        self._queue_alive(self._me)

    @staticmethod
    def _check_meta(meta: dict[str, Any]) -> None:
        size = len(cbor2.dumps(meta))
        if size > MAX_META_BYTES:
            raise ValueError(f"metadata is {size} bytes encoded; the limit is {MAX_META_BYTES}")
        wire._meta(meta)  # the same shape rules the receivers apply

    # --- inputs: packets --------------------------------------------------------------------

    def receive_packet(self, data: bytes, sender: Address, now: float) -> None:
        self._stats.inc("packets_in")
        self._stats.inc("bytes_in", len(data))
        try:
            messages = wire.decode_packet(data, self.cluster)
        except wire.ForeignClusterError:
            self._stats.inc("dropped_foreign_cluster")
            return
        except wire.VersionError:
            self._stats.inc("dropped_version")
            return
        except wire.WireError:
            self._stats.inc("dropped_malformed")
            return
        if self._leaving:
            return
        for msg in messages:
            self._stats.inc("messages_in")
            if type(msg) in (wire.Alive, wire.Suspect, wire.Dead) and not self._plausible(
                msg.name, msg.incarnation, accusation=type(msg) is not wire.Alive
            ):
                continue
            match msg:
                case wire.Ping():
                    self._on_ping(msg, sender, now)
                case wire.Ack():
                    self._on_ack(msg, now)
                case wire.Nack():
                    self._on_nack(msg)
                case wire.PingReq():
                    self._on_ping_req(msg, sender, now)
                case wire.Alive():
                    self._on_alive(msg, now, via="gossip")
                case wire.Suspect():
                    self._on_suspect(msg, now)
                case wire.Dead():
                    self._on_dead(msg, now)

    def _plausible(self, name: str, incarnation: int, *, accusation: bool) -> bool:
        """Whether a message naming `name` at `incarnation` may be believed (else dropped, counted).

        Below HEADROOM_FLOOR, always. Above it only a little above what we hold: no higher for a
        suspect or dead (the accuser must hold what it accuses), at most HEADROOM_STEP higher for an
        alive (any alive of a member we do not know), and nothing about ourselves above our own
        incarnation. A refutation is then always one step above the accusation, within the bound,
        and a forged message moves a member up one step at most: it can never put a live member
        where it cannot refute. Only that message is dropped: the rest of its packet or state
        still counts.
        """
        if incarnation <= HEADROOM_FLOOR:
            return True
        if name == self.name:
            limit = self._me.incarnation
        else:
            node = self._nodes.get(name)
            if node is None:
                # A member we do not know: an alive is taken at any incarnation (a newcomer must
                # learn members that crept into the headroom); nobody holds what an accusation names.
                limit = HEADROOM_FLOOR if accusation else MAX_INCARNATION
            else:
                limit = node.incarnation if accusation else node.incarnation + HEADROOM_STEP
        if incarnation <= limit:
            return True
        self._stats.inc("dropped_implausible")
        return False

    def _on_ping(self, msg: wire.Ping, sender: Address, now: float) -> None:
        if msg.target != self.name:
            # Meant for a node that used to live at this address; silence makes the sender
            # treat it as failed, which is the truth.
            self._stats.inc("pings_misaddressed")
            return
        self._send([wire.encode_message(wire.Ack(msg.seq, self.name))], sender)

    def _on_ack(self, msg: wire.Ack, now: float) -> None:
        probe = self._probes.pop(msg.seq, None)
        if probe is not None:
            # A direct ack is evidence our own timing is fine; an indirect one is neutral.
            if not probe.indirect:
                self.awareness.apply(-1)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send([wire.encode_message(wire.Ack(relay.seq, self.name))], relay.requester)

    def _on_nack(self, msg: wire.Nack) -> None:
        probe = self._probes.get(msg.seq)
        if probe is not None and probe.indirect:
            probe.nacks += 1

    def _on_ping_req(self, msg: wire.PingReq, sender: Address, now: float) -> None:
        seq = self._next_seq()
        # Nack a little before the requester gives up, so a healthy helper's nack counts.
        self._relays[seq] = _Relay(sender, msg.seq, now + 0.8 * self.config.probe_timeout)
        self._send([wire.encode_message(wire.Ping(seq, msg.target, self.name))], msg.target_addr)

    # --- inputs: membership updates ---------------------------------------------------------

    def _on_alive(self, msg: wire.Alive, now: float, via: str, quiet_if_new: bool = False) -> None:
        if msg.name == self.name:
            if msg.incarnation > self._me.incarnation and not self._leaving:
                # Someone holds a newer incarnation of us (we restarted without our data dir):
                # go above it so our own word wins.
                self._refute(msg.incarnation, now, "stale-self")
            return
        node = self._nodes.get(msg.name)
        if node is None:
            node = _Node(msg.name, msg.addr, msg.incarnation, ALIVE, dict(msg.meta), now)
            self._nodes[msg.name] = node
            self._n_up += 1
            self._add_to_probe_order(msg.name)
            self._events.append(MemberEvent(now, msg.name, None, ALIVE, msg.incarnation, "join", {"via": via}))
            if not quiet_if_new:
                self._queue_alive(node)
            return
        if msg.incarnation <= node.incarnation:
            return
        old = node.state
        reason = "refuted" if old is SUSPECT else ("rejoined" if not old.is_up else "updated")
        node.incarnation = msg.incarnation
        node.addr = msg.addr
        node.meta = dict(msg.meta)
        node.state = ALIVE
        node.suspicion = None
        self._suspected.pop(node.name, None)
        if not old.is_up:
            self._n_up += 1
        if old is not ALIVE or reason == "updated":
            node.changed_at = now
            self._events.append(MemberEvent(now, node.name, old, ALIVE, node.incarnation, reason, {"via": via}))
        if not old.is_up:
            self._add_to_probe_order(node.name)
        self._queue_alive(node)

    def _on_suspect(self, msg: wire.Suspect, now: float) -> None:
        if msg.name == self.name:
            if msg.incarnation >= self._me.incarnation and not self._leaving:
                self.awareness.apply(1)  # being suspected hints that we are the slow one
                self._refute(msg.incarnation, now, "suspected", {"by": msg.source})
            return
        node = self._nodes.get(msg.name)
        if node is None or msg.incarnation < node.incarnation or not node.state.is_up:
            return
        if node.state is SUSPECT and msg.incarnation == node.incarnation:
            assert node.suspicion is not None
            if node.suspicion.confirm(msg.source):
                self._stats.inc("suspicion_confirmations")
                self._queue(node.name, wire.Suspect(node.name, node.incarnation, msg.source))
            return
        self._suspect(node, msg.incarnation, msg.source, now)

    def _on_dead(self, msg: wire.Dead, now: float) -> None:
        if msg.name == self.name:
            # Also when the "leave" is our own from an earlier life: this run is not leaving.
            if not self._leaving and msg.incarnation >= self._me.incarnation:
                self._refute(msg.incarnation, now, "declared-dead", {"by": msg.source})
            return
        node = self._nodes.get(msg.name)
        if node is None or msg.incarnation < node.incarnation or not node.state.is_up:
            return
        new = LEFT if msg.source == msg.name else DEAD
        reason = "left" if new is LEFT else "dead-gossip"
        self._set_down(node, new, msg.incarnation, now, reason, {"by": msg.source})
        self._queue(node.name, msg)

    # --- state changes ----------------------------------------------------------------------

    def _suspect(self, node: _Node, incarnation: int, source: str, now: float) -> None:
        old = node.state
        node.state = SUSPECT
        node.incarnation = incarnation
        node.changed_at = now
        n = self._up_count()
        lo, hi = self.config.suspicion_bounds(n)
        node.suspicion = Suspicion(source, self.config.expected_confirmations(n), lo, hi, now)
        self._suspected[node.name] = node
        self._stats.inc("suspicions")
        self._events.append(
            MemberEvent(now, node.name, old, SUSPECT, incarnation, "suspected", {"by": source, "timeout": round(hi, 3)})
        )
        self._queue(node.name, wire.Suspect(node.name, incarnation, source))

    def _set_down(self, node: _Node, state: MemberState, incarnation: int, now: float, reason: str, detail: dict) -> None:
        old = node.state
        node.state = state
        node.incarnation = incarnation
        node.changed_at = now
        node.suspicion = None
        self._suspected.pop(node.name, None)
        if old.is_up:
            self._n_up -= 1
        self._stats.inc("deaths" if state is DEAD else "leaves")
        self._events.append(MemberEvent(now, node.name, old, state, incarnation, reason, detail))

    def _refute(self, seen: int, now: float, reason: str, detail: dict | None = None) -> None:
        # `seen` is at most our own incarnation in the headroom (see _plausible), so this passes
        # the bound only when we already stand at it.
        wanted = max(self._me.incarnation, seen) + 1
        if wanted > MAX_INCARNATION:
            self._stats.inc("incarnation_at_bound")
        self._me.incarnation = min(wanted, MAX_INCARNATION)
        self._stats.inc("refutations")
        self._events.append(
            MemberEvent(now, self.name, ALIVE, ALIVE, self._me.incarnation, "refute", {"cause": reason, **(detail or {})})
        )
        self._queue_alive(self._me)

    # --- timers -----------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for seq, probe in list(self._probes.items()):
            if not probe.indirect and now >= probe.timeout_at:
                self._probe_indirect(seq, probe, now)
            elif probe.indirect and now >= probe.deadline:
                del self._probes[seq]
                self._probe_failed(probe, now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                self._send([wire.encode_message(wire.Nack(relay.seq))], relay.requester)
        for node in list(self._suspected.values()):
            if node.suspicion is not None and now >= node.suspicion.deadline:
                s = node.suspicion
                self._set_down(
                    node,
                    DEAD,
                    node.incarnation,
                    now,
                    "suspicion-timeout",
                    {"suspected_by": s.first_suspector, "confirmations": s.confirmations, "timeout": round(s.timeout(), 3)},
                )
                self._queue(node.name, wire.Dead(node.name, node.incarnation, self.name))
        if self._leaving:
            if now >= self._next_gossip:
                self._gossip(now)
                self._next_gossip = now + self.config.gossip_interval
            return
        if now >= self._next_probe:
            self._probe(now)
            self._next_probe = now + self.awareness.scale(self.config.probe_interval)
        if now >= self._next_gossip:
            self._gossip(now)
            self._next_gossip = now + self.config.gossip_interval
        if now >= self._next_push_pull:
            self._push_pull(now)
            self._next_push_pull = now + self._push_pull_interval()
        if now >= self._next_reconnect:
            self._reconnect(now)
            self._next_reconnect = now + self.config.reconnect_interval
        if self._join_retry_at is not None and now >= self._join_retry_at:
            self._join_retry_at = None
            if self._alone():
                state = self._encode_state()
                for addr in self._seeds:
                    self._exchanges.append(Exchange(addr, state, "join-retry"))
        if now >= self._next_reap:
            self._reap(now)
            self._next_reap = now + 1.0

    def _probe(self, now: float) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        timeout = self.awareness.scale(self.config.probe_timeout)
        interval = self.awareness.scale(self.config.probe_interval)
        self._probes[seq] = _Probe(target.name, now, now + timeout, now + interval)
        first = []
        if target.state is SUSPECT:
            # Buddy system: tell the suspect directly so it can refute at once.
            first.append(wire.encode_message(wire.Suspect(target.name, target.incarnation, self.name)))
        self._stats.inc("probes")
        self._send([wire.encode_message(wire.Ping(seq, target.name, self.name)), *first], target.addr)

    def _probe_indirect(self, seq: int, probe: _Probe, now: float) -> None:
        target = self._nodes.get(probe.target)
        if target is None or not target.state.is_up:
            del self._probes[seq]
            return
        probe.indirect = True
        helpers = [
            n for n in self._nodes.values() if n.state is ALIVE and n.name not in (self.name, probe.target)
        ]
        chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        probe.expected_nacks = len(chosen)
        msg = wire.encode_message(wire.PingReq(seq, target.name, target.addr, self.name))
        for helper in chosen:
            self._send([msg], helper.addr)

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        # Lifeguard: a failed probe counts against our own health, and so does every nack
        # that did not arrive (the helpers could not reach us either).
        delta = (probe.expected_nacks - probe.nacks) if probe.expected_nacks else 1
        self.awareness.apply(delta)
        self._stats.inc("probe_failures")
        node = self._nodes.get(probe.target)
        if node is not None and node.state.is_up:
            # Suspects it, or confirms an existing suspicion independently.
            self._on_suspect(wire.Suspect(node.name, node.incarnation, self.name), now)

    def _next_probe_target(self) -> _Node | None:
        # Round-robin over a list reshuffled at each wrap: every member is probed within
        # (at most) two rounds, the time bound of SWIM's round-robin variant.
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = [n for n, node in self._nodes.items() if n != self.name and node.state.is_up]
                self.rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            name = self._probe_order[self._probe_index]
            self._probe_index += 1
            node = self._nodes.get(name)
            if node is not None and node.state.is_up:
                return node
        return None

    def _add_to_probe_order(self, name: str) -> None:
        # A newcomer goes to a random place in the current round, as in memberlist.
        pos = self.rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(pos, name)

    def _gossip(self, now: float) -> None:
        if not len(self._broadcasts):
            return
        candidates = [
            n
            for n in self._nodes.values()
            if n.name != self.name
            and (n.state.is_up or (n.state is DEAD and now - n.changed_at < self.config.gossip_to_the_dead_time))
        ]
        for node in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            payload = self._take_broadcasts(self.config.max_packet - wire.packet_overhead(255, self.cluster))
            if not payload:
                return
            self._send_raw(wire.encode_packet(payload, self.cluster), node.addr)

    def _push_pull_interval(self) -> float:
        # memberlist scales anti-entropy down for large clusters so its cost stays bounded.
        n = self._up_count()
        scale = 1 if n <= 32 else 1 + max(0, (n - 1).bit_length() - 5)
        return self.config.push_pull_interval * scale

    def _push_pull(self, now: float) -> None:
        peers = [n for n in self._nodes.values() if n.state is ALIVE and n.name != self.name]
        if peers:
            peer = self.rng.choice(peers)
            self._exchanges.append(Exchange(peer.addr, self._encode_state(), "anti-entropy"))

    def _reconnect(self, now: float) -> None:
        # Heals partitions and lets a lonely node find its way back: push-pull to a member we
        # think is dead (serf's reconnect), or to a seed that no member we see lives at (after
        # a long partition the other side may already be forgotten, but the seeds are not).
        dead = [n.addr for n in self._nodes.values() if n.state is DEAD]
        up_addrs = {n.addr for n in self._nodes.values() if n.state.is_up}
        candidates = dead + [a for a in self._seeds if a not in up_addrs]
        if candidates:
            addr = self.rng.choice(candidates)
            self._exchanges.append(Exchange(addr, self._encode_state(), "reconnect"))

    def _reap(self, now: float) -> None:
        if self._n_up == len(self._nodes):
            return  # nobody is dead or left: nothing to forget
        for name, node in list(self._nodes.items()):
            if not node.state.is_up and name != self.name and now - node.changed_at >= self.config.dead_retention:
                del self._nodes[name]
                self._events.append(MemberEvent(now, name, node.state, None, node.incarnation, "reaped"))

    # --- push-pull --------------------------------------------------------------------------

    def _encode_state(self) -> bytes:
        return wire.encode_state(
            [wire.StateEntry(n.name, n.incarnation, n.addr, n.state, n.meta) for n in self._nodes.values()],
            self.cluster,
        )

    def receive_state(
        self, data: bytes, sender: Address, now: float, *, respond: bool, joining: bool = False
    ) -> bytes | None:
        """Merge a remote full state. With `respond` (we are the one asked), return ours.

        The answer is taken after the merge, so it carries any refutation the request caused:
        the asker learns at once that we are alive at a higher incarnation. With `joining` (the
        answer of a seed we joined through), members new to us are not re-gossiped: they are
        news only to us, and re-gossiping a whole view per joiner would cost O(N^2) messages
        in a join storm.
        """
        incarnation_before = self._me.incarnation
        known_before = set(self._nodes) if joining else set()
        try:
            entries = wire.decode_state(data, self.cluster)
        except wire.ForeignClusterError:
            self._stats.inc("dropped_foreign_cluster")
            return None
        except wire.VersionError:
            self._stats.inc("dropped_version")
            return None
        except wire.WireError:
            self._stats.inc("dropped_malformed")
            return None
        self._stats.inc("push_pulls")
        if not respond:
            self._join_backoff = self.config.join_retry_min  # an exchange of ours went through
        if self._leaving:
            return self._encode_state() if respond else None
        for e in entries:
            if not self._plausible(e.name, e.incarnation, accusation=e.state is not MemberState.ALIVE):
                continue
            match e.state:
                case MemberState.ALIVE:
                    self._on_alive(wire.Alive(e.name, e.incarnation, e.addr, e.meta), now, via="push-pull",
                                   quiet_if_new=joining)
                case MemberState.SUSPECT | MemberState.DEAD:
                    # A remote opinion that someone is dead is not our evidence: suspect first,
                    # so a node alive on our side of a healed partition gets time to refute.
                    # A dead node we never knew stays unknown.
                    if e.name not in self._nodes and e.name != self.name:
                        if e.state is MemberState.DEAD:
                            continue
                        self._on_alive(wire.Alive(e.name, e.incarnation, e.addr, e.meta), now, via="push-pull")
                    held = self._nodes.get(e.name)
                    if held is not None and held.state is SUSPECT and held.incarnation == e.incarnation:
                        # Their suspicion is most likely the one we already hold, gossiped to
                        # both of us: counting it again would shrink the timeout on no new
                        # evidence (Lifeguard counts only independent confirmations).
                        continue
                    self._on_suspect(wire.Suspect(e.name, e.incarnation, "push-pull:" + self._peer_name(sender)), now)
                case MemberState.LEFT:
                    if e.name in self._nodes or e.name == self.name:
                        self._on_dead(wire.Dead(e.name, e.incarnation, e.name), now)
        if respond:
            return self._encode_state()
        if joining:
            self._announce_to_new(known_before, now)
        if self._me.incarnation > incarnation_before:
            # We asked and learned we were thought dead: our refutation goes straight back to
            # the one who told us, who otherwise would only hear it by chance.
            self._send([wire.encode_message(wire.Alive(self.name, self._me.incarnation, self._me.addr, self._me.meta))], sender)
        return None

    def _announce_to_new(self, known_before: set[str], now: float) -> None:
        """After a join, tell the members the seed's answer introduced that we exist, directly.

        Those that joined before us learn of us only by gossip otherwise: from the seed and from
        us, each update sent retransmit_mult * ceil(log10(N + 1)) times to random members, and in a
        join storm, when the seed still knew few members, that missed one member in about one run
        in seven (10 peers, lan): it then waited for anti-entropy, up to 30 s. One packet to each
        (which also carries pending updates), at most JOIN_ANNOUNCE of them; in a larger cluster
        the gossip fan-out is large enough on its own.
        """
        new = [n for name, n in self._nodes.items() if name not in known_before and n.state is ALIVE]
        if len(new) > JOIN_ANNOUNCE:
            new = self.rng.sample(new, JOIN_ANNOUNCE)
        alive = wire.encode_message(wire.Alive(self.name, self._me.incarnation, self._me.addr, self._me.meta))
        for node in new:
            self._send([alive], node.addr)
        if new:
            self._stats.inc("join_announcements", len(new))

    def exchange_failed(self, exchange: Exchange, now: float) -> None:
        self._stats.inc("push_pull_failures")
        # A peer that knows nobody else (its seed was not listening yet: peers started together
        # after a power cut, or by a service manager) tries its seeds again soon, backing off
        # from join_retry_min up to reconnect_interval, with jitter so that peers started
        # together do not retry in step.
        if exchange.reason in ("join", "join-retry", "reconnect") and self._alone() and self._seeds:
            if self._join_retry_at is None:
                self._join_retry_at = now + self._join_backoff * self.rng.uniform(0.5, 1.0)
                self._join_backoff = min(2 * self._join_backoff, self.config.reconnect_interval)
                self._stats.inc("join_retries")

    def _alone(self) -> bool:
        return self._n_up <= 1 and not self._leaving

    def _peer_name(self, addr: Address) -> str:
        for node in self._nodes.values():
            if node.addr == addr:
                return node.name
        return f"{addr[0]}:{addr[1]}"

    # --- sending ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _queue(self, key: str, msg: wire.Message) -> None:
        self._broadcasts.put(key, wire.encode_message(msg))

    def _queue_alive(self, node: _Node) -> None:
        self._queue(node.name, wire.Alive(node.name, node.incarnation, node.addr, node.meta))

    def _take_broadcasts(self, budget: int) -> list[bytes]:
        return self._broadcasts.take(budget, self.config.retransmit_limit(self._up_count()))

    def _send(self, messages: list[bytes], addr: Address) -> None:
        """Send protocol messages with as many pending updates piggybacked as fit."""
        used = sum(len(m) for m in messages)
        budget = self.config.max_packet - wire.packet_overhead(255, self.cluster) - used
        self._send_raw(wire.encode_packet(messages + self._take_broadcasts(budget), self.cluster), addr)

    def _send_raw(self, packet: bytes, addr: Address) -> None:
        self._stats.inc("packets_out")
        self._stats.inc("bytes_out", len(packet))
        self._packets.append((packet, addr))
