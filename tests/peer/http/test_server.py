"""The peer's HTTP/1.1 server: parsing, keep-alive, pipelining, refusals, streaming, shutdown."""

from __future__ import annotations

import json

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from peer.http.server import MAX_BODY, BadRequest, HttpServer, parse_head

# --- parse_head ----------------------------------------------------------------------------------


def test_parse_head_reads_method_path_query_and_length():
    req = parse_head(b"POST /orders/a%20b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nContent-Length: 12")
    assert (req.method, req.raw_path, req.query) == ("POST", b"/orders/a%20b", b"x=1&y=2")
    assert req.content_length == 12
    assert req.headers == [(b"host", b"h"), (b"content-length", b"12")]
    assert req.keep_alive


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [
        (b"HTTP/1.1", b"", True),
        (b"HTTP/1.1", b"Connection: close", False),
        (b"HTTP/1.1", b"Connection: keep-alive, Upgrade", True),
        (b"HTTP/1.0", b"", False),
        (b"HTTP/1.0", b"Connection: Keep-Alive", True),
    ],
)
def test_parse_head_keep_alive_follows_version_and_connection_header(version, connection, keep):
    head = b"GET / " + version + (b"\r\n" + connection if connection else b"")
    assert parse_head(head).keep_alive is keep


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"GET /", 400, "request line"),
        (b"GET / HTTP/2.0", 505, "not supported"),
        (b"GET / SPDY/3", 400, "HTTP/1.1"),
        (b"G(T / HTTP/1.1", 400, "method"),
        (b"GET http://x/ HTTP/1.1", 400, "target"),
        (b"GET /\x7f HTTP/1.1", 400, "target"),
        (b"GET / HTTP/1.1\r\nno-colon-here", 400, "malformed header"),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded", 400, "malformed header"),
        (b"GET / HTTP/1.1\r\nbad name: x", 400, "malformed header"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4", 400, "conflicting"),
        (b"POST / HTTP/1.1\r\nContent-Length: -3", 400, "non-negative"),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10", 400, "non-negative"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 411, "Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: %d" % (MAX_BODY + 1), 413, "larger"),
        (b"GET / HTTP/1.1\r\nExpect: magic", 417, "100-continue"),
        (b"GET / HTTP/1.1" + b"\r\nx: y" * 101, 431, "header fields"),
    ],
)
def test_parse_head_refuses_malformed_requests_with_a_status_and_reason(head, status, words):
    with pytest.raises(BadRequest) as info:
        parse_head(head)
    assert info.value.status == status
    assert words in str(info.value)


def test_parse_head_allows_identical_repeated_content_length():
    assert parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3").content_length == 3


# --- a real server on loopback -------------------------------------------------------------------


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {"method": request.method, "path": request.url.path, "query": dict(request.query_params), "body": body.decode()}
    )


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


async def stream(request: Request) -> Response:
    async def parts():
        for i in range(3):
            yield f"part{i};".encode()
            await trio.sleep(0)

    return StreamingResponse(parts(), media_type="text/plain")


async def slow(request: Request) -> Response:
    await trio.sleep(0.3)
    return JSONResponse({"slow": "done"})


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT"]),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/slow", slow),
        ]
    )


async def start_server(nursery, app=None):
    shutdown = trio.Event()
    server = HttpServer(app or make_app())
    url = await nursery.start(server.serve, ("127.0.0.1", 0), shutdown)
    port = int(url.rsplit(":", 1)[1])
    return server, port, shutdown


async def read_answers(stream: trio.SocketStream, n: int) -> list[tuple[int, dict, bytes]]:
    """Read n answers with Content-Length or chunked bodies; returns (status, headers, body)."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, f"closed after {len(out)} answers: {buf!r}"
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {k.lower().decode(): v.strip().decode() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if status == 100:
            continue
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    buf += await stream.receive_some(65536)
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(buf) < size + 2:
                    buf += await stream.receive_some(65536)
                body += buf[:size]
                buf = buf[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            body, buf = buf[:length], buf[length:]
        out.append((status, headers, body))
    return out


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    buf = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            buf += data
    return buf


async def test_server_keeps_a_connection_alive_across_requests_and_decodes_the_path():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        for i in range(3):
            body = json.dumps({"i": i}).encode()
            await s.send_all(b"POST /echo/a%%20b?x=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body))
            [(status, headers, answer)] = await read_answers(s, 1)
            assert status == 200
            assert json.loads(answer) == {"method": "POST", "path": "/echo/a b", "query": {"x": str(i)}, "body": body.decode()}
        assert server.stats["connections"] == 1
        assert server.stats["requests"] == 3
        await s.aclose()
        shutdown.set()


async def test_server_answers_pipelined_requests_in_order():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        answers = await read_answers(s, 5)
        assert [json.loads(b)["path"] for _, _, b in answers] == [f"/echo/{i}" for i in range(5)]
        await s.aclose()
        shutdown.set()


async def test_server_refuses_a_malformed_request_with_json_and_closes_and_keeps_serving():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"POST /echo/x HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        raw = await read_to_eof(s)
        assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"connection: close" in raw
        assert "Content-Length" in json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
        assert server.stats["bad_requests"] == 1
        s2 = await trio.open_tcp_stream("127.0.0.1", port)
        await s2.send_all(b"GET /echo/ok HTTP/1.1\r\n\r\n")
        [(status, _, _)] = await read_answers(s2, 1)
        assert status == 200
        await s2.aclose()
        shutdown.set()


async def test_server_refuses_an_oversized_head_with_431():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET /echo/x HTTP/1.1\r\nX-Big: " + b"a" * 70_000)
        raw = await read_to_eof(s)
        assert raw.startswith(b"HTTP/1.1 431 ")
        shutdown.set()


async def test_server_sends_100_continue_before_reading_an_expected_body():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"POST /echo/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        with trio.fail_after(2):
            interim = await s.receive_some(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await s.send_all(b"abcd")
        [(status, _, body)] = await read_answers(s, 1)
        assert status == 200 and json.loads(body)["body"] == "abcd"
        shutdown.set()


async def raising_asgi_app(scope, receive, send):
    if scope["path"] == "/boom":
        raise RuntimeError("handler bug")
    await make_app()(scope, receive, send)


async def test_server_turns_a_handler_exception_into_500_json_and_stays_up():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery, raising_asgi_app)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET /boom HTTP/1.1\r\n\r\n")
        raw = await read_to_eof(s)
        assert raw.startswith(b"HTTP/1.1 500 ")
        assert "internal" in json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"].lower()
        assert server.stats["app_errors"] == 1
        s2 = await trio.open_tcp_stream("127.0.0.1", port)
        await s2.send_all(b"GET /echo/after HTTP/1.1\r\n\r\n")
        [(status, _, _)] = await read_answers(s2, 1)
        assert status == 200
        shutdown.set()


async def test_server_streams_a_response_without_length_as_chunks_then_serves_the_next():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET /stream HTTP/1.1\r\n\r\nGET /echo/next HTTP/1.1\r\n\r\n")
        (status, headers, body), (status2, _, body2) = await read_answers(s, 2)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b"part0;part1;part2;"
        assert json.loads(body2)["path"] == "/echo/next"
        shutdown.set()


async def test_server_answers_head_with_headers_only():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"HEAD /echo/x HTTP/1.1\r\n\r\nGET /echo/y HTTP/1.1\r\n\r\n")
        buf = b""
        while buf.count(b"HTTP/1.1 200") < 2 or not buf.endswith(b"}"):
            buf += await s.receive_some(65536)
        first, second = buf.split(b"HTTP/1.1 200", 2)[1:]
        assert first.endswith(b"\r\n\r\n")  # nothing after the HEAD answer's headers
        assert b'"/echo/y"' in second
        shutdown.set()


async def test_server_http10_request_gets_an_answer_and_a_close():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET /echo/old HTTP/1.0\r\n\r\n")
        raw = await read_to_eof(s)
        assert raw.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in raw
        shutdown.set()


async def test_shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(b"GET /echo/warm HTTP/1.1\r\n\r\n")
        await read_answers(idle, 1)
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(b"GET /slow HTTP/1.1\r\n\r\n")
        await trio.sleep(0.05)
        shutdown.set()
        raw = await read_to_eof(busy)
        assert raw.startswith(b"HTTP/1.1 200 ") and b'"done"' in raw
        assert b"connection: close" in raw
        assert await read_to_eof(idle) == b""
    assert not server.connections
