"""A real cluster attacked from loopback: members that claim a role already held.

Found on real processes: a member named `aaa-ledger` with role `ledger` received 18 fills from the
exchange (acknowledged, so lost) and 125 reservations, and the market makers then ended on a
malformed answer. The impostor here is a real gossip node on UDP/TCP in the test process,
advertising the ledger's role with an HTTP server that records every request it gets.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gossip.config import PROTOCOL_VERSION, profile
from gossip.keyring import Keyring
from gossip.node import GossipNode
from gossip.sealed import SealedTransport, sealed_config
from gossip.udp import UdpTransport
from peer.addresses import parse_address
from peer.http.endpoints import serve_http
from peer.http.signing import Signer
from peer.tools.processes import CLI, pid_alive, poll_until, run_command

from .cluster_helpers import eventually, launched

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

        await poll_until(acked, 30, "the real ledger acknowledges fills", every=0.1)
        fake_url = await nursery.start(partial_serve(app))
        transport = UdpTransport(("127.0.0.1", 0))
        await nursery.start(transport.run)
        # A member: it holds the cluster key (members are trusted with their own names, not roles).
        ring = Keyring.load(cluster.info["key_file"])
        node = GossipNode(SealedTransport(transport, ring, cluster.info["cluster"]),
                          sealed_config(profile(cluster.info["profile"])), "aaa-ledger",
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


def partial_serve(app):
    from functools import partial

    return partial(serve_http, app, ("127.0.0.1", 0), trio.Event())


def _deep(n: int) -> str:
    return "[" * n + "]" * n


async def test_hostile_requests_to_a_running_cluster_are_400s_and_nothing_is_stuck_or_lost(tmp_path):
    """The requests that once answered 500 or were accepted and then stopped the fill pipeline,
    sent to real processes under order flow: each is a 400 naming the field, every peer goes on,
    and afterwards `murmur check` holds, the delivery check included."""
    async with launched(tmp_path / "c", peers=2, extra_args=["--flow-rate", "40"]) as cluster, \
            httpx.AsyncClient(timeout=5) as client:
        ex, lg = cluster.peer("exchange")["http"], cluster.peer("ledger")["http"]
        order = {"order_id": "h-1", "symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 1,
                 "limit_price": 100}
        hostile = [
            ("POST", f"{ex}/orders", _deep(1000), None),
            ("PUT", f"{ex}/quotes/AAPL", _deep(1000), None),
            ("POST", f"{lg}/fills", _deep(1000), None),
            ("POST", f"{lg}/reservations", _deep(1000), None),
            ("POST", f"{ex}/orders", json_text({**order, "symbol": []}), "symbol"),
            ("POST", f"{ex}/orders", json_text({**order, "symbol": {}}), "symbol"),
            ("POST", f"{ex}/orders", json_text({**order, "limit_price": 9007199254740992}), "limit_price"),
            ("POST", f"{ex}/orders", json_text({**order, "quantity": 2**63}), "quantity"),
            ("POST", f"{ex}/orders", json_text({**order, "quantity": 10**30}), "quantity"),
            ("POST", f"{ex}/orders", json_text(order).replace('"quantity": 1', '"quantity": ' + "9" * 4000), "quantity"),
            ("POST", f"{lg}/reservations", '{"quote_id": "x", "holder": "h", "symbol": "AAPL", "bid_quantity": 1, '
                                           '"ask_quantity": 1, "ttl": ' + "9" * 4000 + "}", "ttl"),
            ("POST", f"{lg}/fills", '{"fill_id": "f", "order_id": "o", "symbol": "AAPL", "side": "buy", '
                                    '"quantity": 1, "price": 10, "quote_id": "q", "created_at": ' + "9" * 4000 + "}",
             "created_at"),
        ]
        # The calls between peers take a member's signature before their body is read: these are
        # signed with the cluster key as the exchange (members are trusted with their own names).
        ring = Keyring.load(cluster.info["key_file"])
        signer = Signer(ring, cluster.peer("exchange")["name"], clock=time.time,
                        nonces=lambda: secrets.randbits(64))
        for method, url, body, field in hostile:
            headers = {"content-type": "application/json"}
            if not url.endswith("/orders"):
                headers.update(signer.headers(method, urlsplit(url).path, body.encode()))
            r = await client.request(method, url, content=body, headers=headers)
            assert r.status_code == 400, (method, url, body[:60], r.status_code, r.text[:200])
            if field is not None:
                assert r.json()["field"].split(".")[-1].split("[")[0] == field, r.text[:200]
        for p in cluster.peers:
            assert pid_alive(p["pid"]), f"{p['name']} ended"

        async def delivered():
            status = (await client.get(f"{ex}/exchange")).json()
            return status["fills"] > 0 and status["outbox"]["pending"] == 0 and not status["outbox"]["alarm"], status

        await eventually(delivered, 30, "every fill delivered to the ledger, no outbox alarm")
        check = await run_command([*CLI, "check", str(cluster.data_dir)])
        assert check.returncode == 0, check.stdout + check.stderr
        assert "every fill reached the ledger within 10 s" in check.stdout


def json_text(obj) -> str:
    import json

    return json.dumps(obj)
