"""The real transport obeying a link filter (peer/faults/links.py), over loopback, on trio's
virtual clock: cuts both ways and one way, loss, delay, duplicates, and streams that never connect."""

from __future__ import annotations

import random

import pytest
import trio

import gossip.udp as udp
from gossip.udp import UdpTransport
from peer.addresses import format_address
from peer.faults.links import LinkFilter

LOCAL = ("127.0.0.1", 0)


async def start(nursery: trio.Nursery, links: LinkFilter | None = None) -> UdpTransport:
    transport = UdpTransport(LOCAL, links=links)
    await nursery.start(transport.run)
    return transport


def rule_on(t: UdpTransport, rule_id: str = "p-1", **effect) -> dict:
    return {"id": rule_id, "peers": [{"name": "remote", "gossip": format_address(t.local_addr)}], **effect}


async def next_data(t: UdpTransport) -> bytes:
    data, _ = await t.recv_packet()
    return data


async def echo(request: bytes, peer: tuple[str, int]) -> bytes:
    return request[::-1]


async def test_a_cut_drops_packets_both_ways_and_only_to_that_peer(nursery, autojump_clock):
    links = LinkFilter(random.Random(1))
    a = await start(nursery, links)
    b, c = await start(nursery), await start(nursery)
    links.set(rule_on(b, cut=True))
    await a.send_packet(b"a->b", b.local_addr)
    await b.send_packet(b"b->a", a.local_addr)
    # A packet that gets through after each dropped one shows the dropped one is not coming.
    await c.send_packet(b"c->b", b.local_addr)
    await c.send_packet(b"c->a", a.local_addr)
    assert await next_data(b) == b"c->b"
    assert await next_data(a) == b"c->a"
    await a.send_packet(b"a->c", c.local_addr)
    assert await next_data(c) == b"a->c"
    assert a.stats["filtered_out"] == 1 and a.stats["filtered_in"] == 1
    assert a.stats["packets_out"] == 1 and a.stats["packets_in"] == 1
    # Healed: the same link carries packets again, at once.
    links.clear()
    await a.send_packet(b"healed", b.local_addr)
    await b.send_packet(b"healed too", a.local_addr)
    assert await next_data(b) == b"healed" and await next_data(a) == b"healed too"


@pytest.mark.parametrize("direction", ["out", "in"])
async def test_a_one_way_cut_drops_only_that_way(nursery, autojump_clock, direction):
    links = LinkFilter(random.Random(1))
    a, b = await start(nursery, links), await start(nursery)
    links.set(rule_on(b, direction=direction, cut=True))
    await a.send_packet(b"a->b", b.local_addr)
    await b.send_packet(b"b->a", a.local_addr)
    if direction == "out":
        assert await next_data(a) == b"b->a"
        assert a.stats["filtered_out"] == 1 and a.stats["filtered_in"] == 0
    else:
        assert await next_data(b) == b"a->b"
        assert a.stats["filtered_in"] == 1 and a.stats["filtered_out"] == 0


async def test_delay_holds_packets_both_ways_and_duplicate_sends_two(nursery, autojump_clock):
    links = LinkFilter(random.Random(1))
    a, b = await start(nursery, links), await start(nursery)
    links.set(rule_on(b, delay_ms=300))
    start_time = trio.current_time()
    await a.send_packet(b"late", b.local_addr)
    assert await next_data(b) == b"late"
    assert trio.current_time() - start_time == pytest.approx(0.3, abs=0.01)
    start_time = trio.current_time()
    await b.send_packet(b"late back", a.local_addr)
    assert await next_data(a) == b"late back"
    assert trio.current_time() - start_time == pytest.approx(0.3, abs=0.01)
    links.set(rule_on(b, duplicate=1.0))
    await a.send_packet(b"twice", b.local_addr)
    assert [await next_data(b), await next_data(b)] == [b"twice", b"twice"]
    assert a.stats["filtered_out"] == a.stats["filtered_in"] == 0
    links.set(rule_on(b, loss=1.0))
    await a.send_packet(b"lost", b.local_addr)
    assert a.stats["filtered_out"] == 1


async def test_held_packets_are_bounded(nursery, autojump_clock, monkeypatch):
    monkeypatch.setattr(udp, "MAX_HELD", 3)
    links = LinkFilter(random.Random(1))
    a, b = await start(nursery, links), await start(nursery)
    links.set(rule_on(b, delay_ms=100))
    for i in range(5):
        await a.send_packet(b"%d" % i, b.local_addr)
    assert a.stats["filtered_out"] == 2
    assert sorted([await next_data(b) for _ in range(3)]) == [b"0", b"1", b"2"]
    await a.send_packet(b"room again", b.local_addr)
    assert await next_data(b) == b"room again"


async def test_a_stream_to_a_cut_peer_waits_for_the_callers_deadline(nursery, autojump_clock):
    links = LinkFilter(random.Random(1))
    a, b = await start(nursery, links), await start(nursery)
    b.set_stream_handler(echo)
    links.set(rule_on(b, direction="in", cut=True))  # one way for packets is still no TCP
    begun = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(2.5):
            await a.exchange(b.local_addr, b"hello")
    assert trio.current_time() - begun == pytest.approx(2.5)
    assert b.stats["streams_in"] == 0 and a.stats["filtered_out"] == 1
    links.set(rule_on(b, delay_ms=200))
    begun = trio.current_time()
    with trio.fail_after(2.5):
        assert await a.exchange(b.local_addr, b"hello") == b"olleh"
    assert trio.current_time() - begun == pytest.approx(0.4, abs=0.01)  # once each way
    links.clear()
    with trio.fail_after(2.5):
        assert await a.exchange(b.local_addr, b"again") == b"niaga"
