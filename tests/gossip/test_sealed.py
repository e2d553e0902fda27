"""SealedTransport over the simulated network: only key holders ever reach a node's view."""

from __future__ import annotations

import random

import pytest
import trio

from gossip import wire
from gossip.config import LOCAL
from gossip.keyring import Keyring
from gossip.node import GossipNode
from gossip.seal import OVERHEAD, seal
from gossip.sealed import SealedTransport, sealed_config
from gossip.simnet import SimNetwork
from gossip.transport import MAX_PACKET, TransportError
from gossip.types import MemberState

KEY, OTHER, NEW = b"k" * 32, b"o" * 32, b"n" * 32
CONFIG = sealed_config(LOCAL)


def addr(i: int):
    return (f"10.0.0.{i}", 7946)


def sealed(net: SimNetwork, i: int, ring: Keyring, cluster: str = "murmur") -> SealedTransport:
    rng = random.Random(i)
    return SealedTransport(net.transport(addr(i)), ring, cluster, clock=trio.current_time, nonces=rng.randbytes)


def names(node: GossipNode, states=(MemberState.ALIVE, MemberState.SUSPECT)) -> set[str]:
    return {m.name for m in node.members() if m.state in states}


async def start_nodes(nursery, transports, seeds_from=0) -> list[GossipNode]:
    nodes = []
    for i, t in enumerate(transports):
        seeds = [] if i == 0 else [transports[seeds_from].local_addr]
        node = GossipNode(t, CONFIG, f"n{i}", seeds=seeds, seed=i)
        await nursery.start(node.run)
        nodes.append(node)
    return nodes


def test_the_sealed_config_leaves_room_for_the_seal():
    assert CONFIG.max_packet == MAX_PACKET - OVERHEAD


async def test_a_sealed_cluster_converges_and_counts_what_it_seals(autojump_clock, nursery):
    net = SimNetwork(seed=1)
    await nursery.start(net.run)
    ring = Keyring([KEY])
    transports = [sealed(net, i, ring) for i in range(1, 6)]
    nodes = await start_nodes(nursery, transports)
    await trio.sleep(10)
    for node in nodes:
        assert names(node) == {f"n{i}" for i in range(5)}
    for t in transports:
        assert t.stats["sealed_sent"] > 0 and t.stats["sealed_opened"] > 0
        assert sum(v for k, v in t.stats.items() if k.startswith("sealed_dropped")) == 0


async def test_nodes_without_the_key_never_enter_any_view_and_are_counted(autojump_clock, nursery):
    net = SimNetwork(seed=2)
    await nursery.start(net.run)
    ring = Keyring([KEY])
    members = [sealed(net, i, ring) for i in range(1, 4)]
    nodes = await start_nodes(nursery, members)
    # An outsider with another key and one sending plaintext both join through a member.
    outsider = GossipNode(sealed(net, 8, Keyring([OTHER])), CONFIG, "outsider", seeds=[addr(1)], seed=8)
    plain = GossipNode(net.transport(addr(9)), LOCAL, "plain", seeds=[addr(2)], seed=9)
    await nursery.start(outsider.run)
    await nursery.start(plain.run)
    # A forged Dead of a live member and a fake member, in plaintext, straight at a member.
    raw = net.transport(addr(10))
    forged = wire.encode_packet([wire.encode_message(wire.Dead("n2", 5, "n0")),
                                 wire.encode_message(wire.Alive("fake", 1, raw.local_addr, {}))])
    for _ in range(20):
        await raw.send_packet(forged, addr(1))
        await trio.sleep(1)
    everyone = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT)
    for node in nodes:
        assert names(node, everyone) == {"n0", "n1", "n2"}
    assert names(outsider) == {"outsider"} and names(plain) == {"plain"}
    dropped = {k: sum(t.stats[k] for t in members) for k in members[0].stats if k.startswith("sealed_dropped")}
    assert dropped["sealed_dropped_unknown_key"] > 0  # the outsider's joins and pings
    # The plain node's packets and the forged ones: too short for a seal, or not one.
    assert dropped["sealed_dropped_short"] + dropped["sealed_dropped_bad_version"] >= 20


async def test_a_plaintext_or_foreign_push_pull_is_refused_and_counted(autojump_clock, nursery):
    net = SimNetwork(seed=3)
    await nursery.start(net.run)
    ring = Keyring([KEY])
    member = sealed(net, 1, ring)
    (node,) = await start_nodes(nursery, [member])
    raw = net.transport(addr(9))
    with pytest.raises(TransportError):
        await raw.exchange(node.addr, b"\x84\x02bpp" + b"\x00" * 40)
    outsider = sealed(net, 8, Keyring([OTHER]))
    with pytest.raises(TransportError):
        await outsider.exchange(node.addr, b"state")
    assert member.stats["sealed_dropped_bad_version"] == 1
    assert member.stats["sealed_dropped_unknown_key"] == 1
    assert names(node) == {"n0"}


async def test_a_replayed_packet_is_dropped_and_counted(autojump_clock, nursery):
    net = SimNetwork(seed=4)
    await nursery.start(net.run)
    ring = Keyring([KEY])
    member = sealed(net, 1, ring)
    raw = net.transport(addr(9))
    frame = seal(ring, "murmur", b"p", b"payload", trio.current_time(), b"\x07" * 12)
    await raw.send_packet(frame, member.local_addr)
    assert await member.recv_packet() == (b"payload", raw.local_addr)
    await raw.send_packet(frame, member.local_addr)
    await raw.send_packet(seal(ring, "other", b"p", b"x", trio.current_time(), b"\x08" * 12), member.local_addr)
    with trio.move_on_after(1):
        await member.recv_packet()
        pytest.fail("a replayed or foreign-cluster packet reached the node")
    assert member.stats["sealed_dropped_replayed"] == 1
    assert member.stats["sealed_dropped_auth_failed"] == 1


async def test_a_push_pull_answer_replayed_onto_another_request_does_not_open(autojump_clock, nursery):
    net = SimNetwork(seed=5)
    await nursery.start(net.run)
    ring = Keyring([KEY])
    client = sealed(net, 1, ring)
    liar = net.transport(addr(2))
    # An answer sealed for some other request (its nonce bound in) is refused.
    stale = seal(ring, "murmur", b"r", b"state", trio.current_time(), b"\x05" * 12, bind=b"\x06" * 12)

    async def replay(data, sender):
        return stale

    liar.set_stream_handler(replay)
    with pytest.raises(TransportError, match="auth_failed"):
        await client.exchange(liar.local_addr, b"mine")


async def test_a_key_rotated_on_a_running_cluster_raises_no_suspicion(autojump_clock, nursery):
    net = SimNetwork(seed=6)
    await nursery.start(net.run)
    rings = [Keyring([KEY]) for _ in range(4)]
    transports = [sealed(net, i + 1, r) for i, r in enumerate(rings)]
    nodes = await start_nodes(nursery, transports)
    await trio.sleep(5)
    events = [node.subscribe() for node in nodes]
    new_id = ""
    for step in ("install", "use", "remove"):
        for ring in rings:  # one node after the other, as `murmur keys` goes peer by peer
            if step == "install":
                new_id = ring.install(NEW)
            elif step == "use":
                ring.use(new_id)
            else:
                ring.remove(ring.ids()[0] if ring.ids()[0] != new_id else ring.ids()[1])
            await trio.sleep(0.5)
        await trio.sleep(3)
    for node, channel in zip(nodes, events, strict=True):
        assert names(node) == {"n0", "n1", "n2", "n3"}
        seen = []
        while True:
            try:
                seen.append(channel.receive_nowait())
            except trio.WouldBlock:
                break
        assert [e for e in seen if e.new is not MemberState.ALIVE] == []
    assert all(r.ids() == [new_id] for r in rings)
    assert sum(t.stats["sealed_dropped_unknown_key"] for t in transports) == 0
