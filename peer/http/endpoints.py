"""Every peer's HTTP/JSON face: `/health`, `/status`, `/members`, `/metrics`.

What it is for: letting people and tools (`murmur members`, `murmur top`, Prometheus) read a
peer's view of the cluster. The app reads a `PeerHandle`, a small object that the runner fills
in (tests fill it with a fake node). It must never change membership: every route is a read.
Served by peer.http.server on trio; `url = await nursery.start(serve_http, app, bind, shutdown)` works
with port 0 and hands back the bound URL.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gossip.config import PROTOCOL_VERSION
from gossip.types import Address, Member, MemberEvent, MemberState
from peer.addresses import format_address
from peer.http.server import HttpServer
from peer.logs import JsonLog, wall_iso
from peer.roles import SINGLETON_ROLES, RoleDirectory


class NodeView(Protocol):
    """What the HTTP API reads from a gossip node (`gossip.node.GossipNode` has all of it)."""

    name: str
    incarnation: int
    addr: Address
    health: int

    def members(self) -> list[Member]: ...
    def counts(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, int]: ...


@dataclass
class PeerHandle:
    """A running peer as the HTTP API sees it. `node` is None until gossip is up."""

    role: str
    profile: str
    node: NodeView | None = None
    # Anything with a `stats: dict[str, int]` (the UDP transport).
    transport: Any = None
    # The HTTP server (its `stats`: connections, requests, refusals), once it serves.
    http_server: Any = None
    http_url: str | None = None
    # Core time is trio.current_time(); wall = core + clock_offset (captured at start).
    clock_offset: float = 0.0
    started_wall: float = field(default_factory=time.time)
    # Membership transitions seen by this peer, by (new state, reason), for /metrics.
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Which members this peer takes for the exchange and the ledger (peer.roles).
    roles: RoleDirectory = field(default_factory=RoleDirectory)
    # Parts that can raise an alarm (something a person must act on): each returns name -> details.
    alarm_sources: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    # A role's counters for /metrics: (metric prefix, a function returning name -> count).
    stat_sources: list[tuple[str, Callable[[], dict[str, Any]]]] = field(default_factory=list)
    # The cluster keyring (gossip.keyring.Keyring) this peer seals gossip and signs calls with,
    # and the file it persists to (/admin/keys writes there); both None with --insecure.
    keyring: Any = None
    key_file: Path | None = None

    def security(self) -> dict[str, Any]:
        """What /status says of sealing: ids only, never a key."""
        if self.keyring is None:
            return {"sealed": False, "insecure": True}
        described = self.keyring.describe()
        return {"sealed": True, "key_ids": described["ids"], "primary": described["primary"]}

    def role_choices(self) -> dict[str, dict[str, Any]]:
        """The exchange and ledger as this peer would choose them now, with any conflict."""
        if self.node is None:
            return {}
        members = self.node.members()
        return {role: self.roles.choose(role, members).to_json() for role in SINGLETON_ROLES}

    def alarms(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, choice in self.role_choices().items():
            if choice["conflict"]:
                out[f"role-conflict:{role}"] = {"holder": choice["holder"], "claimants": choice["conflict"]}
        for source in self.alarm_sources:
            out.update(source())
        return out

    def wall(self, core_time: float) -> float:
        return core_time + self.clock_offset

    def uptime_s(self) -> float:
        return max(0.0, time.time() - self.started_wall)

    def record_event(self, ev: MemberEvent) -> None:
        self.transitions[(ev.new.value if ev.new else "forgotten", ev.reason)] += 1


def member_row(handle: PeerHandle, m: Member) -> dict[str, Any]:
    """One `/members` row: what `murmur members` and `murmur top` print."""
    return {
        "name": m.name,
        "role": m.role,
        "addr": format_address(m.addr),
        "state": m.state.value,
        "incarnation": m.incarnation,
        "http": m.http,
        "changed_at": wall_iso(handle.wall(m.changed_at)),
        "meta": dict(m.meta),
    }


def _node(request: Request) -> NodeView:
    node = request.app.state.peer.node
    if node is None:
        raise HTTPException(503, "peer is starting: gossip is not up yet")
    return node


async def health(request: Request) -> Response:
    handle: PeerHandle = request.app.state.peer
    if handle.node is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ok", "name": handle.node.name})


async def status(request: Request) -> Response:
    handle: PeerHandle = request.app.state.peer
    node = _node(request)
    return JSONResponse(
        {
            "name": node.name,
            "role": handle.role,
            "incarnation": node.incarnation,
            "gossip": format_address(node.addr),
            "http": handle.http_url,
            "profile": handle.profile,
            "uptime_s": round(handle.uptime_s(), 3),
            "members": node.counts(),
            "health": node.health,
            "protocol_version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "roles": handle.role_choices(),
            "alarms": handle.alarms(),
            "security": handle.security(),
        }
    )


async def members(request: Request) -> Response:
    handle: PeerHandle = request.app.state.peer
    node = _node(request)
    return JSONResponse([member_row(handle, m) for m in node.members()])


async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no such endpoint: {request.url.path} (try /health, /status, /members, /metrics)"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")
# Entries of node.stats() that are levels, not counts: exported as gauges of their own.
_STAT_GAUGES = frozenset({"local_health"})


def _counter_name(prefix: str, key: str) -> str:
    name = _METRIC_NAME.sub("_", f"{prefix}_{key}")
    return name.removesuffix("_total")


class PeerCollector:
    """Reads the handle at scrape time; the node's own counters stay the source of truth."""

    def __init__(self, handle: PeerHandle) -> None:
        self.handle = handle

    def describe(self) -> list[Metric]:
        # Names depend on what the node reports; nothing to pre-register.
        return []

    def collect(self) -> Iterator[Metric]:
        handle = self.handle
        node = handle.node
        uptime = GaugeMetricFamily("murmur_uptime_seconds", "Seconds since this peer started.")
        uptime.add_metric([], handle.uptime_s())
        yield uptime
        if node is None:
            return
        info = GaugeMetricFamily(
            "murmur_peer_info",
            "This peer's identity (value is always 1).",
            labels=["name", "role", "profile", "protocol_version"],
        )
        info.add_metric([node.name, handle.role, handle.profile, str(PROTOCOL_VERSION)], 1)
        yield info
        counts = node.counts()
        by_state = GaugeMetricFamily(
            "murmur_members",
            "Members in this peer's view, by state (self included).",
            labels=["state"],
        )
        for state in MemberState:
            by_state.add_metric([state.value], counts.get(state.value, 0))
        yield by_state
        health = GaugeMetricFamily(
            "murmur_local_health", "Lifeguard local health score; 0 is healthy."
        )
        health.add_metric([], node.health)
        yield health
        inc = GaugeMetricFamily("murmur_incarnation", "This peer's own incarnation number.")
        inc.add_metric([], node.incarnation)
        yield inc
        transitions = CounterMetricFamily(
            "murmur_member_transitions",
            "Membership transitions seen, by new state and reason.",
            labels=["state", "reason"],
        )
        for (state, reason), n in sorted(handle.transitions.items()):
            transitions.add_metric([state, reason], n)
        yield transitions
        alarms = GaugeMetricFamily("murmur_alarm", "1 while the named alarm is raised (see /status).",
                                   labels=["alarm"])
        for name in sorted(handle.alarms()):
            alarms.add_metric([name], 1)
        yield alarms
        sources = [("murmur_gossip", node.stats(), "Gossip protocol counter")]
        for prefix, part, doc in (("murmur_transport", handle.transport, "Transport counter"),
                                  ("murmur_http", handle.http_server, "HTTP server counter")):
            part_stats = getattr(part, "stats", None)
            if isinstance(part_stats, dict):
                sources.append((prefix, part_stats, doc))
        for prefix, read in handle.stat_sources:
            sources.append((prefix, read(), "Counter"))
        for prefix, stats, doc in sources:
            for key, value in sorted(stats.items()):
                if key in _STAT_GAUGES:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                yield CounterMetricFamily(_counter_name(prefix, key), f"{doc} {key}.", value=value)


def create_app(handle: PeerHandle, extra_routes: list[Route] | None = None) -> Starlette:
    """The common endpoints, plus a role's own (`extra_routes`, e.g. the exchange's)."""
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
            Route("/members", members, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *(extra_routes or []),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(handle))
    app.state.peer = handle
    app.state.registry = registry
    return app


async def serve_http(
    app: Starlette,
    bind: Address,
    shutdown: trio.Event,
    *,
    log: JsonLog | None = None,
    direct: dict | None = None,
    links: Any = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `bind` until `shutdown` is set; reports the bound URL (port 0 works).
    `direct` maps (method, raw path) of hot routes to handlers that skip the app; `links` is the
    peer's link filter (peer/faults/links.py): requests from a cut peer get no answer."""
    server = HttpServer(app, log=log, direct=direct or {}, links=links)
    handle = getattr(app.state, "peer", None)
    if handle is not None:
        handle.http_server = server
    await server.serve(bind, shutdown, task_status=task_status)
