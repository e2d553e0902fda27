"""A tiny synchronous driver for SWIM cores, for unit tests of the protocol rules.

It delivers packets after a fixed delay and fires timers in time order, with no trio at all, so
a test can say "at t=3.2 node b is suspect" exactly. Whole-node tests use `gossip.simnet` instead.
"""

from __future__ import annotations

import heapq
import itertools
import random

from gossip.config import GossipConfig
from gossip.core import Swim
from gossip.types import Address, MemberState


class CoreNet:
    def __init__(self, config: GossipConfig, seed: int = 1, delay: float = 0.001):
        self.config = config
        self.delay = delay
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[str, Swim] = {}
        self.by_addr: dict[Address, str] = {}
        self.frozen: set[str] = set()
        self.blocked: set[tuple[str, str]] = set()
        self.events = []
        self._queue: list = []
        self._seq = itertools.count()
        self.dropped = 0

    def add(self, name: str, incarnation: int = 1, join: list[str] | None = None) -> Swim:
        addr = (f"10.0.0.{len(self.by_addr) + 1}", 7946)
        for old_addr, old_name in list(self.by_addr.items()):
            if old_name == name:
                addr = old_addr  # a restart comes back at the same address
        node = Swim(self.config, name, addr, incarnation=incarnation, meta={"role": "mm"},
                    rng=random.Random(self.rng.random()), now=self.now)
        self.nodes[name] = node
        self.by_addr[addr] = name
        if join:
            node.join([self.nodes[j].addr for j in join], self.now)
        self._collect(name)
        return node

    def crash(self, name: str) -> None:
        del self.nodes[name]

    def cut(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.blocked.clear()

    def _collect(self, name: str) -> None:
        node = self.nodes[name]
        for data, addr in node.pop_packets():
            heapq.heappush(self._queue, (self.now + self.delay, next(self._seq), name, addr, data))
        for ex in node.pop_exchanges():
            self._exchange(name, ex)
        self.events.extend((name, e) for e in node.pop_events())

    def _reachable(self, src: str, dst: str | None) -> bool:
        return (dst is not None and dst in self.nodes and dst not in self.frozen
                and src not in self.frozen and (src, dst) not in self.blocked)

    def _exchange(self, src: str, ex) -> None:
        dst = self.by_addr.get(ex.addr)
        node = self.nodes[src]
        if not self._reachable(src, dst):
            node.exchange_failed(ex, self.now)
            return
        answer = self.nodes[dst].receive_state(ex.data, node.addr, self.now, respond=True)
        self._collect(dst)
        node.receive_state(answer, ex.addr, self.now, respond=False, joining=ex.joining)
        self._collect(src)

    def run_until(self, t: float) -> None:
        while True:
            timers = [(n.next_deadline(), name) for name, n in self.nodes.items() if name not in self.frozen]
            next_timer = min(timers) if timers else (float("inf"), "")
            next_packet = self._queue[0][0] if self._queue else float("inf")
            when = min(next_timer[0], next_packet)
            if when > t:
                self.now = t
                return
            self.now = when
            if next_packet <= next_timer[0]:
                _, _, src, addr, data = heapq.heappop(self._queue)
                dst = self.by_addr.get(addr)
                if not self._reachable(src, dst):
                    self.dropped += 1
                    continue
                self.nodes[dst].receive_packet(data, self.nodes[src].addr if src in self.nodes else addr, self.now)
                self._collect(dst)
            else:
                name = next_timer[1]
                self.nodes[name].handle_timer(self.now)
                self._collect(name)

    def state(self, viewer: str, of: str) -> MemberState | None:
        m = self.nodes[viewer].member(of)
        return m.state if m else None

    def cluster(self, n: int, prefix: str = "n") -> list[str]:
        names = [f"{prefix}{i}" for i in range(n)]
        self.add(names[0])
        for name in names[1:]:
            self.add(name, join=[names[0]])
        return names
