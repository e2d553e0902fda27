"""A small HTTP/1.1 server for ASGI apps on trio: what every peer's HTTP API is served by.

What it is for: serving the peer's Starlette app with little per-request cost. Hypercorn did the
job at about 0.5 ms of CPU per request on this machine, which capped the exchange near 1,100
orders/s; this server has one task per connection, reads requests with llhttp
(`peer.http.wire`), calls the app once, and writes each answer in one `send_all` (docs/BENCH.md,
"HTTP framing (issue 10)"). It speaks the part of HTTP/1.1 that murmur's clients use:
keep-alive, pipelined requests answered in order, `Content-Length` request bodies,
`Expect: 100-continue`, fixed-length or chunked responses, HEAD. A few hot routes (the
exchange's `POST /orders`) can be registered as direct handlers that take the body and return
JSON bytes, skipping the ASGI layers; everything else goes to the app.

What it must never do: hand the app a request it did not fully read and check, let bad input
crash the peer, or let one client hold a task forever. A malformed request gets a 4xx JSON
answer naming the problem and the connection is closed (the stream may be out of step); a
request body sent chunked is refused with 411, an HTTP/1.1 request without one Host with 400.
Limits (fields of `HttpServer`): 64 KiB of head and 100 header fields, 1 MiB of body; 10 s to
send a whole request, head and body, from its first byte; 75 s idle between requests on a
kept-alive connection; 10 s to write each answer (a client that stops reading is cut off);
512 connections at once (one more is answered 503 and closed). Per client address
(peer/http/limits.py, loopback exempt): 64 open connections (one more is answered 429 and
closed), and the routes the app marks `rate_limited` (the exchange's order entry) at 1,000
requests a second with bursts of 2,000 (one more is answered 429 with `Retry-After`, and the
connection stays open). An answer whose length differs
from the app's own Content-Length is cut short and its connection closed. ASGI lifespan events
are not sent (murmur's apps have none).

Fault injection: given the peer's link filter (`links`, peer/faults/links.py), a request whose
`x-murmur-peer` header names a peer that a cut rule names gets no answer: its connection is
closed and the request counted as `filtered` (rules are judged at `clock()`, the wall clock unless a
simulation gives its own). Requests without the header (operators, `murmur
flow`, `murmur check`, browsers) are never filtered.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import trio

from gossip.types import Address
from peer.addresses import http_url
from peer.http.limits import ClientLimits, LimitsConfig, RoutePatterns
from peer.http.wire import MAX_BODY, MAX_HEAD, MAX_HEADERS, BadRequest, Request, RequestReader
from peer.logs import JsonLog

__all__ = ["MAX_BODY", "MAX_HEAD", "MAX_HEADERS", "BadRequest", "DirectHandler", "HttpServer"]

# A hot route served without the app: request body in, (status, JSON bytes) out.
DirectHandler = Callable[[bytes], Awaitable[tuple[int, bytes]]]
Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                Awaitable[None]]

REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
# On shutdown, requests in flight get this long to finish before their connections are cut.
GRACE = 1.0
RECEIVE = 65536
_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The calling peer's name (peer/http/client.py sends it): what the link filter drops by.
_PEER_HEADER = b"x-murmur-peer"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _error_response(status: int, message: str, **extra: Any) -> bytes:
    body = json.dumps({"error": message, **extra}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, _reason(status), len(body), body)
    )


def _rate_limited_response(retry_after: float, rate: float, keep_alive: bool) -> bytes:
    """429 for a request over its client's rate; the request was read whole, so the connection
    may carry the next one."""
    body = json.dumps({"error": f"more than {rate:g} requests a second from this address; "
                                f"retry in {retry_after:.3f} s",
                       "limit": "rate", "retry_after": round(retry_after, 3)}).encode()
    return (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
        b"retry-after: %d\r\ncontent-length: %d\r\n%s\r\n%s"
        % (max(1, math.ceil(retry_after)), len(body),
           b"" if keep_alive else b"connection: close\r\n", body)
    )


class _Connection:
    """One client connection: read a request, run the app, write the answer, repeat."""

    def __init__(self, server: HttpServer, stream: trio.abc.Stream,
                 client: tuple | None = None, local: tuple | None = None,
                 limit_key: str | None = None) -> None:
        self.server = server
        self.stream = stream
        self.reader = RequestReader()
        self.handling = False
        self.closing = False
        # One cancel scope bounds the whole connection: its deadline is moved as the connection
        # goes from phase to phase (a scope per read or write costs more than parsing a request).
        # When it expires, `phase` tells which limit it was.
        self.scope = trio.CancelScope()
        self.phase = "idle"  # idle | request | app | write
        self.client = client
        self.local = local
        # The client's key in the server's per-client limits; None: none apply (loopback).
        self.limit_key = limit_key

    @property
    def busy(self) -> bool:
        """A request is arriving or being answered: a shutdown lets it finish."""
        return self.handling or self.reader.in_progress

    def _until(self, phase: str, deadline: float) -> None:
        self.phase = phase
        self.scope.deadline = deadline

    async def run(self) -> None:
        stats = self.server.stats
        stats["connections"] += 1
        try:
            with self.scope:
                await self._serve_requests()
            if self.scope.cancelled_caught:
                # Idle too long, or a shutdown: close quietly. The other two are counted.
                if self.phase == "request":
                    stats["timeouts"] += 1
                    await self._send_quietly(_error_response(408, "request not completed in time"))
                elif self.phase == "write":
                    stats["write_timeouts"] += 1  # part of an answer may be out: just close
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except BadRequest as exc:
            stats["bad_requests"] += 1
            await self._send_quietly(_error_response(exc.status, str(exc)))
        finally:
            self.server._forget(self)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def send(self, data: bytes, *, then_app: bool = True) -> None:
        """Write one answer (or part) within the write limit: a client that stops reading loses
        its connection. `then_app`: the app runs on after it (its time is not bounded)."""
        self._until("write", trio.current_time() + self.server.write_timeout)
        await self.stream.send_all(data)
        if then_app:
            self._until("app", math.inf)

    async def _send_quietly(self, data: bytes) -> None:
        with trio.move_on_after(1.0):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _next_request(self) -> Request | None:
        """The next whole request; None when the client closed or went idle too long.

        One deadline covers a request's head and body, from the moment its first byte is
        read (or, for a pipelined request already begun, from when its turn came)."""
        reader = self.reader
        server = self.server
        if reader.in_progress:
            self._until("request", trio.current_time() + server.request_timeout)
        else:
            self._until("idle", trio.current_time() + server.idle_timeout)
        while (request := reader.next()) is None:
            if reader.continue_due():
                deadline = self.scope.deadline
                await self.send(_CONTINUE, then_app=False)
                self._until("request", deadline)
            data = await self.stream.receive_some(RECEIVE)
            if not data:
                return None  # the client closed, between requests or in the middle of one
            reader.feed(data)
            if self.phase == "idle" and reader.in_progress:
                self._until("request", trio.current_time() + server.request_timeout)
        return request

    async def _serve_requests(self) -> None:
        while not self.closing:
            req = await self._next_request()
            if req is None:
                return
            links = self.server.links
            if links and _from_cut_peer(req, links, self.server.clock()):
                # As if the request never arrived: no answer, and the connection goes with it.
                self.server.stats["filtered"] += 1
                return
            self.handling = True
            self._until("app", math.inf)
            self.server.stats["requests"] += 1
            if self.limit_key is not None and not await self._within_rate(req):
                self.handling = False
                if not req.keep_alive or self.closing:
                    return
                continue
            direct = self.server.direct.get((req.method, req.raw_path)) if not req.query else None
            if direct is not None:
                keep_alive = await self._run_direct(direct, req)
            else:
                keep_alive = await self._run_app(req)
            self.handling = False
            if not keep_alive:
                return

    async def _within_rate(self, req: Request) -> bool:
        """False (and the 429 sent) if `req` is a rate-limited route over its client's rate."""
        server = self.server
        if not server.rate_limited.match(req.method, req.raw_path.decode("latin-1")):
            return True
        wait = server.limits.allow_request(self.limit_key, trio.current_time())
        if wait is None:
            return True
        keep_alive = req.keep_alive and not self.closing
        await self.send(_rate_limited_response(wait, server.limits.config.rate, keep_alive),
                        then_app=False)
        return False

    async def _run_direct(self, handler: DirectHandler, req: Request) -> bool:
        """A hot route answered without the ASGI app: the handler gets the body, returns JSON."""
        try:
            status, payload = await handler(req.body)
        except Exception as exc:  # noqa: BLE001 - the handler's bug must not take the peer down
            self.server.stats["app_errors"] += 1
            if self.server.log is not None:
                self.server.log("http_app_error", path=req.raw_path.decode(), method=req.method,
                                error=repr(exc)[:300])
            await self._send_quietly(_error_response(500, f"internal error: {type(exc).__name__}"))
            return False
        keep_alive = req.keep_alive and not self.closing
        # The next thing after this answer is reading the next request, which sets its deadline.
        await self.send(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, _reason(status), len(payload),
               b"" if keep_alive else b"connection: close\r\n", payload),
            then_app=False,
        )
        return keep_alive

    async def _run_app(self, req: Request) -> bool:
        """Run the app for one request; True if the connection may carry another."""
        try:
            path = unquote(req.raw_path.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(400, "request path is not valid percent-encoded UTF-8") from None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.version,
            "method": req.method,
            "scheme": "http",
            "path": path,
            "raw_path": req.raw_path,
            "query_string": req.query,
            "root_path": "",
            "headers": req.headers,
            "client": self.client,
            "server": self.local,
            "state": {},
        }
        done = trio.Event()
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            # Nothing more will come; the client "disconnects" once the answer is out.
            await done.wait()
            return {"type": "http.disconnect"}

        writer = _ResponseWriter(self, req.method == "HEAD", req.version, req.keep_alive)
        try:
            await self.server.app(scope, receive, writer.send)
        except Exception as exc:  # noqa: BLE001 - the app's bug must not take the peer down
            self.server.stats["app_errors"] += 1
            if self.server.log is not None:
                self.server.log("http_app_error", path=path, method=req.method,
                                error=repr(exc)[:300])
            if not writer.head_sent:
                await self._send_quietly(
                    _error_response(500, f"internal error: {type(exc).__name__}"))
            return False
        finally:
            done.set()
        if not writer.finished:
            if not writer.head_sent:
                await self._send_quietly(_error_response(500, "the app sent no answer"))
            return False
        return writer.keep_alive


class _ResponseWriter:
    """Turns the app's `http.response.*` messages into bytes, in as few sends as it can."""

    def __init__(self, conn: _Connection, head_only: bool, version: str, keep_alive: bool) -> None:
        self.conn = conn
        self.head_only = head_only
        self.version = version
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.chunked = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.declared: int | None = None  # the app's own Content-Length
        self.sent = 0
        self.head_sent = False

    def _head(self, extra: list[tuple[bytes, bytes]]) -> bytes:
        # Decided as late as possible: a shutdown that began during the request closes it.
        self.keep_alive = self.keep_alive and not self.conn.closing
        lines = [b"HTTP/1.1 %d %s\r\n" % (self.status, _reason(self.status))]
        for name, value in [*self.headers, *extra]:
            lines.append(b"%s: %s\r\n" % (name, value))
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            lengths = {v.strip() for k, v in self.headers if k == b"content-length"}
            if lengths:
                value = lengths.pop()
                if lengths or not value.isdigit():
                    raise RuntimeError(
                        f"the app's Content-Length is not one number: {value[:20]!r}")
                self.declared = int(value)
            return
        if kind != "http.response.body":
            return
        if not self.started or self.finished:
            raise RuntimeError("http.response.body outside a response")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self.head_only or self.status in _NO_BODY_STATUSES:
            body = b""
        elif self.declared is not None:
            # The client frames the answer by this length: a body longer or shorter than it
            # would make the client read the next answer's bytes as this one's.
            self.sent += len(body)
            if self.sent > self.declared or (not more and self.sent < self.declared):
                which = "more" if self.sent > self.declared else "fewer"
                raise RuntimeError(
                    f"the app sent {which} bytes than its Content-Length ({self.declared})")
        if not self.head_sent:
            extra: list[tuple[bytes, bytes]] = []
            has_body = not self.head_only and self.status not in _NO_BODY_STATUSES
            if self.declared is None and has_body:
                if more:
                    if self.version == "1.1":
                        self.chunked = True
                        extra.append((b"transfer-encoding", b"chunked"))
                    else:
                        self.keep_alive = False  # the end of the body is the end of the connection
                else:
                    extra.append((b"content-length", b"%d" % len(body)))
            self.head_sent = True
            data = self._head(extra) + (self._chunk(body) if self.chunked else body)
        else:
            data = self._chunk(body) if self.chunked else body
        if not more:
            if self.chunked:
                data += b"0\r\n\r\n"
            self.finished = True
        if data:
            await self.conn.send(data)

    def _chunk(self, body: bytes) -> bytes:
        if not body:
            return b""
        return b"%x\r\n%s\r\n" % (len(body), body)


def _from_cut_peer(req: Request, links: Any, now: float) -> bool:
    for name, value in req.headers:
        if name == _PEER_HEADER and links.blocks_name(value.decode("ascii", "replace"), now):
            return True
    return False


async def _refuse(stream: trio.abc.Stream, answer: bytes) -> None:
    """Answer a connection over the cap and close it, in at most a second."""
    try:
        with trio.move_on_after(1.0):
            await stream.send_all(answer)
            send_eof = getattr(stream, "send_eof", None)
            if send_eof is not None:
                await send_eof()
                # Read what the client sent before closing: closing a socket with unread bytes
                # makes the kernel send a reset, which can destroy the 503 before it is read.
                received = 0
                while received < MAX_HEAD and (data := await stream.receive_some(RECEIVE)):
                    received += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


@dataclass
class HttpServer:
    """Serves `app` until shutdown; `stats` counts connections, requests and refusals."""

    app: Asgi
    log: JsonLog | None = None
    # (method, raw path) -> handler, for the few hot routes that skip the framework; a request
    # with a query string always goes to the app.
    direct: dict[tuple[str, bytes], DirectHandler] = field(default_factory=dict)
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    # The peer's link filter (peer/faults/links.py), or None: requests are never filtered.
    links: Any = None
    # The wall clock the link filter's rules are judged by (a simulation passes its own).
    clock: Callable[[], float] = time.time
    # Per client address: open connections, and the rate of the routes the app marks
    # `rate_limited` (peer/http/limits.py); found in `app.routes` unless given.
    limits_config: LimitsConfig = field(default_factory=LimitsConfig)
    rate_limited: RoutePatterns | None = None
    # Open connections, in the order they were accepted: a dict, not a set, so that shutdown
    # cancels them in an order that does not depend on object addresses (a simulation replays it).
    connections: dict[_Connection, None] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: {"connections": 0, "requests": 0, "bad_requests": 0, "timeouts": 0,
                                 "app_errors": 0, "write_timeouts": 0, "refused_over_cap": 0,
                                 "filtered": 0}
    )
    _all_closed: trio.Event | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.limits = ClientLimits(self.limits_config)
        # The limits' counters are the server's: one dict in /metrics (murmur_http_*).
        self.limits.stats = self.stats
        self.stats.setdefault("rate_limited", 0)
        self.stats.setdefault("refused_client_connections", 0)
        if self.rate_limited is None:
            self.rate_limited = RoutePatterns.of(getattr(self.app, "routes", ()))

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one client's connection until it closes (the listener's handler; tests hand in
        memory streams). Over `max_connections`, the client gets 503 and the connection closes."""
        if len(self.connections) >= self.max_connections:
            self.stats["refused_over_cap"] += 1
            await _refuse(stream, _error_response(
                503, f"more than {self.max_connections} connections; try again"))
            return
        sock = getattr(stream, "socket", None)
        try:
            client = sock.getpeername()[:2] if sock is not None else None
            local = sock.getsockname()[:2] if sock is not None else None
        except OSError:
            client = local = None
        key = self.limits.key(client[0]) if client else None
        if not self.limits.open_connection(key):
            await _refuse(stream, _error_response(
                429, f"more than {self.limits.config.connections} connections from this address",
                limit="connections"))
            return
        try:
            conn = _Connection(self, stream, client, local, key)
            self.connections[conn] = None
            await conn.run()
        finally:
            self.limits.close_connection(key)

    def _forget(self, conn: _Connection) -> None:
        self.connections.pop(conn, None)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def serve(
        self,
        bind: Address,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = bind
        listeners = await trio.open_tcp_listeners(port, host=host)
        # Accepted trio.SocketStreams set TCP_NODELAY themselves: small answers leave at once.
        bound = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            accept_scope = trio.CancelScope()

            async def accept() -> None:
                with accept_scope:
                    await trio.serve_listeners(self.serve_connection, listeners,
                                               handler_nursery=nursery)

            nursery.start_soon(accept)
            task_status.started(http_url((host, bound[1])))
            await shutdown.wait()
            accept_scope.cancel()
            # Idle connections go now; busy ones finish their request and then close.
            self._all_closed = trio.Event()
            for conn in list(self.connections):
                conn.closing = True
                if not conn.busy:
                    conn.scope.cancel()
            if self.connections:
                with trio.move_on_after(GRACE):
                    await self._all_closed.wait()
            nursery.cancel_scope.cancel()
