"""The market-maker shell against a real exchange and ledger in this process, over loopback HTTP.

One trio run holds an `ExchangeService` (its tape in tmp_path), a `LedgerService` (its database in
tmp_path), the exchange's fill outbox, both HTTP APIs on real sockets, and one or two
`MarketMakerService`s whose membership view is a list the test controls. It proves the shell's
wiring: quotes only after a reservation, replace after a fill from the committed position that
reflects it, hand-over when the view changes, nothing quoted once authority is gone.
"""

from __future__ import annotations

import io
import json
from functools import partial

import httpx
import pytest
import trio

from gossip.types import Member, MemberState
from peer.exchange.api import exchange_direct_routes, exchange_routes
from peer.exchange.outbox import deliver_fills
from peer.exchange.service import ExchangeService
from peer.http.client import HttpClient, HttpError
from peer.http.endpoints import PeerHandle, create_app, serve_http
from peer.ledger.api import ledger_routes
from peer.ledger.service import LedgerService
from peer.logs import JsonLog
from peer.market_maker.authority import AuthorityConfig
from peer.market_maker.quoting import PlannerConfig
from peer.market_maker.rendezvous import assignment
from peer.market_maker.service import MarketMakerService
from peer.tools.processes import poll_until
from tests.peer.fakes import FakeNode

SYMBOLS = ["AAPL", "MSFT", "NVDA"]


class View:
    """The membership view every service reads: members by name."""

    def __init__(self) -> None:
        self.rows: dict[str, Member] = {}
        self.listeners: list = []

    def add(self, name: str, role: str, http: str | None = None, state=MemberState.ALIVE) -> None:
        self.rows[name] = Member(name, ("127.0.0.1", 1), 1, state, {"role": role, "http": http})
        for listener in self.listeners:
            listener()

    def members(self) -> list[Member]:
        return list(self.rows.values())


async def serve(nursery, role: str, routes, state_name: str, service, direct=None) -> str:
    app = create_app(PeerHandle(role=role, profile="local", node=FakeNode(role)), routes)
    setattr(app.state, state_name, service)
    return await nursery.start(partial(serve_http, app, ("127.0.0.1", 0), trio.Event(), direct=direct))


async def start_market(nursery, tmp_path, view: View) -> tuple[ExchangeService, LedgerService, str, str]:
    exchange = ExchangeService(tmp_path / "exchange", symbols=SYMBOLS, lease_duration=2.0,
                               is_alive=lambda name: view.rows.get(name, None) is not None
                               and view.rows[name].state in (MemberState.ALIVE, MemberState.SUSPECT))
    await nursery.start(exchange.run)
    ledger = LedgerService(tmp_path / "ledger")
    await nursery.start(ledger.run)
    ex_url = await serve(nursery, "exchange", exchange_routes(), "exchange", exchange, exchange_direct_routes(exchange))
    lg_url = await serve(nursery, "ledger", ledger_routes(), "ledger", ledger)
    view.add("exchange", "exchange", ex_url)
    view.add("ledger", "ledger", lg_url)
    await nursery.start(deliver_fills, exchange, lambda: lg_url)
    return exchange, ledger, ex_url, lg_url


async def start_mm(nursery, name: str, view: View) -> MarketMakerService:
    view.add(name, "mm", None)
    mm = MarketMakerService(name, members=view.members, planner_config=PlannerConfig(refresh_interval=1.0),
                            authority_config=AuthorityConfig(lease_duration=2.0),
                            log=JsonLog(name, stream=io.StringIO()))
    view.listeners.append(mm.view_changed)
    await nursery.start(mm.run)
    return mm


async def test_market_maker_quotes_every_symbol_with_a_reservation_and_replaces_after_a_fill(tmp_path):
    view = View()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as c:
        exchange, ledger, ex, lg = await start_market(nursery, tmp_path, view)
        mm = await start_mm(nursery, "mm-1", view)

        async def all_quoted():
            quotes = (await c.get(f"{ex}/quotes")).json()["quotes"]
            return {q["symbol"]: q for q in quotes} if len(quotes) == len(SYMBOLS) else None

        quotes = await poll_until(all_quoted, 5, "every symbol quoted")
        for q in quotes.values():
            assert q["holder"] == "mm-1"
            r = (await c.get(f"{lg}/reservations/{q['reservation_id']}")).json()["reservation"]
            assert r["quote_id"] == q["quote_id"] and r["state"] == "active"
            assert r["reserved_bid_quantity"] >= q["bid_quantity"] and r["reserved_ask_quantity"] >= q["ask_quantity"]

        # An order that lifts the whole MSFT ask: a fill, a committed position, then a replacement.
        old = quotes["MSFT"]
        order = {"order_id": "hit-1", "symbol": "MSFT", "side": "buy", "type": "limit",
                 "quantity": old["ask_quantity"], "limit_price": old["ask_price"]}
        assert (await c.post(f"{ex}/orders", json=order)).json()["fills"]

        async def replaced():
            q = (await c.get(f"{ex}/quotes/MSFT")).json()["quote"]
            return q if q and q["quote_id"] != old["quote_id"] else None

        new = await poll_until(replaced, 5, "the lifted MSFT quote replaced")
        position = (await c.get(f"{lg}/positions/MSFT")).json()
        assert position["net_quantity"] == -old["ask_quantity"] and position["position_version"] == 1
        # Short after the fill: the skew raises both prices (never lower than before).
        assert new["ask_price"] >= old["ask_price"] and new["bid_price"] >= old["bid_price"]
        old_reservation = (await c.get(f"{lg}/reservations/{old['reservation_id']}")).json()["reservation"]
        assert old_reservation["filled_ask_quantity"] == old["ask_quantity"]
        assert mm.stats.fills == 1 and mm.stats.position_updates >= 1
        # Its exposure was reserved as soon as the fill was seen, for the replacement's quote_id.
        lines = [json.loads(line) for line in mm.log.stream.getvalue().splitlines()]
        (used,) = [x for x in lines if x["event"] == "mm_reservation" and x["quote_id"] == new["quote_id"]]
        assert used["early"] is True and used["requested"] == [5, 5]
        assert new["reservation_id"] == used["reservation_id"]
        nursery.cancel_scope.cancel()


async def test_a_joining_market_maker_takes_only_its_symbols_by_hand_over(tmp_path):
    view = View()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as c:
        _, _, ex, _ = await start_market(nursery, tmp_path, view)
        await start_mm(nursery, "mm-1", view)

        async def held_by(owners):
            rows = {a["symbol"]: a for a in (await c.get(f"{ex}/authority")).json()["authority"]}
            quotes = {q["symbol"]: q for q in (await c.get(f"{ex}/quotes")).json()["quotes"]}
            ok = all(rows[s]["holder"] == o and rows[s]["state"] == "held" and quotes.get(s, {}).get("holder") == o
                     for s, o in owners.items())
            return rows if ok else None

        before = await poll_until(lambda: held_by({s: "mm-1" for s in SYMBOLS}), 5, "mm-1 holding every symbol")
        await start_mm(nursery, "mm-2", view)
        owners = assignment(SYMBOLS, ["mm-1", "mm-2"])
        assert "mm-2" in owners.values(), "pick symbols so that mm-2 wins one"
        after = await poll_until(lambda: held_by(owners), 5, f"held and quoted by {owners}")
        for s, o in owners.items():
            if o == "mm-1":
                assert after[s]["epoch"] == before[s]["epoch"], f"{s} moved though mm-1 still owns it"
            else:
                assert after[s]["epoch"] > before[s]["epoch"]
        nursery.cancel_scope.cancel()


async def test_a_released_early_reservation_never_covers_a_later_quote(tmp_path):
    """The sequence behind a quote once seen live on a released reservation: an early
    reservation is asked for the next quote_id, then dropped and released ("not-used"); a fill
    then asks again for that same quote_id. The ledger used to answer the retry with the released
    reservation and its old "granted", and the replacement went live on it. Now the quote_id is
    spent when its early reservation is dropped, and the ledger refuses a retry of an ended one."""
    view = View()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as c:
        exchange, ledger, ex, lg = await start_market(nursery, tmp_path, view)
        mm = await start_mm(nursery, "mm-1", view)

        async def msft_quote():
            return (await c.get(f"{ex}/quotes/MSFT")).json()["quote"]

        old = await poll_until(msft_quote, 5, "a MSFT quote")
        planner = mm.planners["MSFT"]
        spent = planner.next_quote_id()
        mm._reserve_early("MSFT")
        early = mm._early["MSFT"]
        assert early[0] == spent
        await early[1].wait()
        rid = json.loads(early[2][0].body)["reservation"]["reservation_id"]
        mm._drop_early("MSFT", "not-used")

        async def released():
            r = (await c.get(f"{lg}/reservations/{rid}")).json()["reservation"]
            return r["state"] == "released"

        await poll_until(released, 5, "the early reservation released")

        # A fill of the live quote: the replacement must carry a reservation the ledger holds.
        order = {"order_id": "hit-1", "symbol": "MSFT", "side": "buy", "type": "limit",
                 "quantity": old["ask_quantity"], "limit_price": old["ask_price"]}
        assert (await c.post(f"{ex}/orders", json=order)).json()["fills"]

        async def replaced():
            q = await msft_quote()
            return q if q and q["quote_id"] != old["quote_id"] else None

        new = await poll_until(replaced, 5, "the lifted MSFT quote replaced")
        assert new["quote_id"] != spent
        r = (await c.get(f"{lg}/reservations/{new['reservation_id']}")).json()["reservation"]
        assert r["state"] == "active" and r["quote_id"] == new["quote_id"]
        lines = [json.loads(line) for line in mm.log.stream.getvalue().splitlines()]
        assert not [x for x in lines if x["event"] == "mm_quote_active" and x["quote_id"] == spent]
        nursery.cancel_scope.cancel()


async def test_a_ledger_that_answers_garbage_costs_requests_never_the_market_maker(tmp_path):
    """Found on real processes: an impostor in the ledger's place answered `{}`, and the market
    makers ended on KeyError: 'updates'. Every answer is read by mm_answers now."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    seen: list[str] = []

    async def garbage(request):
        seen.append(f"{request.method} {request.url.path}")
        bodies = {"/positions": b'{"positions": [], "last_seq": 0}',
                  "/updates": b"{}", "/reservations": b'{"decision": "granted", "reservation": []}'}
        return Response(bodies.get(request.url.path, b"[[[["), media_type="application/json")

    view = View()
    async with trio.open_nursery() as nursery:
        exchange = ExchangeService(tmp_path / "exchange", symbols=SYMBOLS, lease_duration=2.0,
                                   is_alive=lambda name: name in view.rows)
        await nursery.start(exchange.run)
        ex_url = await serve(nursery, "exchange", exchange_routes(), "exchange", exchange,
                             exchange_direct_routes(exchange))
        app = Starlette(routes=[Route("/{path:path}", garbage, methods=["GET", "POST", "PUT", "DELETE"])])
        bad_url = await nursery.start(partial(serve_http, app, ("127.0.0.1", 0), trio.Event()))
        view.add("exchange", "exchange", ex_url)
        view.add("ledger", "ledger", bad_url)
        view.add("mm-1", "mm", None)
        mm = MarketMakerService("mm-1", members=view.members, log=JsonLog("mm-1", stream=io.StringIO()),
                                authority_config=AuthorityConfig(lease_duration=2.0))
        nursery.start_soon(mm.run)
        await poll_until(lambda: {"GET /updates", "POST /reservations"} <= set(seen) and mm.stats.malformed_answers >= 5,
                         10, "the market maker asked the impostor and counted five malformed answers")
        assert not exchange.core.active_quotes, "nothing is quoted without a reservation it could read"
        events = [json.loads(line)["event"] for line in mm.log.stream.getvalue().splitlines()]
        assert "mm_answer_malformed" in events and "mm_loop_failed" not in events
        nursery.cancel_scope.cancel()


async def test_the_client_of_a_role_that_moved_is_closed_and_a_new_one_made():
    mm = MarketMakerService("mm-1", members=lambda: [])
    first = await mm._client("ledger", "http://127.0.0.1:1")
    assert await mm._client("ledger", "http://127.0.0.1:1/") is first  # same place, same client
    exchange = await mm._client("exchange", "http://127.0.0.1:3")
    moved = await mm._client("ledger", "http://127.0.0.1:2")
    assert moved is not first and await mm._client("exchange", "http://127.0.0.1:3") is exchange
    with pytest.raises(HttpError, match="closed"):
        await first.get("/health")  # closed when the ledger moved, not left open until exit


async def test_a_client_factory_makes_the_clients_instead_and_the_default_keeps_links_and_sender():
    """`client_factory(role, url)`: how a simulation's market maker dials its simulated network."""
    made = []

    def factory(role: str, url: str) -> HttpClient:
        made.append((role, url))
        return HttpClient(url, timeout=0.5)

    mm = MarketMakerService("mm-1", members=lambda: [], client_factory=factory)
    ledger = await mm._client("ledger", "http://127.0.0.1:1")
    assert await mm._client("ledger", "http://127.0.0.1:1") is ledger
    await mm._client("exchange", "http://127.0.0.1:3")
    await mm._client("ledger", "http://127.0.0.1:2")
    assert made == [("ledger", "http://127.0.0.1:1"), ("exchange", "http://127.0.0.1:3"), ("ledger", "http://127.0.0.1:2")]
    links = object()
    default = await MarketMakerService("mm-2", members=lambda: [], links=links, request_timeout=0.7)._client(
        "exchange", "http://127.0.0.1:3")
    assert (default.links, default.timeout, default._slots.value) == (links, 0.7, 16)
    assert default._sender_header == b"x-murmur-peer: mm-2\r\n"


async def test_reservations_of_quotes_lost_with_the_lease_are_released_once_a_newer_claim_is_granted(tmp_path):
    """A holder cut from the exchange longer than its lease loses every symbol; the quotes it had
    are withdrawn at the exchange, but it cannot know when, so it keeps their reservations. Its own
    claim at a newer epoch, once granted, proves them withdrawn: the reservations go back to the
    ledger then, not 31 s later at their TTL. (Found by the flapping-link scenario: one leaked
    reservation a symbol a cut, until the ledger had no capacity left for any quote.)"""
    from peer.faults.links import LinkFilter

    view = View()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as c:
        exchange, ledger, ex, lg = await start_market(nursery, tmp_path, view)
        links = LinkFilter()
        view.add("mm-1", "mm", None)
        mm = MarketMakerService("mm-1", members=view.members, planner_config=PlannerConfig(refresh_interval=1.0),
                                authority_config=AuthorityConfig(lease_duration=2.0), links=links,
                                log=JsonLog("mm-1", stream=io.StringIO()))
        view.listeners.append(mm.view_changed)
        await nursery.start(mm.run)

        async def quoted_above(epochs: dict[str, int]):
            quotes = {q["symbol"]: q for q in (await c.get(f"{ex}/quotes")).json()["quotes"]}
            ok = set(quotes) == set(SYMBOLS) and all(q["epoch"] > epochs.get(s, 0) for s, q in quotes.items())
            return quotes if ok else None

        before = await poll_until(lambda: quoted_above({}), 5, "every symbol quoted")
        links.set({"id": "cut", "peers": [{"name": "exchange", "http": ex}], "cut": True})
        await trio.sleep(3.0)  # past the 2 s lease: every symbol is lost at the exchange
        links.clear()
        await poll_until(lambda: quoted_above({s: q["epoch"] for s, q in before.items()}), 10,
                         "every symbol quoted again at a newer epoch")

        async def old_reservations_released():
            states = [(await c.get(f"{lg}/reservations/{q['reservation_id']}")).json()["reservation"]["state"]
                      for q in before.values()]
            return states if all(st == "released" for st in states) else None

        await poll_until(old_reservations_released, 3, "the lost quotes' reservations released")
        nursery.cancel_scope.cancel()
