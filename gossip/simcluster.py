"""A whole gossip cluster in one process: `GossipNode`s over a `SimNetwork`, seeded.

What it is for: tests, `murmur sim` and the benchmarks run hundreds of real gossip shells (the
same `GossipNode` a peer process runs) on the simulated network under trio's `MockClock`, with
faults applied by name, and read back every node's view and a trace of every membership event.
Given the seed, the trace is the same byte for byte — provided trio's scheduler is made
deterministic too (`deterministic_trio`), since trio shuffles tasks woken at the same instant.

It must never read the wall clock or draw unseeded randomness, and it never decides anything
about membership itself: it only starts nodes, injects faults and observes.
"""

from __future__ import annotations

import hashlib
import random

import trio

from gossip.config import GossipConfig
from gossip.node import GossipNode
from gossip.simnet import SimNetwork
from gossip.types import Address, MemberEvent, MemberState


def deterministic_trio(seed: int) -> None:
    """Make trio's task scheduling a function of `seed` (call before `trio.run`).

    trio shuffles the tasks woken at one instant with a module-level `random.Random`; its own
    test support (the Hypothesis plugin) switches this to a seeded, sorted order. This uses the
    same two switches. They are private to trio, so `tests/gossip/test_simcluster.py` proves
    the effect (same seed, same trace across processes with different hash seeds).
    """
    from trio._core import _run

    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)


class SimCluster:
    def __init__(
        self,
        n: int,
        config: GossipConfig,
        seed: int,
        *,
        delay: float = 0.002,
        jitter: float = 0.001,
        loss: float = 0.0,
        join_spread: float = 1.0,
        prefix: str = "node",
        record_trace: bool = True,
    ):
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = SimNetwork(seed, delay=delay, jitter=jitter, loss=loss)
        self.names = [f"{prefix}-{i:04d}" for i in range(n)]
        self.addrs: dict[str, Address] = {
            name: (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 7946) for i, name in enumerate(self.names)
        }
        self.nodes: dict[str, GossipNode] = {}
        self.incarnations: dict[str, int] = {}
        self.trace: list[str] = []
        self.record_trace = record_trace
        # Observers (benchmarks) may add callables taking (viewer, event).
        self.listeners: list = []
        self.join_spread = join_spread
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.net.run)
            first = self.names[0]
            await self._start_node(first, seeds=[])
            for name in self.names[1:]:
                # Joins are spread over `join_spread` seconds, all through the first node.
                await trio.sleep(self.join_spread / max(1, len(self.names) - 1))
                await self._start_node(name, seeds=[self.addrs[first]])
            task_status.started()

    async def _start_node(self, name: str, seeds: list[Address]) -> None:
        assert self._nursery is not None
        incarnation = self.incarnations.get(name, 0) + 1
        self.incarnations[name] = incarnation
        node = GossipNode(
            self.net.transport(self.addrs[name]),
            self.config,
            name,
            incarnation=incarnation,
            meta={"role": "mm"},
            seeds=seeds,
            seed=self.rng.getrandbits(64),
            on_event=lambda e, viewer=name: self._record(viewer, e),
            on_incarnation=lambda inc, n=name: self.incarnations.__setitem__(n, inc),
        )
        self.nodes[name] = node
        scope = trio.CancelScope()
        self._scopes[name] = scope

        async def run_node(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await node.run(task_status=task_status)

        await self._nursery.start(run_node)

    def _record(self, viewer: str, e: MemberEvent) -> None:
        for listener in self.listeners:
            listener(viewer, e)
        if not self.record_trace:
            return
        old = e.old.value if e.old else "-"
        new = e.new.value if e.new else "-"
        self.trace.append(f"{e.at:.6f} {viewer} {e.node} {old}>{new} {e.incarnation} {e.reason}")

    def stop(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- faults -------------------------------------------------------------------------------

    def freeze(self, name: str) -> None:
        self.net.freeze(self.addrs[name])

    def thaw(self, name: str) -> None:
        self.net.thaw(self.addrs[name])

    def crash(self, name: str) -> None:
        self._scopes.pop(name).cancel()
        self.net.remove(self.addrs[name])
        del self.nodes[name]

    async def restart(self, name: str) -> None:
        """Start a crashed node again with the same name and a higher incarnation."""
        seed = self.names[0] if name != self.names[0] else self.names[1]
        await self._start_node(name, seeds=[self.addrs[seed]])

    async def add(self, name: str) -> None:
        """Start a brand-new peer that joins through the first one."""
        if name in self.addrs:
            raise ValueError(f"{name} is already a member")
        i = len(self.addrs)
        self.names.append(name)
        self.addrs[name] = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 7946)
        await self._start_node(name, seeds=[self.addrs[self.names[0]]])

    async def leave(self, name: str) -> None:
        with trio.move_on_after(2.0):
            await self.nodes[name].leave()
        self.crash(name)

    def partition(self, *groups: list[str]) -> None:
        self.net.partition([[self.addrs[n] for n in g] for g in groups])

    def heal(self) -> None:
        self.net.heal()

    # --- observing ----------------------------------------------------------------------------

    def view(self, viewer: str) -> dict[str, MemberState]:
        return {m.name: m.state for m in self.nodes[viewer].members()}

    def alive_view(self, viewer: str) -> set[str]:
        return {m.name for m in self.nodes[viewer].members() if m.state is MemberState.ALIVE}

    def converged(self, expected: set[str] | None = None, among: list[str] | None = None) -> bool:
        """Every running node (or those in `among`) sees exactly `expected` alive."""
        among = among if among is not None else list(self.nodes)
        expected = expected if expected is not None else set(among)
        return all(self.alive_view(v) == expected for v in among)

    async def wait_converged(self, expected: set[str] | None = None, among: list[str] | None = None,
                             step: float = 0.5) -> float:
        """Sleep in virtual time until converged; returns the time it took."""
        start = trio.current_time()
        # Sampled every `step` of virtual time: the figure is defined at that granularity.
        while not self.converged(expected, among):  # noqa: ASYNC110
            await trio.sleep(step)
        return trio.current_time() - start

    def all_see(self, name: str, state: MemberState) -> bool:
        """Every other running node holds `name` in `state`."""
        return all(self.view(v).get(name) is state for v in self.nodes if v != name)

    async def wait_all_see(self, name: str, state: MemberState, step: float = 0.1) -> float:
        start = trio.current_time()
        while not self.all_see(name, state):  # noqa: ASYNC110 (sampled, as above)
            await trio.sleep(step)
        return trio.current_time() - start

    def declared_dead(self, viewer: str) -> set[str]:
        return {m.name for m in self.nodes[viewer].members() if m.state is MemberState.DEAD}

    def trace_hash(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()
