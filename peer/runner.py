"""One peer process: identity, UDP transport, gossip node, HTTP API, discovery, clean stop.

What it is for: `murmur peer` and every process `murmur launch` starts call `run_peer` with a
`peer.options.PeerOptions`. It wires the gossip shell to the data directory (name and
incarnation survive restarts), to the JSON log and to HTTP; on SIGINT or SIGTERM it leaves the
cluster gracefully (others record `left`, not `dead`), stops HTTP and returns. It must never
hold membership logic of its own: the view is the node's, this module only starts, reports and
stops things.

Files in the data directory: `identity.json` (gossip.identity), `<name>.log` (JSON lines) and
`peer.json` (this run's pid and bound addresses, written once the peer is up, removed on a clean
stop) so that a launcher or a person can find a peer started with port 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gossip.config import PROTOCOL_VERSION, profile
from gossip.identity import Identity, IdentityStore
from gossip.types import Address
from peer.addresses import format_address, http_url, is_unspecified
from peer.dirlock import lock_directory
from peer.http.endpoints import PeerHandle, create_app, serve_http
from peer.logs import JsonLog, wall_iso
from peer.options import ROLES, PeerOptions
from peer.roles import RoleDirectory

PEER_FILE = "peer.json"
# Bound on the graceful leave broadcast: long enough for a few gossip rounds on a LAN.
LEAVE_BOUND = 1.0
# Once asked to stop, the process is gone within `PeerOptions.stop_watchdog`, even if something
# inside stops yielding to trio (then cancellation cannot reach it): a watchdog thread logs and
# exits hard, with this code.
EXIT_STUCK = 70


def write_peer_file(data_dir: Path, info: dict[str, Any]) -> None:
    path = data_dir / PEER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


class NoKey(RuntimeError):
    """Neither a key file nor --insecure: a peer does not start in plaintext by accident."""


def key_file_of(opts: PeerOptions, environ: dict[str, str] | None = None) -> Path | None:
    """The key file a peer runs with: --key-file, else $MURMUR_KEY_FILE; None with --insecure.

    Raises NoKey when there is neither, or when --insecure comes with a key file.
    """
    from gossip.keyring import KEY_FILE_ENV

    env = os.environ if environ is None else environ
    path = opts.key_file or (Path(env[KEY_FILE_ENV]) if env.get(KEY_FILE_ENV) else None)
    if opts.insecure:
        if opts.key_file is not None:
            raise NoKey("--insecure and --key-file together: choose one")
        return None
    if path is None:
        raise NoKey(f"no cluster key: give --key-file FILE (or set {KEY_FILE_ENV}); `murmur keygen > FILE` "
                    "makes one, `murmur launch` writes <data-dir>/cluster.key; --insecure runs in "
                    "plaintext, where anyone on the network can join or forge members")
    return path


def read_peer_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(data_dir) / PEER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def run_peer(
    opts: PeerOptions,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one peer until SIGINT/SIGTERM (or `stop`), then leave gracefully and return.

    Reports (via `nursery.start`) the dict also written to `peer.json`. Raises DirectoryInUse
    if another live peer holds the data directory.
    """
    data_dir = opts.resolved_data_dir()
    with lock_directory(data_dir, "peer"):
        await _run_peer(opts, data_dir, stop, task_status)


async def _run_peer(
    opts: PeerOptions,
    data_dir: Path,
    stop: trio.Event | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    # Imported here so that `murmur members --help` does not pay for the gossip stack.
    from gossip.node import GossipNode
    from gossip.udp import UdpTransport
    from peer.faults.admin import Admin, admin_routes, read_token
    from peer.faults.links import LinkFilter

    if opts.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {opts.role!r}")
    config = profile(opts.profile, **opts.overrides)
    # The keyring is read before anything is bound: a missing or broken key file stops the start.
    key_file = key_file_of(opts)
    keyring = None
    if key_file is not None:
        from gossip.keyring import Keyring
        from gossip.sealed import sealed_config

        keyring = await trio.to_thread.run_sync(Keyring.load, key_file)
        config = sealed_config(config)
    store = IdentityStore(data_dir)
    identity = store.start(opts.name, prefix=opts.role)
    name = identity.name
    log = JsonLog(
        name, stream=sys.stderr if opts.log_stderr else None, path=data_dir / f"{name}.log"
    )
    if identity.clamped_from is not None:
        log("identity_incarnation_clamped", stored=identity.clamped_from, incarnation=identity.incarnation)
    # One link filter a process, obeyed by every transport below and set through /admin/links
    # (peer/faults/admin.py) with the token read here, once. An unreadable file stops the start.
    admin_token, token_warning = await read_token(opts.admin_token_file)
    if token_warning is not None:
        log("admin_token_file_open", warning=token_warning)
    links = LinkFilter(random.Random(f"{opts.seed}:{name}:links") if opts.seed is not None else None)
    admin = Admin(links, admin_token, log=log)
    if stop is None:
        stop = trio.Event()
    # Core time -> wall time for `changed_at`: the node stamps members with trio.current_time().
    handle = PeerHandle(
        role=opts.role,
        profile=config.name,
        clock_offset=time.time() - trio.current_time(),
        roles=RoleDirectory(log, me=(opts.role, name)),
        keyring=keyring,
        key_file=key_file,
    )
    if keyring is None:
        log("insecure", sealed=False, signed=False,
            warning="--insecure: gossip in plaintext and calls between peers unsigned")
    else:
        log("sealed", key_file=str(key_file), **keyring.describe())

    view_listeners: list = []  # called on every membership event (the market maker's assignment)

    def on_event(ev) -> None:
        handle.record_event(ev)
        log.member_event(ev)
        for listener in view_listeners:
            listener()

    def on_incarnation(incarnation: int) -> None:
        store.record(Identity(name, incarnation))
        log("incarnation_persisted", incarnation=incarnation)

    watchdog: threading.Timer | None = None
    try:
        with log, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_for_signal, signals, stop, log)

                transport = UdpTransport(opts.bind, stream_timeout=config.stream_timeout, links=links)
                gossip_addr = await nursery.start(transport.run)
                handle.transport = transport
                gossip_transport = transport
                if keyring is not None:
                    from gossip.sealed import SealedTransport

                    # The node sees only what opened under the keyring (gossip/sealed.py).
                    gossip_transport = SealedTransport(transport, keyring, opts.cluster)
                    handle.stat_sources.append(("murmur", lambda: gossip_transport.stats))

                extra_routes, exchange, ledger = [], None, None
                if opts.role == "exchange":
                    exchange = await _start_exchange(nursery, opts, data_dir, handle, log, links=links, name=name)
                    from peer.exchange.api import exchange_routes

                    extra_routes = exchange_routes()
                elif opts.role == "ledger":
                    ledger = await _start_ledger(nursery, opts, data_dir, handle, log)
                    from peer.ledger.api import ledger_routes

                    extra_routes = ledger_routes()
                elif opts.role == "mm":
                    from peer.market_maker.api import mm_routes

                    extra_routes = mm_routes()

                http_stop = trio.Event()
                from peer.http.keys import key_routes

                app = create_app(handle, [*extra_routes, *admin_routes(), *key_routes()])
                app.state.admin = admin
                await nursery.start(admin.run)
                app.state.exchange = exchange
                app.state.ledger = ledger
                # Calls that change authority or money must be signed by a member (none verified
                # when insecure): peer/http/guard.py.
                from peer.http.guard import peer_guard

                app.state.guard = peer_guard(handle, handle.keyring)
                direct = None
                if exchange is not None:
                    from peer.exchange.api import exchange_direct_routes

                    direct = exchange_direct_routes(exchange)
                bound_url = await nursery.start(
                    partial(serve_http, app, opts.http, http_stop, log=log, direct=direct, links=links)
                )
                handle.http_url = _advertised_url(bound_url, opts.http, gossip_addr)

                meta = {"role": opts.role, "http": handle.http_url, "version": PROTOCOL_VERSION}
                seeds = [a for a in opts.join if a != gossip_addr]
                node = GossipNode(
                    gossip_transport,
                    config,
                    name,
                    identity.incarnation,
                    meta,
                    seeds=seeds,
                    seed=opts.seed,
                    on_event=on_event,
                    on_incarnation=on_incarnation,
                    on_error=lambda what, sender, exc: log(
                        "gossip_input_dropped", what=what, sender=format_address(sender), error=repr(exc)[:200]
                    ),
                    cluster=opts.cluster,
                )
                await nursery.start(node.run)
                handle.node = node
                if opts.role == "mm":
                    app.state.mm = await _start_market_maker(nursery, opts, name, node, log, handle, links=links)
                    view_listeners.append(app.state.mm.view_changed)

                if opts.discover:
                    await _start_discovery(nursery, node, opts, gossip_addr, log)

                info = {
                    "name": name,
                    "role": opts.role,
                    "pid": os.getpid(),
                    "incarnation": identity.incarnation,
                    "gossip": format_address(node.addr),
                    "http": handle.http_url,
                    "profile": config.name,
                    "data_dir": str(data_dir),
                    "started_at": wall_iso(),
                }
                write_peer_file(data_dir, info)
                log(
                    "peer_started",
                    role=opts.role,
                    incarnation=identity.incarnation,
                    gossip=info["gossip"],
                    http=handle.http_url,
                    profile=config.name,
                    seeds=[format_address(s) for s in seeds],
                    discover=opts.discover,
                    sealed=keyring is not None,
                    data_dir=str(data_dir),
                    pid=os.getpid(),
                )
                task_status.started(info)

                await stop.wait()
                if opts.stop_watchdog is not None:
                    watchdog = _start_watchdog(log, opts.stop_watchdog)
                log("peer_stopping", members=node.counts())
                mm = getattr(app.state, "mm", None)
                if mm is not None:
                    with trio.move_on_after(LEAVE_BOUND / 2):
                        await mm.leave()
                with trio.move_on_after(LEAVE_BOUND) as leave_scope:
                    await node.leave()
                log("peer_left", completed=not leave_scope.cancelled_caught)
                http_stop.set()
                nursery.cancel_scope.cancel()
            try:
                (data_dir / PEER_FILE).unlink()
            except OSError:
                pass
            log("peer_stopped", incarnation=node.incarnation)
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _start_exchange(nursery, opts: PeerOptions, data_dir: Path, handle: PeerHandle, log: JsonLog, *,
                          links=None, name: str | None = None):
    from gossip.types import MemberState
    from peer.exchange.outbox import deliver_fills
    from peer.exchange.service import ExchangeService
    from peer.http.client import HttpClient
    from peer.http.guard import peer_signer

    def is_alive(name: str) -> bool:
        # The exchange's own membership view decides whether a holder is gone (claim rule).
        node = handle.node
        if node is None:
            return True  # no view yet: assume alive, so a lease must expire before a takeover
        for m in node.members():
            if m.name == name:
                return m.state in (MemberState.ALIVE, MemberState.SUSPECT)
        return False

    def ledger_url() -> str | None:
        node = handle.node
        return None if node is None else handle.roles.url("ledger", node.members())

    service = ExchangeService(
        data_dir,
        symbols=opts.exchange.symbols,
        seed=opts.exchange.market_seed,
        flow_rate=opts.exchange.flow_rate,
        quote_ttl=opts.exchange.quote_ttl,
        lease_duration=opts.exchange.lease,
        is_alive=is_alive,
        log=log,
    )
    await nursery.start(service.run)
    # Calls to the ledger say who calls and obey the link filter, like every call between peers.
    # Signed with the cluster key (unless insecure): the ledger takes fills only from the exchange.
    signer = peer_signer(handle.keyring, name) if name is not None else None
    await nursery.start(partial(deliver_fills, service, ledger_url, client_factory=lambda url: HttpClient(
        url, max_connections=1, timeout=5.0, links=links, sender=name, signer=signer)))
    handle.alarm_sources.append(service.alarms)
    handle.stat_sources.append(("murmur_outbox", lambda: service.outbox_stats))
    return service


async def _start_ledger(nursery, opts: PeerOptions, data_dir: Path, handle: PeerHandle, log: JsonLog):
    from peer.ledger.service import LedgerService

    # Opening checks the database before anything is served; a damaged one raises
    # LedgerDamaged here, and the peer does not start.
    service = LedgerService(data_dir, exposure_limit=opts.ledger.exposure_limit, log=log)
    await nursery.start(service.run)
    return service


async def _start_market_maker(nursery, opts: PeerOptions, name: str, node, log: JsonLog, handle: PeerHandle, *,
                              links=None):
    from peer.http.guard import peer_signer
    from peer.market_maker.authority import AuthorityConfig
    from peer.market_maker.quoting import PlannerConfig, QuoteConfig
    from peer.market_maker.reach import ReachConfig
    from peer.market_maker.rendezvous import with_aside
    from peer.market_maker.service import MarketMakerService

    # The meta this peer started with (role, http, version), as its own member row carries it.
    base_meta = next(m.meta for m in node.members() if m.name == name)

    def set_aside(reason: str | None) -> None:
        # Gossip says it: with "aside" the other market makers stop naming this peer an owner.
        node.update_meta(with_aside(base_meta, reason))

    service = MarketMakerService(
        name,
        members=node.members,
        log=log,
        quote_config=QuoteConfig(half_spread=opts.mm.half_spread, size=opts.mm.quote_size),
        # The exchange's quote TTL and lease: a market maker is given the exchange's values (the
        # core never believes in a longer lease than the exchange reports).
        planner_config=PlannerConfig(quote_ttl=opts.exchange.quote_ttl),
        authority_config=AuthorityConfig(lease_duration=opts.exchange.lease),
        seed=opts.seed or 0,
        roles=handle.roles,
        links=links,
        # Stepping aside waits the lease out: the next owner's claim is refused before it ends.
        reach_config=ReachConfig.for_lease(opts.exchange.lease),
        set_aside=set_aside,
        signer=peer_signer(handle.keyring, name),
    )
    await nursery.start(service.run)
    handle.stat_sources.append(("murmur_mm", service.stats.counters))
    return service


async def _wait_for_signal(signals, stop: trio.Event, log: JsonLog) -> None:
    async for signum in signals:
        log("signal", signal=signal.Signals(signum).name)
        stop.set()
        # Later signals are swallowed while we leave: a second Ctrl-C must not skip the leave.


def _start_watchdog(log: JsonLog, bound: float) -> threading.Timer:
    def expire() -> None:
        log("peer_stop_stuck", bound_s=bound, action="exit", exit_code=EXIT_STUCK)
        os._exit(EXIT_STUCK)

    timer = threading.Timer(bound, expire)
    timer.daemon = True  # a clean exit does not wait for it
    timer.start()
    return timer


def _advertised_url(bound_url: str, requested: Address, gossip_addr: Address) -> str:
    """A URL others can use: a wildcard HTTP bind is advertised at the gossip host."""
    if not is_unspecified(requested[0]):
        return bound_url
    port = int(bound_url.rsplit(":", 1)[1])
    return http_url((gossip_addr[0], port))


async def _start_discovery(nursery, node, opts: PeerOptions, gossip_addr: Address, log: JsonLog):
    from gossip.discovery import ZeroconfDiscovery

    # Discovery logs its own decisions (discovery_started, discovery_peer_found, ...) here.
    discovery = ZeroconfDiscovery(
        node.name,
        opts.cluster,
        gossip_addr,
        version=PROTOCOL_VERSION,
        interfaces=opts.interfaces,
        log=log,
    )
    await nursery.start(discovery.run)
    nursery.start_soon(_feed_discovered_seeds, node, discovery, log)


async def _feed_discovered_seeds(node, discovery, log: JsonLog) -> None:
    # Every change of `found` re-offers what is new, so a peer whose address changed is offered
    # again too. The event is taken before `found` is read, so no change slips between the two.
    known: dict[str, Address] = {}
    while True:
        changed = discovery.next_change()
        fresh = {n: a for n, a in discovery.found.items() if known.get(n) != a}
        if fresh:
            known.update(fresh)
            node.add_seeds(list(fresh.values()))
            log("discovered", peers={n: format_address(a) for n, a in fresh.items()})
        await changed.wait()
