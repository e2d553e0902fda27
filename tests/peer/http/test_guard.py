"""Signed calls on the exchange's and the ledger's routes, over a real server and client.

Unsigned, forged, expired and replayed calls get 401 and change nothing; a member acting in
another's name gets 403; fills are taken only from the exchange; order entry and reads stay
open; a peer with no keyring (insecure) verifies nothing.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
import trio

from gossip.keyring import Keyring, generate_key
from peer.exchange.api import exchange_routes
from peer.exchange.service import ExchangeService
from peer.http.client import HttpClient
from peer.http.endpoints import PeerHandle, create_app
from peer.http.guard import peer_guard
from peer.http.server import HttpServer
from peer.http.signing import SIGNATURE, TIME, Signer
from peer.ledger.api import ledger_routes
from peer.ledger.service import LedgerService
from tests.peer.fakes import FakeNode

RING = Keyring([bytes(range(32))])


def signer(name: str, ring: Keyring = RING, skew: float = 0.0) -> Signer:
    rng = random.SystemRandom()
    return Signer(ring, name, clock=lambda: time.time() + skew, nonces=lambda: rng.getrandbits(64))


async def serve(nursery, app) -> str:
    shutdown = trio.Event()
    url = await nursery.start(HttpServer(app).serve, ("127.0.0.1", 0), shutdown)
    return url


async def guarded_exchange(nursery, tmp_path, ring):
    """An exchange service behind its app, guarded under `ring` (None: insecure), served on
    loopback: (url, service, guard)."""
    service = ExchangeService(tmp_path, symbols=["AAPL"], lease_duration=5.0)
    await nursery.start(service.run)
    handle = PeerHandle(role="exchange", profile="local", node=FakeNode("exchange"))
    app = create_app(handle, exchange_routes())
    app.state.exchange = service
    app.state.guard = peer_guard(handle, ring)
    return await serve(nursery, app), service, app.state.guard


@pytest.fixture
async def exchange(tmp_path):
    async with trio.open_nursery() as nursery:
        yield await guarded_exchange(nursery, tmp_path, RING)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def ledger(tmp_path):
    service = LedgerService(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        handle = PeerHandle(role="ledger", profile="local", node=FakeNode("ledger"))
        app = create_app(handle, ledger_routes())
        app.state.ledger = service
        app.state.guard = peer_guard(handle, RING)
        url = await serve(nursery, app)
        yield url, service, app.state.guard
        nursery.cancel_scope.cancel()


def authority(service: ExchangeService) -> dict:
    return service.core.authority["AAPL"].to_json(0)


async def test_a_signed_claim_in_the_callers_name_is_taken(exchange):
    url, service, guard = exchange
    async with HttpClient(url, signer=signer("mm-1")) as client:
        r = await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})
        assert r.status == 200, r.body
        r = await client.post("/authority/AAPL/renew", json={"holder": "mm-1", "epoch": 1})
        assert r.status == 200, r.body
    assert authority(service)["holder"] == "mm-1"
    assert guard.stats["signed_ok"] == 2


async def test_an_unsigned_claim_with_a_huge_epoch_is_refused_and_changes_nothing(exchange):
    url, service, guard = exchange
    async with HttpClient(url, sender="mm-1") as client:
        r = await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 2**53 - 1})
    assert r.status == 401
    assert r.json()["reason"] == "signature-missing" and r.json()["field"] == SIGNATURE
    assert authority(service)["epoch"] == 0
    assert guard.stats["refused_missing"] == 1


async def test_a_claim_or_release_in_another_members_name_is_forbidden(exchange):
    url, service, guard = exchange
    async with HttpClient(url, signer=signer("mm-1")) as holder, HttpClient(url, signer=signer("mm-2")) as other:
        assert (await holder.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})).status == 200
        before = authority(service)
        for path, body in (("/authority/AAPL/claim", {"holder": "mm-1", "epoch": 2**53 - 1}),
                           ("/authority/AAPL/release", {"holder": "mm-1", "epoch": 1})):
            r = await other.post(path, json=body)
            assert r.status == 403, r.body
            assert r.json()["field"] == "holder"
        r = await other.delete("/quotes/AAPL", json={"holder": "mm-1", "epoch": 1, "seq": 5})
        assert r.status == 403
        r = await other.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": 1, "seq": 5, "quote_id": "x",
                                                  "bid_price": 1, "bid_quantity": 1, "ask_price": 2,
                                                  "ask_quantity": 1, "reservation_id": None})
        assert r.status == 403
    assert authority(service) == before
    assert guard.stats["forbidden"] == 4


async def test_a_call_under_a_key_the_exchange_does_not_hold_is_refused(exchange):
    url, service, _ = exchange
    async with HttpClient(url, signer=signer("mm-1", Keyring([generate_key()]))) as client:
        r = await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})
    assert (r.status, r.json()["reason"]) == (401, "signature-unknown-key")
    assert authority(service)["epoch"] == 0


async def test_a_call_signed_an_hour_ago_has_expired(exchange):
    url, service, _ = exchange
    async with HttpClient(url, signer=signer("mm-1", skew=-3600)) as client:
        r = await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})
    assert (r.status, r.json()["reason"]) == (401, "signature-expired")
    assert authority(service)["epoch"] == 0


async def test_a_replayed_release_is_refused(exchange):
    url, service, guard = exchange
    s = signer("mm-1")
    async with HttpClient(url, signer=s) as client:
        assert (await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})).status == 200
    body = json.dumps({"holder": "mm-1", "epoch": 1}).encode()
    headers = s.headers("POST", "/authority/AAPL/release", body)
    async with httpx.AsyncClient(base_url=url) as raw:
        first = await raw.post("/authority/AAPL/release", content=body, headers=headers)
        assert first.status_code == 200, first.text
        # The symbol is claimed again; the captured release, sent again, must not end it.
        async with HttpClient(url, signer=s) as client:
            assert (await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 2})).status == 200
        again = await raw.post("/authority/AAPL/release", content=body, headers=headers)
    assert (again.status_code, again.json()["reason"]) == (401, "signature-replayed")
    assert authority(service)["state"] == "held" and authority(service)["epoch"] == 2
    assert guard.stats["refused_replayed"] == 1


async def test_a_forged_signature_is_refused(exchange):
    url, service, _ = exchange
    body = json.dumps({"holder": "mm-1", "epoch": 1}).encode()
    headers = signer("mm-1").headers("POST", "/authority/AAPL/claim", body)
    headers[SIGNATURE] = "0" * 64
    headers[TIME] = headers[TIME]
    async with httpx.AsyncClient(base_url=url) as raw:
        r = await raw.post("/authority/AAPL/claim", content=body, headers=headers)
    assert (r.status_code, r.json()["reason"]) == (401, "signature-bad-signature")
    assert authority(service)["epoch"] == 0


async def test_order_entry_and_reads_stay_unsigned(exchange):
    url, service, _ = exchange
    async with httpx.AsyncClient(base_url=url) as raw:
        r = await raw.post("/orders", json={"order_id": "o1", "symbol": "AAPL", "side": "buy", "quantity": 1,
                                            "limit_price": 10000})
        assert r.status_code in (200, 201), r.text
        assert (await raw.get("/authority")).status_code == 200
        assert (await raw.get("/quotes/AAPL")).status_code == 200


# --- the ledger -----------------------------------------------------------------------------------


def fill(n: int) -> dict:
    return {"fill_id": f"X-{n}", "seq": n, "order_id": f"o{n}", "symbol": "ZZZ", "side": "buy", "quantity": 2,
            "price": 10_000, "quote_id": "q1", "epoch": 1, "holder": "mm-1", "reservation_id": None,
            "created_at": time.time()}


async def test_fills_are_taken_only_from_the_exchange(ledger):
    url, service, guard = ledger
    async with httpx.AsyncClient(base_url=url) as raw:
        r = await raw.post("/fills", json={"fills": [fill(1)]})
        assert r.status_code == 401
    async with HttpClient(url, signer=signer("mm-1")) as member:
        r = await member.post("/fills", json={"fills": [fill(2)]})
        assert r.status == 403 and "exchange" in r.json()["error"]
    assert service.positions == {}
    async with HttpClient(url, signer=signer("exchange")) as exchange:
        r = await exchange.post("/fills", json={"fills": [fill(3)]})
        assert r.status == 200, r.body
    assert list(service.positions) == ["ZZZ"]
    assert guard.stats["forbidden"] == 1 and guard.stats["refused_missing"] == 1


def reservation(holder: str = "mm-1") -> dict:
    return {"quote_id": "q1", "holder": holder, "symbol": "AAPL", "bid_quantity": 10, "ask_quantity": 10,
            "ttl": 30}


async def test_reservations_are_taken_only_for_the_callers_own_name(ledger):
    url, service, _ = ledger
    async with HttpClient(url, signer=signer("mm-2")) as other:
        r = await other.post("/reservations", json=reservation("mm-1"))
        assert r.status == 403
    async with httpx.AsyncClient(base_url=url) as raw:
        assert (await raw.post("/reservations", json=reservation())).status_code == 401
    assert service.usage().used_bid == 0
    async with HttpClient(url, signer=signer("mm-1")) as holder:
        r = await holder.post("/reservations", json=reservation())
        assert r.status == 201, r.body
    rid = r.json()["reservation"]["reservation_id"]
    async with HttpClient(url, signer=signer("mm-2")) as other:
        for op, body in (("release", {}), ("renew", {"ttl": 60}),
                         ("apply-fill", {"fill_id": "F1", "side": "buy", "quantity": 10})):
            r = await other.post(f"/reservations/{rid}/{op}", json=body)
            assert r.status == 403, (op, r.body)
    found = await service.reservation(rid)
    assert found.state == "active" and found.remaining_bid_quantity == 10


async def test_an_insecure_peer_verifies_nothing(tmp_path):
    async with trio.open_nursery() as nursery:
        url, _, _ = await guarded_exchange(nursery, tmp_path, None)
        async with HttpClient(url, sender="mm-2") as client:
            r = await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})
        assert r.status == 200
        nursery.cancel_scope.cancel()


# --- grants ---------------------------------------------------------------------------------------


def quote_body(rid: str | None, **kw) -> dict:
    return {"holder": "mm-1", "epoch": 1, "seq": 1, "quote_id": "q1", "bid_price": 9990, "bid_quantity": 5,
            "ask_price": 10010, "ask_quantity": 5, "reservation_id": rid, **kw}


async def test_the_ledgers_grant_activates_a_quote_and_nothing_else_does(exchange, ledger):
    ex_url, ex_service, ex_guard = exchange
    ledger_url, _, _ = ledger
    async with HttpClient(ledger_url, signer=signer("mm-1")) as led, HttpClient(ex_url, signer=signer("mm-1")) as ex:
        r = await led.post("/reservations", json=reservation())
        assert r.status == 201
        answer = r.json()
        rid, grant = answer["reservation"]["reservation_id"], answer["grant"]
        assert grant["bid_quantity"] == 10 and grant["reservation_id"] == rid
        assert (await ex.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})).status == 200
        # No grant, a grant with its terms raised, a grant beyond which the quote goes: refused.
        r = await ex.put("/quotes/AAPL", json=quote_body(rid))
        assert (r.status, r.json()["reason"]) == (403, "grant-missing")
        r = await ex.put("/quotes/AAPL", json=quote_body(rid, grant={**grant, "bid_quantity": 1_000_000}))
        assert (r.status, r.json()["reason"]) == (403, "grant-bad-grant")
        r = await ex.put("/quotes/AAPL", json=quote_body(rid, bid_quantity=11, grant=grant))
        assert (r.status, r.json()["reason"]) == (409, "beyond-grant")
        assert ex_service.core.active_quotes == {}
        r = await ex.put("/quotes/AAPL", json=quote_body(rid, grant=grant))
        assert r.status == 200, r.body
    quote = ex_service.core.active_quotes["AAPL"]
    assert quote.expires_at <= grant["expires_at"]
    assert ex_guard.stats["refused_grant"] == 2 and ex_guard.stats["grants_verified"] == 2


async def test_a_renewal_comes_with_a_new_grant_and_a_release_with_none(ledger):
    url, _, _ = ledger
    async with HttpClient(url, signer=signer("mm-1")) as led:
        first = (await led.post("/reservations", json=reservation())).json()
        rid = first["reservation"]["reservation_id"]
        renewed = (await led.post(f"/reservations/{rid}/renew", json={"ttl": 60})).json()
        assert renewed["grant"]["expires_at"] > first["grant"]["expires_at"]
        released = (await led.post(f"/reservations/{rid}/release", json={})).json()
        assert "grant" not in released
        # A retry of the request for a released reservation's quote_id is granted nothing.
        again = await led.post("/reservations", json=reservation())
        assert "grant" not in again.json()
