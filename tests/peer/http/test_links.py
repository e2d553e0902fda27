"""The HTTP client and server obeying a peer's link filter (peer/faults/links.py), over real
loopback sockets on trio's virtual clock: the x-murmur-peer header, calls to a cut peer that
time out, requests from a cut peer that get no answer."""

from __future__ import annotations

import random

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer.faults.links import LinkFilter
from peer.http.client import HttpClient, HttpError, HttpTimeout
from tests.peer.http.test_server import start_server


async def headers(request: Request) -> JSONResponse:
    return JSONResponse({"peer": request.headers.get("x-murmur-peer"),
                         "count": len(request.headers.getlist("x-murmur-peer"))})


def app() -> Starlette:
    return Starlette(routes=[Route("/headers", headers, methods=["GET", "POST"])])


def cut(name: str, port: int, **effect) -> dict:
    effect = effect or {"cut": True}
    return {"id": "p-1", "peers": [{"name": name, "gossip": "127.0.0.1:1", "http": f"http://127.0.0.1:{port}"}],
            **effect}


async def test_a_client_with_a_sender_names_it_on_every_request(nursery, autojump_clock):
    _, port, shutdown = await start_server(nursery, app())
    async with HttpClient(f"http://127.0.0.1:{port}", sender="mm-1") as named, \
            HttpClient(f"http://127.0.0.1:{port}") as anonymous:
        for _ in range(2):
            assert (await named.get("/headers")).json() == {"peer": "mm-1", "count": 1}
            assert (await named.post("/headers", json={"x": 1})).json() == {"peer": "mm-1", "count": 1}
        assert (await anonymous.get("/headers")).json() == {"peer": None, "count": 0}
    shutdown.set()


@pytest.mark.parametrize("sender", ["", "mm 1", "mm-1\r\nx-evil: 1", "é"])
def test_a_sender_that_is_no_header_value_is_refused(sender):
    with pytest.raises(ValueError):
        HttpClient("http://127.0.0.1:1", sender=sender)


async def test_a_call_to_a_cut_peer_never_connects_and_times_out_at_its_deadline(nursery, autojump_clock):
    server, port, shutdown = await start_server(nursery, app())
    links = LinkFilter(random.Random(1))
    async with HttpClient(f"http://127.0.0.1:{port}", timeout=1.5, links=links, sender="mm-1") as client:
        assert (await client.get("/headers")).status == 200  # a kept-alive connection is left idle
        links.set(cut("exchange", port, direction="in", cut=True))
        begun = trio.current_time()
        with pytest.raises(HttpTimeout):
            await client.get("/headers")
        assert trio.current_time() - begun == pytest.approx(1.5)
        with pytest.raises(HttpTimeout):
            await client.post("/headers", json={}, timeout=0.25)
        assert server.stats["requests"] == 1
        # Degraded instead: the call is late by the delay, once each way.
        links.set(cut("exchange", port, delay_ms=100))
        begun = trio.current_time()
        assert (await client.get("/headers")).status == 200
        assert trio.current_time() - begun == pytest.approx(0.2, abs=0.01)
        links.clear()
        assert (await client.get("/headers")).status == 200
    shutdown.set()


async def test_a_client_to_another_url_is_not_affected(nursery, autojump_clock):
    _, port, shutdown = await start_server(nursery, app())
    links = LinkFilter(random.Random(1))
    links.set(cut("exchange", port + 1 if port < 65535 else port - 1))
    async with HttpClient(f"http://127.0.0.1:{port}", timeout=1.0, links=links) as client:
        assert (await client.get("/headers")).status == 200
    shutdown.set()


async def test_the_server_drops_a_request_from_a_cut_peer_and_answers_the_others(nursery, autojump_clock):
    links = LinkFilter(random.Random(1))
    server, port, shutdown = await start_server(nursery, app(), links=links)
    url = f"http://127.0.0.1:{port}"
    async with HttpClient(url, sender="mm-3") as mm3, HttpClient(url, sender="mm-4") as mm4, \
            HttpClient(url) as operator:
        assert (await mm3.get("/headers")).status == 200
        links.set(cut("mm-3", 1))
        # On the kept-alive connection, then (the client's one retry) on a new one: no answer.
        with pytest.raises(HttpError, match="connection lost"):
            await mm3.get("/headers")
        assert server.stats["filtered"] == 2
        assert (await mm4.get("/headers")).json()["peer"] == "mm-4"
        assert (await operator.get("/headers")).json()["peer"] is None
        assert server.stats["requests"] == 3
        # A degraded link is the client's business: the server answers.
        links.set(cut("mm-3", 1, loss=0.5))
        assert (await mm3.get("/headers")).status == 200
    shutdown.set()


async def test_the_server_judges_the_filter_by_its_own_clock(nursery, autojump_clock):
    """`HttpServer(clock=)`: the instant a cut rule is judged at is the server's clock (a
    simulation's), never the wall's."""
    asked: list[tuple[str, float]] = []

    class Recording:
        def blocks_name(self, name: str, now: float) -> bool:
            asked.append((name, now))
            return False

    server, port, shutdown = await start_server(nursery, app(), links=Recording(), clock=lambda: 1234.5)
    async with HttpClient(f"http://127.0.0.1:{port}", sender="mm-1") as client:
        assert (await client.get("/headers")).status == 200
    assert asked == [("mm-1", 1234.5)]
    shutdown.set()
