"""The real trio transport, over loopback: packets, streams, and what it survives."""

from __future__ import annotations

import socket
import struct
from functools import partial

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.transport import MAX_PACKET, MAX_STREAM, TransportError
from gossip.udp import UdpTransport
from peer.tools.processes import poll_until

LOCAL = ("127.0.0.1", 0)
BOUND = 5  # seconds; every test carries a fail_after so a hang fails instead of blocking CI


async def start(nursery: trio.Nursery, **kwargs) -> UdpTransport:
    transport = UdpTransport(LOCAL, **kwargs)
    await nursery.start(transport.run)
    return transport


async def echo_upper(request: bytes, peer: tuple[str, int]) -> bytes:
    return request.upper()


async def test_port_zero_binds_udp_and_tcp_on_the_same_real_port(nursery):
    with trio.fail_after(BOUND):
        t = await start(nursery)
        host, port = t.local_addr
        assert host == "127.0.0.1" and port != 0
        # Both protocols answer on that one port.
        tcp = await trio.open_tcp_stream(host, port)
        await tcp.aclose()
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            await udp.sendto(b"ping", t.local_addr)
            data, _ = await t.recv_packet()
        assert data == b"ping"


async def test_nursery_start_returns_the_local_address(nursery):
    with trio.fail_after(BOUND):
        t = UdpTransport(LOCAL)
        addr = await nursery.start(t.run)
        assert addr == t.local_addr


async def test_a_second_transport_cannot_bind_a_taken_port(nursery):
    with trio.fail_after(BOUND):
        t = await start(nursery)
        with pytest.raises(OSError):
            await nursery.start(UdpTransport(t.local_addr).run)


async def test_packets_travel_between_two_transports(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)
        await a.send_packet(b"hello", b.local_addr)
        await b.send_packet(b"x" * MAX_PACKET, a.local_addr)
        assert await b.recv_packet() == (b"hello", a.local_addr)
        assert await a.recv_packet() == (b"x" * MAX_PACKET, b.local_addr)
        assert a.stats["packets_out"] == 1 and a.stats["bytes_out"] == 5
        assert b.stats["packets_in"] == 1 and b.stats["bytes_in"] == 5


async def test_send_packet_refuses_an_oversize_packet(nursery):
    with trio.fail_after(BOUND):
        a = await start(nursery)
        with pytest.raises(ValueError):
            await a.send_packet(b"x" * (MAX_PACKET + 1), a.local_addr)
        assert a.stats["packets_out"] == 0


async def test_send_packet_counts_network_errors_instead_of_raising(nursery):
    with trio.fail_after(BOUND):
        a = await start(nursery)
        # Broadcast without SO_BROADCAST is refused by the kernel (EACCES).
        await a.send_packet(b"x", ("255.255.255.255", 9))
        assert a.stats["send_errors"] == 1
        assert a.stats["packets_out"] == 0


async def test_oversize_inbound_datagram_is_dropped_and_counted(nursery):
    with trio.fail_after(BOUND):
        t = await start(nursery)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            await udp.sendto(b"x" * (MAX_PACKET + 1), t.local_addr)
            await udp.sendto(b"ok", t.local_addr)
            assert (await t.recv_packet())[0] == b"ok"
        assert t.stats["oversize_dropped"] == 1


async def test_full_inbox_drops_and_counts_packets(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery, recv_buffer=1)
        for i in range(3):
            await a.send_packet(bytes([i]), b.local_addr)
        await poll_until(lambda: b.stats["packets_in"] + b.stats["recv_dropped_full"] == 3, BOUND, "all three datagrams received or counted as dropped", every=0.01)
        assert b.stats["recv_dropped_full"] == 2
        assert await b.recv_packet() == (b"\x00", a.local_addr)


async def test_exchange_returns_the_handler_response(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)
        seen = []

        async def handler(request: bytes, peer: tuple[str, int]) -> bytes:
            seen.append(peer)
            return request.upper()

        b.set_stream_handler(handler)
        assert await a.exchange(b.local_addr, b"state") == b"STATE"
        # Large enough to arrive in many TCP reads.
        big = b"m" * (1024 * 1024)
        assert await a.exchange(b.local_addr, big) == big.upper()
        assert seen[0][0] == "127.0.0.1"
        assert a.stats["streams_out"] == 2 and b.stats["streams_in"] == 2
        assert a.stats["bytes_out"] == 5 + len(big)


async def test_oversize_stream_frame_is_counted_and_the_transport_survives(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)
        b.set_stream_handler(echo_upper)
        raw = await trio.open_tcp_stream(*b.local_addr)
        async with raw:
            await raw.send_all(struct.pack(">I", MAX_STREAM + 1))
            assert await raw.receive_some(10) == b""  # closed on us
        assert b.stats["oversize_dropped"] == 1
        assert b.stats["stream_errors"] == 1
        assert await a.exchange(b.local_addr, b"still here") == b"STILL HERE"


async def test_truncated_stream_frame_is_counted_and_the_transport_survives(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)
        b.set_stream_handler(echo_upper)
        raw = await trio.open_tcp_stream(*b.local_addr)
        async with raw:
            await raw.send_all(struct.pack(">I", 100) + b"only ten b")
            await raw.send_eof()
            assert await raw.receive_some(10) == b""
        await poll_until(lambda: b.stats["stream_errors"] == 1, BOUND, "the stream error counted", every=0.01)
        assert await a.exchange(b.local_addr, b"ok") == b"OK"


async def test_handler_exception_is_counted_and_the_transport_survives(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)

        async def handler(request: bytes, peer: tuple[str, int]) -> bytes:
            if request == b"boom":
                raise RuntimeError("handler bug")
            return request

        b.set_stream_handler(handler)
        with pytest.raises(TransportError):
            await a.exchange(b.local_addr, b"boom")
        assert b.stats["stream_errors"] == 1
        assert a.stats["stream_errors"] == 1
        assert await a.exchange(b.local_addr, b"fine") == b"fine"


async def test_stream_without_a_handler_fails_cleanly(nursery):
    with trio.fail_after(BOUND):
        a, b = await start(nursery), await start(nursery)
        with pytest.raises(TransportError):
            await a.exchange(b.local_addr, b"anyone?")
        assert b.stats["stream_errors"] == 1


async def test_stalled_inbound_stream_is_cut_after_stream_timeout(nursery):
    with trio.fail_after(BOUND):
        b = await start(nursery, stream_timeout=0.2)
        b.set_stream_handler(echo_upper)
        raw = await trio.open_tcp_stream(*b.local_addr)
        async with raw:
            # Say nothing: the server must give up on us rather than hold the task forever.
            assert await raw.receive_some(10) == b""
        assert b.stats["stream_errors"] == 1


async def test_exchange_to_a_closed_port_raises_transport_error(nursery):
    with trio.fail_after(BOUND):
        a = await start(nursery)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(LOCAL)
        closed = probe.getsockname()
        probe.close()
        with pytest.raises(TransportError):
            await a.exchange(closed, b"hello?")
        assert a.stats["stream_errors"] == 1


async def test_oversize_response_raises_transport_error(nursery):
    with trio.fail_after(BOUND):
        a = await start(nursery)
        listeners = await nursery.start(
            partial(trio.serve_tcp, _oversize_responder, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(TransportError):
            await a.exchange(("127.0.0.1", port), b"hi")
        assert a.stats["oversize_dropped"] == 1


async def _oversize_responder(stream: trio.SocketStream) -> None:
    await stream.receive_some(100)
    await stream.send_all(struct.pack(">I", MAX_STREAM + 1))


# --- the push-pull stream's framing, fuzzed -------------------------------------------------------

class _Chunks(trio.abc.ReceiveStream):
    """Hands out `data` in the given chunk sizes, then end of stream; records what was asked for."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.asked = data, sizes, []

    async def receive_some(self, max_bytes=None):
        await trio.lowlevel.checkpoint()
        self.asked.append(max_bytes)
        size = self.sizes.pop(0) if self.sizes else len(self.data)
        n = max(1, min(size, max_bytes or size))
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    async def aclose(self):
        pass


def _frame(data: bytes, sizes: list[int]):
    from gossip.udp import _FrameError, _receive_frame

    stream = _Chunks(data, sizes)
    try:
        return trio.run(_receive_frame, stream), stream
    except _FrameError as exc:
        return exc, stream


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(1, 80), max_size=10))
def test_stream_framing_on_any_bytes_cut_anywhere_gives_the_frame_or_a_frame_error(data, sizes):
    result, stream = _frame(data, sizes)
    if isinstance(result, bytes):
        (length,) = struct.unpack(">I", data[:4])
        assert result == data[4:4 + length]
    else:
        assert len(data) < 4 or struct.unpack(">I", data[:4])[0] > len(data) - 4 or result.oversize
    # Never asks for more than the header, then the frame: nothing past MAX_STREAM is buffered.
    assert all(n is not None and n <= MAX_STREAM for n in stream.asked)


@given(st.integers(MAX_STREAM + 1, 2**32 - 1), st.binary(max_size=32))
def test_a_declared_length_past_max_stream_is_refused_before_any_of_it_is_read(length, rest):
    result, stream = _frame(struct.pack(">I", length) + rest, [])
    assert not isinstance(result, bytes) and result.oversize
    assert stream.data == rest  # the body was never read
