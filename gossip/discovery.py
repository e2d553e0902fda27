"""Zeroconf/mDNS discovery of gossip peers, for `murmur peer --discover`.

What it is for: a peer advertises itself as `<node name>._murmur._udp.local.` and browses for the
others, so a LAN cluster can form with no seed list. `ZeroconfDiscovery.found` maps the name of
every peer of the same cluster to its gossip address; the gossip layer joins through any of them.
Discovery only finds candidates: membership, liveness and trust stay with SWIM. A peer that stops
cleanly sends mDNS goodbyes and leaves `found` at once; one that crashes stays there until its PTR
record expires (zeroconf's 75 min; receivers clamp PTR TTLs below ~19 min up, and a short TTL makes
known-answer suppression drop live peers, so do not shorten it to chase crashed ones).

What it must never do:
- put anything secret in the TXT record: it is multicast in clear to the whole link. It carries
  `name`, `cluster`, `port` and `version`, nothing else.
- block the trio thread: zeroconf's synchronous API waits on its own asyncio loop thread, so every
  call into it goes through `trio.to_thread.run_sync`, and browser callbacks (on zeroconf's
  browser thread) reach trio only through `trio.from_thread.run_sync`.
- crash on what the network sends: a malformed TXT record (missing field, bad port) is counted
  in `malformed` and ignored; peers of another cluster are counted in `foreign` and ignored.
- outlive its trio run: on cancellation the browser, the registration and the Zeroconf instance
  are torn down in a shielded, time-bounded `finally`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)

from gossip.types import Address

SERVICE_TYPE = "_murmur._udp.local."
TXT_KEYS = ("name", "cluster", "port", "version")
# DNS-SD limits: one TXT string (key=value) and one DNS label are length-prefixed by a byte.
MAX_TXT_ITEM = 255
MAX_LABEL = 63
# How long a resolve may wait for SRV/TXT/A answers. Browser events arrive once the records are
# in the cache, so this is the slow path; it also bounds how long cancellation waits for a
# resolver thread that is in flight.
RESOLVE_TIMEOUT_MS = 1500
# At most this many resolver threads at once, so a burst of adverts cannot eat trio's threads.
MAX_RESOLVERS = 4
# Bounds on shutdown; zeroconf's goodbyes take 3 x 125 ms.
UNREGISTER_BOUND = 2.0
CLOSE_BOUND = 2.0
# Newly found peers queue up for a slow subscriber up to this many, then are dropped for it (it
# can still read `found`).
SUBSCRIBER_BUFFER = 256

_UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::")
_IP_VERSIONS = {"v4": IPVersion.V4Only, "v6": IPVersion.V6Only, "all": IPVersion.All}

# Where discovery's decisions go: the peer's JSON-lines log (peer.logs.JsonLog), called as
# `log(event, **fields)`. Events are named `discovery_*`.
EventLog = Callable[..., object]


def _no_log(event: str, **fields: Any) -> None:
    return None


class MalformedAdvert(ValueError):
    """A TXT record that does not describe a murmur peer (missing field, bad port...)."""


@dataclass(frozen=True, slots=True)
class Advert:
    """What a peer's TXT record says about it."""

    name: str
    cluster: str
    port: int
    version: int


def build_txt(advert: Advert) -> dict[str, str]:
    """The TXT properties for `advert`; raises ValueError if one would not fit in a TXT string."""
    props = {
        "name": advert.name,
        "cluster": advert.cluster,
        "port": str(advert.port),
        "version": str(advert.version),
    }
    for key, value in props.items():
        if len(key.encode()) + 1 + len(value.encode()) > MAX_TXT_ITEM:
            raise ValueError(f"TXT {key}= is longer than {MAX_TXT_ITEM} bytes: {value[:40]!r}...")
    return props


def parse_txt(properties: Mapping[bytes, bytes | None]) -> Advert:
    """Read a peer's TXT properties (as zeroconf hands them over); raises MalformedAdvert."""
    fields: dict[str, str] = {}
    for key in TXT_KEYS:
        raw = properties.get(key.encode())
        if raw is None:
            raise MalformedAdvert(f"missing {key}")
        try:
            fields[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedAdvert(f"{key} is not utf-8") from None
    if not fields["name"] or not fields["cluster"]:
        raise MalformedAdvert("empty name or cluster")
    port, version = fields["port"], fields["version"]
    # isdigit() rather than a bare int(): int() accepts " 7", "+7" and "7_000".
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise MalformedAdvert(f"bad port {port[:20]!r}")
    if not (version.isascii() and version.isdigit()):
        raise MalformedAdvert(f"bad version {version[:20]!r}")
    return Advert(fields["name"], fields["cluster"], int(port), int(version))


def pick_host(addresses: list[str]) -> str | None:
    """The address to reach a peer at, out of those it advertises.

    A routable one first; loopback only when that is all there is (a peer on this host bound to
    127.0.0.1); IPv6 link-local last, since it needs its scope to be usable.
    """

    def rank(addr: str) -> int:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return 3
        if ip.is_loopback:
            return 1
        if ip.is_link_local:
            return 2
        return 0

    usable = [a for a in addresses if rank(a) < 3]
    return min(usable, key=rank) if usable else None


def _interface_choice(interfaces: list[str] | str) -> list[str] | InterfaceChoice:
    if isinstance(interfaces, list):
        return list(interfaces)
    if interfaces == "all":
        return InterfaceChoice.All
    if interfaces == "default":
        return InterfaceChoice.Default
    # A CLI convenience: "10.0.0.5" or "10.0.0.5,10.0.1.5".
    return [part.strip() for part in interfaces.split(",") if part.strip()]


def _ip_matches(addr: str, ip_version: IPVersion) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if ip_version is IPVersion.V4Only:
        return ip.version == 4
    if ip_version is IPVersion.V6Only:
        return ip.version == 6
    return True


def _interface_hosts(choice: list[str] | InterfaceChoice, ip_version: IPVersion) -> list[str]:
    """The addresses of the chosen interfaces, for a peer whose gossip socket binds 0.0.0.0."""
    if isinstance(choice, list):
        return [a for a in choice if _ip_matches(a, ip_version)]
    import ifaddr  # zeroconf's own dependency for listing interfaces

    hosts = [
        str(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
    ]
    hosts = list(dict.fromkeys(h for h in hosts if _ip_matches(h, ip_version)))
    # Advertising loopback to the LAN is useless; keep it only if the host has nothing else.
    routable = [h for h in hosts if not ipaddress.ip_address(h).is_loopback]
    routable = [h for h in routable if not ipaddress.ip_address(h).is_link_local] or routable
    return routable or hosts


class _Listener(ServiceListener):
    """Runs on zeroconf's browser thread: forwards (kind, service name) to trio, nothing else."""

    def __init__(
        self, send: trio.MemorySendChannel[tuple[str, str]], token: trio.lowlevel.TrioToken
    ):
        self._send = send
        self._token = token

    def _post(self, kind: str, service: str) -> None:
        try:
            trio.from_thread.run_sync(
                self._send.send_nowait, (kind, service), trio_token=self._token
            )
        except (trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # discovery is shutting down; the event no longer matters

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._post("add", name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._post("update", name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._post("remove", name)


class ZeroconfDiscovery:
    """Advertise this peer over mDNS and keep `found` up to date with the peers of its cluster.

    Start it with `await nursery.start(d.run)`; it returns once the service is registered and runs
    until cancelled.
    """

    def __init__(
        self,
        name: str,
        cluster: str,
        gossip_addr: Address,
        *,
        version: int = 1,
        interfaces: list[str] | str = "all",
        ip_version: str = "v4",
        log: EventLog = _no_log,
    ) -> None:
        if ip_version not in _IP_VERSIONS:
            raise ValueError(
                f"ip_version must be one of {sorted(_IP_VERSIONS)}, not {ip_version!r}"
            )
        if not name or len(name.encode()) > MAX_LABEL:
            raise ValueError(f"node name must be 1..{MAX_LABEL} bytes to be an mDNS instance name")
        self.name = name
        self.cluster = cluster
        self._log = log
        # Services of other clusters already logged once: a foreign advert repeats on every update.
        self._foreign_logged: set[str] = set()
        self.gossip_addr = gossip_addr
        self.version = version
        self.service_name = f"{name}.{SERVICE_TYPE}"
        self._advert = Advert(name, cluster, gossip_addr[1], version)
        self._txt = build_txt(self._advert)  # fail at construction, not on the network
        self._interfaces = _interface_choice(interfaces)
        self._ip_version = _IP_VERSIONS[ip_version]

        # Peer name -> gossip address: same cluster only, never this node.
        self.found: dict[str, Address] = {}
        # Addresses this node advertises (set by `run` before it reports started).
        self.advertised: list[str] = []
        # Counters of what was ignored, for logs and metrics.
        self.malformed = 0
        self.foreign = 0
        self.unresolved = 0

        self._service_peer: dict[str, str] = {}  # service name (lowercased) -> peer name
        self._generation: dict[str, int] = {}  # bumped on every event for a service
        self._changed = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[Address]] = []

    # -- API ---------------------------------------------------------------------------------

    async def wait_found(self, n: int = 1) -> None:
        """Return once at least `n` peers are in `found`."""
        while len(self.found) < n:
            await self._changed.wait()

    def next_change(self) -> trio.Event:
        """An event set at the next change of `found` (take it before reading `found`)."""
        return self._changed

    def subscribe(self) -> trio.MemoryReceiveChannel[Address]:
        """A channel yielding the address of each peer found (or moved) from now on.

        It closes when `run` ends. A subscriber that falls more than SUBSCRIBER_BUFFER behind
        misses addresses; `found` stays complete.
        """
        send, receive = trio.open_memory_channel[Address](SUBSCRIBER_BUFFER)
        self._subscribers.append(send)
        return receive

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, browse, report started once registered, then track peers until cancelled.

        Raises RuntimeError if another host already advertises this node name, or if there is
        no address of `ip_version` to advertise.
        """
        token = trio.lowlevel.current_trio_token()
        self.advertised = await self._advertised_hosts()
        info = ServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            port=self.gossip_addr[1],
            properties=self._txt,
            server=f"{_host_label(self.name)}.local.",
            parsed_addresses=self.advertised,
        )
        # The events channel is unbounded because the browser thread must never wait on trio;
        # zeroconf's own queue in front of it is unbounded as well.
        send, receive = trio.open_memory_channel[tuple[str, str]](math.inf)
        zc: Zeroconf | None = None
        browser: ServiceBrowser | None = None
        registered = False
        try:
            zc = await trio.to_thread.run_sync(
                lambda: Zeroconf(interfaces=self._interfaces, ip_version=self._ip_version)
            )
            # Browse before registering: registration probes the link for a second or more, and
            # the adverts seen meanwhile wait in the channel, their records already cached.
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, listener=_Listener(send, token))
            )
            try:
                await trio.to_thread.run_sync(zc.register_service, info)
            except NonUniqueNameException:
                raise RuntimeError(
                    f"another host already advertises {self.service_name!r}: node names must be "
                    "unique on the link, across clusters too"
                ) from None
            registered = True
            self._log(
                "discovery_started",
                cluster=self.cluster,
                advertised=self.advertised,
                port=self.gossip_addr[1],
            )
            task_status.started()
            limiter = trio.CapacityLimiter(MAX_RESOLVERS)
            async with trio.open_nursery() as nursery:
                async for kind, service in receive:
                    self._on_event(nursery, zc, limiter, kind, service)
        finally:
            receive.close()  # late browser callbacks now fail fast instead of queueing
            for sub in self._subscribers:
                sub.close()
            self._subscribers.clear()
            with trio.CancelScope(shield=True):
                await self._shutdown(zc, browser, info if registered else None)

    # -- inside ------------------------------------------------------------------------------

    async def _advertised_hosts(self) -> list[str]:
        host = self.gossip_addr[0]
        if host in _UNSPECIFIED_HOSTS:
            hosts = await trio.to_thread.run_sync(
                _interface_hosts, self._interfaces, self._ip_version
            )
        else:
            try:
                ipaddress.ip_address(host)
                hosts = [host]
            except ValueError:  # a host name: advertise what it resolves to
                infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_DGRAM)
                hosts = list(dict.fromkeys(str(ai[4][0]) for ai in infos))
            hosts = [h for h in hosts if _ip_matches(h, self._ip_version)]
        if not hosts:
            raise RuntimeError(f"no {self._ip_version.name} address to advertise for {host!r}")
        return hosts

    def _on_event(
        self,
        nursery: trio.Nursery,
        zc: Zeroconf,
        limiter: trio.CapacityLimiter,
        kind: str,
        service: str,
    ) -> None:
        key = service.lower()
        if key == self.service_name.lower():
            return
        generation = self._generation.get(key, 0) + 1
        self._generation[key] = generation
        if kind == "remove":
            self._drop(key, reason="goodbye")
            return
        nursery.start_soon(self._resolve, zc, limiter, service, generation)

    async def _resolve(
        self, zc: Zeroconf, limiter: trio.CapacityLimiter, service: str, generation: int
    ) -> None:
        def request() -> ServiceInfo | None:
            info = ServiceInfo(SERVICE_TYPE, service)
            return info if info.request(zc, RESOLVE_TIMEOUT_MS) else None

        try:
            info = await trio.to_thread.run_sync(request, limiter=limiter)
        except Exception as exc:  # zeroconf shutting down under us, or a loop hiccup
            self._log("discovery_resolve_failed", service=service, error=repr(exc))
            info = None
        key = service.lower()
        if self._generation.get(key) != generation:
            return  # a newer event (a goodbye, an update) for this service won
        if info is None:
            self.unresolved += 1
            return
        self._apply(key, service, info)

    def _apply(self, key: str, service: str, info: ServiceInfo) -> None:
        try:
            advert = parse_txt(info.properties)
            if advert.name.lower() != service[: -len(SERVICE_TYPE) - 1].lower():
                raise MalformedAdvert(f"TXT name {advert.name!r} is not the instance name")
        except MalformedAdvert as exc:
            self.malformed += 1
            self._log("discovery_advert_malformed", service=service, error=str(exc))
            self._drop(key, reason="malformed")
            return
        if advert.cluster != self.cluster:
            self.foreign += 1
            if key not in self._foreign_logged:
                self._foreign_logged.add(key)
                self._log("discovery_advert_foreign", service=service, cluster=advert.cluster)
            self._drop(key, reason="foreign")
            return
        if advert.name == self.name:
            return
        host = pick_host(info.parsed_scoped_addresses(self._ip_version))
        if host is None:
            self.unresolved += 1
            return
        addr: Address = (host, advert.port)
        old = self.found.get(advert.name)
        self._service_peer[key] = advert.name
        if old == addr:
            return
        self.found[advert.name] = addr
        self._log(
            "discovery_peer_found",
            peer_name=advert.name,
            addr=addr,
            old=old,
            version=advert.version,
            reason="moved" if old else "advert",
        )
        for sub in list(self._subscribers):
            try:
                sub.send_nowait(addr)
            except trio.WouldBlock:
                pass  # a slow subscriber misses it; `found` has it
            except trio.BrokenResourceError:
                self._subscribers.remove(sub)
        self._notify()

    def _drop(self, key: str, *, reason: str) -> None:
        peer = self._service_peer.pop(key, None)
        if peer is not None and self.found.pop(peer, None) is not None:
            self._log("discovery_peer_lost", peer_name=peer, reason=reason)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _shutdown(
        self, zc: Zeroconf | None, browser: ServiceBrowser | None, info: ServiceInfo | None
    ) -> None:
        """Stop the browser, say goodbye, close: each step bounded, so a wedged zeroconf loop
        costs seconds, not a hang (its daemon threads are then left behind, and logged)."""
        if zc is None:
            return

        def goodbye() -> None:
            if browser is not None:
                browser.cancel()  # joins the browser thread
            if info is not None:
                zc.unregister_service(info)  # goodbye packets: peers drop us at once

        steps = ((goodbye, UNREGISTER_BOUND), (zc.close, CLOSE_BOUND))
        for step, bound in steps:
            with trio.move_on_after(bound) as scope:
                try:
                    await trio.to_thread.run_sync(step, abandon_on_cancel=True)
                except Exception as exc:
                    self._log(
                        "discovery_shutdown_step_failed", step=step.__name__, error=repr(exc)
                    )
            if scope.cancelled_caught:
                self._log("discovery_shutdown_step_timeout", step=step.__name__, bound=bound)
        self._log("discovery_stopped")


def _host_label(name: str) -> str:
    """A DNS host label for the node (the SRV target), from a node name that may not be one."""
    label = "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower())
    label = "-".join(part for part in label.split("-") if part)[:40]
    # The digest keeps "a.b" and "a-b" (or "A" and "a") from claiming the same host name.
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"murmur-{label}-{digest}" if label else f"murmur-{digest}"
