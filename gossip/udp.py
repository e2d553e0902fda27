"""The real transport: UDP datagrams and TCP push-pull streams on one trio port.

What it is for: carrying a node's opaque SWIM packets over UDP and its anti-entropy exchanges
over TCP, both on the same port so a member is reached at one address. Start it with
`addr = await nursery.start(transport.run)`; port 0 picks a free port for both.

What it must never do: understand the bytes it moves, raise out of `send_packet` for a network
error, buffer without bound, or let a broken peer or a failing stream handler take it down.
Stream framing is a 4-byte big-endian length then the payload, for request and response alike.
"""

from __future__ import annotations

import errno
import socket
import struct

import trio

from gossip.transport import MAX_PACKET, MAX_STREAM, StreamHandler, TransportError
from gossip.types import Address

_LENGTH = struct.Struct(">I")
# Port 0 binds UDP first and then TCP on the port the kernel chose; another process may already
# hold that TCP port, so try a few fresh ports before giving up.
_BIND_ATTEMPTS = 5
_LISTEN_BACKLOG = 128

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
)


class _FrameError(Exception):
    """A stream frame was cut short or too large."""

    def __init__(self, message: str, *, oversize: bool = False) -> None:
        super().__init__(message)
        self.oversize = oversize


class UdpTransport:
    """A `Transport` over trio sockets; see the module docstring."""

    def __init__(
        self, bind: Address, *, stream_timeout: float = 10.0, recv_buffer: int = 1024
    ) -> None:
        self._bind_addr = bind
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
                    nursery.start_soon(self._receive_loop, udp)
                    nursery.start_soon(
                        trio.serve_listeners, self._serve_stream, [trio.SocketListener(tcp)]
                    )
                    task_status.started(self._local_addr)
            finally:
                self._udp = None

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
        try:
            await self._udp.sendto(data, addr)
        except OSError:
            self.stats["send_errors"] += 1
            return
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)

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
            try:
                self._inbox_send.send_nowait((data, (peer[0], peer[1])))
            except trio.WouldBlock:
                self.stats["recv_dropped_full"] += 1
                continue
            self.stats["packets_in"] += 1
            self.stats["bytes_in"] += len(data)

    # -- streams ---------------------------------------------------------------------------

    async def exchange(self, addr: Address, data: bytes) -> bytes:
        if len(data) > MAX_STREAM:
            raise ValueError(f"stream of {len(data)} bytes exceeds MAX_STREAM={MAX_STREAM}")
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
