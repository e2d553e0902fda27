"""An in-memory network of many nodes, for deterministic tests under trio's virtual clock.

What it is for: running hundreds of gossip peers in one process with `autojump_clock`, with the
faults SWIM must survive (loss, delay, jitter, partitions, frozen and crashed nodes) switched on
and off by plain synchronous calls. `SimTransport` implements the same `Transport` protocol as
the real UDP transport, so a peer cannot tell which one it runs on.

What it must never do: read the wall clock, touch a socket, or draw randomness from anywhere but
the network's one `random.Random(seed)`, drawn in the order the sends happen (no set iteration).
Given the same seed and the same order of calls it delivers the same packets at the same times.
Note that trio itself shuffles tasks woken at the same instant, so sends from several tasks at
one virtual moment are ordered by trio's scheduler, not by this module.

One delivery task (`run`) owns a heap of in-flight packets; `send_packet` only pushes onto it
and moves the task's wake-up earlier when needed, because it carries thousands of packets per
simulated second.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random

import trio

from gossip.transport import MAX_PACKET, MAX_STREAM, StreamHandler, TransportError
from gossip.types import Address

STAT_KEYS = (
    "packets_out",  # accepted from a live, unfrozen sender (it may still be lost on the way)
    "bytes_out",
    "packets_in",  # put into this node's inbox
    "bytes_in",
    "dropped_loss",  # counted on the sender
    "dropped_partition",  # counted on the sender
    "dropped_frozen",  # sender or receiver frozen; counted on the sender
    "dropped_dead",  # sender removed, or receiver removed / never existed; on the sender
    "recv_dropped_full",  # this node's inbox was full
    "streams_out",
    "streams_in",
    "stream_errors",  # failed exchanges, on the caller and (for handler failures) the target
)


class SimTransport:
    """One node's endpoint on a `SimNetwork`; create it with `net.transport(addr)`."""

    def __init__(self, net: SimNetwork, addr: Address, inbox: int) -> None:
        self._net = net
        self._addr = addr
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[bytes, Address]](inbox)
        self._handler: StreamHandler | None = None
        self.frozen = False
        self.removed = False
        self._thawed = trio.Event()
        self._thawed.set()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    @property
    def local_addr(self) -> Address:
        return self._addr

    def set_stream_handler(self, handler: StreamHandler) -> None:
        self._handler = handler

    async def send_packet(self, data: bytes, addr: Address) -> None:
        await trio.lowlevel.checkpoint()
        if len(data) > MAX_PACKET:
            raise ValueError(f"packet of {len(data)} bytes exceeds MAX_PACKET={MAX_PACKET}")
        self._net._send(self, data, addr)

    async def recv_packet(self) -> tuple[bytes, Address]:
        await self._wait_alive()
        item = await self._inbox_recv.receive()
        # Frozen between the delivery and our wake-up: the packet sits in the "kernel buffer"
        # until the process is resumed, as with SIGSTOP.
        await self._wait_alive()
        return item

    async def _wait_alive(self) -> None:
        if self.removed:
            await trio.sleep_forever()
        while self.frozen:
            await self._thawed.wait()

    async def exchange(self, addr: Address, data: bytes) -> bytes:
        if len(data) > MAX_STREAM:
            raise ValueError(f"stream of {len(data)} bytes exceeds MAX_STREAM={MAX_STREAM}")
        net = self._net
        self.stats["streams_out"] += 1
        await trio.sleep(net._link_delay())
        target = net._stream_target(self, addr)
        target.stats["streams_in"] += 1
        try:
            response = await target._handler(data, self._addr)  # type: ignore[misc]
        except Exception as exc:
            # Over TCP the server would close the connection: the caller sees a failed stream.
            target.stats["stream_errors"] += 1
            self.stats["stream_errors"] += 1
            raise TransportError(f"stream handler at {addr} failed: {exc!r}") from exc
        if len(response) > MAX_STREAM:
            target.stats["stream_errors"] += 1
            self.stats["stream_errors"] += 1
            raise TransportError(f"response of {len(response)} bytes exceeds MAX_STREAM")
        await trio.sleep(net._link_delay())
        # The link may have been cut while the response was on its way.
        net._stream_target(self, addr)
        self.stats["bytes_out"] += len(data)
        self.stats["bytes_in"] += len(response)
        target.stats["bytes_in"] += len(data)
        target.stats["bytes_out"] += len(response)
        return response

    def _freeze(self) -> None:
        if not self.frozen:
            self.frozen = True
            self._thawed = trio.Event()

    def _thaw(self) -> None:
        self.frozen = False
        self._thawed.set()


class SimNetwork:
    """The wires between `SimTransport`s, with fault controls; see the module docstring."""

    def __init__(
        self, seed: int, *, delay: float = 0.001, jitter: float = 0.0, loss: float = 0.0
    ) -> None:
        self._rng = random.Random(seed)
        self._delay = delay
        self._jitter = jitter
        self._loss = loss
        self._link_loss: dict[tuple[Address, Address], float] = {}
        # Address -> partition group index; addresses not listed reach everyone.
        self._group: dict[Address, int] = {}
        self._nodes: dict[Address, SimTransport] = {}
        # Transports that were removed and whose address was then reused: kept for total_stats.
        self._retired: list[SimTransport] = []
        self._heap: list[tuple[float, int, Address, bytes, SimTransport]] = []
        self._seq = itertools.count()
        # The delivery task's sleep; send_packet pulls its deadline earlier when needed.
        self._sleep: trio.CancelScope | None = None

    # -- nodes -----------------------------------------------------------------------------

    def transport(self, addr: Address, *, inbox: int = 1024) -> SimTransport:
        """Create and register the endpoint for `addr` (a removed address may be reused)."""
        old = self._nodes.get(addr)
        if old is not None:
            if not old.removed:
                raise ValueError(f"address {addr} is already in use")
            self._retired.append(old)
        node = SimTransport(self, addr, inbox)
        self._nodes[addr] = node
        return node

    def total_stats(self) -> dict[str, int]:
        total = dict.fromkeys(STAT_KEYS, 0)
        for node in itertools.chain(self._retired, self._nodes.values()):
            for key, value in node.stats.items():
                total[key] += value
        return total

    # -- faults ----------------------------------------------------------------------------

    def set_loss(self, p: float) -> None:
        self._loss = p

    def set_link_loss(self, a: Address, b: Address, p: float) -> None:
        """Loss on the directed link a -> b, on top of the global loss."""
        if p:
            self._link_loss[(a, b)] = p
        else:
            self._link_loss.pop((a, b), None)

    def set_delay(self, delay: float, jitter: float = 0.0) -> None:
        """Every packet and stream leg takes `delay` plus a uniform draw in [0, jitter]."""
        self._delay = delay
        self._jitter = jitter

    def partition(self, groups: list[list[Address]]) -> None:
        """Split the listed nodes into groups that cannot reach each other (replaces any
        earlier partition). Packets already in flight across the cut are lost."""
        self._group = {addr: i for i, group in enumerate(groups) for addr in group}

    def heal(self) -> None:
        self._group = {}

    def freeze(self, addr: Address) -> None:
        """Stop the node as with SIGSTOP: it neither sends nor receives until `thaw`."""
        self._nodes[addr]._freeze()

    def thaw(self, addr: Address) -> None:
        self._nodes[addr]._thaw()

    def remove(self, addr: Address) -> None:
        """The node is gone (crashed): packets to it and from it are dropped."""
        self._nodes[addr].removed = True

    # -- delivery --------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The one task that moves packets whose time has come into their inboxes."""
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, dst, data, src = heapq.heappop(heap)
                self._deliver(src, dst, data)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None

    def _send(self, src: SimTransport, data: bytes, dst: Address) -> None:
        if src.removed:
            src.stats["dropped_dead"] += 1
            return
        if src.frozen:
            src.stats["dropped_frozen"] += 1
            return
        src.stats["packets_out"] += 1
        src.stats["bytes_out"] += len(data)
        loss = self._loss
        link_loss = self._link_loss.get((src._addr, dst))
        if link_loss:
            loss = 1.0 - (1.0 - loss) * (1.0 - link_loss)
        if loss and self._rng.random() < loss:
            src.stats["dropped_loss"] += 1
            return
        deliver_at = trio.current_time() + self._link_delay()
        heapq.heappush(self._heap, (deliver_at, next(self._seq), dst, data, src))
        sleep = self._sleep
        if sleep is not None and deliver_at < sleep.deadline:
            sleep.deadline = deliver_at

    def _deliver(self, src: SimTransport, dst_addr: Address, data: bytes) -> None:
        dst = self._nodes.get(dst_addr)
        if dst is None or dst.removed:
            src.stats["dropped_dead"] += 1
        elif dst.frozen:
            src.stats["dropped_frozen"] += 1
        elif not self._reachable(src._addr, dst_addr):
            src.stats["dropped_partition"] += 1
        else:
            try:
                dst._inbox_send.send_nowait((data, src._addr))
            except trio.WouldBlock:
                dst.stats["recv_dropped_full"] += 1
                return
            dst.stats["packets_in"] += 1
            dst.stats["bytes_in"] += len(data)

    def _reachable(self, a: Address, b: Address) -> bool:
        ga = self._group.get(a)
        gb = self._group.get(b)
        return ga is None or gb is None or ga == gb

    def _link_delay(self) -> float:
        if self._jitter:
            return self._delay + self._rng.uniform(0.0, self._jitter)
        return self._delay

    def _stream_target(self, src: SimTransport, addr: Address) -> SimTransport:
        """The node a stream from `src` reaches now, or TransportError (counted on `src`)."""
        dst = self._nodes.get(addr)
        if src.removed or src.frozen:
            problem = "the caller is frozen or removed"
        elif dst is None or dst.removed:
            problem = "no node there"
        elif dst.frozen:
            problem = "the node is frozen"
        elif not self._reachable(src._addr, addr):
            problem = "partitioned"
        elif dst._handler is None:
            problem = "no stream handler"
        else:
            return dst
        src.stats["stream_errors"] += 1
        raise TransportError(f"stream {src._addr} -> {addr} failed: {problem}")
