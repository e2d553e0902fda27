"""The exchange, the ledger and N market makers in one trio run, on the simulated network.

What it is for: `murmur sim` and the seed sweeps. Every peer is the code a peer process runs --
its `GossipNode` (over a `SimTransport`), its role's service (`ExchangeService`, `LedgerService`,
`MarketMakerService`), its Starlette app behind the real `HttpServer`, and the real `HttpClient`
for the calls between peers -- but the bytes go over `gossip.simnet.SimNetwork` (packets for
gossip, ordered streams for HTTP) and the time is trio's `MockClock`. Storage is real files in a
directory of the caller's, written inline in the trio thread (no worker thread whose timing the
clock cannot control). Peers are crashed (their tasks cancelled, their addresses removed from the
network) and restarted on the same data directory, so the exchange replays its tape and the
ledger reopens its database, as after a real crash.

What it must never do: read the wall clock or draw unseeded randomness. Every peer's wall clock
is `EPOCH + trio.current_time()` (plus the peer's drift, if the faults give it one), every seed
derives from the run's seed, and trio's scheduler is made deterministic by the caller
(`gossip.simcluster.deterministic_trio`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gossip.config import PROTOCOL_VERSION, GossipConfig
from gossip.node import GossipNode
from gossip.simnet import SimNetwork
from gossip.types import Address, MemberEvent, MemberState
from peer.groupcommit import run_inline
from peer.http.client import HttpClient
from peer.http.endpoints import PeerHandle, create_app
from peer.http.server import HttpServer
from peer.logs import JsonLog
from peer.roles import RoleDirectory

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
    drift: float = 0.0  # seconds this peer's wall clock is ahead of virtual time
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
        return EPOCH + trio.current_time() + self.drift


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

    async def _run_peer(self, p: SimPeer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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
                server = HttpServer(app, log=log, direct=direct, clock=p.clock)
                handle.http_server, handle.http_url = server, p.url
                self.net.listen(p.http, server.serve_connection)
                await nursery.start(node.run)
                handle.node = node
                p.node = node
                if p.role == "mm":
                    mm = await self._start_mm(nursery, p, node, handle, log)
                    app.state.mm = p.service = mm
                task_status.started()

    # --- the roles, as peer/runner.py starts them -------------------------------------------------

    def client_factory(self, p: SimPeer, *, max_connections: int, timeout: float):
        async def connect(host: str, port: int) -> trio.abc.Stream:
            return await self.net.connect(p.gossip, (host, port))

        return lambda url: HttpClient(url, max_connections=max_connections, timeout=timeout, sender=p.name,
                                      connect=connect)

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
            lease_duration=t.lease, is_alive=is_alive, log=log, clock=p.clock, run_sync=run_inline,
            instance=f"{self.seed & 0xFFFFFFFF:08x}",
        )
        await nursery.start(service.run)
        await nursery.start(partial(deliver_fills, service, ledger_url,
                                    client_factory=self.client_factory(p, max_connections=1, timeout=5.0)))
        return service, exchange_routes(), exchange_direct_routes(service)

    async def _start_ledger(self, nursery: trio.Nursery, p: SimPeer, log: JsonLog):
        from peer.ledger.api import ledger_routes
        from peer.ledger.service import LedgerService

        service = LedgerService(p.data_dir, exposure_limit=self.trading.exposure_limit, log=log, clock=p.clock,
                                run_sync=run_inline, instance=f"{(self.seed >> 32) & 0xFFFFFFFF:08x}")
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

    # --- observing ----------------------------------------------------------------------------

    def _record(self, p: SimPeer, e: MemberEvent) -> None:
        old = e.old.value if e.old else "-"
        new = e.new.value if e.new else "-"
        self.trace.append(f"{e.at:.6f} {p.name} {e.node} {old}>{new} {e.incarnation} {e.reason}")
        service = p.service
        if p.role == "mm" and service is not None:
            service.view_changed()
