"""The real transport: UDP datagrams and TCP push-pull streams on one trio port.

What it is for: carrying a node's opaque SWIM packets over UDP and its anti-entropy exchanges
over TCP, both on the same port so a member is reached at one address. Start it with
`addr = await nursery.start(transport.run)`; port 0 picks a free port for both.

What it must never do: understand the bytes it moves, raise out of `send_packet` for a network
error, buffer without bound, or let a broken peer or a failing stream handler take it down.
Stream framing is a 4-byte big-endian length then the payload, for request and response alike.

Fault injection: given `links` (a link filter, peer/faults/links.py; anything with its `packet`
and `stream` methods), the transport obeys it. Packets it drops are counted (`filtered_out`,
`filtered_in`); delayed or duplicated ones are sent (or handed to `recv_packet`) later by a task
of the transport's nursery, at most MAX_HELD at once (more are dropped and counted as filtered).
A blocked stream never connects: `exchange` waits until the caller's own deadline cancels it.
Inbound streams come from ephemeral ports and are not filtered here: the dialing end blocks
them. Without `links` (or while it holds no rule) nothing of this costs more than one check.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from gossip.transport import MAX_PACKET, MAX_STREAM, StreamHandler, TransportError
from gossip.types import Address

_LENGTH = struct.Struct(">I")
# Port 0 binds UDP first and then TCP on the port the kernel chose; another process may already
# hold that TCP port, so try a few fresh ports before giving up.
_BIND_ATTEMPTS = 5
_LISTEN_BACKLOG = 128
# Packets a link filter delays or duplicates, held at once; beyond it they are dropped (counted).
MAX_HELD = 1024

STAT_KEYS = (
    "packets_in",
    "packets_out",
    "bytes_in",  # payload bytes of packets and streams (length prefixes not counted)
    "bytes_out",
    "send_errors",
    "recv_dropped_full",
    "streams_in",
    "streams_out",
    "stream_errors",  # any failed stream, inbound or outbound, oversize ones included
    "oversize_dropped",  # datagrams or stream frames over their limit
    "filtered_out",  # packets and streams the link filter dropped on their way out
    "filtered_in",  # packets the link filter dropped on their way in
)


class Links(Protocol):
    """What the transport asks of a link filter (peer.faults.links.LinkFilter); falsy while it
    holds no rule."""

    def __bool__(self) -> bool: ...
    def packet(self, direction: str, addr: Address, now: float) -> list[float]: ...
    def stream(self, addr: Address, now: float) -> tuple[bool, float]: ...


class _FrameError(Exception):
    """A stream frame was cut short or too large."""

    def __init__(self, message: str, *, oversize: bool = False) -> None:
        super().__init__(message)
        self.oversize = oversize


class UdpTransport:
    """A `Transport` over trio sockets; see the module docstring."""

    def __init__(
        self,
        bind: Address,
        *,
        stream_timeout: float = 10.0,
        recv_buffer: int = 1024,
        links: Links | None = None,
    ) -> None:
        self._bind_addr = bind
        self._links = links
        # Delayed or duplicated packets wait in tasks of this nursery (see MAX_HELD).
        self._nursery: trio.Nursery | None = None
        self._held = 0
        self._stream_timeout = stream_timeout
        self._handler: StreamHandler | None = None
        self._udp: trio.socket.SocketType | None = None
        self._local_addr: Address | None = None
        # Inbound datagrams wait here for `recv_packet`; when the reader falls behind we drop
        # (as the kernel would) rather than grow a queue.
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[bytes, Address]](
            recv_buffer
        )
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    @property
    def local_addr(self) -> Address:
        if self._local_addr is None:
            raise RuntimeError("transport is not bound yet: start run() with nursery.start")
        return self._local_addr

    def set_stream_handler(self, handler: StreamHandler) -> None:
        self._handler = handler

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        udp, tcp = await self._bind()
        with udp, tcp:
            self._udp = udp
            host, port = udp.getsockname()[:2]
            self._local_addr = (host, port)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._receive_loop, udp)
                    nursery.start_soon(
                        trio.serve_listeners, self._serve_stream, [trio.SocketListener(tcp)]
                    )
                    task_status.started(self._local_addr)
            finally:
                self._udp = None
                self._nursery = None

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        host, port = self._bind_addr
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(_BIND_ATTEMPTS):
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            tcp = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                # Off for UDP so that two nodes can never share (and split) one port.
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                await udp.bind((host, port))
                # On for TCP so a restarted node can rebind past old TIME_WAIT connections.
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await tcp.bind((host, udp.getsockname()[1]))
                tcp.listen(_LISTEN_BACKLOG)
            except OSError as exc:
                udp.close()
                tcp.close()
                retry = port == 0 and exc.errno == errno.EADDRINUSE
                if retry and attempt + 1 < _BIND_ATTEMPTS:
                    continue
                raise
            return udp, tcp
        raise AssertionError("unreachable")

    # -- packets ---------------------------------------------------------------------------

    async def send_packet(self, data: bytes, addr: Address) -> None:
        if len(data) > MAX_PACKET:
            raise ValueError(f"packet of {len(data)} bytes exceeds MAX_PACKET={MAX_PACKET}")
        if self._udp is None:
            raise RuntimeError("transport is not running")
        links = self._links
        if links:
            delays = links.packet("out", addr, time.time())
            if delays != [0.0]:
                if not delays:
                    self.stats["filtered_out"] += 1
                for delay in delays:
                    if delay > 0:
                        self._hold(delay, self._send_now, data, addr, "filtered_out")
                    else:
                        await self._send_now(data, addr)
                return
        await self._send_now(data, addr)

    async def _send_now(self, data: bytes, addr: Address) -> None:
        udp = self._udp
        if udp is None:
            return  # a held packet outlived the transport
        try:
            await udp.sendto(data, addr)
        except OSError:
            self.stats["send_errors"] += 1
            return
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)

    def _hold(self, delay: float, deliver: Callable[[bytes, Address], Awaitable[None]],
              data: bytes, addr: Address, dropped: str) -> None:
        """Deliver a packet after `delay` seconds from a task of our nursery, within MAX_HELD."""
        if self._nursery is None or self._held >= MAX_HELD:
            self.stats[dropped] += 1
            return
        self._held += 1
        self._nursery.start_soon(self._deliver_later, delay, deliver, data, addr)

    async def _deliver_later(self, delay: float, deliver: Callable[[bytes, Address], Awaitable[None]],
                             data: bytes, addr: Address) -> None:
        try:
            await trio.sleep(delay)
            await deliver(data, addr)
        finally:
            self._held -= 1

    async def recv_packet(self) -> tuple[bytes, Address]:
        return await self._inbox_recv.receive()

    async def _receive_loop(self, udp: trio.socket.SocketType) -> None:
        while True:
            try:
                # One byte more than allowed, so that an oversize datagram is seen, not truncated.
                data, peer = await udp.recvfrom(MAX_PACKET + 1)
            except OSError:
                # e.g. an ICMP error surfacing on some platforms; the socket itself is still fine.
                continue
            if len(data) > MAX_PACKET:
                self.stats["oversize_dropped"] += 1
                continue
            source = (peer[0], peer[1])
            links = self._links
            if links:
                delays = links.packet("in", source, time.time())
                if delays != [0.0]:
                    if not delays:
                        self.stats["filtered_in"] += 1
                    for delay in delays:
                        if delay > 0:
                            self._hold(delay, self._accept_later, data, source, "filtered_in")
                        else:
                            self._accept(data, source)
                    continue
            self._accept(data, source)

    async def _accept_later(self, data: bytes, source: Address) -> None:
        self._accept(data, source)

    def _accept(self, data: bytes, source: Address) -> None:
        """Hand an inbound packet to `recv_packet`, or drop it if the reader is behind."""
        try:
            self._inbox_send.send_nowait((data, source))
        except trio.WouldBlock:
            self.stats["recv_dropped_full"] += 1
            return
        self.stats["packets_in"] += 1
        self.stats["bytes_in"] += len(data)

    # -- streams ---------------------------------------------------------------------------

    async def exchange(self, addr: Address, data: bytes) -> bytes:
        if len(data) > MAX_STREAM:
            raise ValueError(f"stream of {len(data)} bytes exceeds MAX_STREAM={MAX_STREAM}")
        links = self._links
        if links:
            blocked, delay = links.stream(addr, time.time())
            if blocked:
                # A cut link: the connection never comes up, as with a partitioned network. The
                # caller's own deadline (fail_after around the exchange) ends the wait.
                self.stats["filtered_out"] += 1
                await trio.sleep_forever()
            if delay > 0:
                await trio.sleep(delay)
        self.stats["streams_out"] += 1
        try:
            stream = await trio.open_tcp_stream(addr[0], addr[1])
            async with stream:
                await stream.send_all(_LENGTH.pack(len(data)) + data)
                response = await _receive_frame(stream)
        except (OSError, trio.BrokenResourceError, _FrameError) as exc:
            self.stats["stream_errors"] += 1
            if isinstance(exc, _FrameError) and exc.oversize:
                self.stats["oversize_dropped"] += 1
            raise TransportError(f"exchange with {addr[0]}:{addr[1]} failed: {exc!r}") from exc
        self.stats["bytes_out"] += len(data)
        self.stats["bytes_in"] += len(response)
        return response

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners closes the stream after we return. Nothing may escape from here
        # but cancellation: an exception would tear down the whole transport.
        self.stats["streams_in"] += 1
        with trio.move_on_after(self._stream_timeout) as scope:
            try:
                peer = stream.socket.getpeername()
                request = await _receive_frame(stream)
                if self._handler is None:
                    raise _FrameError("no stream handler installed")
                response = await self._handler(request, (peer[0], peer[1]))
                if len(response) > MAX_STREAM:
                    raise _FrameError(f"response of {len(response)} bytes", oversize=True)
                await stream.send_all(_LENGTH.pack(len(response)) + response)
            except Exception as exc:
                self.stats["stream_errors"] += 1
                if isinstance(exc, _FrameError) and exc.oversize:
                    self.stats["oversize_dropped"] += 1
                return
            self.stats["bytes_in"] += len(request)
            self.stats["bytes_out"] += len(response)
        if scope.cancelled_caught:
            self.stats["stream_errors"] += 1


async def _receive_frame(stream: trio.SocketStream) -> bytes:
    (length,) = _LENGTH.unpack(await _receive_exactly(stream, _LENGTH.size))
    if length > MAX_STREAM:
        raise _FrameError(f"frame of {length} bytes exceeds MAX_STREAM", oversize=True)
    return await _receive_exactly(stream, length)


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise _FrameError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
