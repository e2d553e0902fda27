"""The trio shell: no input from one peer ends a node, on the simulated network and on real UDP/TCP."""

from __future__ import annotations

import cbor2
import trio

from gossip import wire
from gossip.config import LOCAL, PROTOCOL_VERSION
from gossip.node import GossipNode
from gossip.simnet import SimNetwork
from gossip.udp import UdpTransport
from peer.tools.processes import poll_until

# The answer a fake member gave to push-pull, which once stopped all 5 processes of a cluster
# (then in the version 1 outline, without the cluster's name).
HOSTILE_STATE = cbor2.dumps([PROTOCOL_VERSION, "pp", "murmur", [["zz-x", 1, "127.0.0.1", 1, [0], {}]]])
BOUND = 10  # seconds of real time for the real-socket tests


async def hostile_answer(request: bytes, peer) -> bytes:
    return HOSTILE_STATE


def names(node: GossipNode) -> set[str]:
    return {m.name for m in node.members()}


async def test_a_hostile_push_pull_answer_is_dropped_and_counted_and_the_node_goes_on(autojump_clock, nursery):
    net = SimNetwork(seed=1)
    await nursery.start(net.run)
    fake = net.transport(("10.0.0.9", 7946))
    fake.set_stream_handler(hostile_answer)
    a = GossipNode(net.transport(("10.0.0.1", 7946)), LOCAL, "a", seed=1)
    await nursery.start(a.run)
    b = GossipNode(net.transport(("10.0.0.2", 7946)), LOCAL, "b", seeds=[fake.local_addr, a.addr], seed=2)
    await nursery.start(b.run)
    # The fake also advertises itself by UDP, so anti-entropy and reconnects pick it too.
    alive = wire.encode_message(wire.Alive("fake", 1, fake.local_addr, {}))
    await fake.send_packet(wire.encode_packet([alive]), a.addr)
    await trio.sleep(30)
    assert names(a) == names(b) == {"a", "b", "fake"}
    assert "zz-x" not in names(a) | names(b)
    assert b.stats()["dropped_malformed"] >= 1  # the join answer
    assert a.stats()["dropped_malformed"] >= 1  # an anti-entropy or reconnect answer
    assert a.stats()["dropped_error"] == b.stats()["dropped_error"] == 0


async def test_an_exception_from_the_core_drops_that_input_counts_it_and_the_node_goes_on(autojump_clock, nursery):
    net = SimNetwork(seed=2)
    await nursery.start(net.run)
    errors = []
    a = GossipNode(net.transport(("10.0.0.1", 7946)), LOCAL, "a", seed=1,
                   on_error=lambda what, sender, exc: errors.append((what, sender, type(exc).__name__)))
    await nursery.start(a.run)
    b = GossipNode(net.transport(("10.0.0.2", 7946)), LOCAL, "b", seeds=[a.addr], seed=2)
    await nursery.start(b.run)
    await trio.sleep(2)
    assert names(a) == names(b) == {"a", "b"}

    # A core bug that raises on some inputs: each of a's input paths fails once.
    core = a.core
    real_packet, real_state = core.receive_packet, core.receive_state
    failing = {"packet": 1, "state": 2}

    def bad_packet(*args, **kwargs):
        if failing["packet"]:
            failing["packet"] -= 1
            raise TypeError("unhashable type: 'list'")
        return real_packet(*args, **kwargs)

    def bad_state(*args, **kwargs):
        if failing["state"]:
            failing["state"] -= 1
            raise TypeError("unhashable type: 'list'")
        return real_state(*args, **kwargs)

    core.receive_packet, core.receive_state = bad_packet, bad_state
    a.core.join([b.addr], trio.current_time())  # a asks b: the answer fails in a's core
    a._flush()
    b.core.join([a.addr], trio.current_time())  # b asks a: the request fails in a's core
    b._flush()
    await trio.sleep(10)
    assert {w for w, _, _ in errors} == {"packet", "push-pull answer", "push-pull request"}
    assert a.stats()["dropped_error"] == 3
    assert not any(failing.values())
    # Still running: b's leave reaches a and is applied.
    await b.leave()
    await trio.sleep(1)
    assert a.core.member("b").state.value == "left"


async def _udp_node(nursery, name: str, seeds=(), **kwargs) -> GossipNode:
    transport = UdpTransport(("127.0.0.1", 0), stream_timeout=LOCAL.stream_timeout)
    await nursery.start(transport.run)
    node = GossipNode(transport, LOCAL, name, seeds=list(seeds), seed=hash(name) & 0xFFFF, **kwargs)
    await nursery.start(node.run)
    return node


async def test_over_real_udp_and_tcp_the_hostile_answer_and_packet_leave_the_node_running(nursery):
    with trio.fail_after(BOUND):
        fake = UdpTransport(("127.0.0.1", 0))
        await nursery.start(fake.run)
        fake.set_stream_handler(hostile_answer)
        a = await _udp_node(nursery, "a")
        b = await _udp_node(nursery, "b", seeds=[fake.local_addr, a.addr])
        await poll_until(lambda: names(a) == names(b) == {"a", "b"}, BOUND, "a and b see each other", every=0.02)
        await poll_until(lambda: b.stats().get("dropped_malformed", 0) >= 1, BOUND, "b drops the hostile answer", every=0.02)
        # The same payload as a UDP datagram, and as a push-pull request to a.
        await fake.send_packet(HOSTILE_STATE, a.addr)
        await poll_until(lambda: a.stats().get("dropped_malformed", 0) >= 1, BOUND, "a drops the hostile packet", every=0.02)
        try:
            await fake.exchange(a.addr, HOSTILE_STATE)
        except Exception:
            pass  # a closes the stream without an answer
        await poll_until(lambda: a.stats().get("dropped_malformed", 0) >= 2, BOUND, "a drops a second hostile packet", every=0.02)
        assert "zz-x" not in names(a) | names(b)
        assert a.stats()["dropped_error"] == b.stats()["dropped_error"] == 0
        # Both still gossip: a change of b's metadata reaches a.
        b.update_meta({"role": "mm"})
        await poll_until(lambda: a.core.member("b").meta == {"role": "mm"}, BOUND, "a learns b's new meta", every=0.02)


async def test_two_clusters_on_one_network_never_merge(autojump_clock, nursery):
    net = SimNetwork(seed=3)
    await nursery.start(net.run)
    a = [GossipNode(net.transport((f"10.0.0.{i}", 7946)), LOCAL, f"a{i}", seed=i,
                    seeds=[("10.0.0.1", 7946)] if i > 1 else [], cluster="cluster-a") for i in (1, 2, 3)]
    for node in a:
        await nursery.start(node.run)
    # A peer of another cluster joining through a member of the first (a wrong --join).
    b = GossipNode(net.transport(("10.0.1.1", 7946)), LOCAL, "b1", seeds=[a[0].addr], seed=9,
                   cluster="other-cluster")
    await nursery.start(b.run)
    # It even learns of a member's address by other means and gossips to it.
    b.add_seeds([a[1].addr])
    await trio.sleep(60)
    for node in a:
        assert names(node) == {"a1", "a2", "a3"}
    assert names(b) == {"b1"}
    assert a[0].stats()["dropped_foreign_cluster"] >= 1
    assert b.stats().get("dropped_foreign_cluster", 0) == 0  # a never answers it
    assert b.stats()["push_pull_failures"] >= 1


async def test_over_real_udp_and_tcp_a_peer_of_another_cluster_joining_through_a_member_is_never_seen(nursery):
    with trio.fail_after(BOUND):
        a1 = await _udp_node(nursery, "a1", cluster="cluster-a")
        a2 = await _udp_node(nursery, "a2", seeds=[a1.addr], cluster="cluster-a")
        b = await _udp_node(nursery, "b1", seeds=[a1.addr], cluster="other-cluster")
        await poll_until(lambda: names(a1) == names(a2) == {"a1", "a2"}, BOUND, "a1 and a2 see each other", every=0.02)
        await poll_until(lambda: a1.stats().get("dropped_foreign_cluster", 0) >= 1, BOUND, "a1 drops the other cluster's traffic", every=0.02)
        # A datagram of the other cluster straight to a member is dropped too.
        alive = wire.encode_message(wire.Alive("b1", 9, b.addr, {}))
        await b.transport.send_packet(wire.encode_packet([alive], "other-cluster"), a2.addr)
        await poll_until(lambda: a2.stats().get("dropped_foreign_cluster", 0) >= 1, BOUND, "a2 drops the other cluster's datagram", every=0.02)
        await trio.sleep(1.0)  # several probe periods of the local profile
        assert names(a1) == names(a2) == {"a1", "a2"}
        assert names(b) == {"b1"}
