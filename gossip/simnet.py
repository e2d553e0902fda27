"""An in-memory network of many nodes, for deterministic tests under trio's virtual clock.

What it is for: running hundreds of gossip peers in one process with `autojump_clock`, with the
faults SWIM must survive (loss, delay, jitter, duplicates, partitions, frozen and crashed nodes) switched on
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

Byte streams for HTTP (`listen`, `connect`, `SimStream`) ride the same heap: one entry per
direction of a connection stands for its oldest chunk in flight. They behave like TCP as far as
an HTTP client and server can tell: in order, never lost (a lost chunk arrives a retransmission
later), held while a partition, a fully lossy link or a frozen end is in the way and released
on heal/thaw, refused at once by a node that does not listen, and closed (the far end reads EOF,
then its writes break) when a node is removed. A node is one host: a stream address (any port
on a node's host) shares that node's faults, unless a partition or link loss names the stream
address itself. No flow control: `send_all` never waits for a slow reader.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable

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
    # Byte streams (listen/connect, for HTTP):
    "conns_out",  # connections this node opened
    "conns_in",  # connections this node accepted
    "conns_refused",  # connects refused (nobody listening, node removed); on the caller
    "conn_bytes_out",
    "conn_bytes_in",  # bytes arrived at this node's end (read or not)
    "conn_retransmits",  # chunks delayed by loss (one per lost copy); on the sender
    "conn_held",  # times a chunk was held by a partition, a cut link or a frozen end; on the sender
    "duplicated",  # packets sent twice by `set_duplicate`; counted on the sender
)

# What a lost chunk costs: it arrives one retransmission timeout later (Linux's minimum RTO).
RETRANSMIT = 0.2
# A chunk lost this many times in a row is sent once more and gets through: a link that loses
# everything is a cut (`_cut`), which holds chunks instead.
MAX_RETRANSMITS = 16

StreamServer = Callable[[trio.abc.Stream], Awaitable[None]]


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
        # This node's open stream ends and its running connection handlers (ordered sets), which
        # `SimNetwork.remove` breaks and cancels.
        self._ends: dict[SimStream, None] = {}
        self._serving: dict[trio.CancelScope, None] = {}

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
        self._duplicate = 0.0
        self._link_loss: dict[tuple[Address, Address], float] = {}
        # Address -> partition group index; addresses not listed reach everyone.
        self._group: dict[Address, int] = {}
        self._nodes: dict[Address, SimTransport] = {}
        # Transports that were removed and whose address was then reused: kept for total_stats.
        self._retired: list[SimTransport] = []
        # (time, seq, destination, packet, sender) for a packet; (time, seq, None, b"", pipe)
        # when the oldest chunk of a stream direction is due.
        self._heap: list[tuple[float, int, Address | None, bytes, SimTransport | _Pipe]] = []
        self._seq = itertools.count()
        # The delivery task's sleep; send_packet pulls its deadline earlier when needed.
        self._sleep: trio.CancelScope | None = None
        # Streams: host -> its node (None if several nodes share the host), listening addresses,
        # directions held by a fault (in the order they were held), and an event set (and
        # replaced) on every fault change, which held connects and frozen readers wait on.
        self._hosts: dict[str, SimTransport | None] = {}
        self._listeners: dict[Address, tuple[StreamServer, trio.Nursery | None, SimTransport]] = {}
        self._held: list[_Pipe] = []
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

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
        host = addr[0]
        other = self._hosts.get(host, node)
        self._hosts[host] = node if other is node or (other is not None and other.removed) else None
        self._streams_changed()
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
        self._streams_changed()

    def set_link_loss(self, a: Address, b: Address, p: float) -> None:
        """Loss on the directed link a -> b, on top of the global loss."""
        if p:
            self._link_loss[(a, b)] = p
        else:
            self._link_loss.pop((a, b), None)
        self._streams_changed()

    def set_delay(self, delay: float, jitter: float = 0.0) -> None:
        """Every packet and stream leg takes `delay` plus a uniform draw in [0, jitter]. Each
        packet draws its own, so with a jitter large next to the gap between two sends the
        later packet may arrive first (reordering); stream chunks keep their order (TCP)."""
        self._delay = delay
        self._jitter = jitter

    def set_duplicate(self, p: float) -> None:
        """Deliver each packet that is not lost a second time with probability `p`, the copy
        after its own delay (it may arrive before the original). Streams are not affected: TCP
        drops duplicate segments, so a reader never sees them."""
        self._duplicate = p

    def partition(self, groups: list[list[Address]]) -> None:
        """Split the listed nodes into groups that cannot reach each other (replaces any
        earlier partition). Packets already in flight across the cut are lost; stream bytes
        are held until the cut is healed."""
        self._group = {addr: i for i, group in enumerate(groups) for addr in group}
        self._streams_changed()

    def heal(self) -> None:
        self._group = {}
        self._streams_changed()

    def freeze(self, addr: Address) -> None:
        """Stop the node as with SIGSTOP: it neither sends nor receives until `thaw`. `addr`
        is the node's address or one of its stream addresses (same host)."""
        self._node_at(addr)._freeze()

    def thaw(self, addr: Address) -> None:
        self._node_at(addr)._thaw()
        self._streams_changed()

    def remove(self, addr: Address) -> None:
        """The node is gone (crashed): packets to it and from it are dropped. Its listeners go,
        its connection handlers are cancelled and its connections closed as its kernel would:
        the other end reads EOF once the bytes already sent are in, then its writes break."""
        node = self._node_at(addr)
        node.removed = True
        for listening in [a for a, entry in self._listeners.items() if entry[2] is node]:
            del self._listeners[listening]
        for scope in node._serving:
            scope.cancel()
        for end in list(node._ends):
            end._kill()
        self._streams_changed()

    # -- delivery --------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The one task that moves packets whose time has come into their inboxes (and stream
        bytes into their readers' buffers). Its nursery runs the connection handlers of
        listeners that were given no nursery of their own."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await self._deliver_forever()
            finally:
                self._nursery = None

    async def _deliver_forever(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, dst, data, src = heapq.heappop(heap)
                if dst is None:
                    self._arrive(src)  # type: ignore[arg-type]
                else:
                    self._deliver(src, dst, data)  # type: ignore[arg-type]
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
        # Drawn only while duplication is on, so runs without it draw the same numbers as before.
        if self._duplicate and self._rng.random() < self._duplicate:
            src.stats["duplicated"] += 1
            again = trio.current_time() + self._link_delay()
            heapq.heappush(self._heap, (again, next(self._seq), dst, data, src))
            deliver_at = min(deliver_at, again)
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

    # -- streams ---------------------------------------------------------------------------

    def listen(self, addr: Address, handler: StreamServer, *, nursery: trio.Nursery | None = None) -> None:
        """Accept connections to `addr` (a port on a node's host): each one is served by
        `handler(stream)` in a task of `nursery`, or of `run`'s nursery when none is given, and
        closed when the handler returns. Removing the node cancels its handlers. A handler's
        exception is a bug and ends that nursery, as with `trio.serve_listeners`."""
        node = self._node_at(addr)
        if node.removed:
            raise OSError(errno.EADDRNOTAVAIL, f"node {node._addr} was removed")
        if addr in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{addr} is already listening")
        self._listeners[addr] = (handler, nursery, node)
        self._streams_changed()

    def unlisten(self, addr: Address) -> None:
        """Refuse new connections to `addr` (open ones go on, as when a listening socket closes).
        Nothing happens if nothing listens there (a removed node's listeners are already gone)."""
        self._listeners.pop(addr, None)

    async def connect(self, src_addr: Address, dst_addr: Address) -> SimStream:
        """Open a connection from the node of `src_addr` to whoever listens at `dst_addr`; the
        caller's end once the handshake (a round trip) is done. Refused at once
        (ConnectionRefusedError, an OSError) when nobody listens there or the node is gone; held
        while a partition, a cut link or a frozen end is in the way (the caller's own timeout
        ends the wait)."""
        src = self._node_at(src_addr)
        src.stats["conns_out"] += 1
        await trio.lowlevel.checkpoint()
        syn_arrived = False
        while True:
            if src.removed:
                raise OSError(errno.ENETDOWN, f"node {src._addr} was removed")
            dst = self._node_at(dst_addr, missing_ok=True)
            listener = self._listeners.get(dst_addr)
            if dst is None or dst.removed or listener is None:
                src.stats["conns_refused"] += 1
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"connect {src_addr} -> {dst_addr}: refused")
            if (self._stream_blocked(src, src_addr, dst, dst_addr)
                    or self._stream_blocked(dst, dst_addr, src, src_addr)):
                # SYNs lost in the cut; TCP retries until the caller gives up or the cut heals.
                syn_arrived = False
                changed = self._changed
                await changed.wait()
                continue
            if syn_arrived:
                break
            await trio.sleep(self._link_delay() + self._retransmit_delay(src, src_addr, dst, dst_addr))
            syn_arrived = True
        handler, nursery, _ = listener
        nursery = nursery or self._nursery
        if nursery is None:
            raise RuntimeError("the network is not running: start net.run or give listen a nursery")
        out = _Pipe(src, src_addr, dst, dst_addr)
        back = _Pipe(dst, dst_addr, src, src_addr)
        mine = SimStream(self, src, src_addr, dst_addr, back, out)
        theirs = SimStream(self, dst, dst_addr, src_addr, out, back)
        mine._peer, theirs._peer = theirs, mine
        dst.stats["conns_in"] += 1
        nursery.start_soon(self._serve, dst, handler, theirs)
        # The SYN-ACK's way back; a cut now only holds the first bytes.
        try:
            await trio.sleep(self._link_delay())
        except BaseException:
            mine._close()  # the caller gave up: the server sees the connection close
            raise
        return mine

    async def _serve(self, node: SimTransport, handler: StreamServer, stream: SimStream) -> None:
        scope = trio.CancelScope()
        if node.removed:
            scope.cancel()
        node._serving[scope] = None
        try:
            with scope:
                await handler(stream)
        finally:
            del node._serving[scope]
            stream._close()

    def _node_at(self, addr: Address, *, missing_ok: bool = False) -> SimTransport:
        """The node an address belongs to: the node registered there, else the node on its host."""
        node = self._nodes.get(addr)
        if node is None:
            node = self._hosts.get(addr[0])
            if node is None:
                if addr[0] in self._hosts:
                    raise ValueError(f"several nodes share host {addr[0]}: use a node's own address")
                if missing_ok:
                    return None  # type: ignore[return-value]
                raise KeyError(addr)
        return node

    def _stream_blocked(self, src: SimTransport, src_addr: Address, dst: SimTransport, dst_addr: Address) -> bool:
        """Whether bytes from src to dst are held now: a partition between them (by the stream
        address if the partition lists it, else by the node's), a link that loses everything, or
        a frozen end (a removed sender's kernel still sends its FIN)."""
        if (src.frozen and not src.removed) or dst.frozen:
            return True
        group = self._group
        if group:
            ga = group.get(src_addr, group.get(src._addr))
            gb = group.get(dst_addr, group.get(dst._addr))
            if ga is not None and gb is not None and ga != gb:
                return True
        return self._stream_loss(src, src_addr, dst, dst_addr) >= 1.0

    def _stream_loss(self, src: SimTransport, src_addr: Address, dst: SimTransport, dst_addr: Address) -> float:
        loss = self._loss
        links = self._link_loss
        if links:
            link = links.get((src_addr, dst_addr)) or links.get((src._addr, dst._addr))
            if link:
                loss = 1.0 - (1.0 - loss) * (1.0 - link)
        return loss

    def _retransmit_delay(self, src: SimTransport, src_addr: Address, dst: SimTransport, dst_addr: Address) -> float:
        """The extra time a chunk takes because copies of it were lost (drawn per copy)."""
        loss = self._stream_loss(src, src_addr, dst, dst_addr)
        if not loss:
            return 0.0
        lost = 0
        while lost < MAX_RETRANSMITS and self._rng.random() < loss:
            lost += 1
        src.stats["conn_retransmits"] += lost
        return lost * RETRANSMIT

    def _queue(self, pipe: _Pipe, chunk: bytes | None) -> None:
        """Put a chunk (None: the FIN) on its way; it never arrives before the one ahead."""
        at = trio.current_time() + self._link_delay() + self._retransmit_delay(
            pipe.src, pipe.src_addr, pipe.dst, pipe.dst_addr)
        if at < pipe.last:
            at = pipe.last
        pipe.last = at
        pipe.chunks.append((at, chunk))
        if not pipe.scheduled and not pipe.held:
            self._schedule(pipe, at)

    def _schedule(self, pipe: _Pipe, at: float) -> None:
        pipe.scheduled = True
        heapq.heappush(self._heap, (at, next(self._seq), None, b"", pipe))
        sleep = self._sleep
        if sleep is not None and at < sleep.deadline:
            sleep.deadline = at

    def _arrive(self, pipe: _Pipe) -> None:
        """The oldest chunk of `pipe` is due: hand over every chunk due now, or hold them all."""
        pipe.scheduled = False
        if not pipe.discard and self._stream_blocked(pipe.src, pipe.src_addr, pipe.dst, pipe.dst_addr):
            pipe.held = True
            pipe.src.stats["conn_held"] += 1
            self._held.append(pipe)
            return
        chunks = pipe.chunks
        now = trio.current_time()
        while chunks and chunks[0][0] <= now:
            _, chunk = chunks.popleft()
            if chunk is None:
                pipe.fin = True
            elif not pipe.discard:
                pipe.buffer += chunk
                pipe.dst.stats["conn_bytes_in"] += len(chunk)
        if chunks:
            self._schedule(pipe, chunks[0][0])
        pipe.wake()

    def _streams_changed(self) -> None:
        """After a fault changed: release the held directions that can flow now (their chunks
        are sent again: the first arrives a link delay from now, the rest right behind it), and
        wake held connects and frozen readers to look again."""
        self._changed.set()
        self._changed = trio.Event()
        if not self._held:
            return
        now = trio.current_time()
        held, self._held = self._held, []
        for pipe in held:
            if not pipe.discard and self._stream_blocked(pipe.src, pipe.src_addr, pipe.dst, pipe.dst_addr):
                self._held.append(pipe)
                continue
            pipe.held = False
            at = now + self._link_delay()
            pipe.chunks = deque((max(t, at), chunk) for t, chunk in pipe.chunks)
            pipe.last = max(pipe.last, at)
            self._schedule(pipe, pipe.chunks[0][0])


class _Pipe:
    """One direction of a connection: chunks in flight, then the bytes the reader has not read."""

    __slots__ = ("src", "src_addr", "dst", "dst_addr", "chunks", "buffer", "fin", "last", "scheduled",
                 "held", "discard", "_wake")

    def __init__(self, src: SimTransport, src_addr: Address, dst: SimTransport, dst_addr: Address) -> None:
        self.src, self.src_addr, self.dst, self.dst_addr = src, src_addr, dst, dst_addr
        self.chunks: deque[tuple[float, bytes | None]] = deque()  # (arrival time, bytes or FIN)
        self.buffer = bytearray()
        self.fin = False  # the sender's FIN has arrived: reads end once the buffer is empty
        self.last = -math.inf  # when the last chunk queued arrives: none may overtake it
        self.scheduled = False  # a heap entry stands for the oldest chunk
        self.held = False  # in the network's held list
        self.discard = False  # the receiving end is closed: what arrives vanishes
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def wait(self) -> None:
        await self._wake.wait()


class SimStream(trio.abc.HalfCloseableStream):
    """One end of a simulated connection (`SimNetwork.connect` gives the caller's end, the
    listener's handler gets the other). Reads wait while its node is frozen; the node's removal
    makes every call on it raise BrokenResourceError."""

    def __init__(self, net: SimNetwork, node: SimTransport, local_addr: Address, remote_addr: Address,
                 incoming: _Pipe, outgoing: _Pipe) -> None:
        self._net = net
        self._node = node
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self._in = incoming
        self._out = outgoing
        self._peer: SimStream | None = None
        self._closed = False
        self._eof_sent = False
        self._dead = False  # its node was removed
        self._sending = False
        self._receiving = False
        node._ends[self] = None

    def _check_send(self) -> None:
        if self._dead:
            raise trio.BrokenResourceError("the node was removed")
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("this end is closed for sending")
        peer = self._peer
        if peer is not None and peer._closed and self._in.fin:
            # The other end closed and we were told (its FIN came): what we send now gets a reset.
            raise trio.BrokenResourceError("connection reset by peer")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_send()
            if data:
                chunk = bytes(data)
                self._node.stats["conn_bytes_out"] += len(chunk)
                self._net._queue(self._out, chunk)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_send()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._dead:
            raise trio.BrokenResourceError("the node was removed")
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        if not self._eof_sent:
            self._eof_sent = True
            self._net._queue(self._out, None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            pipe = self._in
            node = self._node
            while True:
                if self._dead:
                    raise trio.BrokenResourceError("the node was removed")
                if self._closed:
                    raise trio.ClosedResourceError("this end is closed")
                if node.frozen:
                    changed = self._net._changed
                    await changed.wait()
                    continue
                buffer = pipe.buffer
                if buffer:
                    if max_bytes is None or max_bytes >= len(buffer):
                        data = bytes(buffer)
                        buffer.clear()
                    else:
                        data = bytes(buffer[:max_bytes])
                        del buffer[:max_bytes]
                    return data
                if pipe.fin:
                    return b""
                await pipe.wait()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """Close this end: a FIN goes to the other end (after the bytes already sent), and what
        comes to this end from now on is dropped."""
        if self._closed:
            return
        self._closed = True
        if not self._eof_sent:
            self._eof_sent = True
            self._net._queue(self._out, None)
        pipe = self._in
        pipe.discard = True
        pipe.buffer.clear()
        pipe.wake()  # a task reading this end gets ClosedResourceError
        self._node._ends.pop(self, None)

    def _kill(self) -> None:
        """Its node was removed: close as the kernel would, and break every call on this end."""
        self._dead = True
        self._close()
