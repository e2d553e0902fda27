"""The peer's HTTP/1.1 server: keep-alive, pipelining, refusals, streaming, limits, shutdown.

Answers are read with h11 (tests/peer/http/h11_wire.py), never with a parser of the test's own.
Timing is ordered with events and trio's virtual clock; real sockets where the kernel matters.
"""

from __future__ import annotations

import json

import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from peer.http.limits import LimitsConfig, rate_limited
from peer.http.server import REQUEST_TIMEOUT, WRITE_TIMEOUT, HttpServer
from peer.tools.processes import poll_until
from tests.peer.http.h11_wire import RawClient

# --- the app under test --------------------------------------------------------------------------


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "body": body.decode(),
            "scope_path": request.scope["path"],
        }
    )


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


async def stream(request: Request) -> Response:
    async def parts():
        for i in range(3):
            yield f"part{i};".encode()
            await trio.lowlevel.checkpoint()

    return StreamingResponse(parts(), media_type="text/plain")


class Gate:
    """Lets a test hold `/slow` in the middle of requests: `started` is set once `expect` of
    them have begun, and each answers once `release` is set."""

    def __init__(self) -> None:
        self.expect = 1
        self.arrived = 0
        self.started = trio.Event()
        self.release = trio.Event()


async def slow(request: Request) -> Response:
    gate: Gate = request.app.state.gate
    gate.arrived += 1
    if gate.arrived >= gate.expect:
        gate.started.set()
    await gate.release.wait()
    return JSONResponse({"slow": "done"})


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT"]),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/slow", slow),
        ]
    )
    app.state.gate = Gate()
    return app


async def direct_orders(body: bytes) -> tuple[int, bytes]:
    if body == b"crash":
        raise ValueError("handler bug")
    return 201, json.dumps({"got": body.decode()}).encode()


async def start_server(nursery, app=None, **limits):
    shutdown = trio.Event()
    server = HttpServer(app or make_app(), direct={("POST", b"/direct"): direct_orders}, **limits)
    url = await nursery.start(server.serve, ("127.0.0.1", 0), shutdown)
    port = int(url.rsplit(":", 1)[1])
    return server, port, shutdown


async def connect(port: int) -> RawClient:
    return RawClient(await trio.open_tcp_stream("127.0.0.1", port))


# --- over real sockets ---------------------------------------------------------------------------


async def test_server_keeps_a_connection_alive_across_requests_and_decodes_the_path():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        c = await connect(port)
        for i in range(3):
            body = json.dumps({"i": i}).encode()
            await c.send(
                b"POST /echo/a%%20b?x=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                % (i, len(body), body)
            )
            reply = await c.reply()
            assert reply.status == 200
            assert reply.json() == {
                "method": "POST",
                "path": "/echo/a b",
                "query": {"x": str(i)},
                "body": body.decode(),
                "scope_path": "/echo/a b",
            }
        assert server.stats["connections"] == 1
        assert server.stats["requests"] == 3
        await c.stream.aclose()
        shutdown.set()


async def test_server_answers_pipelined_requests_in_order():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        replies = await c.replies(5)
        assert [r.json()["path"] for r in replies] == [f"/echo/{i}" for i in range(5)]
        shutdown.set()


async def test_server_answers_a_direct_route_without_the_app_and_keeps_the_connection():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(
            b"POST /direct HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            b"POST /direct HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\ncrash"
        )
        first, second = await c.replies(2)
        assert (first.status, first.json()) == (201, {"got": "hi"})
        assert second.status == 500 and "internal" in second.json()["error"]
        assert second.headers["connection"] == "close" and await c.closed()
        assert server.stats["app_errors"] == 1
        shutdown.set()


async def test_server_refuses_a_malformed_request_with_json_and_closes_and_keeps_serving():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n")
        reply = await c.reply()
        assert reply.status == 400 and reply.headers["connection"] == "close"
        assert "Content-Length" in reply.json()["error"]
        assert await c.closed()
        assert server.stats["bad_requests"] == 1
        c2 = await connect(port)
        await c2.send(b"GET /echo/ok HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await c2.reply()).status == 200
        shutdown.set()


async def test_server_refuses_an_http11_request_without_host_with_400():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(b"GET /echo/x HTTP/1.1\r\n\r\n")
        reply = await c.reply()
        assert reply.status == 400 and "Host" in reply.json()["error"]
        assert await c.closed()
        # HTTP/1.0 has no Host requirement.
        c2 = await connect(port)
        await c2.send(b"GET /echo/old HTTP/1.0\r\n\r\n")
        assert (await c2.reply()).status == 200
        shutdown.set()


async def test_server_refuses_an_oversized_head_with_431():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000)
        reply = await c.reply()
        assert reply.status == 431 and await c.closed()
        shutdown.set()


async def test_server_sends_100_continue_before_reading_an_expected_body():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(
            b"POST /echo/x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        with trio.fail_after(2):
            interim = await c.reply("POST", interim=True)
        assert interim.status == 100
        await c.send(b"abcd")
        reply = await c.reply("POST")
        assert reply.status == 200 and reply.json()["body"] == "abcd"
        shutdown.set()


async def raising_asgi_app(scope, receive, send):
    if scope["path"] == "/boom":
        raise RuntimeError("handler bug")
    await make_app()(scope, receive, send)


async def test_server_turns_a_handler_exception_into_500_json_and_stays_up():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery, raising_asgi_app)
        c = await connect(port)
        await c.send(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = await c.reply()
        assert reply.status == 500 and "internal" in reply.json()["error"].lower()
        assert await c.closed()
        assert server.stats["app_errors"] == 1
        c2 = await connect(port)
        await c2.send(b"GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await c2.reply()).status == 200
        shutdown.set()


async def test_server_streams_a_response_without_length_as_chunks_then_serves_the_next():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(
            b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first, second = await c.replies(2)
        assert first.status == 200 and first.headers["transfer-encoding"] == "chunked"
        assert first.body == b"part0;part1;part2;"
        assert second.json()["path"] == "/echo/next"
        shutdown.set()


async def test_server_answers_head_with_headers_only():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(
            b"HEAD /echo/x HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/y HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        head = await c.reply("HEAD")
        # h11 reads the GET's answer next: any byte after the HEAD answer's headers would
        # have been taken for the start of it, and refused.
        get = await c.reply("GET")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
        assert get.json()["path"] == "/echo/y"
        shutdown.set()


async def test_server_http10_request_gets_an_answer_and_a_close():
    async with trio.open_nursery() as nursery:
        _, port, shutdown = await start_server(nursery)
        c = await connect(port)
        await c.send(b"GET /echo/old HTTP/1.0\r\n\r\n")
        reply = await c.reply()
        assert reply.status == 200 and reply.headers["connection"] == "close"
        assert await c.closed()
        shutdown.set()


async def test_server_over_its_connection_cap_answers_503_and_closes():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery, max_connections=1)
        first = await connect(port)
        await first.send(b"GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await first.reply()).status == 200  # answered: it holds the only place
        second = await connect(port)
        await second.send(b"GET /echo/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = await second.reply()
        assert reply.status == 503 and reply.headers["connection"] == "close"
        assert await second.closed()
        assert server.stats["refused_over_cap"] == 1 and len(server.connections) == 1
        await first.send(b"GET /echo/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await first.reply()).status == 200  # the one it holds is untouched
        shutdown.set()


def limited_app() -> Starlette:
    """The test app with `/echo/...` POSTs and the direct `/direct` route marked rate-limited."""
    app = make_app()
    app.router.routes[:0] = [rate_limited(Route("/echo/{rest:path}", echo, methods=["POST"])),
                             rate_limited(Route("/direct", echo, methods=["POST"]))]
    return app


# Loopback is exempt by default; these tests' client is on 127.0.0.1, so they limit it by name.
STRICT = {"exempt": (), "rate": 0.001}


async def test_a_client_over_its_rate_gets_429_json_naming_the_limit_and_keeps_its_connection():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(
            nursery, limited_app(), limits_config=LimitsConfig(burst=2, **STRICT))
        c = await connect(port)
        post = b"POST /direct HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"
        for _ in range(2):
            await c.send(post)
            assert (await c.reply("POST")).status == 201  # the direct handler answers
        await c.send(post)
        reply = await c.reply("POST")
        assert reply.status == 429 and int(reply.headers["retry-after"]) >= 1
        answer = json.loads(reply.body)
        assert answer["limit"] == "rate" and answer["retry_after"] > 0 and "requests a second" in answer["error"]
        await c.send(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert (await c.reply("POST")).status == 429  # the app's marked route shares the bucket
        await c.send(b"GET /echo/read HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await c.reply()).status == 200  # unmarked routes, same connection: untouched
        assert server.stats["rate_limited"] == 2 and server.stats["requests"] == 5
        shutdown.set()


async def test_a_client_on_loopback_is_not_rate_limited_by_default():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(
            nursery, limited_app(), limits_config=LimitsConfig(rate=0.001, burst=1))
        c = await connect(port)
        for i in range(5):
            await c.send(b"POST /direct HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % i)
            assert (await c.reply("POST")).status == 201
        assert server.stats["rate_limited"] == 0
        shutdown.set()


async def test_a_client_over_its_connection_cap_gets_429_and_its_place_comes_back_on_close():
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(
            nursery, limits_config=LimitsConfig(connections=1, **STRICT))
        first = await connect(port)
        await first.send(b"GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await first.reply()).status == 200
        second = await connect(port)
        await second.send(b"GET /echo/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = await second.reply()
        assert reply.status == 429 and reply.headers["connection"] == "close"
        assert json.loads(reply.body)["limit"] == "connections"
        assert await second.closed()
        assert server.stats["refused_client_connections"] == 1
        await first.stream.aclose()
        await poll_until(lambda: not server.connections, 5.0, "the first connection forgotten")
        third = await connect(port)
        await third.send(b"GET /echo/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await third.reply()).status == 200
        shutdown.set()


async def test_shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections():
    app = make_app()
    gate: Gate = app.state.gate
    async with trio.open_nursery() as nursery:
        server, port, shutdown = await start_server(nursery, app)
        idle = await connect(port)
        await idle.send(b"GET /echo/warm HTTP/1.1\r\nHost: t\r\n\r\n")
        await idle.reply()
        busy = await connect(port)
        await busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await gate.started.wait()
        shutdown.set()
        # The server has marked every connection closing and cut the idle one: all wait now.
        await trio.testing.wait_all_tasks_blocked()
        gate.release.set()
        reply = await busy.reply()
        assert reply.status == 200 and reply.json() == {"slow": "done"}
        assert reply.headers["connection"] == "close"
        assert await idle.closed()
    assert not server.connections


# --- over memory streams, on trio's virtual clock ------------------------------------------------


async def test_a_client_that_stops_reading_loses_its_connection_after_the_write_limit(
    autojump_clock,
):
    client, server_side = trio.testing.lockstep_stream_pair()  # a write waits for a read
    server = HttpServer(make_app())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(WRITE_TIMEOUT + 5):
            await server.serve_connection(server_side)  # returns once it gives up on the client
    assert trio.current_time() >= WRITE_TIMEOUT
    assert server.stats["write_timeouts"] == 1 and not server.connections


async def test_one_deadline_covers_a_requests_head_and_body(autojump_clock):
    client, server_side = trio.testing.memory_stream_pair()
    server = HttpServer(make_app())
    third = REQUEST_TIMEOUT * 0.6
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_side)
        await client.send_all(b"POST /echo/x HTTP/1.1\r\nHost: t\r\n")
        await trio.sleep(third)  # a slow client: each part on its own would be in time
        await client.send_all(b"Content-Length: 4\r\n\r\n")
        await trio.sleep(third)
        try:
            await client.send_all(b"abcd")
        except trio.BrokenResourceError:
            pass
        reply = await RawClient(client).reply("POST")
        assert reply.status == 408
        assert server.stats["timeouts"] == 1


async def test_a_kept_alive_connection_idle_past_the_limit_is_closed_quietly(autojump_clock):
    client, server_side = trio.testing.memory_stream_pair()
    server = HttpServer(make_app(), idle_timeout=75.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_side)
        raw = RawClient(client)
        await raw.send(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await raw.reply()).status == 200
        answered = trio.current_time()
        assert await raw.closed(within=100)
        assert trio.current_time() - answered >= 75.0
        assert server.stats["timeouts"] == 0


def asgi_answer(status: int, headers: list[tuple[bytes, bytes]], *bodies: bytes):
    """A raw ASGI app that sends `bodies` as separate messages (Starlette would fix the length)."""

    async def app(scope, receive, send):
        if scope["path"] != "/raw":
            await make_app()(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, body in enumerate(bodies):
            await send(
                {"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1}
            )

    return app


async def serve_memory(app, raw: bytes) -> tuple[HttpServer, RawClient]:
    client, server_side = trio.testing.memory_stream_pair()
    server = HttpServer(app)
    await client.send_all(raw)
    await client.send_eof()
    with trio.fail_after(5):
        await server.serve_connection(server_side)
    return server, RawClient(client)


async def test_an_answer_shorter_than_the_apps_content_length_is_a_500_and_a_close():
    app = asgi_answer(200, [(b"content-length", b"10")], b"short")
    server, c = await serve_memory(
        app, b"GET /raw HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    reply = await c.reply()
    assert reply.status == 500 and reply.headers["connection"] == "close"
    assert await c.closed()  # the next request is not answered on a stream out of step
    assert server.stats["app_errors"] == 1


async def test_an_answer_longer_than_the_apps_content_length_is_cut_and_its_connection_closed():
    app = asgi_answer(200, [(b"content-length", b"4")], b"abcd", b"efgh")
    server, c = await serve_memory(
        app, b"GET /raw HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    reply = await c.reply()
    assert reply.status == 200 and reply.body == b"abcd"
    assert await c.closed()  # "efgh" never went out, nor the next answer
    assert server.stats["app_errors"] == 1


async def test_an_app_content_length_that_is_not_a_number_is_a_500():
    app = asgi_answer(200, [(b"content-length", b"ten")], b"0123456789")
    server, c = await serve_memory(app, b"GET /raw HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await c.reply()).status == 500
    assert server.stats["app_errors"] == 1


async def test_an_answer_that_matches_the_apps_content_length_keeps_the_connection():
    app = asgi_answer(200, [(b"content-length", b"8")], b"abcd", b"efgh")
    server, c = await serve_memory(
        app, b"GET /raw HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first, second = await c.replies(2)
    assert first.body == b"abcdefgh" and second.json()["path"] == "/echo/next"
    assert server.stats["app_errors"] == 0


async def test_a_pipelined_request_after_a_malformed_one_is_never_answered():
    server, c = await serve_memory(
        make_app(),
        b"GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /echo/2 HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n"
        b"GET /echo/3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    first, second = await c.replies(2)
    assert first.status == 200 and second.status == 400
    assert await c.closed()
    assert server.stats["requests"] == 1 and server.stats["bad_requests"] == 1
