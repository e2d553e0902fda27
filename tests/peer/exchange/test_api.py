"""The exchange's HTTP API: every endpoint with good and bad input; bad input changes nothing."""

from __future__ import annotations

import httpx
import pytest
import trio

from book.bounds import MAX_PRICE, MAX_QUANTITY
from peer.exchange.api import exchange_routes
from peer.exchange.service import ExchangeService
from peer.http.endpoints import PeerHandle, create_app
from peer.tools.processes import poll_until
from tests.peer.fakes import FakeNode


@pytest.fixture
async def api(tmp_path):
    service = ExchangeService(tmp_path, symbols=["AAPL", "MSFT"], lease_duration=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        app = create_app(PeerHandle(role="exchange", profile="local", node=FakeNode("exchange")), exchange_routes())
        app.state.exchange = service
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ex") as client:
            client.service = service
            yield client
        nursery.cancel_scope.cancel()


async def claim_and_quote(api, epoch=1, seq=1, qid="q1"):
    r = await api.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": epoch})
    assert r.status_code == 200, r.text
    r = await api.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": epoch, "seq": seq, "quote_id": qid,
                                            "bid_price": 9990, "bid_quantity": 5, "ask_price": 10010,
                                            "ask_quantity": 5, "reservation_id": "r1"})
    assert r.status_code == 200, r.text
    return r.json()


async def test_prices_are_integer_ticks_for_every_symbol(api):
    r = await api.get("/prices")
    assert r.status_code == 200 and set(r.json()["prices"]) == {"AAPL", "MSFT"}
    assert all(type(p) is int for p in r.json()["prices"].values())
    one = await api.get("/prices/AAPL")
    assert one.json()["symbol"] == "AAPL" and type(one.json()["price"]) is int
    assert (await api.get("/prices/NOPE")).status_code == 404


async def test_quote_put_get_and_fill_through_orders(api):
    await claim_and_quote(api)
    q = (await api.get("/quotes/AAPL")).json()["quote"]
    assert q["quote_id"] == "q1" and q["ask_remaining"] == 5
    r = await api.post("/orders", json={"order_id": "o1", "symbol": "AAPL", "side": "buy", "type": "limit",
                                        "quantity": 2, "limit_price": 10010})
    assert r.status_code == 201 and len(r.json()["fills"]) == 1
    fills = (await api.get("/fills", params={"after": 0})).json()
    assert [f["order_id"] for f in fills["fills"]] == ["o1"] and fills["next_after"] == 1
    assert (await api.get("/fills", params={"after": 1})).json()["fills"] == []
    assert len((await api.get("/quotes")).json()["quotes"]) == 1
    book = (await api.get("/book/AAPL")).json()
    assert book["asks"][0] == [10010, 3]


async def test_fills_long_poll_returns_when_a_fill_happens(api):
    await claim_and_quote(api)

    async def later():
        # Once the long poll waits for the next fill, the order that makes one wakes it.
        await poll_until(lambda: api.service.fill_added.statistics().tasks_waiting, 5,
                         "the long poll waiting for a fill", every=0.001)
        await api.post("/orders", json={"order_id": "o1", "symbol": "AAPL", "side": "sell", "type": "market",
                                        "quantity": 1})

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(later)
            r = await api.get("/fills", params={"after": 0, "wait": 3})
    assert [f["side"] for f in r.json()["fills"]] == ["buy"]


async def test_stale_epoch_quote_is_409_with_a_reason_and_changes_nothing(api):
    await claim_and_quote(api, epoch=3)
    r = await api.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": 2, "seq": 9, "quote_id": "q2",
                                            "bid_price": 1, "bid_quantity": 1, "ask_price": 2, "ask_quantity": 1})
    assert r.status_code == 409 and r.json()["reason"] == "stale-epoch"
    assert (await api.get("/quotes/AAPL")).json()["quote"]["quote_id"] == "q1"


async def test_authority_shows_epoch_holder_and_lease(api):
    await claim_and_quote(api, epoch=4)
    rows = {a["symbol"]: a for a in (await api.get("/authority")).json()["authority"]}
    assert rows["AAPL"]["epoch"] == 4 and rows["AAPL"]["holder"] == "mm-1" and rows["AAPL"]["state"] == "held"
    assert 0 < rows["AAPL"]["lease_left"] <= 5
    assert rows["MSFT"]["state"] == "vacant"
    r = await api.post("/authority/AAPL/renew", json={"holder": "mm-1", "epoch": 4})
    assert r.status_code == 200 and r.json()["reason"] == "renewed"
    r = await api.post("/authority/AAPL/release", json={"holder": "mm-1", "epoch": 4})
    assert r.json()["reason"] == "released" and r.json()["withdrawn"][0]["quote_id"] == "q1"


async def test_delete_quote_and_delete_order(api):
    await claim_and_quote(api)
    r = await api.request("DELETE", "/quotes/AAPL", json={"holder": "mm-1", "epoch": 1, "seq": 2})
    assert r.status_code == 200 and r.json()["reason"] == "cancelled"
    r = await api.post("/orders", json={"order_id": "rest", "symbol": "AAPL", "side": "buy", "type": "limit",
                                        "quantity": 1, "limit_price": 5})
    assert r.json()["order"]["status"] == "resting"
    assert (await api.delete("/orders/rest")).json()["reason"] == "cancelled"
    assert (await api.delete("/orders/rest")).status_code == 409
    assert (await api.delete("/orders/never")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/orders", {"order_id": "x", "symbol": "AAPL", "side": "buy", "quantity": 1, "limit_price": 1.5}, 400, "limit_price"),
        ("POST", "/orders", {"order_id": "x", "symbol": "ZZZ", "side": "buy", "quantity": 1, "limit_price": 1}, 400, "symbol"),
        ("POST", "/orders", {"order_id": "x/y", "symbol": "AAPL", "side": "buy", "quantity": 1, "limit_price": 1}, 400, "order_id"),
        ("PUT", "/quotes/AAPL", {"holder": "mm-1", "epoch": "one", "seq": 1, "quote_id": "q", "bid_price": 1,
                                 "bid_quantity": 1, "ask_price": 2, "ask_quantity": 1}, 400, "epoch"),
        ("PUT", "/quotes/AAPL", {"holder": "mm-1", "epoch": "one", "seq": 1}, 400, "quote_id"),  # missing first
        ("PUT", "/quotes/ZZZ", {}, 404, "symbol"),
        ("GET", "/fills?wait=soon", None, 400, "wait"),
        ("GET", "/fills?symbol=" + "A" * 17, None, 400, "symbol"),
    ],
)
async def test_bad_requests_are_4xx_json_naming_the_field_and_change_nothing(api, method, path, body, status, field):
    before = api.service.counters["accepted"] + api.service.counters["rejected"]
    r = await api.request(method, path, json=body) if body is not None else await api.request(method, path)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"]
    assert api.service.counters["accepted"] + api.service.counters["rejected"] == before
    assert not api.service.core.orders


async def test_exchange_status_reports_counters_and_tape_stats(api):
    await claim_and_quote(api)
    r = await api.get("/exchange")
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2 and body["tape"]["records"] >= 3 and body["symbols"] == ["AAPL", "MSFT"]


async def serve_directly(nursery, tmp_path, symbols: list[str], shutdown: trio.Event):
    """An exchange on a real server whose POST /orders skips the app (exchange_direct_routes)."""
    from peer.exchange.api import exchange_direct_routes
    from peer.http.endpoints import serve_http

    service = ExchangeService(tmp_path, symbols=symbols, lease_duration=5.0)
    await nursery.start(service.run)
    app = create_app(PeerHandle(role="exchange", profile="local", node=FakeNode("exchange")), exchange_routes())
    app.state.exchange = service
    url = await nursery.start(
        lambda task_status: serve_http(app, ("127.0.0.1", 0), shutdown, direct=exchange_direct_routes(service),
                                       task_status=task_status))
    return service, app, url


async def test_orders_served_directly_answer_like_the_route_good_and_bad(tmp_path):
    """POST /orders skips the framework on a real server (exchange_direct_routes); the answers
    must be the route's, byte for byte in meaning, and bad input must change nothing."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        service, app, url = await serve_directly(nursery, tmp_path, ["AAPL", "MSFT"], shutdown)
        async with httpx.AsyncClient(base_url=url) as c:
            order = {"order_id": "d1", "symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 2,
                     "limit_price": 100}
            good = await c.post("/orders", json=order)
            assert good.status_code == 201 and good.json()["order"]["order_id"] == "d1"
            before = service.counters["accepted"]
            bad = await c.post("/orders", content=b"{not json")
            assert bad.status_code == 400 and bad.json()["field"] == "body"
            unknown = await c.post("/orders", json={**order, "order_id": "d2", "colour": "red"})
            assert unknown.status_code == 400 and unknown.json()["field"] == "colour"
            missing = await c.post("/orders", json={k: v for k, v in order.items() if k != "order_id"})
            assert missing.status_code == 400 and missing.json()["field"] == "order_id"
            assert service.counters["accepted"] == before
            # The same path with a query string, or another method, still reaches the app.
            assert (await c.get("/orders")).status_code == 405
        shutdown.set()
        nursery.cancel_scope.cancel()
    assert app.state.peer.http_server.stats["requests"] == 5


# Bad values in every field of every endpoint, bad bodies and bad queries: the one table in
# tests/peer/http/test_inputs.py, sent to this API (its routes and its direct POST /orders) and the ledger's.


async def test_orders_at_the_bounds_over_http(api):
    """At each bound accepted, one past it refused naming the field; the issue's values refused."""
    order = {"order_id": "b1", "symbol": "MSFT", "side": "buy", "type": "limit", "quantity": MAX_QUANTITY,
             "limit_price": MAX_PRICE}
    r = await api.post("/orders", json=order)
    assert r.status_code == 201, r.text
    for field, value in (("limit_price", MAX_PRICE + 1), ("limit_price", 9007199254740992),
                         ("quantity", MAX_QUANTITY + 1), ("quantity", 2**63), ("quantity", 10**30),
                         ("order_id", "o" * 129)):
        r = await api.post("/orders", json={**order, "order_id": "b2", field: value})
        assert r.status_code == 400 and r.json()["field"] == field, (field, r.text)
    r = await api.post("/orders", content=b'{"order_id": "b3", "symbol": "MSFT", "side": "buy", "quantity": '
                       + b"9" * 4000 + b', "limit_price": 1}')
    assert r.status_code == 400 and r.json()["field"] == "quantity"
    assert set(api.service.core.orders) == {"b1"}


async def test_a_quote_at_the_bounds_over_http(api):
    await claim_and_quote(api)
    quote = {"holder": "mm-1", "epoch": 1, "seq": 2, "quote_id": "qb", "bid_price": MAX_PRICE - 1,
             "bid_quantity": MAX_QUANTITY, "ask_price": MAX_PRICE, "ask_quantity": MAX_QUANTITY}
    for field, value in (("ask_price", MAX_PRICE + 1), ("bid_quantity", MAX_QUANTITY + 1),
                         ("ask_quantity", MAX_QUANTITY + 1), ("seq", 2**53)):
        r = await api.put("/quotes/AAPL", json={**quote, field: value})
        assert r.status_code == 400 and r.json()["field"] == field, (field, r.text)
    r = await api.put("/quotes/AAPL", json=quote)
    assert r.status_code == 200 and r.json()["quote"]["ask_price"] == MAX_PRICE


async def test_hostile_orders_through_the_direct_route_of_a_real_server(tmp_path):
    """POST /orders skips the app on a real server: the same strict decoder and the same 400s."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        service, app, url = await serve_directly(nursery, tmp_path, ["AAPL"], shutdown)
        good = '{"order_id": "d1", "symbol": "AAPL", "side": "buy", "quantity": 1, "limit_price": 1'
        async with httpx.AsyncClient(base_url=url) as c:
            for raw, field in ((b"[" * 1000 + b"]" * 1000, "body"),
                               (b'{"order_id": "d1", "symbol": [], "side": "buy", "quantity": 1}', "symbol"),
                               (b'{"order_id": "d1", "symbol": {}, "side": "buy", "quantity": 1}', "symbol"),
                               ((good + ', "type": NaN}').encode(), "type"),
                               (good.encode().replace(b'"quantity": 1', b'"quantity": ' + b"7" * 4000) + b"}",
                                "quantity")):
                r = await c.post("/orders", content=raw)
                assert r.status_code == 400 and r.json()["field"] == field, r.text
            assert (await c.get("/health")).status_code == 200
        shutdown.set()
        nursery.cancel_scope.cancel()
    assert service.core.orders == {} and app.state.peer.http_server.stats.get("app_errors", 0) == 0


def test_order_entry_and_only_order_entry_is_rate_limited_per_client():
    """The exchange's public face is what the HTTP server limits per client address; the
    peer-to-peer routes (quotes, authority) and the reads are not (docs/security.md)."""
    from peer.http.limits import RoutePatterns

    patterns = RoutePatterns.of(exchange_routes())
    assert patterns.match("POST", "/orders") and patterns.match("DELETE", "/orders/o-1")
    for method, path in [("PUT", "/quotes/MSFT"), ("DELETE", "/quotes/MSFT"), ("GET", "/fills"),
                         ("POST", "/authority/MSFT/claim"), ("POST", "/authority/MSFT/renew"),
                         ("GET", "/prices"), ("GET", "/book/MSFT")]:
        assert not patterns.match(method, path), (method, path)
