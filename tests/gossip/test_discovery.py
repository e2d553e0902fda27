"""mDNS discovery on loopback: peers of one cluster find each other, others are ignored.

The mDNS tests are `slow`: they use real multicast on 127.0.0.1 and real time. Every run uses a
fresh cluster and fresh node names, so concurrent runs on the same host cannot see each other's
peers (they do see each other's adverts, which the code under test must ignore).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf

from gossip.discovery import (
    SERVICE_TYPE,
    Advert,
    MalformedAdvert,
    ZeroconfDiscovery,
    _interface_hosts,
    build_txt,
    parse_txt,
    pick_host,
)
from peer.tools.processes import poll_until

LOOPBACK = ["127.0.0.1"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """No zeroconf thread (loop, browser) nor busy trio worker outlives the test's trio run."""
    before = set(threading.enumerate())
    yield

    def leftovers() -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
        ]

    # A trio worker renames itself back a moment after its job returns.
    deadline = time.monotonic() + 1.0
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers() == []


def discovery(name: str, cluster: str, port: int) -> ZeroconfDiscovery:
    return ZeroconfDiscovery(name, cluster, ("127.0.0.1", port), interfaces=LOOPBACK)


async def start_all(nursery: trio.Nursery, *peers: ZeroconfDiscovery) -> None:
    """Start peers side by side: each registration probes the link for about 1.5 s."""
    async with trio.open_nursery() as starting:
        for peer in peers:
            starting.start_soon(nursery.start, peer.run)


# -- TXT records, without a network ---------------------------------------------------------


def txt(**fields: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_txt_round_trips_name_cluster_port_version():
    advert = Advert("n1", "prod", 7946, 1)
    props = build_txt(advert)
    assert sorted(props) == ["cluster", "name", "port", "version"]
    assert parse_txt({k.encode(): v.encode() for k, v in props.items()}) == advert


@pytest.mark.parametrize(
    "props",
    [
        txt(name="n1", cluster="prod", version="1"),  # no port
        txt(name="n1", port="7946", version="1"),  # no cluster
        txt(name="n1", cluster="prod", port="http", version="1"),
        txt(name="n1", cluster="prod", port="0", version="1"),
        txt(name="n1", cluster="prod", port="70000", version="1"),
        txt(name="n1", cluster="prod", port="-1", version="1"),
        txt(name="n1", cluster="prod", port=" 7946", version="1"),
        txt(name="n1", cluster="prod", port="7946", version="one"),
        txt(name="", cluster="prod", port="7946", version="1"),
        {b"name": b"\xff", b"cluster": b"prod", b"port": b"7946", b"version": b"1"},
        {b"name": None, b"cluster": b"prod", b"port": b"7946", b"version": b"1"},
    ],
)
def test_malformed_txt_is_rejected(props):
    with pytest.raises(MalformedAdvert):
        parse_txt(props)


def test_txt_values_that_would_not_fit_are_refused_up_front():
    with pytest.raises(ValueError, match="255"):
        ZeroconfDiscovery("n1", "c" * 300, ("127.0.0.1", 7946), interfaces=LOOPBACK)
    with pytest.raises(ValueError, match="instance name"):
        ZeroconfDiscovery("n" * 64, "prod", ("127.0.0.1", 7946), interfaces=LOOPBACK)


def test_pick_host_prefers_routable_then_loopback_then_link_local():
    assert pick_host(["127.0.0.1", "192.0.2.2"]) == "192.0.2.2"
    assert pick_host(["fe80::1%2", "127.0.0.1"]) == "127.0.0.1"
    assert pick_host(["fe80::1%2"]) == "fe80::1%2"
    assert pick_host(["not-an-ip"]) is None


# -- real mDNS on loopback ----------------------------------------------------------------------


@pytest.mark.slow
async def test_peers_of_one_cluster_find_each_other_and_ignore_other_clusters(uid):
    cluster = f"test-{uid}"
    events: list[str] = []
    a = ZeroconfDiscovery(
        f"a-{uid}", cluster, ("127.0.0.1", 41001), interfaces=LOOPBACK,
        log=lambda event, **fields: events.append(event),
    )
    # Bound to every address: it advertises those of its chosen interfaces.
    b = ZeroconfDiscovery(f"b-{uid}", cluster, ("0.0.0.0", 41002), interfaces=LOOPBACK)
    c = discovery(f"c-{uid}", f"other-{uid}", 41003)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_all(nursery, a, b, c)
            assert b.advertised == ["127.0.0.1"]
            await a.wait_found()
            await b.wait_found()
            # c's advert reached both and was ignored for its cluster, not missed.
            await poll_until(lambda: a.foreign >= 1 and b.foreign >= 1, 10, "c's advert seen by a and b and ignored for its cluster", every=0.02)
            nursery.cancel_scope.cancel()
    assert a.found == {f"b-{uid}": ("127.0.0.1", 41002)}
    assert b.found == {f"a-{uid}": ("127.0.0.1", 41001)}
    assert c.found == {}
    assert a.malformed == b.malformed == 0
    # However often c's advert is seen, it is logged once.
    assert events.count("discovery_advert_foreign") == 1


@pytest.mark.slow
async def test_subscribe_yields_each_newly_found_peer_address(uid):
    cluster = f"test-{uid}"
    a = discovery(f"a-{uid}", cluster, 41011)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            found = a.subscribe()
            await start_all(
                nursery,
                discovery(f"b-{uid}", cluster, 41012),
                discovery(f"c-{uid}", cluster, 41013),
            )
            got = {await found.receive(), await found.receive()}
            nursery.cancel_scope.cancel()
    assert got == {("127.0.0.1", 41012), ("127.0.0.1", 41013)}
    # The channel closes with the discovery: a subscriber's `async for` ends.
    with pytest.raises(trio.EndOfChannel):
        await found.receive()


@pytest.mark.slow
async def test_cancelled_peer_says_goodbye_and_is_dropped(uid):
    cluster = f"test-{uid}"
    events: list[tuple[str, dict]] = []
    a = ZeroconfDiscovery(
        f"a-{uid}", cluster, ("127.0.0.1", 41021), interfaces=LOOPBACK,
        log=lambda event, **fields: events.append((event, fields)),
    )
    b = discovery(f"b-{uid}", cluster, 41022)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            with trio.CancelScope() as b_scope:
                async with trio.open_nursery() as b_nursery:
                    await b_nursery.start(b.run)
                    await a.wait_found()
                    b_scope.cancel()
            # Goodbye packets (TTL 0) make this quick; without them it would take the TTL.
            await poll_until(lambda: f"b-{uid}" not in a.found, 10, "a forgets b once b is gone", every=0.02)
            nursery.cancel_scope.cancel()
    assert a.found == {}
    # Each decision went to the log it was given (a peer passes its JSON-lines log).
    names = [e for e, _ in events]
    assert names[0] == "discovery_started" and names[-1] == "discovery_stopped"
    found = names.index("discovery_peer_found")
    lost = names.index("discovery_peer_lost")
    assert found < lost
    assert events[found][1]["peer_name"] == events[lost][1]["peer_name"] == f"b-{uid}"


@pytest.mark.slow
async def test_malformed_advert_of_the_same_service_type_is_counted_and_ignored(uid):
    cluster = f"test-{uid}"
    a = discovery(f"a-{uid}", cluster, 41031)
    bad = ServiceInfo(
        SERVICE_TYPE,
        f"bad-{uid}.{SERVICE_TYPE}",
        port=41032,
        properties={"name": f"bad-{uid}", "cluster": cluster, "port": "http", "version": "1"},
        server=f"bad-{uid}.local.",
        parsed_addresses=["127.0.0.1"],
    )
    zc = await trio.to_thread.run_sync(
        partial(Zeroconf, interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    )
    try:
        await trio.to_thread.run_sync(zc.register_service, bad)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                await poll_until(lambda: a.malformed >= 1, 10, "the malformed advert counted", every=0.02)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(zc.close)
    assert a.found == {}


@pytest.mark.slow
async def test_stops_cleanly_when_cancelled_right_after_start(uid):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery(f"a-{uid}", f"test-{uid}", 41041).run)
            nursery.cancel_scope.cancel()
    # The autouse fixture checks that no zeroconf thread is left.


@pytest.mark.slow
async def test_a_node_name_already_advertised_on_the_link_is_refused(uid):
    # Instance name = node name, so the name must be unique across clusters too.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery(f"a-{uid}", f"test-{uid}", 41061).run)
            with pytest.raises(RuntimeError, match="unique on the link"):
                await nursery.start(discovery(f"a-{uid}", f"other-{uid}", 41062).run)
            nursery.cancel_scope.cancel()


def test_all_interfaces_advertise_routable_addresses_of_the_ip_version():
    hosts = _interface_hosts(InterfaceChoice.All, IPVersion.V4Only)
    assert hosts and all(ipaddress.ip_address(h).version == 4 for h in hosts)
    # Loopback only when the host has nothing else to offer.
    assert "127.0.0.1" not in hosts or hosts == ["127.0.0.1"]


CHILD = """
import json, os, sys, trio
from gossip.discovery import ZeroconfDiscovery

name, cluster, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    d = ZeroconfDiscovery(name, cluster, ("127.0.0.1", port), interfaces=["127.0.0.1"])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            start = trio.current_time()
            await nursery.start(d.run)
            await d.wait_found()
        print(json.dumps({"found": d.found, "seconds": trio.current_time() - start}), flush=True)
        # Stay advertised until the parent closes stdin, so the other side surely sees us.
        stdin = trio.lowlevel.FdStream(os.dup(0))
        with trio.fail_after(10):
            while await stdin.receive_some():
                pass
        nursery.cancel_scope.cancel()

trio.run(main)
"""


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some()
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.slow
async def test_two_processes_find_each_other(uid):
    cluster = f"test-{uid}"
    peers = {f"a-{uid}": 41051, f"b-{uid}": 41052}
    reports: dict[str, dict] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            procs = {}
            for name, port in peers.items():
                procs[name] = await nursery.start(
                    partial(
                        trio.run_process,
                        [sys.executable, "-c", CHILD, name, cluster, str(port)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        cwd=ROOT,
                        check=True,  # a child that fails makes the nursery raise
                    )
                )
            for name, proc in procs.items():
                reports[name] = json.loads(await read_line(proc.stdout))
            for proc in procs.values():
                await proc.stdin.aclose()
    a, b = peers
    assert reports[a]["found"] == {b: ["127.0.0.1", peers[b]]}
    assert reports[b]["found"] == {a: ["127.0.0.1", peers[a]]}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([b"name", b"cluster", b"port", b"version", b"other"]) | st.binary(max_size=8),
                       st.none() | st.binary(max_size=300) | st.sampled_from([b"7", b"+7", b"7_0", b"\xff", b""])))
def test_any_txt_record_is_read_or_refused_as_malformed_only(properties):
    try:
        parse_txt(properties)
    except MalformedAdvert:
        pass
