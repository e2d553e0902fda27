"""The membership table as a `rich` Table, from the rows `GET /members` returns.

What it is for: one rendering of a peer's view shared by `murmur top` (live) and anything else
that prints members. A pure function of its input (rows, the time "now"): no I/O, no clock read
unless `now` is omitted, so tests render it with `Console(record=True)`. Each state looks
different at a glance: suspect yellow, dead red, left dim.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

STATES = ("alive", "suspect", "dead", "left")

# Style of the state cell and of the whole row, by state.
STATE_STYLE = {
    "alive": "bold green",
    "suspect": "bold yellow",
    "dead": "bold red",
    "left": "dim",
}
ROW_STYLE = {
    "alive": "",
    "suspect": "yellow",
    "dead": "red",
    "left": "dim",
}
COLUMNS = ("name", "addr", "role", "state", "inc", "http", "since")


def state_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(str(r.get("state")) for r in rows)
    return {state: counts.get(state, 0) for state in STATES}


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _age(changed_at: Any, now: float) -> float | None:
    if not isinstance(changed_at, str):
        return None
    try:
        return now - datetime.fromisoformat(changed_at).timestamp()
    except ValueError:
        return None


def members_table(
    rows: Iterable[dict[str, Any]],
    *,
    now: float | None = None,
    title: str | None = None,
    stale: bool = False,
) -> Table:
    """A Table of members sorted by name; `stale` dims everything (a view we could not refresh)."""
    now = time.time() if now is None else now
    table = Table(title=title, expand=False, header_style="bold", style="dim" if stale else "")
    for column in COLUMNS:
        table.add_column(column.upper(), justify="right" if column in ("inc", "since") else "left")
    for row in sorted(rows, key=lambda r: str(r.get("name", ""))):
        state = str(row.get("state", "?"))
        cell_style = "dim" if stale else STATE_STYLE.get(state, "bold magenta")
        row_style = "dim" if stale else ROW_STYLE.get(state, "")
        table.add_row(
            str(row.get("name", "?")),
            str(row.get("addr") or "-"),
            str(row.get("role") or "-"),
            Text(state, style=cell_style),
            str(row.get("incarnation", "-")),
            str(row.get("http") or "-"),
            format_age(_age(row.get("changed_at"), now)),
            style=row_style,
        )
    return table
