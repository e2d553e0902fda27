"""The trading panels (`viz/panels.py`), rendered from fixed data: what each shows, how stale or
missing data looks, and that the layout fits 80 to 160 columns."""

from __future__ import annotations

import io

from book.authority import Authority, AuthorityState
from book.fills import Quote
from ledger.exposure import Usage
from ledger.store import Position
from viz import trading
from viz.panels import (
    authority_panel,
    changes_panel,
    exposure_panel,
    fills_panel,
    positions_panel,
    quotes_panel,
    source_line,
    trading_view,
    usage_bar,
)
from viz.trading import ExchangeSnapshot, LedgerSnapshot, SourceStatus, TradingState

from .fake_cluster import make_fill

T0 = 1_700_000_000.0
SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]


def text_of(renderable, width: int = 160) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=False)
    console.print(renderable)
    return console.export_text()


def line_with(text: str, *words: str) -> str:
    (line,) = [line for line in text.splitlines() if all(w in line for w in words)]
    return line


def held(symbol: str, holder: str, epoch: int, lease: float = 2.5) -> dict:
    a = Authority(symbol, epoch, holder, T0 + lease, AuthorityState.HELD)
    return a.to_json(T0)


def quote(symbol: str, holder: str = "mm-1", epoch: int = 6) -> dict:
    q = Quote(f"q-{symbol}", symbol, holder, epoch, 1, 9990, 10, 10010, 10, "r1", T0 - 2, T0 + 28)
    return {**q.to_json(T0), "bid_remaining": 7, "ask_remaining": 10}


def exchange_snapshot(**kw) -> ExchangeSnapshot:
    fields = {
        "polled_at": T0,
        "authority": (
            held("MSFT", "mm-2", 7),
            held("AAPL", "mm-1", 3),
            Authority("TSLA").to_json(T0),
        ),
        "quotes": (quote("MSFT", "mm-2", 7),),
        "prices": {"AAPL": 18950, "MSFT": 10000, "TSLA": 25000},
        "fills": tuple(make_fill(n).to_json() for n in range(26, 36)),
        "fills_total": 35,
        "exchange_now": T0,
    }
    return ExchangeSnapshot(**{**fields, **kw})


def ledger_snapshot() -> LedgerSnapshot:
    return LedgerSnapshot(
        polled_at=T0,
        positions=(
            Position("MSFT", -6, 4, "ex-0000000004", T0).to_json(),
            Position("AAPL", 12, 9, "ex-0000000031", T0).to_json(),
        ),
        exposure={**Usage(1000, 1000, 800, 120, ()).to_json(), "at": T0},
    )


def fresh(role: str) -> SourceStatus:
    return SourceStatus(
        role, name=role, url=f"http://{role}.test:1", member_state="alive", last_ok=T0
    )


def test_authority_shows_holder_epoch_state_and_lease_counting_down():
    text = text_of(authority_panel(exchange_snapshot(), fresh("exchange"), T0 + 1.0))
    assert "AUTHORITY" in text
    assert line_with(text, "MSFT").split() == ["MSFT", "mm-2", "7", "held", "1.5s"]
    assert line_with(text, "AAPL").split() == ["AAPL", "mm-1", "3", "held", "1.5s"]
    assert line_with(text, "TSLA").split() == ["TSLA", "-", "0", "vacant", "-"]


def test_authority_marks_a_holder_the_membership_view_says_is_dead():
    text = text_of(
        authority_panel(
            exchange_snapshot(),
            fresh("exchange"),
            T0,
            member_states={"mm-1": "dead", "mm-2": "alive"},
        )
    )
    assert "mm-1 (dead)" in line_with(text, "AAPL")
    assert "(" not in line_with(text, "MSFT")


def test_quotes_show_each_leg_as_left_of_size_at_an_integer_price():
    text = text_of(quotes_panel(exchange_snapshot(), fresh("exchange"), T0 + 3))
    assert line_with(text, "MSFT").split() == [
        "MSFT",
        "mm-2",
        "7",
        "7/10@9990",
        "10/10@10010",
        "10000",
        "25.0s",
    ]
    assert "9990.0" not in text and "10000.0" not in text


def test_quotes_panel_says_when_there_are_none():
    text = text_of(quotes_panel(exchange_snapshot(quotes=()), fresh("exchange"), T0))
    assert "no active quotes" in text


def test_positions_show_net_version_and_last_fill():
    text = text_of(positions_panel(ledger_snapshot(), fresh("ledger"), T0))
    assert line_with(text, "MSFT").split() == ["MSFT", "-6", "4", "ex-0000000004"]
    assert line_with(text, "AAPL").split() == ["AAPL", "12", "9", "ex-0000000031"]
    assert text.index("AAPL") < text.index("MSFT")


def test_recent_fills_are_newest_first_with_the_total():
    text = text_of(fills_panel(exchange_snapshot(), fresh("exchange"), T0))
    rows = [line.split() for line in text.splitlines() if "MSFT" in line]
    assert [int(row[0]) for row in rows] == list(range(35, 25, -1))
    assert rows[0][2:] == ["MSFT", "buy", "3", "9990", "mm-1", "6"]
    assert "35 fills in all" in text


def test_exposure_shows_used_of_the_limit_per_side_with_a_bar():
    text = text_of(exposure_panel(ledger_snapshot(), fresh("ledger"), T0))
    assert line_with(text, "bid").split() == ["bid", "800/1000", "████████████████····", "80%"]
    assert line_with(text, "ask").split() == ["ask", "120/1000", "██··················", "12%"]
    assert "0 active reservations" in text


def test_the_usage_bar_never_hides_some_use_and_caps_at_full():
    assert usage_bar(1, 1000).plain == "█" + "·" * 19
    assert usage_bar(0, 1000).plain == "·" * 20
    assert usage_bar(1500, 1000).plain == "█" * 20
    assert usage_bar(None, 1000).plain == "·" * 20


def test_the_changes_panel_lists_each_line_or_says_none_yet():
    state = TradingState()
    assert "none seen yet" in text_of(changes_panel(state))
    trading.record_exchange(state, exchange_snapshot())
    trading.record_exchange(
        state, exchange_snapshot(polled_at=T0 + 1, authority=(held("MSFT", "mm-3", 8),))
    )
    text = text_of(changes_panel(state))
    assert "MSFT mm-3 epoch 8 (was mm-2 epoch 7)" in text


def test_stale_data_stays_on_screen_marked_with_its_age():
    status = fresh("ledger")
    trading.record_failure(status, "unreachable: connection refused")
    text = text_of(positions_panel(ledger_snapshot(), status, T0 + 3))
    assert "POSITIONS" in text and "stale 3.0s" in text
    assert "MSFT" in text  # the last good data is still shown
    line = text_of(source_line(status, T0 + 3))
    assert "unreachable: connection refused; showing data from 3.0s ago" in line


def test_a_source_never_read_says_why_instead_of_showing_data():
    status = SourceStatus("exchange")
    trading.record_failure(status, "no exchange in the membership view")
    for panel in (
        authority_panel(None, status, T0),
        quotes_panel(None, status, T0),
        fills_panel(None, status, T0),
    ):
        assert "no exchange in the membership view" in text_of(panel)
    assert "waiting for the ledger" in text_of(positions_panel(None, SourceStatus("ledger"), T0))


def test_the_source_line_says_when_the_view_has_the_source_dead():
    status = SourceStatus(
        "exchange", name="exchange", url="http://exchange.test:1", member_state="dead", last_ok=T0
    )
    trading.record_failure(status, "unreachable: connection refused")
    text = text_of(source_line(status, T0 + 1))
    assert "exchange http://exchange.test:1" in text and "dead in the view" in text


def full_state() -> TradingState:
    state = TradingState()
    authority = tuple(held(s, "mm-1", 6) for s in SYMBOLS)
    trading.record_exchange(
        state, exchange_snapshot(authority=authority, quotes=tuple(quote(s) for s in SYMBOLS))
    )
    trading.record_exchange(state, exchange_snapshot(authority=tuple(held(s, "mm-2", 7) for s in SYMBOLS)))
    trading.record_ledger(state, ledger_snapshot())
    state.exchange.url, state.ledger.url = "http://exchange.test:8001", "http://ledger.test:8002"
    return state


def test_the_view_fits_80_columns_stacked_and_160_columns_two_panels_a_row():
    state = full_state()
    narrow = text_of(trading_view(state, now=T0), width=80)
    assert max(len(line.rstrip()) for line in narrow.splitlines()) <= 80
    assert not any("AUTHORITY" in line and "ACTIVE QUOTES" in line for line in narrow.splitlines())
    wide = text_of(trading_view(state, now=T0), width=160)
    assert max(len(line.rstrip()) for line in wide.splitlines()) <= 160
    line_with(wide, "AUTHORITY ·", "ACTIVE QUOTES")
    line_with(wide, "POSITIONS", "EXPOSURE")
    line_with(wide, "RECENT FILLS", "AUTHORITY CHANGES")
    for text in (narrow, wide):
        for panel in (
            "AUTHORITY",
            "ACTIVE QUOTES",
            "POSITIONS",
            "EXPOSURE",
            "RECENT FILLS",
            "AUTHORITY CHANGES",
        ):
            assert panel in text
        assert "7/10@9990" in text and "NVDA mm-2 epoch 7 (was mm-1 epoch 6)" in text


def test_strings_from_the_cluster_are_drawn_as_text_never_as_markup():
    odd = {**held("MSFT", "[/bold]mm-9[red]", 2), "symbol": "[/]MSFT"}
    snap = exchange_snapshot(authority=(odd,), quotes=())
    status = SourceStatus("exchange")
    trading.record_failure(status, "bad answer: KeyError: ['x'] [/oops]")
    text = text_of(authority_panel(snap, fresh("exchange"), T0))
    assert "[/bold]mm-9[red]" in text and "[/]MSFT" in text
    assert "KeyError: ['x'] [/oops]" in text_of(authority_panel(None, status, T0))


def test_the_source_line_shows_a_role_conflict_and_the_sources_alarms():
    status = SourceStatus("ledger", name="ledger", url="http://ledger.test:1", member_state="alive", last_ok=T0)
    status.conflict = ("aaa-ledger",)
    status.alarms = {"outbox-refused": {"status": 400, "fill_seq": 349, "answer": "long text"}}
    text = text_of(source_line(status, T0 + 1))
    assert "also claimed by aaa-ledger" in text
    assert "ALARM outbox-refused: status 400, fill_seq 349" in text and "long text" not in text
