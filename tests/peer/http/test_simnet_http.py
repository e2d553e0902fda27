"""The real HTTP server and client over the simulated network's streams, in virtual time: what
the simulation of the whole cluster rests on (`net.listen` serves, `HttpClient(connect=...)`
dials)."""

from __future__ import annotations

import pytest
import trio

from gossip.simnet import SimNetwork
from peer.http.client import HttpClient, HttpError, HttpTimeout
from peer.http.server import HttpServer
from tests.peer.http.test_server import direct_orders, make_app

CLIENT = ("10.0.0.1", 7946)
SERVER = ("10.0.0.2", 7946)
SERVER_HTTP = ("10.0.0.2", 8080)
URL = "http://10.0.0.2:8080"


def sim_client(net: SimNetwork, **kw) -> HttpClient:
    async def connect(host: str, port: int) -> trio.abc.Stream:
        return await net.connect(CLIENT, (host, port))

    return HttpClient(URL, connect=connect, **kw)


async def start(nursery, delay: float = 0.01) -> tuple[SimNetwork, HttpServer]:
    net = SimNetwork(1, delay=delay)
    net.transport(CLIENT)
    net.transport(SERVER)
    server = HttpServer(make_app(), direct={("POST", b"/direct"): direct_orders})
    net.listen(SERVER_HTTP, server.serve_connection)
    await nursery.start(net.run)
    return net, server


async def test_calls_are_answered_over_one_kept_alive_simulated_connection(autojump_clock, nursery):
    net, server = await start(nursery)
    async with sim_client(net, max_connections=1) as client:
        started = trio.current_time()
        answer = await client.post("/echo/a", json={"i": 1})
        assert answer.status == 200 and answer.json()["body"] == '{"i":1}'
        # A round trip to connect, then one for the request.
        assert trio.current_time() - started == pytest.approx(0.04)
        assert (await client.post("/direct", json="x")).json() == {"got": '"x"'}
        assert (await client.get("/stream")).body == b"part0;part1;part2;"
    assert server.stats["connections"] == 1 and server.stats["requests"] == 3
    assert net.total_stats()["conns_out"] == 1


async def test_a_partition_times_the_call_out_and_the_next_call_after_heal_works(autojump_clock, nursery):
    net, server = await start(nursery)
    async with sim_client(net, timeout=2.0) as client:
        assert (await client.get("/echo/before")).ok
        net.partition([[CLIENT], [SERVER]])
        started = trio.current_time()
        with pytest.raises(HttpTimeout):
            await client.get("/echo/during")  # on the kept-alive connection: bytes held
        assert trio.current_time() - started == pytest.approx(2.0)
        with pytest.raises(HttpTimeout):
            await client.get("/echo/during")  # on a new connection: the connect is held
        net.heal()
        answer = await client.get("/echo/after")
        assert answer.ok and answer.json()["path"] == "/echo/after"


async def test_a_frozen_server_times_the_call_out_until_thawed(autojump_clock, nursery):
    net, _ = await start(nursery)
    async with sim_client(net, timeout=1.0) as client:
        net.freeze(SERVER)
        with pytest.raises(HttpTimeout):
            await client.get("/echo/frozen")
        net.thaw(SERVER)
        assert (await client.get("/echo/thawed")).ok


async def test_a_crashed_server_fails_calls_at_once_until_it_listens_again(autojump_clock, nursery):
    net, _ = await start(nursery)
    async with sim_client(net, timeout=5.0) as client:
        assert (await client.get("/echo/1")).ok
        net.remove(SERVER)
        started = trio.current_time()
        with pytest.raises(HttpError) as failed:
            await client.get("/echo/2")  # the kept-alive connection was closed, the retry refused
        assert not isinstance(failed.value, HttpTimeout)
        assert trio.current_time() - started < 0.1
        net.transport(SERVER)
        restarted = HttpServer(make_app())
        net.listen(SERVER_HTTP, restarted.serve_connection)
        assert (await client.get("/echo/3")).ok
        assert restarted.stats["requests"] == 1


async def test_a_connection_the_server_closed_when_idle_is_replaced_on_the_next_call(autojump_clock, nursery):
    net = SimNetwork(1, delay=0.01)
    net.transport(CLIENT)
    net.transport(SERVER)
    server = HttpServer(make_app(), idle_timeout=1.0)
    net.listen(SERVER_HTTP, server.serve_connection)
    await nursery.start(net.run)
    async with sim_client(net) as client:
        assert (await client.get("/echo/1")).ok
        await trio.sleep(5)  # the server closed the idle connection; its FIN came
        assert (await client.get("/echo/2")).ok  # the stale one is retried on a new one
    assert server.stats["connections"] == 2 and server.stats["requests"] == 2
