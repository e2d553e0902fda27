"""Reading the exchange and the ledger (`viz/sources.py`): found through the membership view,
every failure recorded as a reason on screen (never raised), the last good data kept."""

from __future__ import annotations

import httpx
import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer.exchange.api import exchange_routes
from peer.exchange.service import ExchangeService
from peer.http.endpoints import PeerHandle, create_app
from peer.ledger.api import ledger_routes
from peer.ledger.service import LedgerService
from tests.peer.fakes import FakeNode
from viz.sources import POLL_DEADLINE, locate, poll_exchange, poll_ledger, poll_sources_forever
from viz.trading import TradingState

from .fake_cluster import EXCHANGE_URL, LEDGER_URL, T0, Router, cluster_rows, fake_cluster, member


def client_for(router: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=router, timeout=1.0)


def tick(t: float = T0):
    return lambda: t


def test_locate_prefers_an_alive_member_with_an_http_url():
    rows = [
        member("ex-old", "exchange", "http://old:1", "dead"),
        member("ex-b", "exchange", "http://b:1"),
        member("ex-a", "exchange", None),  # no HTTP URL: cannot be read
        member("mm-1", "mm", "http://mm:1"),
    ]
    assert locate(rows, "exchange")["name"] == "ex-b"
    assert locate(rows[:1], "exchange")["name"] == "ex-old"  # a dead one is still tried
    assert locate(rows, "ledger") is None


async def test_the_exchange_is_read_from_the_url_the_membership_view_gives():
    router, exchange, _, rows = fake_cluster()
    exchange.hold("MSFT", "mm-2", 7)
    exchange.quote("MSFT", "mm-2", 7)
    exchange.add_fills(3)
    state = TradingState()
    async with client_for(router) as client:
        assert await poll_exchange(client, rows, state, clock=tick())
    snap = state.exchange_data
    assert state.exchange.url == EXCHANGE_URL and state.exchange.name == "exchange"
    assert state.exchange.error is None and state.exchange.last_ok == T0
    assert {a["symbol"]: (a["holder"], a["epoch"]) for a in snap.authority} == {
        "AAPL": (None, 0),
        "MSFT": ("mm-2", 7),
    }
    (q,) = snap.quotes
    assert (q["bid_remaining"], q["bid_quantity"], q["bid_price"]) == (7, 10, 9990)
    assert snap.prices == {"AAPL": 18950, "MSFT": 10000}
    assert [f["seq"] for f in snap.fills] == [1, 2, 3] and snap.fills_total == 3
    assert snap.exchange_now == T0


async def test_recent_fills_are_the_last_ten_however_many_arrived_between_polls():
    router, exchange, _, rows = fake_cluster()
    state = TradingState()
    async with client_for(router) as client:
        exchange.add_fills(35)
        await poll_exchange(client, rows, state)
        assert [f["seq"] for f in state.exchange_data.fills] == list(range(26, 36))
        exchange.add_fills(50)
        await poll_exchange(client, rows, state)
        assert [f["seq"] for f in state.exchange_data.fills] == list(range(76, 86))
        assert exchange.fill_requests[-1] == (25, 200)  # one ask was enough
        exchange.add_fills(500)  # more than one page: a second ask for the tail
        await poll_exchange(client, rows, state)
        assert [f["seq"] for f in state.exchange_data.fills] == list(range(576, 586))
        assert exchange.fill_requests[-2:] == [(75, 200), (575, 10)]
        exchange.fills = exchange.fills[:3]  # a fresh exchange: fewer fills than we knew of
        await poll_exchange(client, rows, state)
        assert [f["seq"] for f in state.exchange_data.fills] == [1, 2, 3]
        assert state.exchange_data.fills_total == 3


async def test_the_ledger_is_read_with_either_positions_envelope():
    for bare_list in (False, True):
        router, _, ledger, rows = fake_cluster(bare_list=bare_list)
        state = TradingState()
        async with client_for(router) as client:
            assert await poll_ledger(client, rows, state, clock=tick())
        snap = state.ledger_data
        assert state.ledger.url == LEDGER_URL and state.ledger.error is None
        assert [
            (p["symbol"], p["net_quantity"], p["position_version"]) for p in snap.positions
        ] == [("AAPL", 0, 0), ("MSFT", -6, 4)]
        assert snap.exposure["limit"] == {"bid": 1000, "ask": 1000}
        assert snap.exposure["used"] == {"bid": 800, "ask": 120}


async def test_an_authority_change_between_two_polls_is_logged_and_a_repeat_is_not():
    router, exchange, _, rows = fake_cluster()
    exchange.hold("MSFT", "mm-1", 6)
    state = TradingState()
    async with client_for(router) as client:
        await poll_exchange(client, rows, state, clock=tick(T0))
        await poll_exchange(client, rows, state, clock=tick(T0 + 0.25))
        assert list(state.changes) == []
        exchange.hold("MSFT", "mm-2", 7)  # mm-1 died; mm-2 took MSFT over
        await poll_exchange(client, rows, state, clock=tick(T0 + 0.5))
        await poll_exchange(client, rows, state, clock=tick(T0 + 0.75))
    assert [c.line().split(" ", 1)[1] for c in state.changes] == [
        "MSFT mm-2 epoch 7 (was mm-1 epoch 6)"
    ]


async def test_an_exchange_missing_from_the_view_is_shown_as_such_and_the_ledger_still_read():
    router, _, _, rows = fake_cluster()
    rows = [r for r in rows if r["role"] != "exchange"]
    state = TradingState()
    async with client_for(router) as client:
        assert not await poll_exchange(client, rows, state)
        assert await poll_ledger(client, rows, state)
        assert not await poll_exchange(client, None, state)
    assert state.ledger_data is not None and state.ledger.error is None
    assert state.exchange_data is None
    assert state.exchange.error == "waiting for the membership view"
    assert state.exchange.polls == 2


async def test_an_exchange_that_refuses_connections_keeps_its_last_data_as_stale():
    router, exchange, _, rows = fake_cluster()
    exchange.hold("MSFT", "mm-1", 6)
    state = TradingState()
    async with client_for(router) as client:
        assert await poll_exchange(client, rows, state, clock=tick(T0))
        kept = state.exchange_data
        router.down.add(EXCHANGE_URL)
        assert not await poll_exchange(client, rows, state, clock=tick(T0 + 1))
        assert await poll_ledger(client, rows, state)
    assert state.exchange.error == "unreachable: connection refused"
    assert state.exchange_data is kept and state.exchange.stale_for(T0 + 4) == 4.0
    assert state.ledger.error is None


async def test_a_source_answering_errors_or_strange_json_is_a_bad_answer_not_a_crash():
    router, _, _, rows = fake_cluster()
    router.failing.add(LEDGER_URL)

    async def odd(request):
        return JSONResponse({"authority": "not a list"})

    router.apps[EXCHANGE_URL] = httpx.ASGITransport(
        app=Starlette(routes=[Route("/authority", odd)])
    )
    state = TradingState()
    async with client_for(router) as client:
        assert not await poll_ledger(client, rows, state)
        assert not await poll_exchange(client, rows, state)
    assert state.ledger.error == "bad answer: HTTP 500 from /positions"
    assert state.exchange.error == "bad answer: no 'authority' list of objects from /authority"


async def test_a_stalled_exchange_is_cut_off_and_never_delays_the_ledger(autojump_clock):
    router, _, _, rows = fake_cluster()
    router.stalled.add(EXCHANGE_URL)  # accepts, never answers: a SIGSTOPped peer
    state = TradingState()
    with trio.move_on_after(10 * POLL_DEADLINE):
        await poll_sources_forever(lambda: rows, state, interval=0.25, transport=router)
    assert state.exchange.error.startswith("unreachable: no complete answer within 2s")
    assert state.exchange.polls >= 5
    assert state.ledger.error is None and state.ledger.polls >= 50


async def test_the_real_exchange_and_ledger_endpoints_are_read(tmp_path):
    """The envelopes the dashboard parses are the ones the real services answer."""
    exchange = ExchangeService(tmp_path / "exchange", symbols=["AAPL", "MSFT"], lease_duration=5.0)
    ledger = LedgerService(tmp_path / "ledger", sweep_interval=0.01)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(exchange.run)
            await nursery.start(ledger.run)
            ex_app = create_app(
                PeerHandle(role="exchange", profile="local", node=FakeNode("exchange")),
                exchange_routes(),
            )
            ex_app.state.exchange = exchange
            ld_app = create_app(
                PeerHandle(role="ledger", profile="local", node=FakeNode("ledger")), ledger_routes()
            )
            ld_app.state.ledger = ledger
            router = Router({EXCHANGE_URL: ex_app, LEDGER_URL: ld_app})
            rows = cluster_rows()
            state = TradingState()
            async with client_for(router) as client:
                (
                    await client.post(
                        f"{EXCHANGE_URL}/authority/MSFT/claim", json={"holder": "mm-1", "epoch": 3}
                    )
                ).raise_for_status()
                (
                    await client.put(
                        f"{EXCHANGE_URL}/quotes/MSFT",
                        json={
                            "holder": "mm-1",
                            "epoch": 3,
                            "seq": 1,
                            "quote_id": "q1",
                            "bid_price": 9990,
                            "bid_quantity": 5,
                            "ask_price": 10010,
                            "ask_quantity": 5,
                            "reservation_id": None,
                        },
                    )
                ).raise_for_status()
                order = await client.post(
                    f"{EXCHANGE_URL}/orders",
                    json={
                        "order_id": "o1",
                        "symbol": "MSFT",
                        "side": "buy",
                        "type": "limit",
                        "quantity": 2,
                        "limit_price": 10010,
                    },
                )
                order.raise_for_status()
                (fill,) = order.json()["fills"]
                (await client.post(f"{LEDGER_URL}/fills", json=fill)).raise_for_status()

                assert await poll_exchange(client, rows, state), state.exchange.error
                assert await poll_ledger(client, rows, state), state.ledger.error
            nursery.cancel_scope.cancel()
    snap = state.exchange_data
    msft = next(a for a in snap.authority if a["symbol"] == "MSFT")
    assert (msft["holder"], msft["epoch"], msft["state"]) == ("mm-1", 3, "held")
    (q,) = snap.quotes
    assert (q["ask_remaining"], q["ask_quantity"], q["ask_price"]) == (3, 5, 10010)
    assert all(type(p) is int for p in snap.prices.values())
    assert [(f["seq"], f["side"], f["quantity"]) for f in snap.fills] == [(1, "sell", 2)]
    (position,) = [p for p in state.ledger_data.positions if p["symbol"] == "MSFT"]
    assert (position["net_quantity"], position["position_version"]) == (-2, 1)
    assert position["last_fill_id"] == fill["fill_id"]
    assert set(state.ledger_data.exposure["limit"]) == {"bid", "ask"}


async def test_a_second_member_claiming_the_exchange_is_a_conflict_and_the_first_stays_read():
    router, exchange, _, rows = fake_cluster()
    state = TradingState()
    async with client_for(router) as client:
        assert await poll_exchange(client, rows, state, clock=tick())
        impostor = member("aaa-exchange", "exchange", "http://impostor:1")
        assert await poll_exchange(client, [impostor, *rows], state, clock=tick())
    assert state.exchange.name == "exchange" and state.exchange.url == EXCHANGE_URL
    assert state.exchange.conflict == ("aaa-exchange",)
