"""The simulated network under trio's virtual clock: delays, loss, faults and determinism."""

from __future__ import annotations

import pytest
import trio

from gossip.simnet import SimNetwork
from gossip.transport import MAX_PACKET, TransportError

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)
C = ("10.0.0.3", 7946)


async def echo(request: bytes, peer: tuple[str, int]) -> bytes:
    return request


async def received_within(transport, seconds: float):
    """The next packet if one arrives within `seconds` of virtual time, else None."""
    with trio.move_on_after(seconds):
        return await transport.recv_packet()
    return None


async def test_packet_is_delivered_after_the_link_delay(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.05)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    sent_at = trio.current_time()
    await a.send_packet(b"ping", B)
    assert await b.recv_packet() == (b"ping", A)
    assert trio.current_time() - sent_at == pytest.approx(0.05)
    assert a.stats["packets_out"] == 1 and b.stats["packets_in"] == 1


async def test_packets_due_at_the_same_time_arrive_in_send_order(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    for i in range(50):
        await a.send_packet(bytes([i]), B)
    assert [(await b.recv_packet())[0][0] for _ in range(50)] == list(range(50))


async def test_a_sooner_packet_wakes_the_delivery_task_early(autojump_clock, nursery):
    net = SimNetwork(1, delay=10.0)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    start = trio.current_time()
    await a.send_packet(b"slow", B)
    net.set_delay(1.0)
    await a.send_packet(b"fast", B)
    assert await b.recv_packet() == (b"fast", A)
    assert trio.current_time() - start == pytest.approx(1.0)
    assert await b.recv_packet() == (b"slow", A)
    assert trio.current_time() - start == pytest.approx(10.0)


async def test_send_packet_refuses_an_oversize_packet(autojump_clock):
    net = SimNetwork(1)
    a = net.transport(A)
    with pytest.raises(ValueError):
        await a.send_packet(b"x" * (MAX_PACKET + 1), B)


async def test_an_address_cannot_be_registered_twice(autojump_clock):
    net = SimNetwork(1)
    net.transport(A)
    with pytest.raises(ValueError):
        net.transport(A)


async def _delivered_under_loss(seed: int) -> list[int]:
    net = SimNetwork(seed, loss=0.3)
    a, b = net.transport(A), net.transport(B)
    got: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for i in range(1000):
            await a.send_packet(i.to_bytes(2, "big"), B)
        while (item := await received_within(b, 1.0)) is not None:
            got.append(int.from_bytes(item[0], "big"))
        nursery.cancel_scope.cancel()
    assert a.stats["dropped_loss"] + len(got) == 1000
    return got


async def test_loss_with_a_seed_is_reproducible(autojump_clock):
    first = await _delivered_under_loss(seed=7)
    assert await _delivered_under_loss(seed=7) == first
    assert 600 < len(first) < 800
    assert await _delivered_under_loss(seed=8) != first


async def test_link_loss_applies_to_one_direction_only(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    net.set_link_loss(A, B, 1.0)
    await a.send_packet(b"lost", B)
    await b.send_packet(b"back", A)
    assert await a.recv_packet() == (b"back", B)
    assert await received_within(b, 1.0) is None
    assert a.stats["dropped_loss"] == 1
    net.set_link_loss(A, B, 0.0)
    await a.send_packet(b"again", B)
    assert await b.recv_packet() == (b"again", A)


async def test_partition_blocks_packets_and_streams_until_heal(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b, c = net.transport(A), net.transport(B), net.transport(C)
    b.set_stream_handler(echo)
    await nursery.start(net.run)
    net.partition([[A], [B]])

    await a.send_packet(b"cut", B)
    assert await received_within(b, 1.0) is None
    assert a.stats["dropped_partition"] == 1
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")
    # C was not listed, so it still reaches both sides.
    await c.send_packet(b"bridge", B)
    assert await b.recv_packet() == (b"bridge", C)
    assert await c.exchange(B, b"state") == b"state"

    net.heal()
    await a.send_packet(b"healed", B)
    assert await b.recv_packet() == (b"healed", A)
    assert await a.exchange(B, b"state") == b"state"


async def test_partition_loses_packets_already_in_flight(autojump_clock, nursery):
    net = SimNetwork(1, delay=1.0)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    await a.send_packet(b"in flight", B)
    net.partition([[A], [B]])
    assert await received_within(b, 2.0) is None
    assert a.stats["dropped_partition"] == 1


async def test_partition_during_an_exchange_fails_it(autojump_clock, nursery):
    net = SimNetwork(1, delay=1.0)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)

    async def cut_while_answering(request: bytes, peer: tuple[str, int]) -> bytes:
        net.partition([[A], [B]])
        return request

    b.set_stream_handler(cut_while_answering)
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")


async def test_freeze_blocks_packets_and_streams_until_thaw(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)
    b.set_stream_handler(echo)
    await nursery.start(net.run)
    await a.send_packet(b"before", B)
    await trio.sleep(0.01)  # delivered into B's inbox...
    net.freeze(B)  # ...but B is stopped before it reads it

    assert await received_within(b, 1.0) is None
    await a.send_packet(b"while frozen", B)
    await b.send_packet(b"from the frozen", A)
    assert await received_within(a, 1.0) is None
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")
    with pytest.raises(TransportError):
        await b.exchange(A, b"state")
    assert a.stats["dropped_frozen"] == 1 and b.stats["dropped_frozen"] == 1

    net.thaw(B)
    assert await b.recv_packet() == (b"before", A)
    assert await received_within(b, 1.0) is None  # "while frozen" is gone for good
    await a.send_packet(b"after", B)
    assert await b.recv_packet() == (b"after", A)
    assert await a.exchange(B, b"state") == b"state"


async def test_recv_blocked_on_a_frozen_node_resumes_after_thaw(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)
    await nursery.start(net.run)
    net.freeze(B)
    got = []

    async def reader():
        got.append(await b.recv_packet())

    nursery.start_soon(reader)
    await trio.sleep(5)
    assert got == []
    net.thaw(B)
    await a.send_packet(b"hi", B)
    await trio.sleep(0.01)
    assert got == [(b"hi", A)]


async def test_removed_node_neither_sends_nor_receives_and_its_address_can_be_reused(
    autojump_clock, nursery
):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)
    b.set_stream_handler(echo)
    await nursery.start(net.run)
    net.remove(B)
    await a.send_packet(b"to the dead", B)
    await b.send_packet(b"from the dead", A)
    assert await received_within(a, 1.0) is None
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")
    assert a.stats["dropped_dead"] == 1 and b.stats["dropped_dead"] == 1

    reborn = net.transport(B)
    await a.send_packet(b"welcome back", B)
    assert await reborn.recv_packet() == (b"welcome back", A)
    assert net.total_stats()["dropped_dead"] == 2  # the old endpoint's counters still count


async def test_handler_failure_raises_transport_error_for_the_caller(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B)

    async def broken(request: bytes, peer: tuple[str, int]) -> bytes:
        raise RuntimeError("handler bug")

    await nursery.start(net.run)
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")  # no handler yet
    b.set_stream_handler(broken)
    with pytest.raises(TransportError):
        await a.exchange(B, b"state")
    assert a.stats["stream_errors"] == 2 and b.stats["stream_errors"] == 1


async def test_exchange_takes_a_round_trip_and_passes_the_caller_address(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.1)
    a, b = net.transport(A), net.transport(B)
    peers = []

    async def handler(request: bytes, peer: tuple[str, int]) -> bytes:
        peers.append(peer)
        return request[::-1]

    b.set_stream_handler(handler)
    start = trio.current_time()
    assert await a.exchange(B, b"abc") == b"cba"
    assert trio.current_time() - start == pytest.approx(0.2)
    assert peers == [A]
    assert a.stats["streams_out"] == 1 and b.stats["streams_in"] == 1


async def test_full_inbox_drops_and_counts_packets(autojump_clock, nursery):
    net = SimNetwork(1)
    a, b = net.transport(A), net.transport(B, inbox=2)
    await nursery.start(net.run)
    for i in range(5):
        await a.send_packet(bytes([i]), B)
    await trio.sleep(1)
    assert b.stats["recv_dropped_full"] == 3
    assert net.total_stats()["packets_in"] == 2


async def _scenario_log(seed: int) -> dict[tuple[str, int], list[tuple[float, tuple, bytes]]]:
    """Three nodes, jitter, loss and a partition; one driver task, so the order of calls is
    fixed. Returns each node's receive log with times relative to the start."""
    net = SimNetwork(seed, delay=0.002, jitter=0.01, loss=0.1)
    nodes = [net.transport(addr) for addr in (A, B, C)]
    logs: dict[tuple[str, int], list[tuple[float, tuple, bytes]]] = {
        n.local_addr: [] for n in nodes
    }
    start = trio.current_time()

    async def reader(node):
        while True:
            data, src = await node.recv_packet()
            logs[node.local_addr].append((round(trio.current_time() - start, 9), src, data))

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for node in nodes:
            nursery.start_soon(reader, node)
        for i in range(300):
            if i == 100:
                net.partition([[A], [B, C]])
            if i == 200:
                net.heal()
            src, dst = nodes[i % 3], nodes[(i * 7 + 1) % 3]
            await src.send_packet(f"m{i}".encode(), dst.local_addr)
            await trio.sleep(0.001)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return logs


async def test_fixed_scenario_gives_identical_delivery_logs(autojump_clock):
    first = await _scenario_log(seed=42)
    assert await _scenario_log(seed=42) == first
    assert sum(len(log) for log in first.values()) > 150
    assert await _scenario_log(seed=43) != first
