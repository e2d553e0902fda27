"""The peers' keep-alive HTTP client: answers, pooling, stale connections, timeouts, errors."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from peer.http.client import HttpClient, HttpError, HttpTimeout
from tests.peer.http.test_server import start_server


async def test_client_posts_json_and_reuses_one_connection():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=1) as client:
            for i in range(5):
                answer = await client.post(f"/echo/{i}", json={"i": i})
                assert answer.status == 200 and answer.ok
                assert answer.json()["body"] == f'{{"i":{i}}}'
            got = await client.get("/echo/q?a=1")
            assert got.json()["query"] == {"a": "1"}
        assert server.stats["connections"] == 1
        shutdown.set()


async def test_client_reads_a_chunked_answer():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        async with HttpClient(f"http://127.0.0.1:{port}") as client:
            answer = await client.get("/stream")
            assert answer.body == b"part0;part1;part2;"
        shutdown.set()


async def test_client_bounds_concurrent_connections():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=2) as client:
            async with trio.open_nursery() as calls:
                for _ in range(6):
                    calls.start_soon(client.get, "/slow")
        assert server.stats["connections"] == 2
        assert server.stats["requests"] == 6
        shutdown.set()


async def one_answer_then_close(stream: trio.SocketStream) -> None:
    """A server that answers one request without saying it will close, then closes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await stream.aclose()


async def test_client_retries_once_when_a_kept_alive_connection_was_closed_by_the_server():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, one_answer_then_close, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=1) as client:
            assert (await client.get("/a")).body == b"ok"
            await trio.sleep(0.05)  # the server has closed the kept-alive connection by now
            assert (await client.get("/b")).body == b"ok"
        nursery.cancel_scope.cancel()


async def never_answer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_client_times_out_with_http_timeout():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with HttpClient(f"http://127.0.0.1:{port}", timeout=0.2) as client:
            with pytest.raises(HttpTimeout):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def garbage(stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    await stream.send_all(b"SMTP ready\r\n\r\n")
    await stream.aclose()


async def test_client_refuses_an_answer_that_is_not_http():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with HttpClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(HttpError, match="status line"):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def test_client_reports_a_refused_connection_as_http_error():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    async with HttpClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(HttpError, match="cannot connect"):
            await client.get("/x")


def test_client_needs_an_http_url():
    with pytest.raises(ValueError, match="http://"):
        HttpClient("https://example.com")
