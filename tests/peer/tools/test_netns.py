"""The LAN of network namespaces: it connects (UDP, TCP, the host), `cut` stops everything both
ways and `restore` brings it back, nothing is left behind (teardown, a failure half-way, a dead
launch's leftovers), and two real peers find each other across the bridge by mDNS.

The tests that make namespaces are `slow` and need root (CI runs as root). Elsewhere they are
skipped with the reason, except under CI (`CI` set), where not being able to run them fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path

import httpx
import pytest
import trio

from gossip.keyring import new_key_file
from peer.tools import netns
from peer.tools.netns import (
    IFNAME_MAX,
    Lan,
    LanPeer,
    NetnsError,
    NetnsUnavailable,
    check_netns_available,
    create_lan,
    free_subnet,
    remove_stale,
)
from peer.tools.processes import CLI, NotInTime, poll_until, stop_group, wait_healthy

# A probe that must get through waits this long for its answer; one that must not, this long.
REACH = 3.0
NO_REACH = 1.0


@pytest.fixture
def root():
    try:
        check_netns_available()
    except NetnsUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the network-namespace tests: {exc}")
        pytest.skip(f"network namespaces unavailable here: {exc}")


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def _links() -> set[str]:
    return {line.split()[0].split("@")[0] for line in _ip("-br", "link").splitlines()}


def _leftovers(tag: str) -> list[str]:
    ours = [n for n in _namespaces() if n.startswith(f"murmur-{tag}-")]
    ours += [n for n in _links() if n == f"mb{tag}" or n.startswith(f"mv{tag}-")]
    return sorted(ours)


@pytest.fixture
def lan3(root):
    lan = create_lan(["a", "b", "c"], tag=str(os.getpid()))
    try:
        yield lan
    finally:
        lan.teardown()


# --- traffic probes: an echo server (UDP and TCP) per namespace, a client that tries them ---

ECHO = r"""
import socket, sys, threading
host = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((host, 0))
t = socket.socket(); t.bind((host, 0)); t.listen(16)
def udp():
    while True:
        data, peer = u.recvfrom(100); u.sendto(data, peer)
threading.Thread(target=udp, daemon=True).start()
print(u.getsockname()[1], t.getsockname()[1], flush=True)
while True:
    c, _ = t.accept(); c.settimeout(2)
    try: c.sendall(c.recv(100))
    except OSError: pass
    c.close()
"""

PROBE = r"""
import json, socket, sys, threading
wait = float(sys.argv[1]); targets = json.loads(sys.argv[2]); out = {}
def udp(key, host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(wait)
    try:
        s.sendto(b"ping", (host, port)); out[key] = s.recvfrom(100)[0] == b"ping"
    except OSError:
        out[key] = False
def tcp(key, host, port):
    try:
        with socket.create_connection((host, port), timeout=wait) as c:
            c.sendall(b"ping"); out[key] = c.recv(100) == b"ping"
    except OSError:
        out[key] = False
threads = [threading.Thread(target=udp if k.endswith("udp") else tcp, args=(k, h, p))
           for k, (h, p) in targets.items()]
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps(out))
"""


class Echoes:
    """An echo server on each peer's address and on the host's: {where: (host, udp, tcp)}."""

    def __init__(self, lan: Lan) -> None:
        self.lan = lan
        self.procs: list[subprocess.Popen] = []
        self.at: dict[str, tuple[str, int, int]] = {}
        for where in ["host", *lan.names]:
            addr = lan.host_address if where == "host" else lan.address(where)
            prefix = [] if where == "host" else lan.exec_prefix(where)
            proc = subprocess.Popen([*prefix, sys.executable, "-c", ECHO, addr],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            self.procs.append(proc)
            udp, tcp = map(int, proc.stdout.readline().split())
            self.at[where] = (addr, udp, tcp)

    def probe(self, src: str, dsts: list[str], wait: float) -> dict[str, bool]:
        """From `src` (a peer or "host") to each of `dsts`: {"<dst> udp": ok, "<dst> tcp": ok}."""
        targets = {}
        for d in dsts:
            addr, udp, tcp = self.at[d]
            targets[f"{d} udp"] = (addr, udp)
            targets[f"{d} tcp"] = (addr, tcp)
        prefix = [] if src == "host" else self.lan.exec_prefix(src)
        done = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(wait),
                               json.dumps(targets)], capture_output=True, text=True, check=True,
                              timeout=wait + 20)
        return json.loads(done.stdout)

    def close(self) -> None:
        stop_group(self.procs, grace=0, signum=signal.SIGKILL)


@pytest.fixture
def echoes(lan3):
    e = Echoes(lan3)
    try:
        yield e
    finally:
        e.close()


def _all(results: dict[str, bool], want: bool) -> bool:
    return bool(results) and all(v is want for v in results.values())


# --- the pure parts -------------------------------------------------------------------------


def test_a_free_subnet_is_the_first_24_of_the_pool_that_overlaps_nothing_in_use():
    assert free_subnet([]) == IPv4Network("10.77.0.0/24")
    used = [IPv4Network("10.77.0.0/24"), IPv4Network("10.77.1.5/32"), IPv4Network("192.0.2.0/24")]
    assert free_subnet(used) == IPv4Network("10.77.2.0/24")
    with pytest.raises(NetnsError, match="in use"):
        free_subnet([IPv4Network("10.0.0.0/8")])


def test_names_fit_linuxs_interface_limit_and_tags_are_pids():
    assert len(netns.veth_name("4194304", 253)) <= IFNAME_MAX
    assert len(netns.bridge_name("4194304")) <= IFNAME_MAX
    for bad in ("", "0", "12345678", "x1", "-1"):
        with pytest.raises(ValueError):
            netns._check_tag(bad)


def test_a_lan_description_survives_json_and_a_bad_one_is_refused():
    lan = Lan("42", "mb42", "10.77.3.0/24", "10.77.3.1",
              (LanPeer("mm-1", "murmur-42-1", "mv42-1", "10.77.3.2"),
               LanPeer("exchange", "murmur-42-2", "mv42-2", "10.77.3.3")))
    d = json.loads(json.dumps(lan.to_json()))
    assert Lan.from_json(d) == lan
    assert lan.address("exchange") == "10.77.3.3"
    assert lan.exec_prefix("mm-1")[-3:] == ["netns", "exec", "murmur-42-1"]
    with pytest.raises(KeyError, match="no peer 'ledger'"):
        lan.address("ledger")
    for bad in ({}, {**d, "peers": [{"name": "x"}]}, {**d, "tag": "abc"},
                {**d, "subnet": "nope"}, {**d, "peers": None}):
        with pytest.raises(ValueError):
            Lan.from_json(bad)


def test_without_root_it_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsUnavailable, match="need root"):
        check_netns_available()
    with pytest.raises(NetnsUnavailable, match="need root"):
        create_lan(["a"], tag="1")


# --- real namespaces ------------------------------------------------------------------------


@pytest.mark.slow
def test_peers_reach_each_other_and_the_host_reaches_every_peer(echoes, lan3):
    assert lan3.host_address.endswith(".1")
    assert [lan3.address(n).rsplit(".", 1)[1] for n in "abc"] == ["2", "3", "4"]
    assert _all(echoes.probe("a", ["b", "c", "host"], REACH), True)
    assert _all(echoes.probe("b", ["a"], REACH), True)
    assert _all(echoes.probe("host", ["a", "b", "c"], REACH), True)


@pytest.mark.slow
def test_cut_stops_all_traffic_both_ways_and_restore_brings_it_back(echoes, lan3):
    # Warm the neighbour caches first, so that the cut is what stops the traffic, not ARP.
    assert _all(echoes.probe("b", ["a", "c", "host"], REACH), True)
    assert _all(echoes.probe("host", ["b"], REACH), True)
    lan3.cut("b")
    assert lan3.is_cut("b") and not lan3.is_cut("a")
    assert _all(echoes.probe("b", ["a", "c", "host"], NO_REACH), False)
    assert _all(echoes.probe("a", ["b"], NO_REACH), False)
    assert _all(echoes.probe("host", ["b"], NO_REACH), False)
    # The others still talk.
    assert _all(echoes.probe("a", ["c", "host"], REACH), True)
    lan3.restore("b")
    assert not lan3.is_cut("b")
    assert _all(echoes.probe("b", ["a", "c", "host"], REACH), True)
    assert _all(echoes.probe("a", ["b"], REACH), True)
    assert _all(echoes.probe("host", ["b"], REACH), True)


@pytest.mark.slow
def test_another_process_cuts_through_the_json_description(echoes, lan3):
    code = ("import json, sys; from peer.tools.netns import Lan; "
            "Lan.from_json(json.loads(sys.argv[1])).cut('c')")
    subprocess.run([sys.executable, "-c", code, json.dumps(lan3.to_json())], check=True,
                   timeout=30)
    assert _all(echoes.probe("a", ["c"], NO_REACH), False)
    Lan.from_json(lan3.to_json()).restore("c")
    assert _all(echoes.probe("a", ["c"], REACH), True)


@pytest.mark.slow
def test_teardown_leaves_nothing_and_can_be_repeated(root):
    tag = str(os.getpid())
    lan = create_lan(["a", "b", "c"], tag=tag)
    try:
        assert len(_leftovers(tag)) == 7  # 3 namespaces, 3 veths, the bridge
        assert lan.teardown()
    finally:
        lan.teardown()
    assert _leftovers(tag) == []
    assert lan.teardown() == []


@pytest.mark.slow
def test_a_failure_half_way_removes_what_was_made_and_nothing_else(root, monkeypatch):
    tag = str(os.getpid())
    # Someone else's namespace under the name the third peer would take: creating it fails,
    # and the cleanup must not remove it.
    squatter = f"murmur-{tag}-3"
    _ip("netns", "add", squatter)
    try:
        with pytest.raises(NetnsError, match=squatter):
            create_lan(["a", "b", "c"], tag=tag)
        assert _leftovers(tag) == [squatter]
    finally:
        _ip("netns", "delete", squatter)

    # A failure in the middle of one peer's setup (its veth made, its route not).
    real = netns._ip

    def failing(*args: str) -> str:
        if args[:2] == ("-n", f"murmur-{tag}-2") and "route" in args:
            raise NetnsError(["ip", *args], "injected")
        return real(*args)

    monkeypatch.setattr(netns, "_ip", failing)
    with pytest.raises(NetnsError, match="injected"):
        create_lan(["a", "b", "c"], tag=tag)
    assert _leftovers(tag) == []


@pytest.mark.slow
def test_remove_stale_removes_a_dead_launchs_lan_and_keeps_a_live_ones(root):
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "120"])
    dead_tag, live_tag = str(gone.pid), str(alive.pid)
    dead = live = None
    # A bridge named like ours but not marked as ours (no alias): never touched.
    lookalike = f"mb{dead_tag}"
    try:
        dead = create_lan(["a", "b"], tag=dead_tag)
        live = create_lan(["a", "b"], tag=live_tag)
        removed = remove_stale()
        assert _leftovers(dead_tag) == []
        # Another launch's remove_stale may have beaten this one to it; what this one removed
        # is only ever of dead launches.
        assert not any(live_tag in name for name in removed)
        assert len(_leftovers(live_tag)) == 5
        dead.teardown()
        _ip("link", "add", "name", lookalike, "type", "bridge")
        remove_stale()
        assert lookalike in _links()
    finally:
        for lan in (dead, live):
            if lan is not None:
                lan.teardown()
        if lookalike in _links():
            _ip("link", "delete", "dev", lookalike)
        alive.kill()
        alive.wait()
    assert _leftovers(live_tag) == []


# --- zeroconf discovery on a LAN --------------------------------------------------------


@pytest.fixture
def lan2(root):
    lan = create_lan(["a", "b"], tag=str(os.getpid()))
    try:
        yield lan
    finally:
        lan.teardown()


def _spawn_discovering_mm(lan: Lan, name: str, tmp_path: Path, interfaces: str
                          ) -> subprocess.Popen:
    """`murmur peer --role mm --discover` in `name`'s namespace, with no seed to join, sealed
    under the key file the peers of the test share."""
    addr = lan.address(name)
    data_dir = tmp_path / name
    data_dir.mkdir()
    key_file = tmp_path / "cluster.key"
    if not key_file.exists():
        new_key_file(key_file)
    with open(tmp_path / f"{name}.stderr", "wb") as err:
        return subprocess.Popen(
            [*lan.exec_prefix(name), *CLI, "peer", "--role", "mm", "--name", name,
             "--bind", f"{addr}:7946", "--http", f"{addr}:7947", "--discover",
             "--interfaces", interfaces or addr, "--data-dir", str(data_dir), "--profile", "local", "--quiet",
             "--key-file", str(key_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)


@pytest.mark.slow
@pytest.mark.parametrize("interfaces", ["", "all"], ids=["its-address", "all"])
async def test_zeroconf_discovery_on_a_lan(lan2, tmp_path: Path, interfaces: str):
    """Two market makers, each in its own namespace, no --join: they find each other by mDNS
    across the bridge and both list both as alive (with --interfaces set to its own address,
    and with the default `all`)."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in lan2.names:
            procs[name] = await trio.to_thread.run_sync(_spawn_discovering_mm, lan2, name,
                                                        tmp_path, interfaces)
        urls = {n: await wait_healthy(p, tmp_path / n, 20.0) for n, p in procs.items()}
        assert urls == {n: f"http://{lan2.address(n)}:7947" for n in lan2.names}
        seen: dict[str, dict[str, str]] = {}

        async with httpx.AsyncClient(timeout=1.0) as client:

            async def both_see_both() -> bool:
                for name, url in urls.items():
                    try:
                        rows = (await client.get(f"{url}/members")).json()
                    except (httpx.HTTPError, ValueError):
                        return False
                    seen[name] = {r["name"]: r["state"] for r in rows}
                return all(s == {"a": "alive", "b": "alive"} for s in seen.values())

            try:
                await poll_until(both_see_both, 20.0, "a and b list both as alive", every=0.2)
            except NotInTime as exc:
                raise AssertionError(f"{exc}; each one's /members: {seen}; logs in "
                                     f"{tmp_path}") from None
        # They met through mDNS: each one's log says whom discovery found (no seed was given).
        for name, other in (("a", "b"), ("b", "a")):
            log = (tmp_path / name / f"{name}.log").read_text()
            found = [json.loads(line) for line in log.splitlines() if '"discovered"' in line]
            assert any(other in e.get("peers", {}) for e in found), log[-2000:]
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(stop_group, procs.values(), grace=5.0))


@pytest.mark.slow
def test_two_launches_at_once_take_different_subnets(root):
    other = subprocess.Popen(["sleep", "120"])
    tags = [str(os.getpid()), str(other.pid)]
    lans: dict[str, Lan] = {}
    errors: list[BaseException] = []

    def make(tag: str) -> None:
        try:
            lans[tag] = create_lan(["a", "b"], tag=tag)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(t,)) for t in tags]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors
        assert lans[tags[0]].subnet != lans[tags[1]].subnet
    finally:
        for lan in lans.values():
            lan.teardown()
        other.kill()
        other.wait()
