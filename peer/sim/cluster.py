"""The exchange, the ledger and N market makers in one trio run, on the simulated network.

What it is for: `murmur sim` and the seed sweeps. Every peer is the code a peer process runs --
its `GossipNode` (over a `SimTransport`), its role's service (`ExchangeService`, `LedgerService`,
`MarketMakerService`), its Starlette app behind the real `HttpServer`, and the real `HttpClient`
for the calls between peers -- but the bytes go over `gossip.simnet.SimNetwork` (packets for
gossip, ordered streams for HTTP) and the time is trio's `MockClock`. Storage is real files in a
directory of the caller's, written inline in the trio thread (no worker thread whose timing the
clock cannot control). Peers are crashed (their tasks cancelled, their addresses removed from the
network) and restarted on the same data directory, so the exchange replays its tape and the
ledger reopens its database, as after a real crash. Three storage faults reach into the role's
`run_sync` (the one seam the services give for their blocking calls): the exchange crashing in the
middle of a tape write (a torn tail), the ledger's commit failing with a disk error, and the ledger
crashing after a commit of fills reached the disk but before anyone was answered. A peer
whose service raises stops like a process that exits: its addresses vanish, and `exits` says why.

What it must never do: read the wall clock or draw unseeded randomness. Every peer's wall clock
is `EPOCH + trio.current_time()` (plus the peer's drift and rate, if the faults give it some), every seed
derives from the run's seed, and trio's scheduler is made deterministic by the caller
(`gossip.simcluster.deterministic_trio`).

The calls between peers are signed and the ledger's grants verified, as under `murmur launch`,
with one fixed keyring (`SIM_KEYRING`): each peer signs with nonces drawn from a generator seeded
by the run's seed, its name and its start count (a restarted peer never repeats a nonce the
others still remember), and verifies by its own drifting clock.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gossip.config import PROTOCOL_VERSION, GossipConfig
from gossip.keyring import Keyring
from gossip.node import GossipNode
from gossip.simnet import SimNetwork
from gossip.types import Address, MemberEvent, MemberState
from peer.groupcommit import Runner, run_inline
from peer.http.client import HttpClient
from peer.http.endpoints import PeerHandle, create_app
from peer.http.guard import peer_guard
from peer.http.server import HttpServer
from peer.http.signing import Signer
from peer.logs import JsonLog
from peer.roles import RoleDirectory

# The simulated cluster's key: fixed, so that a seed replays byte for byte.
SIM_KEYRING = Keyring([bytes(range(100, 132))])

# Virtual time 0 is this wall-clock instant in every peer (2026-01-01T00:00:00Z): the tape's and
# the ledger's times are then the same numbers on every machine.
EPOCH = 1_767_225_600.0
GOSSIP_PORT = 7946
HTTP_PORT = 8000


@dataclass
class SimPeer:
    name: str
    role: str
    host: str
    data_dir: Path
    incarnation: int = 0
    drift: float = 0.0  # seconds this peer's wall clock is ahead of virtual time at time 0
    rate: float = 0.0  # and how much faster it runs (0.01: 1% faster)
    node: GossipNode | None = None
    service: Any = None
    scope: trio.CancelScope | None = None
    up: bool = False

    @property
    def gossip(self) -> Address:
        return (self.host, GOSSIP_PORT)

    @property
    def http(self) -> Address:
        return (self.host, HTTP_PORT)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{HTTP_PORT}"

    def clock(self) -> float:
        now = trio.current_time()
        return EPOCH + now + self.drift + self.rate * now


@dataclass
class TradingOptions:
    """What the simulated cluster trades with: the same knobs as `murmur launch`."""

    symbols: list[str] = field(default_factory=lambda: ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX",
                                                         "NVDA", "TSLA"])
    flow_rate: float = 20.0
    market_seed: int = 1
    lease: float = 2.0
    quote_ttl: float = 30.0
    exposure_limit: int = 100


class SimTradingCluster:
    def __init__(self, n_mms: int, config: GossipConfig, seed: int, data_dir: Path, *,
                 trading: TradingOptions | None = None, delay: float = 0.001, jitter: float = 0.001) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(f"sim:{seed}")
        self.net = SimNetwork(seed, delay=delay, jitter=jitter)
        self.trading = trading or TradingOptions()
        self.data_dir = Path(data_dir)
        names = [("exchange", "exchange"), ("ledger", "ledger")]
        names += [(f"mm-{i}", "mm") for i in range(1, n_mms + 1)]
        self.peers: dict[str, SimPeer] = {
            name: SimPeer(name, role, f"10.0.{i >> 8}.{(i & 255) + 1}", self.data_dir / name)
            for i, (name, role) in enumerate(names)
        }
        self.trace: list[str] = []
        # Peers whose service raised: (virtual time, name, what it raised, whether a storage fault
        # injected here caused it).
        self.exits: list[tuple[float, str, str, bool]] = []
        # Armed storage faults, by peer name (see arm_torn_write and arm_storage_failure), and
        # what they did.
        self._tear: dict[str, float] = {}
        self._disk: dict[str, list] = {}  # name -> [commits left before the failing one, keep]
        self._crash_after: dict[str, int] = {}  # name -> commits of fills left before the crash
        self._injected: set[str] = set()  # peers stopped by an injected storage fault
        self.torn: list[dict[str, Any]] = []
        self.commit_crashes: list[dict[str, Any]] = []
        self.disk_failures: list[dict[str, Any]] = []
        self._nursery: trio.Nursery | None = None

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.net.run)
            for name in self.peers:
                await self.start(name)
            task_status.started()

    def stop(self) -> None:
        for p in self.peers.values():
            if p.scope is not None:
                p.scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def seeds_for(self, name: str) -> list[Address]:
        # Every peer joins through the exchange; the exchange through the ledger (either may be
        # down when a peer restarts: the node retries its seeds).
        first = "exchange" if name != "exchange" else "ledger"
        return [self.peers[first].gossip]

    async def start(self, name: str) -> None:
        """Start (or restart, on the same data directory) one peer."""
        assert self._nursery is not None
        p = self.peers[name]
        if p.up:
            raise RuntimeError(f"{name} is already running")
        p.incarnation += 1
        p.data_dir.mkdir(parents=True, exist_ok=True)
        p.scope = trio.CancelScope()
        await self._nursery.start(self._run_peer, p)
        p.up = True

    def crash(self, name: str) -> None:
        """Kill one peer: its tasks are cancelled (no leave, no flush beyond what was committed)
        and its addresses vanish from the network."""
        p = self.peers[name]
        if not p.up:
            return
        assert p.scope is not None
        p.scope.cancel()
        self.net.remove(p.gossip)
        self.net.unlisten(p.http)
        p.up = False
        p.node = None
        p.service = None

    def _exited(self, p: SimPeer, exc: BaseException) -> None:
        """A peer's service raised after it started: the process would exit, so it is gone from
        the network like a crashed one (the plan restarts it if a fault of its caused this)."""
        leaves = [exc]
        while any(isinstance(e, BaseExceptionGroup) for e in leaves):
            leaves = [x for e in leaves for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]
        what = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
        injected = p.name in self._injected
        self._injected.discard(p.name)
        if injected and self.disk_failures:
            self.disk_failures[-1]["stopped_at"] = trio.current_time()
        self.exits.append((trio.current_time(), p.name, what, injected))
        # Only the exceptions' types in the trace: their messages may name the data directory,
        # which differs from run to run (the hash must not).
        self.trace.append(f"{trio.current_time():.6f} {p.name} exited {'(injected) ' if injected else ''}"
                          f"{','.join(type(e).__name__ for e in leaves)}")
        if p.up:
            self.net.remove(p.gossip)
            self.net.unlisten(p.http)
        p.up = False
        p.node = None
        p.service = None

    async def _run_peer(self, p: SimPeer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert p.scope is not None
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await self._peer_tasks(p, ready)
        except Exception as exc:
            if not started:
                raise
            self._exited(p, exc)

    async def _peer_tasks(self, p: SimPeer, ready: Callable[[], None]) -> None:
        assert p.scope is not None
        with p.scope:
            log = JsonLog(p.name, stream=None, clock=p.clock)
            handle = PeerHandle(role=p.role, profile=self.config.name, clock_offset=EPOCH,
                                roles=RoleDirectory(log, me=(p.role, p.name)))
            transport = self.net.transport(p.gossip)
            node = GossipNode(
                transport, self.config, p.name, incarnation=p.incarnation,
                meta={"role": p.role, "http": p.url, "version": PROTOCOL_VERSION},
                seeds=self.seeds_for(p.name), seed=self.rng.getrandbits(64),
                on_event=partial(self._record, p),
            )
            async with trio.open_nursery() as nursery:
                routes, direct = [], {}
                if p.role == "exchange":
                    p.service, routes, direct = await self._start_exchange(nursery, p, handle, log)
                elif p.role == "ledger":
                    p.service, routes = await self._start_ledger(nursery, p, log)
                elif p.role == "mm":
                    from peer.market_maker.api import mm_routes

                    routes = mm_routes()
                app = create_app(handle, routes)
                app.state.exchange = p.service if p.role == "exchange" else None
                app.state.ledger = p.service if p.role == "ledger" else None
                app.state.guard = peer_guard(handle, SIM_KEYRING, clock=p.clock)
                server = HttpServer(app, log=log, direct=direct, clock=p.clock)
                handle.http_server, handle.http_url = server, p.url
                self.net.listen(p.http, server.serve_connection)
                await nursery.start(node.run)
                handle.node = node
                p.node = node
                if p.role == "mm":
                    mm = await self._start_mm(nursery, p, node, handle, log)
                    app.state.mm = p.service = mm
                ready()

    # --- the roles, as peer/runner.py starts them -------------------------------------------------

    def client_factory(self, p: SimPeer, *, max_connections: int, timeout: float):
        async def connect(host: str, port: int) -> trio.abc.Stream:
            return await self.net.connect(p.gossip, (host, port))

        nonces = random.Random(f"{self.seed}:{p.name}:{p.incarnation}:nonces")
        signer = Signer(SIM_KEYRING, p.name, clock=p.clock, nonces=lambda: nonces.getrandbits(64))
        return lambda url: HttpClient(url, max_connections=max_connections, timeout=timeout, sender=p.name,
                                      connect=connect, signer=signer)

    async def _start_exchange(self, nursery: trio.Nursery, p: SimPeer, handle: PeerHandle, log: JsonLog):
        from peer.exchange.api import exchange_direct_routes, exchange_routes
        from peer.exchange.outbox import deliver_fills
        from peer.exchange.service import ExchangeService

        def is_alive(name: str) -> bool:
            node = p.node
            if node is None:
                return True
            return any(m.name == name and m.state in (MemberState.ALIVE, MemberState.SUSPECT)
                       for m in node.members())

        def ledger_url() -> str | None:
            node = p.node
            return None if node is None else handle.roles.url("ledger", node.members())

        t = self.trading
        service = ExchangeService(
            p.data_dir, symbols=t.symbols, seed=t.market_seed, flow_rate=t.flow_rate, quote_ttl=t.quote_ttl,
            lease_duration=t.lease, is_alive=is_alive, log=log, clock=p.clock, run_sync=self._exchange_run_sync(p),
            instance=f"{self.seed & 0xFFFFFFFF:08x}",
        )
        replay = await nursery.start(service.run)
        assert service.tape is not None and service.tape.recovery is not None
        cut = service.tape.recovery.cut_bytes
        self.trace.append(f"{trio.current_time():.6f} {p.name} replayed {replay.get('replayed')} records, "
                          f"cut a torn tail of {cut} bytes")
        if cut and self.torn and "cut_on_restart" not in self.torn[-1]:
            self.torn[-1]["cut_on_restart"] = cut
        await nursery.start(partial(deliver_fills, service, ledger_url,
                                    client_factory=self.client_factory(p, max_connections=1, timeout=5.0)))
        return service, exchange_routes(), exchange_direct_routes(service)

    async def _start_ledger(self, nursery: trio.Nursery, p: SimPeer, log: JsonLog):
        from peer.ledger.api import ledger_routes
        from peer.ledger.service import LedgerService

        service = LedgerService(p.data_dir, exposure_limit=self.trading.exposure_limit, log=log, clock=p.clock,
                                run_sync=self._ledger_run_sync(p), instance=f"{(self.seed >> 32) & 0xFFFFFFFF:08x}")
        await nursery.start(service.run)
        return service, ledger_routes()

    async def _start_mm(self, nursery: trio.Nursery, p: SimPeer, node: GossipNode, handle: PeerHandle,
                        log: JsonLog):
        from peer.market_maker.authority import AuthorityConfig
        from peer.market_maker.quoting import PlannerConfig
        from peer.market_maker.reach import ReachConfig
        from peer.market_maker.rendezvous import with_aside
        from peer.market_maker.service import MarketMakerService

        make = self.client_factory(p, max_connections=16, timeout=1.0)
        base_meta = next(m.meta for m in node.members() if m.name == p.name)
        service = MarketMakerService(
            p.name, members=node.members, log=log, clock=p.clock,
            planner_config=PlannerConfig(quote_ttl=self.trading.quote_ttl),
            authority_config=AuthorityConfig(lease_duration=self.trading.lease),
            seed=self.rng.getrandbits(32), roles=handle.roles,
            client_factory=lambda role, url: make(url),
            reach_config=ReachConfig.for_lease(self.trading.lease),
            set_aside=lambda reason: node.update_meta(with_aside(base_meta, reason)),
        )
        await nursery.start(service.run)
        return service

    # --- storage faults, through the run_sync the services are given ---------------------------

    def arm_torn_write(self, name: str, fraction: float) -> None:
        """The next tape write of the exchange `name` is torn: the batch's last record is cut by
        `fraction` of its bytes, and the exchange crashes before that write returns.

        Why a crash during a write and not bytes cut off the tape after a crash: the tape is
        written and fsynced inline here, in one call, before anyone is woken; whatever is on the
        file when a crash lands was fsynced and may have been acknowledged already (the outbox
        sent the fill, a market maker got its answer). A real crash can only tear what was not
        yet fsynced, that is a batch whose write was under way, whose appends nobody was told
        about. So the tear happens there: the batch's earlier records are whole (durable and never
        acknowledged, as when a crash falls between the fsync and the answer), the last one is
        half written, and the exchange is gone before the write returns."""
        self._tear[name] = fraction

    def disarm_torn_write(self, name: str) -> bool:
        """Forget an armed tear that has not happened; True if there was one."""
        return self._tear.pop(name, None) is not None

    def arm_storage_failure(self, name: str, nth: int, *, keep: bool) -> None:
        """The `nth` commit of the ledger `name` from now fails with sqlite3.OperationalError('disk
        I/O error') at its COMMIT. With `keep` the transaction did reach the disk (a commit whose
        fsync reported an error though its pages got written: after a failed fsync nobody knows);
        without it the transaction is rolled back. The ledger's store raises, its writer stops and
        the peer with it (docs/ledger.md, "A failed commit"): nothing of that group is answered."""
        self._disk[name] = [nth, keep]

    def disarm_storage_failure(self, name: str) -> bool:
        return self._disk.pop(name, None) is not None

    def arm_crash_after_commit(self, name: str, nth: int) -> None:
        """The ledger `name` crashes right after its `nth` commit from now that records fills:
        the transaction is on disk, nobody has been answered (a process killed between its fsync
        and its reply). The exchange's outbox, never told, sends those fills again to the
        restarted ledger, which must find each one already recorded (exactly-once)."""
        self._crash_after[name] = nth

    def disarm_crash_after_commit(self, name: str) -> bool:
        return self._crash_after.pop(name, None) is not None

    def _exchange_run_sync(self, p: SimPeer) -> Runner:
        from peer.exchange.tape.writer import TapeWriter

        async def run_sync(fn: Any, *args: Any) -> Any:
            fraction = self._tear.get(p.name)
            if fraction is None or getattr(fn, "__func__", None) is not TapeWriter._write_batch:
                return await run_inline(fn, *args)
            del self._tear[p.name]
            (frames,) = args
            last = len(frames[-1])
            cut = min(last - 1, max(1, round(last * fraction)))
            data = b"".join(frames)
            fn([data[:-cut]])  # written and fsynced: what the disk holds when the power goes
            self.torn.append({"kind": "torn", "at": trio.current_time(), "records": len(frames), "record_bytes": last,
                              "written": last - cut, "tape_bytes": (p.data_dir / "exchange.tape").stat().st_size})
            self.trace.append(f"{trio.current_time():.6f} {p.name} torn write: {len(frames)} records, "
                              f"the last {cut} of {last} bytes short")
            self.crash(p.name)
            await trio.sleep_forever()  # cancelled at once: the write never returns

        return run_sync

    def _ledger_run_sync(self, p: SimPeer) -> Runner:
        from ledger.store import RecordFills
        from peer.ledger.service import LedgerService

        async def run_sync(fn: Any, *args: Any) -> Any:
            if (p.name in self._crash_after and getattr(fn, "__func__", None) is LedgerService._apply
                    and any(isinstance(op, RecordFills) for op in args[0])):
                return await crash_after(fn, *args)
            armed = self._disk.get(p.name)
            if armed is None or getattr(fn, "__func__", None) is not LedgerService._apply:
                return await run_inline(fn, *args)
            armed[0] -= 1
            if armed[0] > 0:
                return await run_inline(fn, *args)
            del self._disk[p.name]
            keep = armed[1]
            store = fn.__self__.store
            real = store._conn
            store._conn = _FailingCommit(real, keep=keep)
            self._injected.add(p.name)
            self.disk_failures.append({"kind": "diskfail", "at": trio.current_time(), "kept": keep})
            self.trace.append(f"{trio.current_time():.6f} {p.name} commit fails: disk I/O error "
                              f"({'written' if keep else 'rolled back'})")
            try:
                return await run_inline(fn, *args)
            finally:
                store._conn = real

        async def crash_after(fn: Any, *args: Any) -> Any:
            self._crash_after[p.name] -= 1
            result = await run_inline(fn, *args)
            if self._crash_after[p.name] > 0:
                return result
            del self._crash_after[p.name]
            fills = sum(len(op.fills) for op in args[0] if isinstance(op, RecordFills))
            self.commit_crashes.append({"kind": "commitcrash", "at": trio.current_time(), "fills": fills})
            self.trace.append(f"{trio.current_time():.6f} {p.name} crashes after a commit of {fills} fills, "
                              "before answering")
            self.crash(p.name)
            await trio.sleep_forever()  # cancelled at once: nobody is answered

        return run_sync

    # --- observing ----------------------------------------------------------------------------

    def _record(self, p: SimPeer, e: MemberEvent) -> None:
        old = e.old.value if e.old else "-"
        new = e.new.value if e.new else "-"
        self.trace.append(f"{e.at:.6f} {p.name} {e.node} {old}>{new} {e.incarnation} {e.reason}")
        service = p.service
        if p.role == "mm" and service is not None:
            service.view_changed()


class _FailingCommit:
    """A SQLite connection whose COMMIT fails with a disk error (after committing, with `keep`);
    every other call goes to the real connection."""

    def __init__(self, conn: sqlite3.Connection, *, keep: bool) -> None:
        self._conn = conn
        self._keep = keep

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.strip().upper() == "COMMIT":
            if self._keep:
                self._conn.execute(sql, *args)
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
