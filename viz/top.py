"""`murmur top`: a live dashboard of the cluster: membership over one peer's `GET /members`,
and the trading panels (authority, quotes, positions, fills, exposure, authority changes) read
from the exchange and the ledger that membership view names.

What it is for: watching state changes as they happen. One task polls a peer (and fails over to
another of the cluster file's peers when it stops answering); `viz/sources.py` polls the
exchange and the ledger; this module redraws several times a second from whatever was last
fetched, so the screen never freezes on a slow, stopped or dead peer.
It must never change anything in the cluster: it only reads HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from viz.members_table import STATE_STYLE, STATES, members_table, state_counts
from viz.panels import trading_view
from viz.sources import REQUEST_TIMEOUT, poll_sources_forever
from viz.trading import TradingState

POLL_INTERVAL = 0.25
REDRAWS_PER_SECOND = 4


@dataclass
class TopState:
    """What the screen shows: the last good view and, if the last poll failed, why."""

    url: str | None = None
    peer_name: str | None = None
    health: int | None = None
    rows: list[dict] | None = None
    last_ok: float | None = None  # wall time of the last good poll
    error: str | None = None
    note: str | None = None  # e.g. a fail-over
    polls: int = 0
    trading: TradingState = field(default_factory=TradingState)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {REQUEST_TIMEOUT:g}s (stopped or overloaded?)"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return str(exc) or type(exc).__name__


async def poll_once(client: httpx.AsyncClient, url: str, state: TopState) -> bool:
    """Fetch /status and /members from `url` into `state`; False (with `state.error`) if it failed."""
    try:
        status = await client.get(f"{url}/status")
        status.raise_for_status()
        members = await client.get(f"{url}/members")
        members.raise_for_status()
        info, rows = status.json(), members.json()
        if not isinstance(rows, list) or not isinstance(info, dict):
            raise ValueError("unexpected JSON shape")
    except (httpx.HTTPError, ValueError) as exc:
        state.error = f"{url} unreachable: {_describe(exc)}"
        return False
    state.url = url
    state.peer_name = info.get("name")
    state.health = info.get("health")
    state.rows = rows
    state.last_ok = time.time()
    state.error = None
    return True


async def poll_forever(
    urls: Callable[[], list[str]],
    state: TopState,
    *,
    interval: float = POLL_INTERVAL,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Poll the current peer; on failure move on to the next URL (re-reading the list)."""
    index = 0
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, transport=transport) as client:
        while True:
            candidates = urls() or []
            if candidates:
                index %= len(candidates)
                url = candidates[index]
                ok = await poll_once(client, url, state)
                state.polls += 1
                if not ok and len(candidates) > 1:
                    index = (index + 1) % len(candidates)
                    state.note = f"failing over to {candidates[index]}"
                elif ok and state.note and state.url == url:
                    state.note = None
            else:
                state.error = "no peers to poll"
            await trio.sleep(interval)


def render(state: TopState, *, now: float | None = None) -> RenderableType:
    now = time.time() if now is None else now
    header = Text("murmur top", style="bold")
    if state.url:
        header.append(f"  ·  view of {state.peer_name or '?'} ({state.url})")
    if state.rows is not None:
        counts = state_counts(state.rows)
        header.append("  ·  ")
        for i, name in enumerate(STATES):
            if i:
                header.append(" ")
            header.append(f"{counts[name]} {name}", style=STATE_STYLE[name] if counts[name] else "")
    if state.health:
        header.append(f"  ·  local health {state.health}", style="yellow")
    header.append(f"  ·  {time.strftime('%H:%M:%S', time.localtime(now))}")
    parts: list[RenderableType] = [header]
    if state.error:
        line = Text(state.error, style="bold red")
        if state.last_ok is not None:
            line.append(f"; showing the view from {now - state.last_ok:.1f}s ago", style="red")
        if state.note:
            line.append(f"; {state.note}", style="red")
        parts.append(line)
    if state.rows is not None:
        parts.append(members_table(state.rows, now=now, stale=state.error is not None))
    elif not state.error:
        parts.append(Text("connecting...", style="dim"))
    member_states = {str(r.get("name")): str(r.get("state")) for r in state.rows or ()}
    parts.append(trading_view(state.trading, now=now, member_states=member_states))
    parts.append(Text("Ctrl-C to quit", style="dim"))
    return Group(*parts)


async def run_top(
    urls: Callable[[], list[str]],
    *,
    console: Console | None = None,
    redraws_per_second: float = REDRAWS_PER_SECOND,
    poll_interval: float = POLL_INTERVAL,
    frames: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TopState:
    """Show the live dashboard until cancelled (or for `frames` redraws, for tests).

    `transport` replaces the network for every request (tests pass a fake cluster)."""
    state = TopState()
    period = 1.0 / redraws_per_second
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: poll_forever(urls, state, interval=poll_interval, transport=transport)
        )
        nursery.start_soon(
            lambda: poll_sources_forever(
                lambda: state.rows, state.trading, interval=poll_interval, transport=transport
            )
        )
        # Redraws are driven from here, not by Live's own thread, so nothing renders off trio.
        with Live(render(state), console=console, auto_refresh=False) as live:
            drawn = 0
            while frames is None or drawn < frames:
                await trio.sleep(period)
                live.update(render(state), refresh=True)
                drawn += 1
        nursery.cancel_scope.cancel()
    return state
