"""The peers' keep-alive HTTP client: answers, pooling, paths, retries, timeouts, errors.

Scripted servers read requests with h11 (tests/peer/http/h11_wire.py) and write raw answers,
right or wrong; no test has an HTTP parser of its own.
"""

from __future__ import annotations

import socket
import struct
from functools import partial

import pytest
import trio

import peer.http.wire
from peer.http.client import HttpClient, HttpError, HttpTimeout, path
from tests.peer.http.h11_wire import RawServerSide
from tests.peer.http.test_server import Gate, make_app, start_server


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
    app = make_app()
    gate: Gate = app.state.gate
    gate.expect = 2
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery, app)
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=2) as client:
            async with trio.open_nursery() as calls:
                for _ in range(6):
                    calls.start_soon(client.get, "/slow")
                await gate.started.wait()  # two requests are in, each on its own connection
                gate.release.set()
        assert server.stats["connections"] == 2
        assert server.stats["requests"] == 6
        shutdown.set()


# --- paths -----------------------------------------------------------------------------------


def test_path_percent_encodes_each_segment_whole():
    assert path("reservations", "r-1", "renew") == "/reservations/r-1/renew"
    assert path("quotes", "A/B?c d%\r\n") == "/quotes/A%2FB%3Fc%20d%25%0D%0A"
    assert path("fills", query={"after": 3, "wait": 1.5}) == "/fills?after=3&wait=1.5"
    assert path("x", 7) == "/x/7"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="segment"):
            path("reservations", bad, "renew")


async def test_an_id_with_slashes_and_spaces_reaches_the_server_as_one_segment():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        async with HttpClient(f"http://127.0.0.1:{port}") as client:
            answer = await client.get(path("echo", "a/b?c d%"))
            assert answer.json()["scope_path"] == "/echo/a/b?c d%" and answer.json()["query"] == {}
        shutdown.set()


@pytest.mark.parametrize("raw", ["/echo/a b", "/x\r\nX-Injected: 1", "/caf\u00e9", "echo/x", ""])
async def test_client_refuses_a_raw_path_that_is_not_printable_ascii(raw):
    async with HttpClient("http://127.0.0.1:9") as client:  # nothing is sent
        with pytest.raises(ValueError, match="path"):
            await client.get(raw)


# --- retries ---------------------------------------------------------------------------------


async def test_client_retries_once_when_a_kept_alive_connection_was_closed_by_the_server():
    closed = trio.Event()

    async def one_answer_then_close(stream: trio.SocketStream) -> None:
        """Answers one request without saying it will close, then closes."""
        assert await RawServerSide(stream).request() is not None
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, one_answer_then_close, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=1) as client:
            assert (await client.get("/a")).body == b"ok"
            await closed.wait()  # the kept-alive connection is closed before the next request
            assert (await client.get("/b")).body == b"ok"
        nursery.cancel_scope.cancel()


async def test_a_connection_reset_after_part_of_the_answer_is_never_retried():
    seen: list[str] = []

    async def answer_then_reset_midway(stream: trio.SocketStream) -> None:
        """The first request gets a whole answer; the second, part of one and then a reset."""
        server = RawServerSide(stream)
        while (request := await server.request()) is not None:
            seen.append(request.target.decode())
            if len(seen) == 2:
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\npart")
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                await stream.aclose()  # SO_LINGER 0: the close is a reset
                return
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            server.answered()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, answer_then_reset_midway, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with HttpClient(f"http://127.0.0.1:{port}", max_connections=1) as client:
            assert (await client.post("/orders", json={"n": 1})).body == b"ok"
            with pytest.raises(HttpError, match="connection lost"):
                await client.post("/orders", json={"n": 2})
        nursery.cancel_scope.cancel()
    assert seen == ["/orders", "/orders"]  # the second order went out once, never again


# --- answers the client must refuse ----------------------------------------------------------


def scripted(*answers: bytes):
    """A server that answers its connection's requests with `answers`, in order, then closes."""

    async def handler(stream: trio.SocketStream) -> None:
        server = RawServerSide(stream)
        for answer in answers:
            if await server.request() is None:
                return
            await stream.send_all(answer)
            server.answered()
        await stream.aclose()

    return handler


async def serve_script(nursery, *answers: bytes) -> str:
    listeners = await nursery.start(
        partial(trio.serve_tcp, scripted(*answers), 0, host="127.0.0.1")
    )
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_client_refuses_a_chunked_answer_without_the_crlf_after_a_chunk():
    async with trio.open_nursery() as nursery:
        url = await serve_script(
            nursery, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"
        )
        async with HttpClient(url) as client:
            with pytest.raises(HttpError, match="malformed answer"):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def test_client_reads_a_chunked_answer_with_trailers_and_stays_in_step():
    async with trio.open_nursery() as nursery:
        url = await serve_script(
            nursery,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
        )
        async with HttpClient(url, max_connections=1) as client:
            assert (await client.get("/a")).body == b"abc"
            assert (await client.get("/b")).body == b"next"
        nursery.cancel_scope.cancel()


async def test_client_refuses_a_chunked_answer_over_the_size_cap(monkeypatch):
    monkeypatch.setattr(peer.http.wire, "MAX_ANSWER", 1000)
    chunks = b"".join(b"12c\r\n" + b"x" * 300 + b"\r\n" for _ in range(4))
    async with trio.open_nursery() as nursery:
        url = await serve_script(
            nursery,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
        )
        async with HttpClient(url) as client:
            with pytest.raises(HttpError, match="larger than 1000"):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def test_client_reads_an_answer_delimited_by_the_close():
    async with trio.open_nursery() as nursery:
        url = await serve_script(nursery, b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        async with HttpClient(url) as client:
            assert (await client.get("/x")).body == b"until the end"
        nursery.cancel_scope.cancel()


async def test_client_refuses_an_answer_cut_short_by_the_close():
    async with trio.open_nursery() as nursery:
        url = await serve_script(nursery, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
        async with HttpClient(url) as client:
            with pytest.raises(HttpError, match="middle of an answer"):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def test_client_skips_100_continue_and_reads_the_answer():
    async with trio.open_nursery() as nursery:
        url = await serve_script(
            nursery,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        async with HttpClient(url) as client:
            answer = await client.post("/x", json={})
            assert (answer.status, answer.body) == (201, b"ok")
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


async def test_client_refuses_an_answer_that_is_not_http():
    async with trio.open_nursery() as nursery:
        url = await serve_script(nursery, b"SMTP ready\r\n\r\n")
        async with HttpClient(url) as client:
            with pytest.raises(HttpError, match="malformed answer"):
                await client.get("/x")
        nursery.cancel_scope.cancel()


async def test_client_reports_a_refused_connection_as_http_error():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    async with HttpClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(HttpError, match="cannot connect"):
            await client.get("/x")


async def test_a_closed_client_closes_its_connections_and_refuses_calls():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        client = HttpClient(f"http://127.0.0.1:{port}")
        assert (await client.get("/echo/x")).ok
        assert len(server.connections) == 1
        await client.aclose()
        with pytest.raises(HttpError, match="closed"):
            await client.get("/echo/y")
        shutdown.set()


def test_client_needs_an_http_url():
    with pytest.raises(ValueError, match="http://"):
        HttpClient("https://example.com")
