"""A LAN of network namespaces on one machine: what `murmur launch --netns` puts its peers on.

What it is for: `create_lan` makes a bridge on the host and, per peer, a network namespace joined
to it by a veth pair, with addresses in a free /24 of 10.77.0.0/16: the host's end of the bridge
is .1 (the launcher and the tools on the host reach every peer's HTTP there), the peers are .2,
.3, ... in the order named. Multicast crosses the bridge (snooping off), so `--discover` finds
peers by mDNS as on a real LAN. `Lan.cut` / `Lan.restore` cut a peer off in the kernel (its
veth's host end set down: nothing passes either way, for every socket), and `Lan.to_json` /
`Lan.from_json` carry the description in cluster.json so that `murmur partition` in another
process can do it. `remove_stale` removes what launches that are no longer running left behind.

What it must never do:
- touch a namespace or link it did not create: everything it makes is named with the launcher's
  pid (the tag) and its links carry the alias `murmur-<tag>`; `remove_stale` removes only those
  whose pid is dead, never a running launch's.
- leave anything behind when it fails half-way: `create_lan` undoes what it made, in reverse.
- pick a subnet in use on the host, or the same one as a launch running at the same time (the
  choice is made under a file lock until the bridge holds its address).
- change anything outside what it creates (no sysctl, no forwarding, no firewall): the
  namespaces reach the host's bridge address and each other, nothing beyond.

Blocking (it runs `ip`): from async code call it in a worker thread.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peer.tools.processes import pid_alive

PREFIX = "murmur-"
# The /24s are taken from here, the first one free on the host.
POOL = ipaddress.ip_network("10.77.0.0/16")
# Linux's limit on an interface name (IFNAMSIZ - 1).
IFNAME_MAX = 15
# The interface inside each namespace (the veth's other end).
INNER_IF = "eth0"
# `ip` commands are quick; this bounds one that hangs (a stuck netlink, a wedged mount).
COMMAND_BOUND = 30.0
# How long the subnet lock is waited for, and how long `restore` waits for the bridge port.
LOCK_BOUND = 30.0
FORWARDING_BOUND = 5.0
# The bridge port state in sysfs that forwards frames (BR_STATE_FORWARDING).
_FORWARDING = "3"
_LOCK_FILES = (Path("/run/murmur-netns.lock"), Path("/tmp/murmur-netns.lock"))


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot make network namespaces (not Linux, not root, no `ip`)."""


class NetnsError(RuntimeError):
    """An `ip` command failed; `argv` and `stderr` say which and why."""

    def __init__(self, argv: list[str], stderr: str, returncode: int | None = None) -> None:
        self.argv = list(argv)
        self.stderr = stderr
        self.returncode = returncode
        how = "timed out" if returncode is None else f"failed (exit {returncode})"
        super().__init__(f"`{' '.join(argv)}` {how}: {stderr.strip() or '(no message)'}")


def _ip_path() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


def check_netns_available() -> None:
    """Return if this process can make a LAN of namespaces; raise NetnsUnavailable saying why not."""
    if not sys.platform.startswith("linux"):
        raise NetnsUnavailable(f"network namespaces need Linux; this is {sys.platform}")
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            f"network namespaces need root (this process runs as uid {os.geteuid()}); run it "
            "with sudo, or without --netns"
        )
    if _ip_path() is None:
        raise NetnsUnavailable(
            "network namespaces need the `ip` command (iproute2), found neither on PATH nor in "
            "/usr/sbin or /sbin"
        )


def _ip(*args: str) -> str:
    """Run `ip ARGS`; its stdout, or NetnsError with the command and its stderr."""
    argv = [_ip_path() or "ip", *args]
    try:
        done = subprocess.run(
            argv, check=True, capture_output=True, text=True, timeout=COMMAND_BOUND,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        raise NetnsError(argv, exc.stderr or "", exc.returncode) from None
    except subprocess.TimeoutExpired:
        raise NetnsError(argv, f"no answer within {COMMAND_BOUND:g} s") from None
    except OSError as exc:  # `ip` vanished, or cannot be executed
        raise NetnsError(argv, str(exc), -1) from None
    return done.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).strip()
    # `ip -j netns list` prints nothing at all when there is no namespace.
    data = json.loads(out) if out else []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _namespaces() -> set[str]:
    return {str(d["name"]) for d in _ip_json("netns", "list") if "name" in d}


def _links() -> dict[str, dict[str, Any]]:
    return {str(d["ifname"]): d for d in _ip_json("-d", "link", "show") if "ifname" in d}


# --- names ----------------------------------------------------------------------------------


def _check_tag(tag: str) -> str:
    tag = str(tag)
    # The tag is the launcher's pid: remove_stale reads it back as one. Seven digits is Linux's
    # largest pid (4194304), and keeps `mv<tag>-<i>` within IFNAME_MAX.
    if not re.fullmatch(r"[1-9][0-9]{0,6}", tag):
        raise ValueError(f"tag must be a pid (1 to 7 digits), not {tag!r}")
    return tag


def netns_name(tag: str, i: int, prefix: str = PREFIX) -> str:
    return f"{prefix}{tag}-{i}"


def bridge_name(tag: str) -> str:
    return f"mb{tag}"


def veth_name(tag: str, i: int) -> str:
    return f"mv{tag}-{i}"


def link_alias(tag: str, prefix: str = PREFIX) -> str:
    """What every link a LAN makes carries as its alias: how remove_stale knows it is ours."""
    return f"{prefix}{tag}"


# --- the LAN --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LanPeer:
    name: str  # the peer's name (mm-1, exchange, ...)
    netns: str  # its network namespace
    veth: str  # the host's end of its veth pair, a port of the bridge
    address: str  # its address inside the namespace (on INNER_IF)


@dataclass(frozen=True, slots=True)
class Lan:
    """A bridge and one namespace per peer, made by `create_lan` (or read back with from_json)."""

    tag: str
    bridge: str
    subnet: str  # "10.77.0.0/24"
    host_address: str  # the bridge's address, the peers' gateway
    peers: tuple[LanPeer, ...]
    prefix: str = PREFIX

    def _peer(self, name: str) -> LanPeer:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(f"no peer {name!r} on this LAN (it has {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.peers]

    def address(self, name: str) -> str:
        return self._peer(name).address

    def netns(self, name: str) -> str:
        return self._peer(name).netns

    def exec_prefix(self, name: str) -> list[str]:
        """What to put before an argv to run it in `name`'s namespace (same pid: `ip` execs it)."""
        return [_ip_path() or "ip", "netns", "exec", self._peer(name).netns]

    def cut(self, name: str) -> None:
        """Cut `name` off the LAN in the kernel: its veth's host end goes down, so nothing passes
        either way between it and the other peers or the host, whatever the socket.

        Down rather than detached from the bridge: a detached port still delivers what the peer
        sends to the host's own addresses (a veth end is an interface of the host), so the cut
        would leak one way; a port that is down carries nothing, and the peer's end loses its
        carrier."""
        _ip("link", "set", "dev", self._peer(name).veth, "down")

    def restore(self, name: str) -> None:
        """Undo `cut`: the port comes up and forwards again (waited for, bounded)."""
        veth = self._peer(name).veth
        _ip("link", "set", "dev", veth, "up")
        # STP is off, so the port forwards as soon as it is up; wait for it anyway, so that a
        # caller that restores and at once sends does not race the bridge.
        state = Path(f"/sys/class/net/{veth}/brport/state")
        deadline = time.monotonic() + FORWARDING_BOUND
        while time.monotonic() < deadline:
            try:
                if state.read_text().strip() == _FORWARDING:
                    return
            except OSError:
                break  # no sysfs here: nothing to wait on
            time.sleep(0.01)

    def is_cut(self, name: str) -> bool:
        """True if `name`'s port is down (cut), read from the kernel."""
        link = _links().get(self._peer(name).veth)
        return link is None or "UP" not in link.get("flags", [])

    def teardown(self) -> list[str]:
        """Remove every veth, namespace and the bridge of this LAN that still exists; returns the
        names removed. Idempotent; tries everything, then raises the first failure."""
        return _remove(
            veths=[p.veth for p in self.peers],
            namespaces=[p.netns for p in self.peers],
            bridges=[self.bridge],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "prefix": self.prefix,
            "bridge": self.bridge,
            "subnet": self.subnet,
            "host_address": self.host_address,
            "peers": [
                {"name": p.name, "netns": p.netns, "veth": p.veth, "address": p.address}
                for p in self.peers
            ],
        }

    @classmethod
    def from_json(cls, d: Any) -> Lan:
        """The Lan `to_json` described; ValueError if `d` is not such a description."""
        try:
            peers = tuple(
                LanPeer(str(p["name"]), str(p["netns"]), str(p["veth"]), str(p["address"]))
                for p in d["peers"]
            )
            lan = cls(
                tag=_check_tag(str(d["tag"])),
                bridge=str(d["bridge"]),
                subnet=str(ipaddress.ip_network(d["subnet"])),
                host_address=str(ipaddress.ip_address(d["host_address"])),
                peers=peers,
                prefix=str(d.get("prefix", PREFIX)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a LAN description: {exc!r}") from None
        for p in peers:
            ipaddress.ip_address(p.address)  # ValueError if not an address
        return lan


def _remove(*, veths: list[str], namespaces: list[str], bridges: list[str]) -> list[str]:
    # Veths first: deleting one end deletes both at once, whereas a namespace's links go away
    # asynchronously after `ip netns del` returns. Bridges last, once they have no port.
    removed: list[str] = []
    errors: list[NetnsError] = []
    links = _links()
    present = _namespaces()
    for kind, names, exists in (
        ("link", veths, links),
        ("netns", namespaces, present),
        ("link", bridges, links),
    ):
        for name in names:
            if name not in exists:
                continue
            try:
                if kind == "netns":
                    _ip("netns", "delete", name)
                else:
                    _ip("link", "delete", "dev", name)
                removed.append(name)
            except NetnsError as exc:
                # Gone meanwhile (another launch's remove_stale) is what we wanted.
                still = _namespaces() if kind == "netns" else _links()
                if name in still:
                    errors.append(exc)
    if errors:
        raise errors[0]
    return removed


# --- making one -----------------------------------------------------------------------------


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (default route aside)."""
    nets: list[ipaddress.IPv4Network] = []
    for link in _ip_json("-4", "addr", "show"):
        for a in link.get("addr_info", []):
            if "local" in a and "prefixlen" in a:
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in _ip_json("-4", "route", "show", "table", "all"):
        dst = r.get("dst")
        if not dst or dst == "default":
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return nets


def free_subnet(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of POOL that overlaps none of `used` (a pure choice, for tests)."""
    for subnet in POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(n) for n in used):
            return subnet
    raise NetnsError(["(choose a subnet)"], f"every /24 of {POOL} is in use on this host", 1)


@contextmanager
def _subnet_lock() -> Iterator[None]:
    """Held from choosing a subnet until the bridge has its address, so that two launches at
    once do not take the same /24."""
    fd = None
    for path in _LOCK_FILES:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            break
        except OSError:
            continue
    if fd is None:
        raise NetnsError(["(lock)"], f"cannot open any of {[str(p) for p in _LOCK_FILES]}", 1)
    try:
        deadline = time.monotonic() + LOCK_BOUND
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NetnsError(
                        ["(lock)"], f"another launch held the netns lock for {LOCK_BOUND:g} s", 1
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_lan(names: list[str], *, tag: str, prefix: str = PREFIX) -> Lan:
    """A bridge and one namespace per name, addressed and up; see the module docstring.

    `tag` is the launcher's pid (so remove_stale can tell a dead launch's LAN from a live one).
    Raises NetnsUnavailable, NetnsError (after removing what it made) or ValueError."""
    check_netns_available()
    tag = _check_tag(tag)
    names = list(names)
    if not names:
        raise ValueError("a LAN needs at least one peer")
    if len(set(names)) != len(names):
        raise ValueError(f"peer names repeat: {names}")
    if len(names) > 253:  # .2 .. .254 of a /24
        raise ValueError(f"a /24 holds at most 253 peers, not {len(names)}")
    alias = link_alias(tag, prefix)
    bridge = bridge_name(tag)
    made_veths: list[str] = []
    made_namespaces: list[str] = []
    made_bridges: list[str] = []
    try:
        with _subnet_lock():
            subnet = free_subnet(_used_networks())
            hosts = list(subnet.hosts())
            host_address = str(hosts[0])
            # Snooping off: every multicast frame (mDNS) floods to every port, with no IGMP
            # querier needed. No STP: a port forwards as soon as it is up.
            _ip("link", "add", "name", bridge, "type", "bridge", "mcast_snooping", "0",
                "stp_state", "0")
            made_bridges.append(bridge)
            _ip("link", "set", "dev", bridge, "alias", alias)
            _ip("addr", "add", f"{host_address}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", "dev", bridge, "up")
        peers: list[LanPeer] = []
        for i, name in enumerate(names, start=1):
            ns, veth, addr = netns_name(tag, i, prefix), veth_name(tag, i), str(hosts[i])
            _ip("netns", "add", ns)
            made_namespaces.append(ns)
            _ip("link", "add", "name", veth, "type", "veth", "peer", "name", INNER_IF,
                "netns", ns)
            made_veths.append(veth)
            _ip("link", "set", "dev", veth, "alias", alias, "master", bridge, "up")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{subnet.prefixlen}", "dev", INNER_IF)
            _ip("-n", ns, "link", "set", "dev", INNER_IF, "up")
            _ip("-n", ns, "route", "add", "default", "via", host_address)
            # Multicast (mDNS) leaves by the LAN even for a socket that names no interface.
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", INNER_IF)
            peers.append(LanPeer(name, ns, veth, addr))
    except BaseException as exc:
        try:
            _remove(veths=made_veths, namespaces=made_namespaces, bridges=made_bridges)
        except NetnsError as cleanup:
            # The first failure is the one to report; say what could not be undone beside it.
            exc.add_note(f"and removing what was made failed: {cleanup}")
        raise
    return Lan(tag, bridge, str(subnet), host_address, tuple(peers), prefix)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces, veths and bridges of earlier launches whose launcher (the pid in
    their names) is no longer alive; those of a live pid stay (another launch may be running).
    Returns the names removed."""
    check_netns_available()
    ns_pattern = re.compile(rf"{re.escape(prefix)}([0-9]+)-[0-9]+")
    alias_pattern = re.compile(rf"{re.escape(prefix)}([0-9]+)")
    link_pattern = re.compile(r"m[bv]([0-9]+)(-[0-9]+)?")

    def dead(tag: str) -> bool:
        return int(tag) > 0 and not pid_alive(int(tag))

    namespaces = sorted(
        n for n in _namespaces() if (m := ns_pattern.fullmatch(n)) and dead(m.group(1))
    )
    veths: list[str] = []
    bridges: list[str] = []
    for name, link in sorted(_links().items()):
        a = alias_pattern.fullmatch(str(link.get("ifalias", "")))
        m = link_pattern.fullmatch(name)
        # Both the name and the alias must say so, and agree on the pid.
        if not (a and m and a.group(1) == m.group(1) and dead(m.group(1))):
            continue
        (veths if m.group(2) else bridges).append(name)
    return _remove(veths=veths, namespaces=namespaces, bridges=bridges)
