"""The load client (`murmur flow`) against a real exchange HTTP server on port 0."""

from __future__ import annotations

from functools import partial

import trio

from peer.exchange.api import exchange_routes
from peer.exchange.service import ExchangeService
from peer.http.endpoints import PeerHandle, create_app, serve_http
from peer.tools.loadgen import run_load
from tests.peer.fakes import FakeNode


async def test_load_client_sends_orders_concurrently_and_every_one_is_answered(tmp_path):
    service = ExchangeService(tmp_path, symbols=["AAPL", "MSFT"])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            app = create_app(PeerHandle(role="exchange", profile="local", node=FakeNode("exchange")), exchange_routes())
            app.state.exchange = service
            stop = trio.Event()
            url = await nursery.start(partial(serve_http, app, ("127.0.0.1", 0), stop))
            report = await run_load(url, ["AAPL", "MSFT"], concurrency=4, count=200, duration=20)
            assert report.sent == 200 and report.errors == 0
            assert sum(report.by_status.values()) == 200
            assert set(report.by_status) <= {200, 201}
            assert len(service.core.orders) == 200, "every order reached the book exactly once"
            stop.set()
            nursery.cancel_scope.cancel()
