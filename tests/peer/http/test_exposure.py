"""Every route that changes something, on every role, is guarded (docs/security.md, "What binds
where"): signed by a member, behind the admin token, or the exchange's order entry, which is
public and rate-limited per client. A write route that is none of the three fails here."""

from __future__ import annotations

import random
import re
import time

import httpx
import pytest
from starlette.routing import Route

from gossip.keyring import Keyring
from peer.exchange.api import exchange_routes
from peer.faults import admin
from peer.faults.links import LinkFilter
from peer.http.endpoints import PeerHandle, create_app
from peer.http.guard import Guard
from peer.http.limits import RoutePatterns
from peer.http.signing import Verifier
from peer.ledger.api import ledger_routes
from peer.market_maker.api import mm_routes

WRITES = {"POST", "PUT", "DELETE", "PATCH"}
# The exchange's public face: open to anyone, bounded per client address instead.
ORDER_ENTRY = {("POST", "/orders"), ("DELETE", "/orders/{order_id}")}
ROLES = {"exchange": exchange_routes, "ledger": ledger_routes, "mm": mm_routes}


def admin_route_list() -> list[Route]:
    # Every /admin route the admin module serves, whatever other lists it grows.
    return [r for name in dir(admin) if name.endswith("_routes") for r in getattr(admin, name)()]


def app_of(role: str):
    app = create_app(PeerHandle(role=role, profile="local"), [*ROLES[role](), *admin_route_list()])
    app.state.guard = Guard(Verifier(Keyring([bytes(range(32))])), clock=time.time)
    app.state.admin = admin.Admin(LinkFilter(random.Random(1)), "the-token")
    return app


def writes(routes) -> list[tuple[str, str]]:
    """(method, path) of the routes that change something, and of every /admin route (its reads
    show the operator's rules and keys' ids: the token guards them too)."""
    return sorted({(m, r.path) for r in routes if isinstance(r, Route) for m in (r.methods or ())
                   if m in WRITES or (r.path.startswith("/admin") and m != "HEAD")})


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_every_write_route_refuses_an_unsigned_untokened_caller_or_is_rate_limited_order_entry(role):
    app = app_of(role)
    public = RoutePatterns.of(app.routes)
    checked = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
        for method, path in writes(app.routes):
            concrete = re.sub(r"\{[^}]+\}", "MSFT", path)
            if public.match(method, concrete):
                assert role == "exchange" and (method, path) in ORDER_ENTRY, (method, path)
                continue
            r = await client.request(method, concrete, content=b"{}",
                                     headers={"content-type": "application/json"})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.json()["field"] in ("authorization", "x-murmur-signature"), (method, path, r.json())
            checked += 1
    assert checked >= {"exchange": 8, "ledger": 8, "mm": 3}[role]  # the admin routes at least


def test_the_only_public_writes_are_the_exchanges_order_entry():
    assert {(m, p) for role in ROLES for m, p in writes(app_of(role).routes)
            if RoutePatterns.of(app_of(role).routes).match(m, re.sub(r"\{[^}]+\}", "x", p))} == ORDER_ENTRY
