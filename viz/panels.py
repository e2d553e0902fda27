"""The trading panels of `murmur top`: authority, active quotes, positions, recent fills,
exposure and the authority-change log, as `rich` renderables.

What it is for: drawing a `TradingState` so a person can follow the cluster at a glance. Every
function is pure (the state and "now" in, a renderable out): no I/O, no clock read, so tests
render to `Console(record=True)`. Data a source could not refresh is drawn dim with its age;
data never received says why. Prices are integer ticks and are shown as integers. It must never
hide that data is stale or a source is missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from viz.members_table import format_age
from viz.trading import ExchangeSnapshot, LedgerSnapshot, SourceStatus, TradingState

AUTHORITY_STYLE = {"held": "green", "expired": "bold red", "released": "yellow", "vacant": "dim"}
MEMBER_TROUBLE = {"suspect": "yellow", "dead": "bold red", "left": "dim"}
BAR_WIDTH = 20


def _int(value: Any) -> str:
    """A tick price or a quantity: whole numbers as such, anything else as '-'."""
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{max(0.0, value):.1f}s"


def _clock(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at))


def _add_row(table: Table, *cells: str | Text, **kw: Any) -> None:
    """Strings from the cluster go in as plain text: never parsed as rich markup, so a '[' in
    a name or an id can neither restyle the screen nor raise while drawing."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kw)


def _table(title: str, columns: list[tuple[str, str]], status: SourceStatus, now: float) -> Table:
    """A panel table titled with its source; dim, with the data's age, when it is stale."""
    stale = status.stale_for(now)
    heading = f"{title} [dim]· {status.role}[/dim]"
    if stale is not None:
        heading += f" [bold red]· stale {format_age(stale)}[/bold red]"
    table = Table(
        title=heading,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        header_style="bold",
        style="dim" if stale is not None else "",
        pad_edge=False,
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _no_data(title: str, status: SourceStatus) -> Text:
    """One line instead of an empty table: the panel, its source, and why there is nothing."""
    line = Text(f"{title} ", style="bold")
    line.append(f"· {status.role}: ", style="dim")
    if status.error:
        line.append(status.error, style="red")
    else:
        line.append(f"waiting for the {status.role}", style="dim")
    return line


def _holder(name: Any, member_states: Mapping[str, str]) -> Text:
    """A holder's name, marked when the membership view says it is not alive."""
    if name is None:
        return Text("-", style="dim")
    state = member_states.get(str(name))
    if state in MEMBER_TROUBLE:
        return Text(f"{name} ({state})", style=MEMBER_TROUBLE[state])
    return Text(str(name))


def authority_panel(
    data: ExchangeSnapshot | None,
    status: SourceStatus,
    now: float,
    member_states: Mapping[str, str] | None = None,
) -> RenderableType:
    """Per symbol, the exchange's fenced truth: holder, epoch, state and lease left."""
    if data is None:
        return _no_data("AUTHORITY", status)
    table = _table(
        "AUTHORITY",
        [
            ("SYMBOL", "left"),
            ("HOLDER", "left"),
            ("EPOCH", "right"),
            ("STATE", "left"),
            ("LEASE", "right"),
        ],
        status,
        now,
    )
    for row in sorted(data.authority, key=lambda a: str(a.get("symbol"))):
        state = str(row.get("state", "?"))
        left = None
        if state == "held" and isinstance(row.get("lease_left"), (int, float)):
            left = row["lease_left"] - max(0.0, now - data.polled_at)
        _add_row(
            table,
            str(row.get("symbol")),
            _holder(row.get("holder"), member_states or {}),
            _int(row.get("epoch")),
            Text(state, style=AUTHORITY_STYLE.get(state, "magenta")),
            _seconds(left),
        )
    return table


def _leg(remaining: Any, quantity: Any, price: Any) -> str:
    if not quantity:
        return "-"
    return f"{_int(remaining)}/{_int(quantity)}@{_int(price)}"


def quotes_panel(data: ExchangeSnapshot | None, status: SourceStatus, now: float) -> RenderableType:
    """Active quotes at the exchange: legs as left/size@price, the reference price, expiry."""
    if data is None:
        return _no_data("ACTIVE QUOTES", status)
    table = _table(
        "ACTIVE QUOTES",
        [
            ("SYMBOL", "left"),
            ("HOLDER", "left"),
            ("EPOCH", "right"),
            ("BID left/qty@px", "right"),
            ("ASK left/qty@px", "right"),
            ("REF", "right"),
            ("EXPIRES", "right"),
        ],
        status,
        now,
    )
    if not data.quotes:
        table.caption = "no active quotes"
        table.caption_style = "dim"
    for q in sorted(data.quotes, key=lambda q: str(q.get("symbol"))):
        symbol = str(q.get("symbol"))
        _add_row(
            table,
            symbol,
            str(q.get("holder") or "-"),
            _int(q.get("epoch")),
            Text(
                _leg(q.get("bid_remaining"), q.get("bid_quantity"), q.get("bid_price")),
                style="green",
            ),
            Text(
                _leg(q.get("ask_remaining"), q.get("ask_quantity"), q.get("ask_price")), style="red"
            ),
            _int(data.prices.get(symbol)),
            _seconds(data.seconds_left(q.get("expires_at"), now)),
        )
    return table


def fills_panel(data: ExchangeSnapshot | None, status: SourceStatus, now: float) -> RenderableType:
    """The last fills at the exchange, newest first; SIDE is the market maker's side."""
    if data is None:
        return _no_data("RECENT FILLS", status)
    table = _table(
        "RECENT FILLS",
        [
            ("SEQ", "right"),
            ("TIME", "left"),
            ("SYMBOL", "left"),
            ("SIDE", "left"),
            ("QTY", "right"),
            ("PRICE", "right"),
            ("HOLDER", "left"),
            ("EPOCH", "right"),
        ],
        status,
        now,
    )
    table.caption = f"{data.fills_total} fills in all" if data.fills_total else "no fills yet"
    table.caption_style = "dim"
    for f in reversed(data.fills):
        side = str(f.get("side", "?"))
        _add_row(
            table,
            _int(f.get("seq")),
            _clock(f.get("created_at")),
            str(f.get("symbol")),
            Text(side, style="green" if side == "buy" else "red" if side == "sell" else ""),
            _int(f.get("quantity")),
            _int(f.get("price")),
            str(f.get("holder") or "-"),
            _int(f.get("epoch")),
        )
    return table


def positions_panel(
    data: LedgerSnapshot | None, status: SourceStatus, now: float
) -> RenderableType:
    """Committed positions at the ledger with their versions and the fill that made each."""
    if data is None:
        return _no_data("POSITIONS", status)
    table = _table(
        "POSITIONS",
        [("SYMBOL", "left"), ("NET", "right"), ("VERSION", "right"), ("LAST FILL", "left")],
        status,
        now,
    )
    if not data.positions:
        table.caption = "no positions yet"
        table.caption_style = "dim"
    for p in sorted(data.positions, key=lambda p: str(p.get("symbol"))):
        net = p.get("net_quantity")
        style = (
            "green"
            if isinstance(net, int) and net > 0
            else "red"
            if isinstance(net, int) and net < 0
            else ""
        )
        _add_row(
            table,
            str(p.get("symbol")),
            Text(_int(net), style=style),
            _int(p.get("position_version")),
            str(p.get("last_fill_id") or "-"),
        )
    return table


def usage_bar(used: Any, limit: Any, width: int = BAR_WIDTH) -> Text:
    """`███████·············` filled in proportion used/limit; yellow past 75%, red when full."""
    if not isinstance(used, int) or not isinstance(limit, int) or limit <= 0:
        return Text("·" * width, style="dim")
    share = min(1.0, max(0.0, used / limit))
    filled = round(share * width)
    if used > 0 and filled == 0:
        filled = 1  # some use must never look like none
    style = "red" if share >= 1.0 else "yellow" if share >= 0.75 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("·" * (width - filled), style="dim")
    return bar


def exposure_panel(data: LedgerSnapshot | None, status: SourceStatus, now: float) -> RenderableType:
    """Exposure reserved against the ledger's limit, per side."""
    if data is None:
        return _no_data("EXPOSURE", status)
    table = _table(
        "EXPOSURE",
        [("SIDE", "left"), ("USED/LIMIT", "right"), ("", "left"), ("USE", "right")],
        status,
        now,
    )
    limit = data.exposure.get("limit") or {}
    used = data.exposure.get("used") or {}
    for side in ("bid", "ask"):
        u, lim = used.get(side), limit.get(side)
        share = (
            f"{100 * u / lim:.0f}%"
            if isinstance(u, int) and isinstance(lim, int) and lim > 0
            else "-"
        )
        _add_row(table, side, f"{_int(u)}/{_int(lim)}", usage_bar(u, lim), share)
    active = data.exposure.get("active")
    if isinstance(active, list):
        table.caption = f"{len(active)} active reservations"
        table.caption_style = "dim"
    return table


def changes_panel(state: TradingState) -> Table:
    """Each authority change seen at the exchange, oldest first, as it happened."""
    table = Table(
        title="AUTHORITY CHANGES [dim]· exchange[/dim]",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        show_header=False,
        pad_edge=False,
    )
    table.add_column("change")
    for change in state.changes:
        _add_row(table, change.line())
    if not state.changes:
        table.caption = "none seen yet"
        table.caption_style = "dim"
    return table


def source_line(status: SourceStatus, now: float) -> Text:
    """`exchange  exchange http://...  alive in the view · ok` or why it is not."""
    line = Text(f"{status.role:<8} ", style="bold")
    if status.url:
        line.append(f"{status.name} {status.url}  ")
        if status.member_state and status.member_state != "alive":
            line.append(
                f"{status.member_state} in the view  ",
                style=MEMBER_TROUBLE.get(status.member_state, "magenta"),
            )
    if status.error:
        line.append(status.error, style="bold red")
        stale = status.stale_for(now)
        if stale is not None:
            line.append(f"; showing data from {format_age(stale)} ago", style="red")
    elif status.last_ok is not None:
        line.append("ok", style="green")
    else:
        line.append("connecting...", style="dim")
    if status.conflict:
        line.append(f"  ! also claimed by {', '.join(status.conflict)} (role conflict: see the runbook)",
                    style="bold red")
    for name, details in sorted(status.alarms.items()):
        line.append(f"  ! ALARM {name}: {_alarm_text(details)}", style="bold red")
    return line


def _alarm_text(details: Any) -> str:
    """An alarm's details in one line (they come from the peer: shown as plain text, cut short)."""
    if isinstance(details, dict):
        text = ", ".join(f"{k} {v}" for k, v in details.items() if k != "answer")
    else:
        text = str(details)
    return text[:160]


def trading_view(
    state: TradingState, *, now: float, member_states: Mapping[str, str] | None = None
) -> RenderableType:
    """All panels, two a row where the width allows it (about 130-160 columns), stacked below."""
    ex, ld = state.exchange_data, state.ledger_data

    def row(*panels: RenderableType) -> Columns:
        return Columns(panels, padding=(0, 3))

    return Group(
        source_line(state.exchange, now),
        source_line(state.ledger, now),
        row(
            authority_panel(ex, state.exchange, now, member_states),
            quotes_panel(ex, state.exchange, now),
        ),
        row(positions_panel(ld, state.ledger, now), exposure_panel(ld, state.ledger, now)),
        row(fills_panel(ex, state.exchange, now), changes_panel(state)),
    )
