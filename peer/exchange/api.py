"""The exchange's HTTP/JSON API: orders, quotes, authority, prices, fills.

What it is for: the seeds' endpoints (`POST /orders`, `DELETE /orders/{order_id}`,
`PUT /quotes/{symbol}`, `GET /quotes/{symbol}`, `GET /prices`, `GET /fills`, `GET /authority`)
and the market makers' peer-to-peer calls over the same transport (`POST
/authority/{symbol}/claim|renew|release`, `DELETE /quotes/{symbol}`, and `GET /fills?after=N&wait=S`,
a long poll that pushes fills as they happen). It must never change state except through
`ExchangeService.command`, and never answer a malformed request with anything but a 4xx JSON
error naming the field (nothing changes then).

Status codes: 200/201 accepted; 409 well-formed but refused by the rules (stale epoch, held,
conflict...), with `reason`; 400 malformed, with `field`; 404 unknown symbol or order. Bodies and
query parameters are read, and a malformed one answered, by peer/http/inputs.py, as in every API.
Order entry (`POST /orders`, `DELETE /orders/{order_id}`) is marked `rate_limited`: the HTTP
server answers a client address over its rate with 429 before the handler runs.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from book.exchange import CommandError
from peer.exchange.service import ExchangeService
from peer.http import inputs
from peer.http.guard import Refused, caller, guard_of, require_name
from peer.http.limits import rate_limited

MAX_BODY = 64 * 1024


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _refused(exc: CommandError) -> JSONResponse:
    status, answer = inputs.refusal(exc)
    return JSONResponse(answer, status_code=status)


def parse_body(raw: bytes, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A command's arguments: a JSON object of the `allowed` fields, with the `required` ones,
    read by peer/http/inputs.py; raises CommandError. The core checks each value."""
    return inputs.json_object(raw, allowed, required=required, max_bytes=MAX_BODY, empty_ok=True,
                              error=CommandError)


def _service(request: Request) -> ExchangeService:
    return request.app.state.exchange


def _symbol(request: Request) -> str | None:
    symbol = request.path_params["symbol"]
    core = _service(request).core
    return symbol if core is not None and symbol in core.books else None


async def _run(request: Request, kind: str, args: dict[str, Any], ok_status: int = 200) -> Response:
    status, answer = await _command(_service(request), kind, args, ok_status)
    return JSONResponse(answer, status_code=status)


async def _command(service: ExchangeService, kind: str, args: dict[str, Any], ok_status: int) -> tuple[int, dict]:
    """Run a command; the status and body of its answer."""
    if service.core is None:
        return 503, {"error": "exchange is starting: replaying its tape"}
    try:
        answer = await service.command(kind, args)
    except CommandError as exc:
        return inputs.refusal(exc)
    if answer["accepted"]:
        return ok_status, answer
    if answer["reason"] in ("unknown-order",):
        return 404, answer
    if kind == "submit_order" and answer["reason"] == "no-liquidity":
        return 200, answer  # a valid order that found nothing to match
    return 409, answer


# Each body's fields, the required ones first. `order_id` is required: it makes a retried POST
# safe; `type` defaults to limit, and a market order has no `limit_price`; a quote may leave
# out its `reservation_id`.
_ORDER_FIELDS = ("order_id", "symbol", "side", "quantity", "type", "limit_price")
_ORDER_REQUIRED = _ORDER_FIELDS[:4]
_QUOTE_FIELDS = ("holder", "epoch", "seq", "quote_id", "bid_price", "bid_quantity", "ask_price", "ask_quantity",
                 "reservation_id", "grant")
_CANCEL_QUOTE_FIELDS = ("holder", "epoch", "seq")
_AUTHORITY_FIELDS = ("holder", "epoch")


async def submit_order(service: ExchangeService, raw: bytes) -> tuple[int, dict]:
    """`POST /orders`, from the raw body: shared by the route and the direct handler."""
    try:
        body = parse_body(raw, _ORDER_FIELDS, _ORDER_REQUIRED)
    except CommandError as exc:
        return inputs.refusal(exc)
    return await _command(service, "submit_order", body, 201)


async def post_order(request: Request) -> Response:
    status, answer = await submit_order(_service(request), await request.body())
    return JSONResponse(answer, status_code=status)


def exchange_direct_routes(service: ExchangeService) -> dict[tuple[str, bytes], Any]:
    """The order entry point served without the framework (`peer.http.server`): the route with
    the most traffic, measured at about a fifth of the server's cost per order in docs/BENCH.md."""

    async def orders(raw: bytes) -> tuple[int, bytes]:
        status, answer = await submit_order(service, raw)
        return status, json.dumps(answer, separators=(",", ":")).encode()

    return {("POST", b"/orders"): orders}


async def delete_order(request: Request) -> Response:
    return await _run(request, "cancel_order", {"order_id": request.path_params["order_id"]})


def _quote_grant(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """A quote's `grant`: verified and handed to the core as its terms (the core checks the quote
    against them). With a keyring a quote without a valid grant is refused (403); without one
    (insecure) nothing can be verified, and a grant is ignored."""
    grant = body.pop("grant", None)
    guard = guard_of(request)
    if guard is None:
        return body
    return {**body, "grant": guard.verify_grant(grant).to_json()}


def _symbol_command(kind: str, allowed: tuple[str, ...], required: tuple[str, ...], prepare=None):
    """A command on the symbol in the path (`PUT /quotes/{symbol}`, `POST
    /authority/{symbol}/claim`, ...): the body holds the command's other arguments. Only a
    member may call it (a signed call, peer/http/guard.py), and only for itself: the body's
    `holder` must be the signer's name."""

    async def handler(request: Request) -> Response:
        try:
            signer = await caller(request)
        except Refused as exc:
            return exc.response
        symbol = _symbol(request)
        if symbol is None:
            return _error(404, f"unknown symbol {request.path_params['symbol']!r}", field="symbol")
        try:
            body = parse_body(await request.body(), allowed, required)
        except CommandError as exc:
            return _refused(exc)
        try:
            require_name(request, signer, body.get("holder"), "holder")
            if prepare is not None:
                body = prepare(request, body)
        except Refused as exc:
            return exc.response
        return await _run(request, kind, {**body, "symbol": symbol})

    return handler


put_quote = _symbol_command("put_quote", _QUOTE_FIELDS, _QUOTE_FIELDS[:-2], prepare=_quote_grant)
delete_quote = _symbol_command("cancel_quote", _CANCEL_QUOTE_FIELDS, _CANCEL_QUOTE_FIELDS)
claim = _symbol_command("claim", _AUTHORITY_FIELDS, _AUTHORITY_FIELDS)
renew = _symbol_command("renew", _AUTHORITY_FIELDS, _AUTHORITY_FIELDS)
release = _symbol_command("release", _AUTHORITY_FIELDS, _AUTHORITY_FIELDS)


async def get_quote(request: Request) -> Response:
    symbol = _symbol(request)
    if symbol is None:
        return _error(404, f"unknown symbol {request.path_params['symbol']!r}", field="symbol")
    service = _service(request)
    return JSONResponse({"symbol": symbol, "quote": service.core.quote_view(symbol, service.clock())})


async def get_quotes(request: Request) -> Response:
    service = _service(request)
    now = service.clock()
    return JSONResponse({"quotes": [q.to_json(now) for q in service.core.active_quotes.values()]})


async def get_authority(request: Request) -> Response:
    service = _service(request)
    now = service.clock()
    return JSONResponse({"authority": [a.to_json(now) for a in service.core.authority.all()]})


async def get_prices(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"prices": {s: service.price(s) for s in service.core.symbols}, "at": service.clock()})


async def get_price(request: Request) -> Response:
    symbol = _symbol(request)
    if symbol is None:
        return _error(404, f"unknown symbol {request.path_params['symbol']!r}", field="symbol")
    service = _service(request)
    return JSONResponse({"symbol": symbol, "price": service.price(symbol), "at": service.clock()})


async def get_fills(request: Request) -> Response:
    """Fills after a sequence number; with `wait`, hold the request until one arrives (a push)."""
    service = _service(request)
    params = request.query_params
    try:
        after, limit, wait = inputs.page(params, ("after", "limit", "wait", "symbol"),
                                         error=CommandError)
        symbol = inputs.query_symbol(params, error=CommandError)
    except CommandError as exc:
        return _refused(exc)
    fills = service.core.fills_after(after, limit)
    if not fills and wait > 0:
        with trio.move_on_after(wait):
            while not fills:
                await service.fill_added.wait()
                fills = service.core.fills_after(after, limit)
    out = [f.to_json() for f in fills if symbol is None or f.symbol == symbol]
    last = fills[-1].seq if fills else after
    return JSONResponse({"fills": out, "next_after": last, "total": len(service.core.fills)})


async def get_book(request: Request) -> Response:
    symbol = _symbol(request)
    if symbol is None:
        return _error(404, f"unknown symbol {request.path_params['symbol']!r}", field="symbol")
    return JSONResponse({"symbol": symbol, **_service(request).core.books[symbol].depth(10)})


async def get_exchange_status(request: Request) -> Response:
    return JSONResponse(_service(request).status())


def exchange_routes() -> list[Route]:
    return [
        # Order entry is open to anyone who reaches the exchange: rate-limited per client
        # address by the HTTP server (peer/http/limits.py, docs/security.md).
        rate_limited(Route("/orders", post_order, methods=["POST"])),
        rate_limited(Route("/orders/{order_id}", delete_order, methods=["DELETE"])),
        Route("/quotes", get_quotes, methods=["GET"]),
        Route("/quotes/{symbol}", put_quote, methods=["PUT"]),
        Route("/quotes/{symbol}", get_quote, methods=["GET"]),
        Route("/quotes/{symbol}", delete_quote, methods=["DELETE"]),
        Route("/authority", get_authority, methods=["GET"]),
        Route("/authority/{symbol}/claim", claim, methods=["POST"]),
        Route("/authority/{symbol}/renew", renew, methods=["POST"]),
        Route("/authority/{symbol}/release", release, methods=["POST"]),
        Route("/prices", get_prices, methods=["GET"]),
        Route("/prices/{symbol}", get_price, methods=["GET"]),
        Route("/fills", get_fills, methods=["GET"]),
        Route("/book/{symbol}", get_book, methods=["GET"]),
        Route("/exchange", get_exchange_status, methods=["GET"]),
    ]
