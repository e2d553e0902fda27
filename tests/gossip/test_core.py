"""The SWIM core's rules, driven directly through `CoreNet` (no trio, exact times)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip import wire
from gossip.config import (
    HEADROOM_FLOOR,
    HEADROOM_STEP,
    LAN,
    LOCAL,
    MAX_INCARNATION,
    PROTOCOL_VERSION,
)
from gossip.core import Swim
from gossip.types import MemberState

from . import cborgen
from .corenet import CoreNet

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def test_join_through_seed_converges_small_cluster():
    net = CoreNet(LOCAL)
    names = net.cluster(5)
    net.run_until(5.0)
    for viewer in names:
        assert [m.name for m in net.nodes[viewer].members() if m.state is ALIVE] == names


def test_frozen_node_is_suspected_then_declared_dead_by_everyone():
    net = CoreNet(LOCAL)
    names = net.cluster(6)
    net.run_until(5.0)
    net.frozen.add("n3")
    net.run_until(6.0)
    # Within a second at least one node has suspected it.
    assert any(e.node == "n3" and e.new is SUSPECT for _, e in net.events)
    net.run_until(15.0)
    for viewer in names:
        if viewer != "n3":
            assert net.state(viewer, "n3") is DEAD
            assert all(net.state(viewer, o) is ALIVE for o in names if o not in ("n3",))


def test_suspect_refutes_with_higher_incarnation():
    net = CoreNet(LOCAL.with_overrides(suspicion_mult=6))
    names = net.cluster(4)
    net.run_until(3.0)
    before = net.nodes["n2"].incarnation
    # n2 is unreachable for a moment, shorter than the suspicion timeout: it is suspected,
    # hears of it once the link is back, and refutes before anyone declares it dead.
    for other in ("n0", "n1", "n3"):
        net.cut(other, "n2")
    net.run_until(4.0)
    assert any(e.node == "n2" and e.new is SUSPECT for _, e in net.events)
    net.heal()
    net.run_until(12.0)
    assert net.nodes["n2"].incarnation > before
    assert any(e.node == "n2" and e.reason == "refute" for _, e in net.events)
    for viewer in names:
        assert net.state(viewer, "n2") is ALIVE
    assert not any(e.new is DEAD for _, e in net.events)


def test_buddy_ping_carries_suspicion_to_the_suspect():
    cfg = LOCAL
    a = Swim(cfg, "a", ("h", 1), rng=random.Random(1), now=0.0)
    b_addr = ("h", 2)
    a.receive_packet(wire.encode_packet([wire.encode_message(wire.Alive("b", 1, b_addr, {}))]), b_addr, 0.0)
    a.receive_packet(wire.encode_packet([wire.encode_message(wire.Suspect("b", 1, "c"))]), ("h", 3), 0.0)
    a.pop_packets()
    t = 0.0
    while True:  # run until a pings b
        t = a.next_deadline()
        a.handle_timer(t)
        pings = [(d, addr) for d, addr in a.pop_packets() if addr == b_addr]
        if pings:
            break
    msgs = wire.decode_packet(pings[0][0])
    assert isinstance(msgs[0], wire.Ping)
    assert any(isinstance(m, wire.Suspect) and m.name == "b" for m in msgs)


def test_suspicion_timeout_shrinks_with_confirmations():
    n = 10
    lo, hi = LAN.suspicion_bounds(n)
    k = LAN.expected_confirmations(n)
    from gossip.suspicion import Suspicion

    s = Suspicion("a", k, lo, hi, start=0.0)
    assert s.deadline == pytest.approx(hi)
    assert s.confirm("b")
    mid = s.deadline
    assert lo < mid < hi
    assert not s.confirm("b"), "the same confirmer twice is not independent"
    assert s.confirm("c")
    assert s.deadline == pytest.approx(lo)
    assert not s.confirm("d"), "beyond k confirmations nothing changes"


def test_confirmations_counted_when_several_members_suspect():
    net = CoreNet(LOCAL)
    names = net.cluster(8)
    net.run_until(5.0)
    net.frozen.add("n5")
    net.run_until(20.0)
    deaths = [e for _, e in net.events if e.node == "n5" and e.new is DEAD and e.reason == "suspicion-timeout"]
    assert deaths, "someone's suspicion timer declared n5 dead"
    assert max(e.detail["confirmations"] for e in deaths) >= 1
    assert sum(net.nodes[v].stats().get("suspicion_confirmations", 0) for v in names if v != "n5") > 0


def test_graceful_leave_is_recorded_as_left_not_dead():
    net = CoreNet(LOCAL)
    names = net.cluster(5)
    net.run_until(3.0)
    net.nodes["n4"].leave(net.now)
    net._collect("n4")
    net.run_until(4.0)
    net.crash("n4")
    net.run_until(10.0)
    for viewer in names[:4]:
        assert net.state(viewer, "n4") is LEFT
    assert not any(e.node == "n4" and e.new is DEAD for _, e in net.events)


def test_restart_with_higher_incarnation_rejoins():
    net = CoreNet(LOCAL)
    names = net.cluster(4)
    net.run_until(3.0)
    old = net.nodes["n3"].incarnation
    net.crash("n3")
    net.run_until(15.0)
    assert all(net.state(v, "n3") is DEAD for v in names[:3])
    # The identity store hands a restarted node an incarnation above its last one.
    net.add("n3", incarnation=old + 1, join=["n0"])
    net.run_until(20.0)
    for viewer in names:
        assert net.state(viewer, "n3") is ALIVE
        assert net.nodes[viewer].member("n3").incarnation >= old + 1


def test_restart_without_persisted_incarnation_refutes_its_own_death():
    net = CoreNet(LOCAL)
    names = net.cluster(4)
    net.run_until(3.0)
    net.nodes["n3"].update_meta({"role": "mm", "bump": 1}, net.now)  # incarnation 2
    net._collect("n3")
    net.run_until(4.0)
    net.crash("n3")
    net.run_until(15.0)
    net.add("n3", incarnation=1, join=["n0"])  # lost its data dir
    net.run_until(25.0)
    assert net.nodes["n3"].incarnation > 2
    for viewer in names:
        assert net.state(viewer, "n3") is ALIVE


def test_round_robin_probes_every_member_once_per_round():
    cfg = LOCAL
    a = Swim(cfg, "a", ("h", 100), rng=random.Random(7), now=0.0)
    others = [f"m{i}" for i in range(7)]
    for i, name in enumerate(others):
        a.receive_packet(wire.encode_packet([wire.encode_message(wire.Alive(name, 1, ("h", i + 1), {}))]), ("h", i + 1), 0.0)
    addr_name = {("h", i + 1): n for i, n in enumerate(others)}
    a.pop_packets()
    probed = []
    t = 0.0
    while len(probed) < 3 * len(others):
        t = a.next_deadline()
        a.handle_timer(t)
        for data, addr in a.pop_packets():
            msgs = wire.decode_packet(data)
            if msgs and isinstance(msgs[0], wire.Ping):
                probed.append(addr_name[addr])
                # answer at once so nobody becomes suspect
                a.receive_packet(wire.encode_packet([wire.encode_message(wire.Ack(msgs[0].seq, addr_name[addr]))]), addr, t)
    rounds = [probed[i : i + 7] for i in range(0, 21, 7)]
    for r in rounds:
        assert sorted(r) == sorted(others), "each round probes every member exactly once"
    assert rounds[0] != rounds[1] or rounds[1] != rounds[2], "the order is reshuffled at each wrap"


def test_each_update_is_retransmitted_a_bounded_number_of_times():
    from gossip.broadcast import BroadcastQueue

    q = BroadcastQueue()
    q.put("x", b"x" * 10)
    sent = 0
    while q.take(1000, limit=5):
        sent += 1
    assert sent == 5
    assert LOCAL.retransmit_limit(9) == 4 and LOCAL.retransmit_limit(10) == 8


def test_newer_update_about_a_node_replaces_the_older():
    from gossip.broadcast import BroadcastQueue

    q = BroadcastQueue()
    q.put("x", b"old")
    q.put("y", b"yy")
    q.put("x", b"new")
    assert len(q) == 2
    assert sorted(q.take(1000, limit=3)) == [b"new", b"yy"]


def test_least_sent_updates_go_first():
    from gossip.broadcast import BroadcastQueue

    q = BroadcastQueue()
    q.put("a", b"a" * 10)
    assert q.take(1000, limit=10) == [b"a" * 10]
    q.put("b", b"b" * 10)
    assert q.take(15, limit=10) == [b"b" * 10], "b was sent fewer times, so it wins the room"


def test_packets_never_exceed_max_packet_under_heavy_churn():
    net = CoreNet(LAN)
    net.cluster(60)
    sizes = []
    orig = net._collect

    def spy(name):
        node = net.nodes[name]
        pk = node.pop_packets()
        sizes.extend(len(d) for d, _ in pk)
        node._packets.extend(pk)
        orig(name)

    net._collect = spy
    net.run_until(10.0)
    assert sizes and max(sizes) <= LAN.max_packet
    assert max(sizes) > 1000, "updates are packed several to a datagram"


def test_malformed_and_unknown_version_packets_are_dropped_and_counted():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    before = a.members()
    a.receive_packet(b"\xff\x00garbage", ("h", 9), 0.0)
    a.receive_packet(wire.encode_packet([b"\x83\x04\x01"]), ("h", 9), 0.0)  # truncated alive
    import cbor2

    a.receive_packet(cbor2.dumps([99, []]), ("h", 9), 0.0)
    a.receive_state(b"not cbor", ("h", 9), 0.0, respond=True)
    assert a.stats()["dropped_malformed"] == 3
    assert a.stats()["dropped_version"] == 1
    assert a.members() == before


def test_misaddressed_ping_gets_no_ack():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    a.pop_packets()
    a.receive_packet(wire.encode_packet([wire.encode_message(wire.Ping(5, "someone-else", "b"))]), ("h", 2), 0.0)
    assert a.pop_packets() == []


def test_oversized_metadata_is_refused():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    with pytest.raises(ValueError, match="limit"):
        a.update_meta({f"k{i}": "x" * 60 for i in range(10)}, 1.0)
    assert a.incarnation == 1


def test_meta_update_is_gossiped_with_a_higher_incarnation():
    net = CoreNet(LOCAL)
    names = net.cluster(3)
    net.run_until(2.0)
    net.nodes["n1"].update_meta({"role": "exchange", "http": "http://x"}, net.now)
    net._collect("n1")
    net.run_until(3.0)
    for v in names:
        assert net.nodes[v].member("n1").meta["role"] == "exchange"


def test_partition_heals_through_reconnect_to_dead_members():
    net = CoreNet(LOCAL)
    names = net.cluster(6)
    net.run_until(3.0)
    left, right = names[:3], names[3:]
    for a in left:
        for b in right:
            net.cut(a, b)
    net.run_until(20.0)
    assert net.state("n0", "n4") is DEAD and net.state("n4", "n0") is DEAD
    net.heal()
    net.run_until(40.0)
    for v in names:
        assert {m.name for m in net.nodes[v].members() if m.state is ALIVE} == set(names)


def test_incremental_counts_match_the_view_after_churn():
    net = CoreNet(LOCAL)
    names = net.cluster(8)
    net.run_until(3.0)
    net.frozen.add("n2")
    net.run_until(8.0)
    net.frozen.discard("n2")
    net.nodes["n5"].leave(net.now)
    net._collect("n5")
    net.run_until(9.0)
    net.crash("n5")
    for a in names[:4]:
        for b in names[4:]:
            net.cut(a, b)
    net.run_until(15.0)
    net.heal()
    net.run_until(30.0)
    for name, node in net.nodes.items():
        view = node._nodes.values()
        assert node._up_count() == sum(1 for n in view if n.state.is_up), name
        assert set(node._suspected) == {n.name for n in view if n.suspicion is not None}, name


def test_push_pull_does_not_count_a_suspicion_we_already_hold_as_a_confirmation():
    net = CoreNet(LOCAL)
    net.cluster(6)
    net.run_until(3.0)
    a, b = net.nodes["n0"], net.nodes["n1"]
    # Both hold n5 suspect at incarnation 1 because of the same gossiped suspicion by n2.
    for node in (a, b):
        node.receive_packet(wire.encode_packet([wire.encode_message(wire.Suspect("n5", 1, "n2"))]), ("10.0.0.3", 7946), net.now)
    assert a.member("n5").state is SUSPECT
    before = a._nodes["n5"].suspicion.confirmations
    a.receive_state(b._encode_state(), b.addr, net.now, respond=False)
    assert a._nodes["n5"].suspicion.confirmations == before


_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(cborgen.packets(PROTOCOL_VERSION))
def test_any_cbor_packet_is_dropped_or_applied_never_raised(data):
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    a.receive_packet(data, ("h", 9), 0.0)
    a.handle_timer(a.next_deadline())
    assert a.stats()["packets_in"] == 1


@_FUZZ
@given(cborgen.states(PROTOCOL_VERSION), st.booleans())
def test_any_cbor_push_pull_state_is_dropped_or_merged_never_raised(data, respond):
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    answer = a.receive_state(data, ("h", 9), 0.0, respond=respond)
    s = a.stats()
    if answer is None and respond:
        # Dropped for exactly one reason: malformed, another version, or another cluster's.
        reasons = ("dropped_malformed", "dropped_version", "dropped_foreign_cluster")
        assert sum(s.get(r, 0) for r in reasons) == 1
    a.handle_timer(a.next_deadline())


def test_the_push_pull_answer_that_stopped_a_cluster_is_dropped_and_counted():
    import cbor2

    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    before = a.members()
    bad = cbor2.dumps([PROTOCOL_VERSION, "pp", "murmur", [["zz-x", 1, "127.0.0.1", 1, [0], {}]]])
    assert a.receive_state(bad, ("127.0.0.1", 1), 0.0, respond=False) is None
    assert a.receive_state(bad, ("127.0.0.1", 1), 0.0, respond=True) is None
    assert a.stats()["dropped_malformed"] == 2
    assert a.members() == before


def _forge(net: CoreNet, to: str, msg: wire.Message) -> None:
    """One UDP packet from an outsider, delivered to `to` now."""
    net.nodes[to].receive_packet(wire.encode_packet([wire.encode_message(msg)]), ("10.9.9.9", 1), net.now)
    net._collect(to)


@pytest.mark.parametrize("inc", [2**63 - 1, MAX_INCARNATION + 1, MAX_INCARNATION, HEADROOM_FLOOR + 1])
def test_a_forged_death_above_the_headroom_floor_changes_nothing(inc):
    # The packet found on a live cluster: Dead(mm-3, 2**63 - 1), which made mm-3 refute at 2**63,
    # an incarnation the wire refuses: every later message of mm-3 was dropped, for good.
    net = CoreNet(LOCAL)
    names = net.cluster(4)
    net.run_until(3.0)
    before = net.nodes["n3"].incarnation
    for viewer in names:  # to every member, the accused included
        _forge(net, viewer, wire.Dead("n3", inc, "intruder"))
    net.run_until(20.0)
    for viewer in names:
        assert net.state(viewer, "n3") is ALIVE
    assert net.nodes["n3"].incarnation == before
    counted = "dropped_malformed" if inc > MAX_INCARNATION else "dropped_implausible"
    assert all(net.nodes[v].stats()[counted] >= 1 for v in names)


@pytest.mark.parametrize("kind", [wire.Dead, wire.Suspect])
def test_a_forged_accusation_at_the_floor_is_refuted_and_the_member_can_still_refute(kind):
    net = CoreNet(LOCAL.with_overrides(suspicion_mult=6))
    names = net.cluster(4)
    net.run_until(3.0)
    _forge(net, "n1", kind("n3", HEADROOM_FLOOR, "intruder"))
    net.run_until(20.0)
    assert net.nodes["n3"].incarnation == HEADROOM_FLOOR + 1
    for viewer in names:
        assert net.state(viewer, "n3") is ALIVE
        assert net.nodes[viewer].member("n3").incarnation == HEADROOM_FLOOR + 1
    # In the headroom a genuine suspicion still reaches it and is refuted: cut it off, heal.
    for other in ("n0", "n1", "n2"):
        net.cut(other, "n3")
    net.run_until(21.0)
    assert any(e.node == "n3" and e.new is SUSPECT and e.at > 20.0 for _, e in net.events)
    net.heal()
    net.run_until(30.0)
    assert net.nodes["n3"].incarnation == HEADROOM_FLOOR + 2
    assert all(net.state(v, "n3") is ALIVE for v in names)
    # A forged accusation there moves it up one step at most, and it refutes again.
    _forge(net, "n1", kind("n3", HEADROOM_FLOOR + 2, "intruder"))
    _forge(net, "n1", kind("n3", HEADROOM_FLOOR + 3, "intruder"))  # above what n1 holds: dropped
    net.run_until(40.0)
    assert net.nodes["n3"].incarnation == HEADROOM_FLOOR + 3
    assert all(net.state(v, "n3") is ALIVE for v in names)
    assert not any(e.new is DEAD and e.reason == "suspicion-timeout" for _, e in net.events)


def test_an_implausible_message_is_dropped_alone_not_with_its_packet_or_state():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    packet = wire.encode_packet([
        wire.encode_message(wire.Dead("c", HEADROOM_FLOOR + 1, "x")),
        wire.encode_message(wire.Alive("b", 1, ("h", 2), {})),
    ])
    a.receive_packet(packet, ("h", 2), 0.0)
    assert a.member("b") is not None and a.member("c") is None
    assert a.stats()["dropped_implausible"] == 1
    state = wire.encode_state([
        wire.StateEntry("d", HEADROOM_FLOOR + 1, ("h", 4), DEAD, {}),  # held: nothing
        wire.StateEntry("b", HEADROOM_FLOOR + 1, ("h", 2), SUSPECT, {}),  # held: 1
        wire.StateEntry("b", HEADROOM_FLOOR + HEADROOM_STEP + 2, ("h", 2), ALIVE, {}),  # a leap up
        wire.StateEntry("e", MAX_INCARNATION, ("h", 5), ALIVE, {}),  # unknown: taken as it comes
    ])
    with pytest.raises(wire.WireError):
        wire.decode_state(state)  # b twice
    state = wire.encode_state([
        wire.StateEntry("d", HEADROOM_FLOOR + 1, ("h", 4), DEAD, {}),  # held: nothing
        wire.StateEntry("b", HEADROOM_FLOOR + 1, ("h", 2), SUSPECT, {}),  # held: 1
        wire.StateEntry("e", MAX_INCARNATION, ("h", 5), ALIVE, {}),  # unknown: taken as it comes
    ])
    a.receive_state(state, ("h", 2), 0.0, respond=False)
    assert a.member("b").state is ALIVE and a.member("d") is None and a.member("e").state is ALIVE
    assert a.stats()["dropped_implausible"] == 3
    a.receive_state(wire.encode_state([wire.StateEntry("b", HEADROOM_FLOOR + HEADROOM_STEP + 2, ("h", 2), ALIVE, {})]),
                    ("h", 2), 0.0, respond=False)
    assert a.member("b").incarnation == 1  # a leap into the headroom from 1
    assert a.stats()["dropped_implausible"] == 4


def test_a_forged_alive_about_me_in_the_headroom_is_dropped():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0)
    for inc in (MAX_INCARNATION, HEADROOM_FLOOR + 1):
        a.receive_packet(wire.encode_packet([wire.encode_message(wire.Alive("a", inc, ("h", 7), {}))]), ("h", 9), 0.0)
    assert a.incarnation == 1
    assert a.stats()["dropped_implausible"] == 2


def test_a_peer_at_the_bound_stays_there():
    # Only a peer restarted from an identity file at the bound can stand there.
    a = Swim(LOCAL, "a", ("h", 1), incarnation=MAX_INCARNATION, rng=random.Random(1), now=0.0)
    a.receive_packet(wire.encode_packet([wire.encode_message(wire.Suspect("a", MAX_INCARNATION, "b"))]),
                     ("h", 9), 0.0)
    assert a.incarnation == MAX_INCARNATION
    assert a.stats()["incarnation_at_bound"] == 1
    with pytest.raises(ValueError, match="bound"):
        a.update_meta({"role": "mm"}, 1.0)
    with pytest.raises(ValueError):
        Swim(LOCAL, "b", ("h", 2), incarnation=MAX_INCARNATION + 1, rng=random.Random(1), now=0.0)


def test_a_packet_or_state_of_another_cluster_is_dropped_and_counted():
    a = Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0, cluster="cluster-a")
    b = Swim(LOCAL, "b", ("h", 2), rng=random.Random(2), now=0.0, cluster="other-cluster")
    alive = wire.encode_message(wire.Alive("x", 1, ("h", 3), {}))
    a.receive_packet(wire.encode_packet([alive], "other-cluster"), ("h", 3), 0.0)
    b.join([a.addr], 0.0)
    (exchange,) = b.pop_exchanges()
    assert a.receive_state(exchange.data, b.addr, 0.0, respond=True) is None  # no answer to b
    a.join([b.addr], 0.0)
    (exchange,) = a.pop_exchanges()
    assert b.receive_state(exchange.data, a.addr, 0.0, respond=True) is None
    assert b.receive_state(a._encode_state(), a.addr, 0.0, respond=False) is None
    assert [m.name for m in a.members()] == ["a"] and [m.name for m in b.members()] == ["b"]
    assert a.stats()["dropped_foreign_cluster"] == 2 and b.stats()["dropped_foreign_cluster"] == 2
    # The same packet with a's name is taken.
    a.receive_packet(wire.encode_packet([alive], "cluster-a"), ("h", 3), 0.0)
    assert a.member("x") is not None


def test_a_cluster_name_is_one_to_63_characters():
    for bad in ("", "x" * 64, None, 5):
        with pytest.raises(ValueError, match="cluster"):
            Swim(LOCAL, "a", ("h", 1), rng=random.Random(1), now=0.0, cluster=bad)
    assert wire.decode_packet(wire.encode_packet([], "x" * 63), "x" * 63) == []


def test_a_peer_that_knows_nobody_retries_its_seeds_with_a_doubling_jittered_back_off():
    a = Swim(LAN, "a", ("h", 1), rng=random.Random(3), now=0.0)
    a.join([("h", 2), ("h", 3)], 0.0)
    now, delays = 0.0, []
    exchanges = a.pop_exchanges()
    assert [e.reason for e in exchanges] == ["join", "join"] and all(e.joining for e in exchanges)
    for _ in range(12):
        for e in exchanges:  # neither seed is listening yet
            a.exchange_failed(e, now)
        assert a.stats()["join_retries"] == len(delays) + 1  # once per round, not per seed
        retry = a._join_retry_at
        assert retry is not None and a.next_deadline() <= retry
        a.handle_timer(retry)
        exchanges = a.pop_exchanges()
        # (the reconnect tick may come along too, at reconnect_interval)
        assert [e.reason for e in exchanges if e.reason != "reconnect"] == ["join-retry", "join-retry"]
        delays.append(retry - now)
        now = retry
    for i, d in enumerate(delays):
        nominal = min(LAN.join_retry_min * 2**i, LAN.reconnect_interval)
        assert nominal / 2 <= d <= nominal
    assert delays[0] <= 0.2 and max(delays) > LAN.reconnect_interval / 2
    # The seed answers: the back-off starts again from the bottom, and nobody is retried.
    b = Swim(LAN, "b", ("h", 2), rng=random.Random(4), now=now)
    retries = [e for e in exchanges if e.reason == "join-retry"]
    answer = b.receive_state(retries[0].data, a.addr, now, respond=True)
    a.receive_state(answer, ("h", 2), now, respond=False, joining=True)
    a.exchange_failed(retries[1], now)  # the other seed is still down: no retry, a knows b
    assert a.stats()["join_retries"] == 12
    assert a._join_backoff == LAN.join_retry_min


def test_a_peer_that_knows_members_does_not_retry_on_a_failed_exchange():
    net = CoreNet(LOCAL)
    net.cluster(3)
    net.run_until(3.0)
    n1 = net.nodes["n1"]
    n1.exchange_failed(core_exchange(n1, "anti-entropy"), net.now)
    n1.exchange_failed(core_exchange(n1, "reconnect"), net.now)
    assert "join_retries" not in n1.stats()


def core_exchange(node: Swim, reason: str):
    from gossip.core import Exchange

    return Exchange(("10.0.0.1", 7946), node._encode_state(), reason)
