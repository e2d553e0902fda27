"""A real cluster attacked from loopback: members that claim a role already held.

Found on real processes: a member named `aaa-ledger` with role `ledger` received 18 fills from the
exchange (acknowledged, so lost) and 125 reservations, and the market makers then ended on a
malformed answer. The impostor here is a real gossip node on UDP/TCP in the test process,
advertising the ledger's role with an HTTP server that records every request it gets.
"""

from __future__ import annotations

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gossip.config import PROTOCOL_VERSION, profile
from gossip.node import GossipNode
from gossip.udp import UdpTransport
from peer.addresses import parse_address
from peer.http import serve_http

from .cluster_helpers import eventually, launched, pid_alive

pytestmark = pytest.mark.slow


async def test_a_member_that_claims_the_ledger_role_gets_nothing_and_is_shown_as_a_conflict(tmp_path):
    seen: list[str] = []

    async def impostor(request):
        seen.append(f"{request.method} {request.url.path}")
        return Response(b"{}", media_type="application/json")  # acknowledges anything, like the one found

    app = Starlette(routes=[Route("/{path:path}", impostor, methods=["GET", "POST", "PUT", "DELETE"])])
    async with launched(tmp_path / "c", peers=2, extra_args=["--flow-rate", "40"]) as cluster, \
            httpx.AsyncClient(timeout=2) as client, trio.open_nursery() as nursery:
        exchange = cluster.peer("exchange")

        async def acked() -> int:
            return (await client.get(f"{exchange['http']}/exchange")).json()["ledger_acked"]

        await eventually(lambda: _ok(acked(), lambda n: n > 0), 30, "the real ledger acknowledges fills")
        fake_url = await nursery.start(partial_serve(app))
        transport = UdpTransport(("127.0.0.1", 0))
        await nursery.start(transport.run)
        node = GossipNode(transport, profile(cluster.info["profile"]), "aaa-ledger",
                          meta={"role": "ledger", "http": fake_url, "version": PROTOCOL_VERSION},
                          seeds=[parse_address(exchange["gossip"])])
        await nursery.start(node.run)

        async def conflict_everywhere():
            out = {}
            for p in cluster.peers:
                status = (await client.get(f"{p['http']}/status")).json()
                out[p["name"]] = status["alarms"].get("role-conflict:ledger")
            ok = all(a == {"holder": "ledger", "claimants": ["aaa-ledger"]} for a in out.values())
            return ok, out

        await eventually(conflict_everywhere, 15, "every peer shows the ledger role conflict")
        before = await acked()
        await trio.sleep(3)
        assert await acked() > before, "fills still go to the real ledger"
        assert seen == [], f"the impostor was sent {seen[:5]}"
        for p in cluster.peers:
            assert pid_alive(p["pid"]), f"{p['name']} ended"
            assert (await client.get(f"{p['http']}/health")).status_code == 200
        metrics = (await client.get(f"{exchange['http']}/metrics")).text
        assert 'murmur_alarm{alarm="role-conflict:ledger"} 1.0' in metrics
        nursery.cancel_scope.cancel()


async def _ok(value, predicate):
    v = await value
    return predicate(v), v


def partial_serve(app):
    from functools import partial

    return partial(serve_http, app, ("127.0.0.1", 0), trio.Event())
