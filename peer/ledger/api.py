"""The ledger's HTTP/JSON API: fills, positions, the update stream, reservations, exposure.

What it is for: the ledger peer's trading state and exposure reservation APIs (docs/interface.md):
`POST /fills` (the exchange's outbox), `GET /fills`, `GET /positions`, `GET /positions/{symbol}`,
the ordered stream of committed position updates (`GET /updates`, and per symbol
`GET /positions/{symbol}/updates`, both long polls resumable from where the client stopped),
`POST /reservations`, `GET /reservations/{id}`, `POST /reservations/{id}/apply-fill`,
`POST /reservations/{id}/renew`, `POST /reservations/{id}/release`, `GET /exposure` and
`GET /ledger`. It must never change state except through `LedgerService.submit`, and never
answer a malformed request with anything but a 4xx JSON error naming the field (nothing changes
then: a batch with one bad fill is refused whole, before anything is queued).

Status codes: 200 done (201 for a new reservation that holds capacity); 409 well-formed but
refused by the rules (a fill id recorded with other content, a quote_id reused, no capacity),
with `reason`; 400 malformed, with `field`; 404 unknown reservation; 503 not running. Bodies and
query parameters are read, and a malformed one answered, by peer/http/inputs.py, as in every API.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from book import bounds
from ledger.exposure import (
    MAX_QUANTITY,
    REJECTED,
    InvalidInput,
    Refusal,
    parse_request,
    parse_side,
    seconds,
    symbol_name,
    text,
    whole,
)
from ledger.store import ApplyFill, RecordFills, Release, Renew, Reserve, validate_fill
from peer.http import inputs
from peer.http.guard import Refused, caller, guard_of, require_name, require_role
from peer.ledger.service import LedgerService, LedgerUnavailable

# A batch of fills: the exchange's outbox sends 200 at a time; a fill is about 300 bytes, so
# the largest batch fits the peer's HTTP server's 1 MiB body limit.
MAX_BODY = 1024 * 1024
MAX_FILLS = 2000

_STATUS = {"invalid": 400, "unknown-reservation": 404}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _invalid(exc: InvalidInput) -> JSONResponse:
    status, answer = inputs.refusal(exc)
    return JSONResponse(answer, status_code=status)


def _refused(exc: Refusal) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=_STATUS.get(exc.reason, 409))


async def _body(request: Request, *, empty_ok: bool = False) -> Any:
    """The body's JSON value, read by peer/http/inputs.py; each endpoint's parser checks its shape."""
    raw = await request.body()
    return inputs.json_body(raw, max_bytes=MAX_BODY, empty_ok=empty_ok, error=InvalidInput)


def _service(request: Request) -> LedgerService:
    return request.app.state.ledger


async def _submit(request: Request, op, ok_status: int = 200) -> Response:
    try:
        answer = await _service(request).submit(op)
    except Refusal as exc:
        return _refused(exc)
    except InvalidInput as exc:
        return _invalid(exc)
    except LedgerUnavailable as exc:
        return _error(503, str(exc))
    if isinstance(op, Renew):
        answer = _with_grant(request, answer)
    return JSONResponse(answer, status_code=ok_status)


def _with_grant(request: Request, answer: dict[str, Any]) -> dict[str, Any]:
    """A reservation's answer with the ledger's signed `grant` of it, while it holds capacity: the
    exchange activates a quote only with one (none when this ledger has no keyring)."""
    guard = guard_of(request)
    reservation = answer.get("reservation")
    if guard is None or not isinstance(reservation, dict):
        return answer
    grant = guard.sign_grant(reservation)
    return answer if grant is None else {**answer, "grant": grant}


def _page(request: Request, allowed: tuple[str, ...], after: str = "after") -> inputs.Page:
    return inputs.page(request.query_params, allowed, after=after, error=InvalidInput)


def _path_symbol(request: Request) -> str:
    return symbol_name(request.path_params["symbol"])


def _path_reservation(request: Request) -> str:
    return text(request.path_params["reservation_id"], "reservation_id")


# --- fills and positions --------------------------------------------------------------------------


def parse_fills(body: Any) -> RecordFills:
    """One fill object, or {"fills": [...]}: every fill checked; raises InvalidInput."""
    if isinstance(body, dict) and "fills" in body:
        bounds.fields(body, ("fills",), error=InvalidInput)
        items = body["fills"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("fills", "must be a non-empty list of fills")
        if len(items) > MAX_FILLS:
            raise InvalidInput("fills", f"at most {MAX_FILLS} fills in one request")
        return RecordFills(tuple(validate_fill(f, f"fills[{i}].") for i, f in enumerate(items)))
    return RecordFills((validate_fill(body),))


async def post_fills(request: Request) -> Response:
    """One fill object, or {"fills": [...]}: all checked before any is queued. Only the member
    this ledger takes for the exchange may post fills (a signed call)."""
    try:
        require_role(request, await caller(request), "exchange")
    except Refused as exc:
        return exc.response
    try:
        op = parse_fills(await _body(request))
    except InvalidInput as exc:
        return _invalid(exc)
    return await _submit(request, op)


async def _long_poll(service: LedgerService, wait: float, fetch):
    """fetch() -> (items, ...); re-run after each commit until it finds items or `wait` runs out.

    The commit event is taken before each fetch, so a commit during a fetch is never missed.
    """
    event = service.committed
    result = await fetch()
    if result[0] or wait <= 0:
        return result
    with trio.move_on_after(wait):
        while not result[0]:
            await event.wait()
            event = service.committed
            result = await fetch()
    return result


async def get_fills(request: Request) -> Response:
    """Recorded fills in commit order (update_seq > after); with `wait`, a long poll."""
    service = _service(request)
    try:
        after, limit, wait = _page(request, ("after", "limit", "symbol", "wait"))
        symbol = inputs.query_symbol(request.query_params, error=InvalidInput)
    except InvalidInput as exc:
        return _invalid(exc)

    async def fetch():
        nonlocal after
        up_to = service.published_seq
        fills = await service.fills_after(after, limit, symbol)
        if fills and len(fills) >= limit or symbol is None:
            nxt = fills[-1]["update_seq"] if fills else after
        else:
            nxt = max(after, up_to)  # every fill of the symbol up to up_to was returned
        after = nxt
        return fills, nxt

    fills, next_after = await _long_poll(service, wait, fetch)
    return JSONResponse({"fills": fills, "next_after": next_after, "last_seq": service.published_seq})


async def get_positions(request: Request) -> Response:
    service = _service(request)
    positions = [p.to_json() for _, p in sorted(service.positions.items())]
    return JSONResponse({"positions": positions, "last_seq": service.published_seq})


async def get_position(request: Request) -> Response:
    try:
        symbol = _path_symbol(request)
    except InvalidInput as exc:
        return _invalid(exc)
    service = _service(request)
    return JSONResponse({**service.position(symbol).to_json(), "last_seq": service.published_seq})


async def get_updates(request: Request) -> Response:
    """The ordered stream of committed position updates: `after` is the last seq the client
    has; `next_after` is what to send next time (past updates of other symbols too)."""
    service = _service(request)
    try:
        after, limit, wait = _page(request, ("after", "limit", "symbols", "wait"))
        raw = request.query_params.get("symbols")
        symbols = {symbol_name(s.strip(), "symbols") for s in raw.split(",")} if raw else None
    except InvalidInput as exc:
        return _invalid(exc)
    if after > service.published_seq:
        return _error(409, f"after {after} is beyond the last committed update {service.published_seq}: "
                      "this ledger has not recorded what the client saw (another ledger, or a restored database?)",
                      reason="ahead-of-ledger", last_seq=service.published_seq)
    async def fetch():
        nonlocal after
        updates, after = await service.updates_after(after, limit, symbols)
        return updates, after

    updates, next_after = await _long_poll(service, wait, fetch)
    return JSONResponse({"updates": updates, "next_after": next_after, "last_seq": service.published_seq})


async def get_symbol_updates(request: Request) -> Response:
    """One symbol's committed updates after a position_version, in version order (no gaps)."""
    service = _service(request)
    try:
        symbol = _path_symbol(request)
        after_version, limit, wait = _page(request, ("after_version", "limit", "wait"),
                                           after="after_version")
    except InvalidInput as exc:
        return _invalid(exc)
    current = service.position(symbol).position_version
    if after_version > current:
        return _error(409, f"after_version {after_version} is beyond {symbol}'s position_version {current}",
                      reason="ahead-of-ledger", position_version=current)
    async def fetch():
        return (await service.symbol_updates(symbol, after_version, limit),)

    (updates,) = await _long_poll(service, wait, fetch)
    return JSONResponse({"symbol": symbol, "updates": updates,
                         "position_version": service.position(symbol).position_version})


# --- reservations and exposure --------------------------------------------------------------------


async def post_reservation(request: Request) -> Response:
    try:
        signer = await caller(request)
    except Refused as exc:
        return exc.response
    try:
        req = parse_request(await _body(request))
    except InvalidInput as exc:
        return _invalid(exc)
    try:
        require_name(request, signer, req.holder, "holder")
    except Refused as exc:
        return exc.response
    try:
        answer = await _service(request).submit(Reserve(req))
    except Refusal as exc:
        return _refused(exc)
    except LedgerUnavailable as exc:
        return _error(503, str(exc))
    answer = _with_grant(request, answer)
    if answer["decision"] == REJECTED:
        return JSONResponse({**answer, "reason": "no-capacity",
                             "error": "no exposure capacity on the side(s) asked for; nothing reserved"},
                            status_code=409)
    return JSONResponse(answer, status_code=200 if answer["duplicate"] else 201)


async def get_reservation(request: Request) -> Response:
    try:
        rid = _path_reservation(request)
    except InvalidInput as exc:
        return _invalid(exc)
    found = await _service(request).reservation(rid)
    if found is None:
        return _error(404, f"no reservation {rid!r}", reason="unknown-reservation", field="reservation_id")
    return JSONResponse({"reservation": found.to_json()})


def parse_apply_fill(reservation_id: str, body: Any) -> ApplyFill:
    body = bounds.fields(body, ("fill_id", "side", "quantity"), error=InvalidInput)
    for name in ("fill_id", "side", "quantity"):
        if name not in body:
            raise InvalidInput(name, "required")
    return ApplyFill(reservation_id, text(body["fill_id"], "fill_id"), parse_side(body["side"]),
                     whole(body["quantity"], "quantity", minimum=1, maximum=MAX_QUANTITY))


def parse_renew(reservation_id: str, body: Any) -> Renew:
    body = bounds.fields(body, ("expires_at", "ttl"), error=InvalidInput)
    if (body.get("expires_at") is None) == (body.get("ttl") is None):
        raise InvalidInput("expires_at", "give exactly one of expires_at and ttl")
    return Renew(reservation_id,
                 expires_at=seconds(body["expires_at"], "expires_at") if body.get("expires_at") is not None else None,
                 ttl=seconds(body["ttl"], "ttl") if body.get("ttl") is not None else None)


def parse_release(reservation_id: str, body: Any) -> Release:
    body = bounds.fields(body, ("reason",), error=InvalidInput)
    return Release(reservation_id, text(body["reason"], "reason") if body.get("reason") is not None else "released")


def _reservation_op(parse, *, empty_ok: bool = False):
    """`POST /reservations/{id}/...`: the id from the path, the operation from the body."""

    async def handler(request: Request) -> Response:
        try:
            signer = await caller(request)
        except Refused as exc:
            return exc.response
        try:
            op = parse(_path_reservation(request), await _body(request, empty_ok=empty_ok))
        except InvalidInput as exc:
            return _invalid(exc)
        if signer is not None and _service(request).store is not None:
            # Only the reservation's holder may renew, release or apply a fill to it. An unknown
            # id goes on to the store, which answers 404.
            found = await _service(request).reservation(op.reservation_id)
            try:
                require_name(request, signer, found.holder if found is not None else signer, "holder")
            except Refused as exc:
                return exc.response
        return await _submit(request, op)

    return handler


post_apply_fill = _reservation_op(parse_apply_fill)
post_renew = _reservation_op(parse_renew)
post_release = _reservation_op(parse_release, empty_ok=True)


async def get_exposure(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({**service.usage().to_json(), "at": service.clock()})


async def get_ledger_status(request: Request) -> Response:
    return JSONResponse(_service(request).status())


def ledger_routes() -> list[Route]:
    return [
        Route("/fills", post_fills, methods=["POST"]),
        Route("/fills", get_fills, methods=["GET"]),
        Route("/positions", get_positions, methods=["GET"]),
        Route("/positions/{symbol}", get_position, methods=["GET"]),
        Route("/positions/{symbol}/updates", get_symbol_updates, methods=["GET"]),
        Route("/updates", get_updates, methods=["GET"]),
        Route("/reservations", post_reservation, methods=["POST"]),
        Route("/reservations/{reservation_id}", get_reservation, methods=["GET"]),
        Route("/reservations/{reservation_id}/apply-fill", post_apply_fill, methods=["POST"]),
        Route("/reservations/{reservation_id}/renew", post_renew, methods=["POST"]),
        Route("/reservations/{reservation_id}/release", post_release, methods=["POST"]),
        Route("/exposure", get_exposure, methods=["GET"]),
        Route("/ledger", get_ledger_status, methods=["GET"]),
    ]
