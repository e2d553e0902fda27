"""The live dashboard (`viz/top.py`): what it shows, when the peer answers and when it does not."""

from __future__ import annotations

import io
import socket

import trio
from rich.console import Console

from peer.http.endpoints import PeerHandle, create_app, serve_http
from tests.peer.fakes import FakeNode
from viz.top import TopState, render, run_top

from .fake_cluster import EXCHANGE_URL, PEER_URL, fake_cluster


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def recording_console() -> Console:
    return Console(record=True, width=140, file=io.StringIO(), force_terminal=False)


def text_of(renderable) -> str:
    console = recording_console()
    console.print(renderable)
    return console.export_text()


async def start_fake_peer(nursery, name: str) -> str:
    handle = PeerHandle(role="mm", profile="local", node=FakeNode(name), clock_offset=1e9)
    return await nursery.start(serve_http, create_app(handle), ("127.0.0.1", 0), trio.Event())


ROWS = [
    {"name": "mm-1", "addr": "127.0.0.1:1", "role": "mm", "state": "alive", "incarnation": 1},
    {"name": "mm-2", "addr": "127.0.0.1:2", "role": "mm", "state": "dead", "incarnation": 1},
]


def test_header_names_the_polled_peer_and_counts_states():
    state = TopState(url="http://p:1", peer_name="mm-1", rows=ROWS, last_ok=100.0)
    text = text_of(render(state, now=100.5))
    assert "view of mm-1 (http://p:1)" in text
    assert "1 alive 0 suspect 1 dead 0 left" in text
    assert "mm-2" in text and "dead" in text
    assert "Ctrl-C" in text


def test_an_unreachable_peer_is_shown_with_the_age_of_the_last_good_view():
    state = TopState(
        url="http://p:1",
        peer_name="mm-1",
        rows=ROWS,
        last_ok=100.0,
        error="http://p:1 unreachable: connection refused",
    )
    text = text_of(render(state, now=103.0))
    assert "http://p:1 unreachable: connection refused" in text
    assert "showing the view from 3.0s ago" in text
    assert "mm-2" in text  # the last view stays on screen


async def test_top_shows_the_peers_view_and_keeps_redrawing():
    console = recording_console()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await start_fake_peer(nursery, "mm-1")
            state = await run_top(
                lambda: [url], console=console, frames=6, poll_interval=0.05, redraws_per_second=20
            )
            nursery.cancel_scope.cancel()
    assert state.error is None
    assert state.peer_name == "mm-1"
    assert state.polls >= 2
    text = console.export_text()
    for name in ("exchange", "ledger", "mm-1", "mm-2", "mm-3", "mm-4"):
        assert name in text
    assert "suspect" in text and "dead" in text and "left" in text


async def test_top_keeps_running_when_the_peer_is_unreachable():
    console = recording_console()
    url = closed_url()
    with trio.fail_after(15):
        state = await run_top(
            lambda: [url], console=console, frames=4, poll_interval=0.05, redraws_per_second=20
        )
    assert state.rows is None
    assert state.error is not None and "unreachable" in state.error
    assert "unreachable" in console.export_text()


async def test_top_fails_over_to_the_next_peer_of_the_cluster():
    console = recording_console()
    dead = closed_url()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            live = await start_fake_peer(nursery, "mm-2")
            state = await run_top(
                lambda: [dead, live],
                console=console,
                frames=8,
                poll_interval=0.05,
                redraws_per_second=20,
            )
            nursery.cancel_scope.cancel()
    assert state.url == live
    assert state.peer_name == "mm-2"
    assert state.error is None
    assert "view of mm-2" in console.export_text()


async def test_top_draws_the_trading_panels_from_the_exchange_and_ledger_in_the_view(
    autojump_clock,
):
    router, exchange, _, _ = fake_cluster()
    exchange.hold("MSFT", "mm-1", 6)
    exchange.quote("MSFT", "mm-1", 6)
    exchange.add_fills(12)
    console = recording_console()

    async def take_over_midway() -> None:
        await trio.sleep(1.0)
        exchange.hold("MSFT", "mm-2", 7)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_over_midway)
        state = await run_top(lambda: [PEER_URL], console=console, frames=40, transport=router)
    assert state.trading.exchange.error is None and state.trading.ledger.error is None
    text = console.export_text()
    for panel in ("AUTHORITY", "ACTIVE QUOTES", "POSITIONS", "EXPOSURE", "RECENT FILLS"):
        assert panel in text
    assert "7/10@9990" in text and "800/1000" in text and "ex-0000000004" in text
    assert [c.line().split(" ", 1)[1] for c in state.trading.changes] == [
        "MSFT mm-2 epoch 7 (was mm-1 epoch 6)"
    ]
    assert "MSFT mm-2 epoch 7 (was mm-1 epoch 6)" in text


async def test_top_keeps_running_when_the_exchange_dies_and_shows_it(autojump_clock):
    router, exchange, _, _ = fake_cluster()
    exchange.hold("MSFT", "mm-1", 6)
    console = recording_console()

    async def kill_exchange() -> None:
        await trio.sleep(1.0)
        router.down.add(EXCHANGE_URL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_exchange)
        state = await run_top(lambda: [PEER_URL], console=console, frames=40, transport=router)
    assert state.trading.exchange.error == "unreachable: connection refused"
    assert state.trading.exchange_data is not None  # the last good view stays
    assert state.trading.ledger.error is None
    last_frame = text_of(render(state, now=state.trading.exchange.last_ok + 9))
    assert "unreachable: connection refused; showing data from 9.0s ago" in last_frame
    assert "AUTHORITY · exchange · stale 9.0s" in last_frame
    assert "800/1000" in last_frame  # the ledger's panels keep their data
