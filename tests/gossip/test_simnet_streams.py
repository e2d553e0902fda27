"""Byte streams on the simulated network (what HTTP rides in the simulation): order, delay,
loss as delay, partitions and frozen nodes that hold bytes, removal, refusal, determinism."""

from __future__ import annotations

import pytest
import trio

from gossip.simnet import RETRANSMIT, SimNetwork

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)
B_HTTP = ("10.0.0.2", 8080)


async def read_exactly(stream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
    return got


class Sink:
    """A listener that keeps each accepted stream (handlers wait until the test ends)."""

    def __init__(self) -> None:
        self.streams: list[trio.abc.Stream] = []
        self.accepted = trio.Event()

    async def __call__(self, stream: trio.abc.Stream) -> None:
        self.streams.append(stream)
        self.accepted.set()
        await trio.sleep_forever()


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def two_nodes(net: SimNetwork):
    return net.transport(A), net.transport(B)


async def test_bytes_arrive_in_order_after_the_link_delay(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.05)
    a, b = two_nodes(net)
    sink = Sink()
    net.listen(B_HTTP, sink)
    await nursery.start(net.run)
    start = trio.current_time()
    client = await net.connect(A, B_HTTP)
    assert trio.current_time() - start == pytest.approx(0.1)  # SYN and SYN-ACK
    await sink.accepted.wait()
    server = sink.streams[0]
    sent_at = trio.current_time()
    await client.send_all(b"hello ")
    await client.send_all(b"world")
    assert await read_exactly(server, 11) == b"hello world"
    assert trio.current_time() - sent_at == pytest.approx(0.05)
    await server.send_all(b"back")
    assert await client.receive_some() == b"back"
    assert a.stats["conns_out"] == 1 and b.stats["conns_in"] == 1
    assert a.stats["conn_bytes_out"] == 11 and b.stats["conn_bytes_in"] == 11
    assert net.total_stats()["conn_bytes_in"] == 15


async def test_a_chunk_never_overtakes_the_one_before_under_jitter(autojump_clock, nursery):
    net = SimNetwork(3, delay=0.001, jitter=0.05)
    two_nodes(net)
    net.listen(B_HTTP, echo)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    payload = b"".join(i.to_bytes(2, "big") for i in range(500))
    for i in range(0, len(payload), 2):
        await client.send_all(payload[i:i + 2])
    assert await read_exactly(client, len(payload)) == payload


async def test_connect_to_an_address_nobody_listens_on_is_refused_at_once(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.5)
    a, _ = two_nodes(net)
    await nursery.start(net.run)
    start = trio.current_time()
    with pytest.raises(ConnectionRefusedError):
        await net.connect(A, B_HTTP)
    with pytest.raises(OSError):
        await net.connect(A, ("10.9.9.9", 80))  # no node on that host
    assert trio.current_time() == start
    assert a.stats["conns_refused"] == 2
    net.listen(B_HTTP, echo)
    net.unlisten(B_HTTP)
    with pytest.raises(ConnectionRefusedError):
        await net.connect(A, B_HTTP)


async def test_partition_holds_bytes_and_connects_until_heal(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.01)
    a, b = two_nodes(net)
    sink = Sink()
    net.listen(B_HTTP, sink)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    await sink.accepted.wait()
    server = sink.streams[0]

    net.partition([[A], [B]])
    await client.send_all(b"held")
    with trio.move_on_after(30) as waited:
        await server.receive_some()
    assert waited.cancelled_caught  # the reader's own timeout ends its wait
    with trio.move_on_after(30) as waited:
        await net.connect(A, B_HTTP)
    assert waited.cancelled_caught
    assert a.stats["conn_held"] == 1

    got = []

    async def read():
        got.append((await server.receive_some(), trio.current_time()))

    async def heal_later():
        await trio.sleep(5)
        net.heal()

    nursery.start_soon(read)
    nursery.start_soon(heal_later)
    healed_at = trio.current_time() + 5
    # A connect held by the cut completes once it heals (one round trip later).
    second = await net.connect(A, B_HTTP)
    assert trio.current_time() == pytest.approx(healed_at + 0.02)
    assert got == [(b"held", pytest.approx(healed_at + 0.01))]  # sent again at the heal
    await second.send_all(b"x")
    await trio.sleep(1)
    assert await sink.streams[1].receive_some() == b"x"


async def test_partition_by_stream_address_cuts_only_the_streams(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = two_nodes(net)
    net.listen(B_HTTP, echo)
    await nursery.start(net.run)
    net.partition([[A], [B_HTTP]])
    with trio.move_on_after(10) as waited:
        await net.connect(A, B_HTTP)
    assert waited.cancelled_caught
    await a.send_packet(b"gossip still flows", B)
    assert await b.recv_packet() == (b"gossip still flows", A)


async def test_a_fully_lossy_link_holds_one_direction(autojump_clock, nursery):
    net = SimNetwork(1)
    two_nodes(net)
    sink = Sink()
    net.listen(B_HTTP, sink)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    await sink.accepted.wait()
    server = sink.streams[0]
    net.set_link_loss(A, B, 1.0)
    await client.send_all(b"to b")
    await server.send_all(b"to a")
    assert await client.receive_some() == b"to a"
    with trio.move_on_after(10) as waited:
        await server.receive_some()
    assert waited.cancelled_caught
    net.set_link_loss(A, B, 0.0)
    assert await server.receive_some() == b"to b"


async def test_freeze_holds_bytes_and_connects_until_thaw(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.01)
    two_nodes(net)
    sink = Sink()
    net.listen(B_HTTP, sink)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    await sink.accepted.wait()
    server = sink.streams[0]
    await client.send_all(b"before")
    await trio.sleep(1)  # arrived in B's buffer...
    net.freeze(B_HTTP)  # ...but B stops before reading it (a stream address freezes its node)
    await client.send_all(b" during")
    with trio.move_on_after(10) as waited:
        await server.receive_some()
    assert waited.cancelled_caught
    with trio.move_on_after(10) as waited:
        await net.connect(A, B_HTTP)
    assert waited.cancelled_caught
    net.thaw(B)
    assert await server.receive_some() == b"before"
    assert await server.receive_some() == b" during"
    assert (await net.connect(A, B_HTTP)) is not None


async def test_removal_closes_the_other_end_and_refuses_new_connects(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.01)
    two_nodes(net)
    cancelled = []

    async def handler(stream):
        try:
            await stream.send_all(b"last words")
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    net.listen(B_HTTP, handler)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    await trio.sleep(0.005)  # the handler has sent; the bytes are on their way
    net.remove(B)
    assert await client.receive_some() == b"last words"  # sent before the crash: delivered
    assert await client.receive_some() == b""  # then the kernel's FIN
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"anyone?")
    await trio.sleep(0.001)  # the cancelled handler has run its except
    assert cancelled == [True]
    with pytest.raises(ConnectionRefusedError):
        await net.connect(A, B_HTTP)
    # Restarted on the same address, it listens again.
    net.transport(B)
    net.listen(B_HTTP, echo)
    again = await net.connect(A, B_HTTP)
    await again.send_all(b"hi")
    assert await again.receive_some() == b"hi"


async def test_closing_one_end_gives_eof_then_a_reset(autojump_clock, nursery):
    net = SimNetwork(1)
    two_nodes(net)
    sink = Sink()
    net.listen(B_HTTP, sink)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    await sink.accepted.wait()
    await sink.streams[0].send_all(b"bye")
    await sink.streams[0].aclose()
    assert await client.receive_some() == b"bye"
    assert await client.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"late")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()


async def test_loss_adds_delay_but_never_loses_or_reorders(autojump_clock, nursery):
    net = SimNetwork(5, delay=0.001, loss=0.3)
    a, _ = two_nodes(net)
    net.listen(B_HTTP, echo)
    await nursery.start(net.run)
    client = await net.connect(A, B_HTTP)
    start = trio.current_time()
    payload = bytes(range(256)) * 4
    for i in range(0, len(payload), 16):
        await client.send_all(payload[i:i + 16])
    assert await read_exactly(client, len(payload)) == payload
    assert a.stats["conn_retransmits"] > 0
    assert trio.current_time() - start >= RETRANSMIT


async def _trace(seed: int) -> list[tuple[float, str, bytes]]:
    """Two clients talking to an echo server under jitter, loss and a partition; one driver
    task, so the order of calls is fixed. Returns what each client read, and when."""
    net = SimNetwork(seed, delay=0.002, jitter=0.01, loss=0.1)
    net.transport(A)
    net.transport(B)
    net.transport(("10.0.0.3", 7946))
    net.listen(B_HTTP, echo)
    trace: list[tuple[float, str, bytes]] = []
    start = trio.current_time()

    async def reader(name, stream):
        while data := await stream.receive_some():
            trace.append((round(trio.current_time() - start, 9), name, data))

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        one = await net.connect(A, B_HTTP)
        two = await net.connect(("10.0.0.3", 7946), B_HTTP)
        nursery.start_soon(reader, "one", one)
        nursery.start_soon(reader, "two", two)
        for i in range(200):
            if i == 50:
                net.partition([[A], [B]])
            if i == 120:
                net.heal()
            await (one if i % 2 else two).send_all(b"m%d;" % i)
            await trio.sleep(0.003)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    return trace


async def test_the_same_seed_gives_the_same_delivery_times(autojump_clock):
    first = await _trace(11)
    assert await _trace(11) == first
    assert b"".join(d for _, n, d in first if n == "one") == b"".join(
        b"m%d;" % i for i in range(200) if i % 2)
    assert await _trace(12) != first


async def test_a_listener_with_its_own_nursery_serves_in_it(autojump_clock, nursery):
    net = SimNetwork(1)
    two_nodes(net)
    await nursery.start(net.run)
    async with trio.open_nursery() as own:
        net.listen(B_HTTP, echo, nursery=own)
        client = await net.connect(A, B_HTTP)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        await client.aclose()  # the handler reads EOF and returns: the nursery can close
