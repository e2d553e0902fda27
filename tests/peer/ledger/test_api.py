"""The ledger's HTTP API: every endpoint with good and bad input; bad input changes nothing."""

from __future__ import annotations

import httpx
import pytest
import trio

from book.bounds import MAX_PRICE, MAX_QUANTITY
from peer.http.endpoints import PeerHandle, create_app
from peer.ledger.api import ledger_routes
from peer.ledger.service import LedgerService
from peer.tools.processes import poll_until
from tests.conftest import T0
from tests.peer.fakes import FakeNode


@pytest.fixture
async def api(tmp_path, clock):
    service = LedgerService(tmp_path, clock=clock, sweep_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        app = create_app(PeerHandle(role="ledger", profile="local", node=FakeNode("ledger")), ledger_routes())
        app.state.ledger = service
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledger") as client:
            client.service = service
            yield client
        nursery.cancel_scope.cancel()


def fill(n: int, **kw) -> dict:
    return {"fill_id": f"F-{n}", "seq": n, "order_id": f"o{n}", "symbol": "AAPL", "side": "buy", "quantity": 2,
            "price": 10_000, "quote_id": "q1", "epoch": 1, "holder": "mm-1", "reservation_id": None,
            "created_at": T0 + n, **kw}


def reservation(quote_id="q1", **kw) -> dict:
    return {"quote_id": quote_id, "holder": "mm-1", "symbol": "AAPL", "bid_quantity": 10, "ask_quantity": 10,
            "ttl": 30, **kw}


async def parked(api) -> None:
    """Until a long poll waits for the next commit: what the test does next is what wakes it."""
    await poll_until(lambda: api.service.committed.statistics().tasks_waiting, 5,
                     "a long poll waiting for a commit", every=0.001)


async def state(api) -> tuple:
    """Everything a request could change."""
    return ((await api.get("/positions")).json(), (await api.get("/exposure")).json(),
            (await api.get("/fills")).json(), api.service.store.next_reservation)


# --- POST /fills --------------------------------------------------------------------------------


async def test_post_fills_takes_a_batch_or_one_fill_and_answers_each(api):
    r = await api.post("/fills", json={"fills": [fill(1), fill(2, side="sell", quantity=5)]})
    assert r.status_code == 200
    assert r.json()["results"] == [
        {"fill_id": "F-1", "status": "applied", "position_version": 1, "net_quantity": 2, "update_seq": 1},
        {"fill_id": "F-2", "status": "applied", "position_version": 2, "net_quantity": -3, "update_seq": 2},
    ]
    one = await api.post("/fills", json=fill(3))
    assert one.status_code == 200 and one.json()["results"][0]["position_version"] == 3


async def test_a_retried_batch_is_answered_as_duplicates_with_the_original_versions(api):
    first = (await api.post("/fills", json={"fills": [fill(1), fill(2)]})).json()["results"]
    again = await api.post("/fills", json={"fills": [fill(1), fill(2), fill(3)]})
    assert again.status_code == 200
    results = again.json()["results"]
    assert [r["status"] for r in results] == ["duplicate", "duplicate", "applied"]
    assert [r["position_version"] for r in results[:2]] == [f["position_version"] for f in first]
    assert (await api.get("/positions/AAPL")).json()["net_quantity"] == 6


async def test_conflicting_content_for_a_fill_id_is_409_naming_the_fields_and_applies_nothing(api):
    await api.post("/fills", json=fill(1))
    before = await state(api)
    r = await api.post("/fills", json={"fills": [fill(2), fill(1, quantity=3, side="sell")]})
    assert r.status_code == 409 and r.json()["reason"] == "fill-conflict"
    diff = r.json()["conflicts"][0]["differences"]
    assert set(diff) == {"quantity", "side"} and diff["quantity"] == {"recorded": 2, "received": 3}
    after = await state(api)
    assert after[:3] == before[:3]


@pytest.mark.parametrize("body, field", [
    ({"fills": [fill(1, quantity=2.0)]}, "fills[0].quantity"),
    ({"fills": [fill(1), fill(2, quantity=True)]}, "fills[1].quantity"),
    ({"fills": [fill(1, price="100")]}, "fills[0].price"),
    ({"fills": [fill(1, price=100.5)]}, "fills[0].price"),
    ({"fills": [fill(1, quantity=0)]}, "fills[0].quantity"),
    ({"fills": [fill(1, side="long")]}, "fills[0].side"),
    ({"fills": [fill(1, symbol="AA PL")]}, "fills[0].symbol"),
    ({"fills": [fill(1, created_at="now")]}, "fills[0].created_at"),
    ({"fills": []}, "fills"),
    ({"fills": "F-1"}, "fills"),
    ({"fills": [fill(1)], "more": 1}, "more"),
    ([fill(1)], "body"),
    (fill(1, quantity=-4), "quantity"),
])
async def test_malformed_fills_are_400_naming_the_field_and_change_nothing(api, body, field):
    await api.post("/fills", json=fill(100))
    before = await state(api)
    r = await api.post("/fills", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and r.json()["error"]
    assert await state(api) == before


@pytest.mark.parametrize("raw, field", [(b"", "body"), (b'{"fills": [NaN]}', "fills[0]")])
async def test_an_empty_body_or_a_bad_fill_in_a_batch_is_400(api, raw, field):
    r = await api.post("/fills", content=raw)
    assert r.status_code == 400 and r.json()["field"] == field
    assert api.service.published_seq == 0


# --- GET /fills, /positions -----------------------------------------------------------------------


async def test_get_fills_pages_in_commit_order_and_filters_by_symbol(api):
    await api.post("/fills", json={"fills": [fill(i, symbol=["AAPL", "MSFT"][i % 2]) for i in range(1, 8)]})
    page = (await api.get("/fills", params={"after": 2, "limit": 3})).json()
    assert [f["update_seq"] for f in page["fills"]] == [3, 4, 5] and page["next_after"] == 5
    assert page["fills"][0]["fill_id"] == "F-3" and page["fills"][0]["position_version"] == 2  # MSFT: F-1, F-3
    msft = (await api.get("/fills", params={"symbol": "MSFT"})).json()
    assert [f["fill_id"] for f in msft["fills"]] == ["F-1", "F-3", "F-5", "F-7"] and msft["next_after"] == 7
    for bad in ({"after": -1}, {"after": "x"}, {"limit": 0}, {"symbol": "A/B"}, {"wait": "soon"}, {"nope": 1}):
        r = await api.get("/fills", params=bad)
        assert r.status_code == 400 and r.json()["field"] == next(iter(bad)), bad


async def test_positions_all_and_one_and_a_symbol_never_filled(api):
    await api.post("/fills", json={"fills": [fill(1), fill(2, symbol="MSFT", side="sell", quantity=7)]})
    positions = (await api.get("/positions")).json()["positions"]
    assert [(p["symbol"], p["net_quantity"], p["position_version"], p["last_fill_id"]) for p in positions] == [
        ("AAPL", 2, 1, "F-1"), ("MSFT", -7, 1, "F-2")]
    never = (await api.get("/positions/TSLA")).json()
    assert (never["net_quantity"], never["position_version"], never["last_fill_id"]) == (0, 0, None)
    r = await api.get("/positions/NOT-A-SYMBOL")
    assert r.status_code == 400 and r.json()["field"] == "symbol"


# --- the update stream ------------------------------------------------------------------------------


async def test_updates_resume_after_a_seq_and_filter_by_symbols(api):
    await api.post("/fills", json={"fills": [fill(i, symbol=["AAPL", "MSFT", "TSLA"][i % 3]) for i in range(1, 10)]})
    r = (await api.get("/updates", params={"after": 4})).json()
    assert [u["seq"] for u in r["updates"]] == [5, 6, 7, 8, 9] and r["next_after"] == 9
    u = r["updates"][0]
    assert set(u) == {"seq", "symbol", "net_quantity", "position_version", "last_fill_id", "fill_id", "updated_at"}
    only = (await api.get("/updates", params={"after": 0, "symbols": "AAPL,TSLA"})).json()
    assert {x["symbol"] for x in only["updates"]} == {"AAPL", "TSLA"} and only["next_after"] == 9
    ahead = await api.get("/updates", params={"after": 50})
    assert ahead.status_code == 409 and ahead.json()["reason"] == "ahead-of-ledger"
    for bad in ({"after": "-"}, {"symbols": "A,,B"}, {"wait": "100"}, {"limit": 100000}):
        assert (await api.get("/updates", params=bad)).status_code == 400, bad


async def test_updates_long_poll_returns_when_a_fill_commits(api):
    async def later():
        await parked(api)
        await api.post("/fills", json={"fills": [fill(1, symbol="MSFT"), fill(2, symbol="AAPL")]})

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(later)
            r = await api.get("/updates", params={"after": 0, "wait": 3, "symbols": "AAPL"})
    assert [(u["seq"], u["symbol"]) for u in r.json()["updates"]] == [(2, "AAPL")]
    with trio.fail_after(5):
        quiet = await api.get("/updates", params={"after": 2, "wait": 0.05})
    assert quiet.json() == {"updates": [], "next_after": 2, "last_seq": 2}


async def test_per_symbol_updates_resume_from_a_version_without_gaps(api):
    await api.post("/fills", json={"fills": [fill(i, symbol=["AAPL", "MSFT"][i % 2]) for i in range(1, 11)]})
    r = (await api.get("/positions/AAPL/updates", params={"after_version": 2})).json()
    assert [u["position_version"] for u in r["updates"]] == [3, 4, 5] and r["position_version"] == 5

    async def later():
        await parked(api)
        await api.post("/fills", json=fill(11, symbol="AAPL"))

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(later)
            r = (await api.get("/positions/AAPL/updates", params={"after_version": 5, "wait": 3})).json()
    assert [u["position_version"] for u in r["updates"]] == [6]
    ahead = await api.get("/positions/AAPL/updates", params={"after_version": 9})
    assert ahead.status_code == 409 and ahead.json()["position_version"] == 6
    assert (await api.get("/positions/AAPL/updates", params={"after_version": -1})).status_code == 400


# --- reservations and exposure -------------------------------------------------------------------------


async def test_reservation_granted_then_retried_then_reduced_then_rejected(api):
    r = await api.post("/reservations", json=reservation("q1", bid_quantity=70, ask_quantity=70))
    assert r.status_code == 201 and r.json()["decision"] == "granted"
    rid = r.json()["reservation"]["reservation_id"]
    retry = await api.post("/reservations", json=reservation("q1", bid_quantity=70, ask_quantity=70))
    assert retry.status_code == 200 and retry.json()["duplicate"]
    assert retry.json()["reservation"]["reservation_id"] == rid
    reduced = await api.post("/reservations", json=reservation("q2", bid_quantity=50, ask_quantity=10))
    assert reduced.status_code == 201 and reduced.json()["decision"] == "reduced"
    assert reduced.json()["reservation"]["reserved_bid_quantity"] == 30
    rejected = await api.post("/reservations", json=reservation("q3", bid_quantity=5, ask_quantity=0))
    assert rejected.status_code == 409 and rejected.json()["decision"] == "rejected"
    assert rejected.json()["reason"] == "no-capacity"
    exposure = (await api.get("/exposure")).json()
    assert exposure["used"] == {"bid": 100, "ask": 80} and exposure["available"] == {"bid": 0, "ask": 20}
    assert exposure["limit"] == {"bid": 100, "ask": 100} and len(exposure["active"]) == 2
    got = await api.get(f"/reservations/{rid}")
    assert got.status_code == 200 and got.json()["reservation"]["state"] == "active"
    assert (await api.get("/reservations/R-nope")).status_code == 404


async def test_a_reused_quote_id_is_409_with_the_differences(api):
    await api.post("/reservations", json=reservation("q1"))
    before = await state(api)
    r = await api.post("/reservations", json=reservation("q1", ask_quantity=11))
    assert r.status_code == 409 and r.json()["reason"] == "quote-id-conflict"
    assert r.json()["differences"] == {"ask_quantity": {"recorded": 10, "received": 11}}
    assert await state(api) == before


async def test_a_replacement_frees_the_old_reservation_in_the_same_step(api):
    old = (await api.post("/reservations", json=reservation("q1", bid_quantity=100, ask_quantity=100))).json()
    rid = old["reservation"]["reservation_id"]
    new = await api.post("/reservations", json=reservation("q2", bid_quantity=100, ask_quantity=100, replaces=rid))
    assert new.status_code == 201 and new.json()["decision"] == "granted"
    assert new.json()["released"]["state"] == "released"
    assert (await api.get(f"/reservations/{rid}")).json()["reservation"]["state"] == "released"
    unknown = await api.post("/reservations", json=reservation("q3", replaces="R-nope"))
    assert unknown.status_code == 404 and unknown.json()["field"] == "replaces"


@pytest.mark.parametrize("body, field", [
    (reservation(bid_quantity=1.5), "bid_quantity"),
    (reservation(ask_quantity=False), "ask_quantity"),
    (reservation(bid_quantity=0, ask_quantity=0), "bid_quantity"),
    (reservation(ttl=None), "expires_at"),
    (reservation(expires_at=T0 + 10), "expires_at"),
    ({**reservation(ttl=None), "expires_at": T0 - 1}, "expires_at"),
    (reservation(ttl=10_000), "ttl"),
    (reservation(symbol=""), "symbol"),
    (reservation(color="red"), "color"),
    ([reservation()], "body"),
])
async def test_malformed_reservations_are_400_and_change_nothing(api, body, field):
    await api.post("/reservations", json=reservation("q0"))
    before = await state(api)
    r = await api.post("/reservations", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    assert await state(api) == before


async def test_apply_fill_reduces_once_and_conflicts_are_409(api):
    rid = (await api.post("/reservations", json=reservation())).json()["reservation"]["reservation_id"]
    r = await api.post(f"/reservations/{rid}/apply-fill", json={"fill_id": "F-1", "side": "buy", "quantity": 4})
    assert r.status_code == 200 and r.json()["reservation"]["remaining_bid_quantity"] == 6
    again = await api.post(f"/reservations/{rid}/apply-fill", json={"fill_id": "F-1", "side": "buy", "quantity": 4})
    assert again.json()["duplicate"] and again.json()["reservation"]["remaining_bid_quantity"] == 6
    before = await state(api)
    conflict = await api.post(f"/reservations/{rid}/apply-fill", json={"fill_id": "F-1", "side": "sell", "quantity": 4})
    assert conflict.status_code == 409 and set(conflict.json()["differences"]) == {"side"}
    for body, field in (({"fill_id": "F-2", "side": "buy", "quantity": 1.0}, "quantity"),
                        ({"fill_id": "F-2", "side": "up", "quantity": 1}, "side"),
                        ({"fill_id": "F-2", "side": "buy"}, "quantity"),
                        ({"fill_id": "F-2", "side": "buy", "quantity": 1, "x": 0}, "x")):
        bad = await api.post(f"/reservations/{rid}/apply-fill", json=body)
        assert bad.status_code == 400 and bad.json()["field"] == field
    assert await state(api) == before
    unknown = await api.post("/reservations/R-nope/apply-fill", json={"fill_id": "F-3", "side": "buy", "quantity": 1})
    assert unknown.status_code == 404


async def test_a_fill_from_the_exchange_naming_the_reservation_reduces_it(api):
    rid = (await api.post("/reservations", json=reservation())).json()["reservation"]["reservation_id"]
    await api.post("/fills", json=fill(1, side="sell", quantity=3, reservation_id=rid))
    got = (await api.get(f"/reservations/{rid}")).json()["reservation"]
    assert got["remaining_ask_quantity"] == 7
    assert (await api.get("/exposure")).json()["used"] == {"bid": 10, "ask": 7}


async def test_release_frees_capacity_once_and_renew_extends(api):
    rid = (await api.post("/reservations", json=reservation(ttl=5))).json()["reservation"]["reservation_id"]
    renewed = await api.post(f"/reservations/{rid}/renew", json={"ttl": 20})
    assert renewed.status_code == 200 and renewed.json()["reservation"]["expires_at"] == T0 + 20
    assert (await api.post(f"/reservations/{rid}/renew", json={"ttl": 20, "expires_at": 1})).status_code == 400
    r = await api.post(f"/reservations/{rid}/release")
    assert r.status_code == 200 and r.json()["released"] and r.json()["reservation"]["state"] == "released"
    again = await api.post(f"/reservations/{rid}/release", json={})
    assert again.status_code == 200 and not again.json()["released"]
    assert (await api.get("/exposure")).json()["used"] == {"bid": 0, "ask": 0}
    late = await api.post(f"/reservations/{rid}/renew", json={"ttl": 20})
    assert late.status_code == 409 and late.json()["reason"] == "not-active"
    assert (await api.post("/reservations/R-nope/release")).status_code == 404
    assert (await api.post(f"/reservations/{rid}/release", json={"why": 1})).status_code == 400


async def test_an_expired_reservation_frees_capacity_without_anyones_help(api):
    r = await api.post("/reservations", json=reservation(bid_quantity=100, ask_quantity=100, ttl=5))
    rid = r.json()["reservation"]["reservation_id"]
    api.service.clock.advance(6)
    assert (await api.get("/exposure")).json()["available"] == {"bid": 100, "ask": 100}
    await poll_until(lambda: rid not in api.service.store.exposure.active, 5, "the sweeper records the expiry")
    assert (await api.get(f"/reservations/{rid}")).json()["reservation"]["state"] == "expired"
    assert (await api.post("/reservations", json=reservation("q2", bid_quantity=100, ask_quantity=100))).status_code == 201


async def test_ledger_status_counts_and_common_endpoints_are_there(api):
    await api.post("/fills", json={"fills": [fill(1), fill(2)]})
    await api.post("/fills", json=fill(1))
    status = (await api.get("/ledger")).json()
    assert status["last_seq"] == 2 and status["store"]["fills_applied"] == 2 and status["store"]["fills_duplicate"] == 1
    assert status["running"] and status["failed"] is None
    assert (await api.get("/health")).status_code == 200
    missing = await api.get("/nope")
    assert missing.status_code == 404 and "error" in missing.json()


# --- end to end: the exchange's outbox delivers to a ledger served over real HTTP ---------------------


async def test_the_exchanges_outbox_delivers_every_fill_exactly_once_to_the_ledger(tmp_path, clock):

    from peer.exchange.outbox import deliver_fills
    from peer.exchange.service import ExchangeService
    from peer.http.endpoints import serve_http

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ledger = LedgerService(tmp_path / "ledger", clock=clock)
            await nursery.start(ledger.run)
            app = create_app(PeerHandle(role="ledger", profile="local", node=FakeNode("ledger")), ledger_routes())
            app.state.ledger = ledger
            stop = trio.Event()
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), stop)
            exchange = ExchangeService(tmp_path / "exchange", symbols=["AAPL", "MSFT"], clock=clock,
                                       lease_duration=60.0)
            await nursery.start(exchange.run)
            async with httpx.AsyncClient(base_url=url) as client:
                rid = (await client.post("/reservations", json=reservation(bid_quantity=20, ask_quantity=20))).json()[
                    "reservation"]["reservation_id"]
                await nursery.start(deliver_fills, exchange, lambda: url)
                assert (await exchange.command("claim", {"symbol": "AAPL", "holder": "mm-1", "epoch": 1}))["accepted"]
                q = await exchange.command("put_quote", {
                    "symbol": "AAPL", "holder": "mm-1", "epoch": 1, "seq": 1, "quote_id": "q1", "bid_price": 99,
                    "bid_quantity": 20, "ask_price": 101, "ask_quantity": 20, "reservation_id": rid})
                assert q["accepted"]
                for i in range(12):
                    side = "sell" if i % 3 else "buy"
                    await exchange.command("submit_order", {"order_id": f"x{i}", "symbol": "AAPL", "side": side,
                                                            "type": "market", "quantity": 1 + i % 2})
                fills = exchange.core.fills
                assert len(fills) == 12
                await poll_until(lambda: exchange.ledger_acked >= fills[-1].seq, 10, "every fill acknowledged")
                signed = sum(f.signed_quantity for f in fills)
                position = (await client.get("/positions/AAPL")).json()
                assert position["net_quantity"] == signed and position["position_version"] == 12
                assert position["last_fill_id"] == fills[-1].fill_id
                got = (await client.get(f"/reservations/{rid}")).json()["reservation"]
                assert got["filled_bid_quantity"] == sum(f.quantity for f in fills if f.side == "buy")
                assert got["filled_ask_quantity"] == sum(f.quantity for f in fills if f.side == "sell")
                # Everything delivered again (a restarted exchange that lost its ack): nothing moves.
                again = await client.post("/fills", json={"fills": [f.to_json() for f in fills]})
                assert {r["status"] for r in again.json()["results"]} == {"duplicate"}
                assert (await client.get("/positions/AAPL")).json()["position_version"] == 12
                stream = (await client.get("/positions/AAPL/updates", params={"after_version": 0})).json()["updates"]
                assert [u["fill_id"] for u in stream] == [f.fill_id for f in fills]
            stop.set()
            nursery.cancel_scope.cancel()


# Bad values in every field of every endpoint, bad bodies and bad queries: the one table in
# tests/peer/http/test_inputs.py, sent to this API and the exchange's.


async def test_fills_and_reservations_at_the_bounds_over_http(api):
    at = fill(1, price=MAX_PRICE, quantity=MAX_QUANTITY, fill_id="F" * 128)
    r = await api.post("/fills", json=at)
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "applied", r.text
    before = await state(api)
    for field, value in (("price", MAX_PRICE + 1), ("price", 9007199254740992), ("quantity", MAX_QUANTITY + 1),
                         ("fill_id", "F" * 129), ("created_at", 10**200)):
        r = await api.post("/fills", json=fill(2, **{field: value}))
        assert r.status_code == 400 and r.json()["field"] == field, (field, r.text)
    for field in ("bid_quantity", "ask_quantity"):
        r = await api.post("/reservations", json=reservation("qb", **{field: MAX_QUANTITY + 1}))
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert await state(api) == before
    r = await api.post("/reservations", json=reservation("qb", bid_quantity=MAX_QUANTITY))
    assert r.status_code in (201, 409), r.text  # reduced or refused by the limit: well-formed either way
