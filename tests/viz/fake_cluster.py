"""A fake cluster for the dashboard's tests: small starlette apps that answer like the real
endpoints (built from the real `to_json` of book/ and ledger/ objects), behind one httpx
transport that routes by host and can make any peer refuse connections, stall or fail.
"""

from __future__ import annotations

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from book.authority import Authority, AuthorityState
from book.fills import Fill, Quote
from ledger.exposure import Usage
from ledger.store import Position

T0 = 1_700_000_000.0
SYMBOLS = ["AAPL", "MSFT"]
EXCHANGE_URL = "http://exchange.test:8001"
LEDGER_URL = "http://ledger.test:8002"
PEER_URL = "http://mm-1.test:8003"


def member(name: str, role: str, http: str | None, state: str = "alive") -> dict:
    return {
        "name": name,
        "role": role,
        "addr": "127.0.0.1:7000",
        "state": state,
        "incarnation": 1,
        "http": http,
        "changed_at": None,
        "meta": {"role": role},
    }


def cluster_rows(exchange_state: str = "alive") -> list[dict]:
    return [
        member("exchange", "exchange", EXCHANGE_URL, exchange_state),
        member("ledger", "ledger", LEDGER_URL),
        member("mm-1", "mm", PEER_URL),
        member("mm-2", "mm", "http://mm-2.test:8004", "dead"),
    ]


def make_fill(
    seq: int, symbol: str = "MSFT", side: str = "buy", holder: str = "mm-1", epoch: int = 6
) -> Fill:
    return Fill(
        f"ex-{seq:010d}",
        f"o{seq}",
        symbol,
        side,
        3,
        10010 if side == "sell" else 9990,
        f"q-{symbol}",
        epoch,
        holder,
        "r1",
        T0 + seq / 100,
        seq,
    )


class FakeExchange:
    """`GET /authority`, `/quotes`, `/prices`, `/fills`: the exchange's read endpoints."""

    def __init__(self) -> None:
        self.now = T0
        self.authority = {s: Authority(s) for s in SYMBOLS}
        self.quotes: dict[str, Quote] = {}
        self.remaining: dict[str, tuple[int, int]] = {}
        self.prices = {"AAPL": 18950, "MSFT": 10000}
        self.fills: list[Fill] = []
        self.fill_requests: list[tuple[int, int]] = []

    def hold(self, symbol: str, holder: str, epoch: int, lease: float = 2.0) -> None:
        a = self.authority[symbol]
        a.holder, a.epoch, a.state, a.lease_expires_at = (
            holder,
            epoch,
            AuthorityState.HELD,
            self.now + lease,
        )

    def quote(
        self, symbol: str, holder: str, epoch: int, *, left=(7, 10), ttl: float = 30.0
    ) -> None:
        self.quotes[symbol] = Quote(
            f"q-{symbol}",
            symbol,
            holder,
            epoch,
            1,
            9990,
            10,
            10010,
            10,
            "r1",
            self.now,
            self.now + ttl,
        )
        self.remaining[symbol] = left

    def add_fills(self, n: int) -> None:
        for _ in range(n):
            self.fills.append(make_fill(len(self.fills) + 1))

    async def authority_route(self, request: Request) -> JSONResponse:
        return JSONResponse({"authority": [a.to_json(self.now) for a in self.authority.values()]})

    async def quotes_route(self, request: Request) -> JSONResponse:
        out = []
        for symbol, q in self.quotes.items():
            bid_left, ask_left = self.remaining[symbol]  # a Quote without resting legs says 0
            out.append(
                {**q.to_json(self.now), "bid_remaining": bid_left, "ask_remaining": ask_left}
            )
        return JSONResponse({"quotes": out})

    async def prices_route(self, request: Request) -> JSONResponse:
        return JSONResponse({"prices": self.prices, "at": self.now})

    async def fills_route(self, request: Request) -> JSONResponse:
        after = int(request.query_params.get("after", 0))
        limit = int(request.query_params.get("limit", 1000))
        self.fill_requests.append((after, limit))
        page = self.fills[after : after + limit]  # as book.exchange.ExchangeCore.fills_after
        return JSONResponse(
            {
                "fills": [f.to_json() for f in page],
                "next_after": page[-1].seq if page else after,
                "total": len(self.fills),
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/authority", self.authority_route),
                Route("/quotes", self.quotes_route),
                Route("/prices", self.prices_route),
                Route("/fills", self.fills_route),
            ]
        )


class FakeLedger:
    """`GET /positions` and `GET /exposure`, as peer/ledger/api.py answers them."""

    def __init__(self, *, bare_list: bool = False) -> None:
        self.bare_list = bare_list
        self.positions = {
            "AAPL": Position("AAPL", 0, 0, None, None),
            "MSFT": Position("MSFT", -6, 4, "ex-0000000004", T0),
        }
        self.usage = Usage(limit_bid=1000, limit_ask=1000, used_bid=800, used_ask=120, active=())

    async def positions_route(self, request: Request) -> JSONResponse:
        rows = [p.to_json() for _, p in sorted(self.positions.items())]
        return JSONResponse(rows if self.bare_list else {"positions": rows, "last_seq": 4})

    async def exposure_route(self, request: Request) -> JSONResponse:
        return JSONResponse({**self.usage.to_json(), "at": T0})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/positions", self.positions_route),
                Route("/exposure", self.exposure_route),
            ]
        )


def members_app(rows: list[dict], name: str = "mm-1") -> Starlette:
    """A peer's `/status` and `/members`, for `murmur top`'s membership poller."""

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"name": name, "role": "mm", "health": 0})

    async def members(request: Request) -> JSONResponse:
        return JSONResponse(rows)

    return Starlette(routes=[Route("/status", status), Route("/members", members)])


class Router(httpx.AsyncBaseTransport):
    """Sends each request to the app registered for its base URL. A base URL that is `down` (or
    unknown) refuses the connection; one that is `stalled` accepts it and never answers (a
    SIGSTOPped peer); one that is `failing` answers 500."""

    def __init__(self, apps: dict[str, Starlette]) -> None:
        self.apps = {base: httpx.ASGITransport(app=app) for base, app in apps.items()}
        self.down: set[str] = set()
        self.stalled: set[str] = set()
        self.failing: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base in self.down or base not in self.apps:
            raise httpx.ConnectError("connection refused", request=request)
        if base in self.stalled:
            await trio.sleep_forever()
        if base in self.failing:
            return httpx.Response(500, json={"error": "boom"}, request=request)
        return await self.apps[base].handle_async_request(request)


def fake_cluster(*, bare_list: bool = False) -> tuple[Router, FakeExchange, FakeLedger, list[dict]]:
    exchange, ledger, rows = FakeExchange(), FakeLedger(bare_list=bare_list), cluster_rows()
    router = Router(
        {
            EXCHANGE_URL: exchange.app(),
            LEDGER_URL: ledger.app(),
            PEER_URL: members_app(rows),
        }
    )
    return router, exchange, ledger, rows
