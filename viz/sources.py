"""Reading the exchange and the ledger for `murmur top`, found through the membership view.

What it is for: each poll looks the source up in the latest `/members` rows (its role, its HTTP
URL), reads its JSON endpoints with every request bounded, and records either a whole new
snapshot or the reason it could not (the last good snapshot stays, to be drawn as stale). The
exchange and the ledger are polled by separate tasks, so a stopped one never delays the other.

It must never change anything in the cluster (GET only), and never let a failure escape: a
refused connection, a timeout, a 5xx or a JSON shape it does not know all end as a message on
screen while the dashboard keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import trio

from viz.trading import (
    RECENT_FILLS,
    ExchangeSnapshot,
    LedgerSnapshot,
    SourceStatus,
    TradingState,
    record_exchange,
    record_failure,
    record_ledger,
)

# A stopped (SIGSTOP) peer accepts TCP connections but never answers: bound every request.
REQUEST_TIMEOUT = 1.0
# A whole poll of one source (several requests) gets at most this long, whatever httpx does.
POLL_DEADLINE = 2 * REQUEST_TIMEOUT
FILL_PAGE = 200  # fills asked for in one go; more arrived since the last poll means a second ask

# Which member to read when the view lists several with the role: the liveliest, then by name.
_PREFERENCE = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}

Rows = list[dict[str, Any]] | None


class BadAnswer(Exception):
    """The source answered, but not with what its endpoint returns."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{reason} from {path}")


def describe(exc: BaseException) -> str:
    """Why a source could not be read, as shown on screen."""
    if isinstance(exc, httpx.ConnectError):
        return "unreachable: connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return f"unreachable: no answer within {REQUEST_TIMEOUT:g}s (stopped or overloaded?)"
    if isinstance(exc, trio.TooSlowError):
        return f"unreachable: no complete answer within {POLL_DEADLINE:g}s (stopped or overloaded?)"
    if isinstance(exc, httpx.TransportError):
        return f"unreachable: {exc or type(exc).__name__}"
    if isinstance(exc, BadAnswer):
        return f"bad answer: {exc}"
    return f"failed: {type(exc).__name__}: {exc}"


def locate(rows: Iterable[dict[str, Any]], role: str) -> dict[str, Any] | None:
    """The `/members` row of the peer with `role` (and an HTTP URL) to read, if any."""
    found = [r for r in rows if r.get("role") == role and r.get("http")]
    if not found:
        return None
    return min(found, key=lambda r: (_PREFERENCE.get(str(r.get("state")), 4), str(r.get("name"))))


async def get_json(client: httpx.AsyncClient, base: str, path: str, **params: Any) -> Any:
    answer = await client.get(f"{base}{path}", params=params or None)
    if answer.status_code != 200:
        raise BadAnswer(path, f"HTTP {answer.status_code}")
    try:
        return answer.json()
    except ValueError:
        raise BadAnswer(path, "not JSON") from None


def _rows(body: Any, key: str, path: str, *, bare_list_ok: bool = False) -> tuple[dict, ...]:
    """`{key: [objects]}` (or, where the envelope may still change, a bare list of objects)."""
    items = body.get(key) if isinstance(body, dict) else body if bare_list_ok else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadAnswer(path, f"no '{key}' list of objects")
    return tuple(items)


async def read_exchange(
    client: httpx.AsyncClient,
    url: str,
    *,
    known_total: int = 0,
    clock: Callable[[], float] = time.time,
) -> ExchangeSnapshot:
    """Authority, active quotes, reference prices and the last RECENT_FILLS fills."""
    authority = _rows(await get_json(client, url, "/authority"), "authority", "/authority")
    quotes = _rows(await get_json(client, url, "/quotes"), "quotes", "/quotes")
    prices_body = await get_json(client, url, "/prices")
    prices = prices_body.get("prices") if isinstance(prices_body, dict) else None
    if not isinstance(prices, dict):
        raise BadAnswer("/prices", "no 'prices' object")
    at = prices_body.get("at")
    # Fills page on their sequence number (1, 2, ...): ask from just before the last total we
    # saw; if more arrived than one page holds (or the exchange restarted), ask for the tail.
    after = max(0, known_total - RECENT_FILLS)
    fills, total = await _fills(client, url, after, FILL_PAGE)
    if after + len(fills) != total:
        after = max(0, total - RECENT_FILLS)
        fills, total = await _fills(client, url, after, RECENT_FILLS)
    return ExchangeSnapshot(
        polled_at=clock(),
        authority=authority,
        quotes=quotes,
        prices=prices,
        fills=fills[-RECENT_FILLS:],
        fills_total=total,
        exchange_now=at if isinstance(at, (int, float)) else None,
    )


async def _fills(client: httpx.AsyncClient, url: str, after: int, limit: int) -> tuple[tuple, int]:
    body = await get_json(client, url, "/fills", after=after, limit=limit)
    fills = _rows(body, "fills", "/fills")
    total = body.get("total")
    if not isinstance(total, int):
        raise BadAnswer("/fills", "no 'total' count")
    return fills, total


async def read_ledger(
    client: httpx.AsyncClient, url: str, *, clock: Callable[[], float] = time.time
) -> LedgerSnapshot:
    """Committed positions (with their versions) and exposure usage."""
    positions = _rows(
        await get_json(client, url, "/positions"), "positions", "/positions", bare_list_ok=True
    )
    exposure = await get_json(client, url, "/exposure")
    if not isinstance(exposure, dict) or not isinstance(exposure.get("limit"), dict):
        raise BadAnswer("/exposure", "no 'limit' object")
    return LedgerSnapshot(polled_at=clock(), positions=positions, exposure=exposure)


def _find(status: SourceStatus, rows: Rows) -> str | None:
    """Point `status` at the source the view names; its URL, or None (with the reason set)."""
    if rows is None:
        record_failure(status, "waiting for the membership view")
        return None
    # Sticky like the peers' own choice (peer.roles): the member read before stays the one read
    # while it is in the view, so a newcomer claiming the role is shown as a conflict, not read.
    row = next((r for r in rows if r.get("name") == status.name and r.get("role") == status.role
                and r.get("http") and r.get("state") != "left"), None) or locate(rows, status.role)
    status.conflict = tuple(sorted(
        str(r.get("name")) for r in rows
        if r is not row and r.get("role") == status.role and r.get("http") and r.get("state") in ("alive", "suspect")))
    if row is None:
        status.member_state = None
        record_failure(status, f"no {status.role} in the membership view")
        return None
    status.name = str(row.get("name"))
    status.url = str(row["http"]).rstrip("/")
    status.member_state = str(row.get("state"))
    return status.url


async def poll_exchange(
    client: httpx.AsyncClient,
    rows: Rows,
    state: TradingState,
    *,
    clock: Callable[[], float] = time.time,
) -> bool:
    """One poll of the exchange into `state`; False (with the reason recorded) if it failed."""
    url = _find(state.exchange, rows)
    if url is None:
        return False
    known = state.exchange_data.fills_total if state.exchange_data is not None else 0
    try:
        with trio.fail_after(POLL_DEADLINE):
            snapshot = await read_exchange(client, url, known_total=known, clock=clock)
    except Exception as exc:  # whatever went wrong, the dashboard keeps running
        record_failure(state.exchange, describe(exc))
        return False
    record_exchange(state, snapshot)
    await read_alarms(client, url, state.exchange)
    return True


async def poll_ledger(
    client: httpx.AsyncClient,
    rows: Rows,
    state: TradingState,
    *,
    clock: Callable[[], float] = time.time,
) -> bool:
    """One poll of the ledger into `state`; False (with the reason recorded) if it failed."""
    url = _find(state.ledger, rows)
    if url is None:
        return False
    try:
        with trio.fail_after(POLL_DEADLINE):
            snapshot = await read_ledger(client, url, clock=clock)
    except Exception as exc:
        record_failure(state.ledger, describe(exc))
        return False
    record_ledger(state, snapshot)
    await read_alarms(client, url, state.ledger)
    return True


async def read_alarms(client: httpx.AsyncClient, url: str, status: SourceStatus) -> None:
    """The source's raised alarms from its `/status`; left as they were if it cannot be read."""
    try:
        with trio.fail_after(POLL_DEADLINE):
            body = await get_json(client, url, "/status")
    except Exception:
        return  # the panels' data came through; the alarms are shown as last read
    alarms = body.get("alarms") if isinstance(body, dict) else None
    status.alarms = alarms if isinstance(alarms, dict) else {}


async def poll_sources_forever(
    rows: Callable[[], Rows],
    state: TradingState,
    *,
    interval: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Poll the exchange and the ledger, each in its own task, until cancelled."""

    async def loop(poll) -> None:
        while True:
            await poll(client, rows(), state)
            await trio.sleep(interval)

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, transport=transport) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop, poll_exchange)
            nursery.start_soon(loop, poll_ledger)
