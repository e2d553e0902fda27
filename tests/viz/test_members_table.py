"""The rich membership table (`viz/members_table.py`): columns, order and state styling."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console
from rich.style import Style

from viz.members_table import COLUMNS, format_age, members_table, state_counts

NOW = 1_700_000_100.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def row(name, state, *, incarnation=1, role="mm", changed_at=NOW - 5):
    port = 7000 + int(name.rsplit("-", 1)[-1]) if name[-1].isdigit() else 7000
    return {
        "name": name,
        "role": role,
        "addr": f"127.0.0.1:{port}",
        "state": state,
        "incarnation": incarnation,
        "http": f"http://127.0.0.1:{port + 1000}",
        "changed_at": iso(changed_at),
        "meta": {},
    }


ROWS = [
    row("mm-3", "dead"),
    row("mm-1", "alive", incarnation=3, changed_at=NOW - 75),
    row("mm-2", "suspect", incarnation=2, changed_at=NOW - 1.25),
    row("mm-4", "left", incarnation=4),
    row("exchange", "alive", role="exchange"),
]


def render(table, *, color: bool) -> Console:
    console = Console(
        record=True,
        width=120,
        force_terminal=color,
        color_system="truecolor" if color else None,
        file=io.StringIO(),  # recorded, not printed
    )
    console.print(table)
    return console


def text_lines(table) -> list[str]:
    return render(table, color=False).export_text().splitlines()


def line_of(lines: list[str], name: str) -> str:
    (line,) = [line for line in lines if f" {name} " in line]
    return line


def test_columns_are_name_addr_role_state_incarnation_http_since():
    table = members_table(ROWS, now=NOW)
    assert [c.header for c in table.columns] == [c.upper() for c in COLUMNS]
    assert COLUMNS == ("name", "addr", "role", "state", "inc", "http", "since")


def test_rows_are_sorted_by_name_and_show_each_field():
    lines = text_lines(members_table(ROWS, now=NOW))
    names = [
        n
        for line in lines
        for n in ("exchange", "mm-1", "mm-2", "mm-3", "mm-4")
        if f" {n} " in line
    ]
    assert names == ["exchange", "mm-1", "mm-2", "mm-3", "mm-4"]
    mm2 = line_of(lines, "mm-2").split("│")
    cells = [c.strip() for c in mm2[1:-1]]
    assert cells == [
        "mm-2",
        "127.0.0.1:7002",
        "mm",
        "suspect",
        "2",
        "http://127.0.0.1:8002",
        "1.2s",
    ]


def test_since_counts_from_the_last_change():
    lines = text_lines(members_table(ROWS, now=NOW))
    assert line_of(lines, "mm-1").rstrip("│ ").endswith("1m15s")
    assert format_age(3 * 3600 + 120) == "3h02m"
    assert format_age(None) == "-"


def test_suspect_and_dead_rows_are_styled_differently_from_each_other_and_from_alive():
    table = members_table(ROWS, now=NOW)
    by_name = {}
    for i, name in enumerate(sorted(r["name"] for r in ROWS)):
        by_name[name] = Style.parse(str(table.rows[i].style or "none"))
    alive, suspect, dead, left = (by_name[n] for n in ("mm-1", "mm-2", "mm-3", "mm-4"))
    assert len({alive, suspect, dead, left}) == 4
    assert suspect.color.name == "yellow"
    assert dead.color.name == "red"
    assert left.dim


def test_states_look_different_in_the_rendered_terminal_output():
    console = render(members_table(ROWS, now=NOW), color=True)
    ansi = console.export_text(styles=True).splitlines()
    suspect_line = next(line for line in ansi if "mm-2" in line)
    dead_line = next(line for line in ansi if "mm-3" in line)
    left_line = next(line for line in ansi if "mm-4" in line)
    assert "\x1b[33m" in suspect_line or "\x1b[1;33m" in suspect_line  # yellow
    assert "\x1b[31m" in dead_line or "\x1b[1;31m" in dead_line  # red
    assert "\x1b[2m" in left_line  # dim
    assert suspect_line != dead_line.replace("mm-3", "mm-2")


def test_a_stale_view_dims_every_row():
    table = members_table(ROWS, now=NOW, stale=True)
    assert all(Style.parse(str(r.style)).dim for r in table.rows)


def test_state_counts_include_every_state():
    assert state_counts(ROWS) == {"alive": 2, "suspect": 1, "dead": 1, "left": 1}
    assert state_counts([]) == {"alive": 0, "suspect": 0, "dead": 0, "left": 0}


def test_missing_fields_render_as_dashes():
    lines = text_lines(members_table([{"name": "x", "state": "alive"}], now=NOW))
    cells = [c.strip() for c in line_of(lines, "x").split("│")[1:-1]]
    assert cells == ["x", "-", "-", "alive", "-", "-", "-"]
