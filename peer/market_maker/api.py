"""A market maker's HTTP/JSON API: its own view of authority and of its quotes.

What it is for: `GET /authority` (per symbol: this peer's phase, whether the view names it the
owner, the epoch, the lease it believes in, whether it may quote), `GET /quotes` (the quotes it
believes live, with the position version each came from and its reservation) and `GET /mm`
(whether it stepped aside and how it reaches the exchange, counters, the last authority
changes). The exchange's `GET /authority` is the fenced truth;
these say what this peer thinks, which is what a person debugging a hand-over wants to compare.
It must never change anything: every route is a read.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peer.market_maker.service import MarketMakerService


def _service(request: Request) -> MarketMakerService:
    service = getattr(request.app.state, "mm", None)
    if service is None:
        raise HTTPException(503, "market maker is starting: gossip is not up yet")
    return service


async def get_authority(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"name": service.name, "authority": service.authority_view()})


async def get_quotes(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"name": service.name, "quotes": service.quotes_view()})


async def get_status(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"name": service.name, "ready": service.ready.is_set(), "symbols": service.symbols,
                         "aside": service.aside_reason, "exchange_reach": service.reach.snapshot(service.clock()),
                         **service.stats.to_json()})


def mm_routes() -> list[Route]:
    return [
        Route("/authority", get_authority, methods=["GET"]),
        Route("/quotes", get_quotes, methods=["GET"]),
        Route("/mm", get_status, methods=["GET"]),
    ]
