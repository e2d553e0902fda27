"""The server before issue 10, kept only so bench/http_server.py can measure it: do not use.

A copy of peer/http/server.py as it was before its hand parser gave way to llhttp
(peer/http/wire.py): the baseline row "hand parser" of bench/http_server.py. It has the faults
that issue 10 closed (no write bound, no connection cap, 10 s + 10 s for a request, no Host
check). Its original docstring follows.

A small HTTP/1.1 server for ASGI apps on trio: what every peer's HTTP API is served by.

What it is for: serving the peer's Starlette app with little per-request cost. Hypercorn did the
job at about 0.45 ms of CPU per request on this machine, which capped the exchange near 1,100
orders/s; this server parses a request with a few bytes operations, calls the app once, and
writes the answer in one `send_all` (see docs/BENCH.md, "HTTP server"). It speaks the part of
HTTP/1.1 that murmur's clients use: keep-alive, pipelined requests answered in order,
`Content-Length` request bodies, `Expect: 100-continue`, fixed-length or chunked responses, HEAD.
A few hot routes (the exchange's `POST /orders`) can be registered as direct handlers that take
the body and return JSON bytes, skipping the ASGI layers; everything else goes to the app.

What it must never do: hand the app a request it did not fully read and check, or let bad input
crash the peer. A malformed request gets a 4xx JSON answer naming the problem and the connection
is closed (the stream may be out of step); a request body sent chunked is refused with 411.
Limits: 64 KiB of headers, 1 MiB of body, 10 s to send a request once begun, 75 s idle between
requests on a kept-alive connection. ASGI lifespan events are not sent (murmur's apps have none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import trio

from gossip.types import Address
from peer.addresses import http_url
from peer.logs import JsonLog

# A hot route served without the app: request body in, (status, JSON bytes) out.
DirectHandler = Callable[[bytes], Awaitable[tuple[int, bytes]]]
Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
# On shutdown, requests in flight get this long to finish before their connections are cut.
GRACE = 1.0
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VALUE_FORBIDDEN = re.compile(rb"[\x00\r\n]")
_NO_BODY_STATUSES = frozenset({204, 304})


class BadRequest(Exception):
    """The bytes on the wire are not a request this server will hand to the app."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class ParsedHead:
    method: str
    raw_path: bytes
    query: bytes
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]
    content_length: int
    keep_alive: bool
    expect_continue: bool


def parse_head(head: bytes) -> ParsedHead:
    """Parse a request line and headers (without the blank line). Raises BadRequest."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "request line must be METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "request method is not a token")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise BadRequest(505, f"HTTP version {version.decode('latin-1')} not supported (use HTTP/1.1)")
        raise BadRequest(400, "request line must end with HTTP/1.1")
    if not _TARGET.fullmatch(target):
        raise BadRequest(400, "request target must be a path starting with /, in printable ASCII")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
    headers: list[tuple[bytes, bytes]] = []
    lengths: set[bytes] = set()
    connection = b""
    expect = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # Also refuses obs-fold (a line starting with whitespace): it smuggles requests.
            raise BadRequest(400, f"malformed header line {line[:60].decode('latin-1')!r}")
        name = name.lower()
        value = value.strip(b" \t")
        if _VALUE_FORBIDDEN.search(value):
            raise BadRequest(400, f"header {name.decode()} has a control character")
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            raise BadRequest(411, "chunked request bodies are not accepted; send Content-Length")
        elif name == b"connection":
            connection = value.lower()
        elif name == b"expect":
            expect = value.lower()
        headers.append((name, value))
    content_length = 0
    if lengths:
        if len(lengths) > 1:
            raise BadRequest(400, "conflicting Content-Length headers")
        raw = lengths.pop()
        if not raw.isdigit() or len(raw) > 12:
            raise BadRequest(400, "Content-Length must be a non-negative integer")
        content_length = int(raw)
        if content_length > MAX_BODY:
            raise BadRequest(413, f"request body larger than {MAX_BODY} bytes")
    if expect and expect != b"100-continue":
        raise BadRequest(417, "only Expect: 100-continue is supported")
    ver = version[5:].decode()
    tokens = {t.strip() for t in connection.split(b",")}
    keep_alive = b"close" not in tokens if ver == "1.1" else b"keep-alive" in tokens
    path, _, query = target.partition(b"?")
    return ParsedHead(method.decode(), path, query, ver, headers, content_length, keep_alive, bool(expect))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _error_response(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, _reason(status), len(body), body)
    )


class _Connection:
    """One client connection: read a request, run the app, write the answer, repeat."""

    def __init__(self, server: HttpServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.buffer = bytearray()
        self.busy = False
        self.closing = False
        self.scope = trio.CancelScope()
        sock = stream.socket
        try:
            self.client = sock.getpeername()[:2]
            self.local = sock.getsockname()[:2]
        except OSError:
            self.client = self.local = None

    async def _fill(self, deadline: float) -> bool:
        """Read more bytes by `deadline` (TooSlowError after it); False when the client closed."""
        with trio.CancelScope(deadline=deadline) as scope:
            data = await self.stream.receive_some(65536)
        if scope.cancelled_caught:
            raise trio.TooSlowError
        if not data:
            return False
        self.buffer += data
        return True

    async def _read_head(self) -> bytes | None:
        """The next request's head, or None when the client closed between requests."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            # Idle between requests: wait for a first byte under the idle limit, not the request one.
            while not self.buffer:
                try:
                    if not await self._fill(trio.current_time() + IDLE_TIMEOUT):
                        return None
                except trio.TooSlowError:
                    return None
                # Tolerate blank lines before a request (RFC 9112 2.2).
                while self.buffer[:2] == b"\r\n":
                    del self.buffer[:2]
            deadline = trio.current_time() + REQUEST_TIMEOUT
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise BadRequest(431, f"request head larger than {MAX_HEAD} bytes")
                if not await self._fill(deadline):
                    return None
        if end > MAX_HEAD:
            raise BadRequest(431, f"request head larger than {MAX_HEAD} bytes")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def _read_body(self, length: int) -> bytes:
        deadline = trio.current_time() + REQUEST_TIMEOUT
        while len(self.buffer) < length:
            if not await self._fill(deadline):
                raise trio.BrokenResourceError("client closed in the middle of a body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    async def run(self) -> None:
        stats = self.server.stats
        stats["connections"] += 1
        try:
            with self.scope:
                await self._serve_requests()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except trio.TooSlowError:
            stats["timeouts"] += 1
            await self._send_quietly(_error_response(408, "request not completed in time"))
        except BadRequest as exc:
            stats["bad_requests"] += 1
            await self._send_quietly(_error_response(exc.status, str(exc)))
        finally:
            self.server.connections.discard(self)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _send_quietly(self, data: bytes) -> None:
        with trio.move_on_after(1.0):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve_requests(self) -> None:
        while not self.closing:
            head = await self._read_head()
            if head is None:
                return
            self.busy = True
            req = parse_head(head)
            if req.expect_continue and req.content_length and len(self.buffer) < req.content_length:
                await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_body(req.content_length)
            self.server.stats["requests"] += 1
            direct = self.server.direct.get((req.method, req.raw_path)) if not req.query else None
            if direct is not None:
                keep_alive = await self._run_direct(direct, req, body)
            else:
                keep_alive = await self._run_app(req, body)
            self.busy = False
            if not keep_alive:
                return

    async def _run_direct(self, handler: DirectHandler, req: ParsedHead, body: bytes) -> bool:
        """A hot route answered without the ASGI app: the handler gets the body, returns JSON."""
        try:
            status, payload = await handler(body)
        except Exception as exc:  # noqa: BLE001 - the handler's bug must not take the peer down
            self.server.stats["app_errors"] += 1
            if self.server.log is not None:
                self.server.log("http_app_error", path=req.raw_path.decode(), method=req.method, error=repr(exc)[:300])
            await self._send_quietly(_error_response(500, f"internal error: {type(exc).__name__}"))
            return False
        keep_alive = req.keep_alive and not self.closing
        await self.stream.send_all(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, _reason(status), len(payload), b"" if keep_alive else b"connection: close\r\n", payload)
        )
        return keep_alive

    async def _run_app(self, req: ParsedHead, body: bytes) -> bool:
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
                return {"type": "http.request", "body": body, "more_body": False}
            # Nothing more will come; the client "disconnects" once the answer is out.
            await done.wait()
            return {"type": "http.disconnect"}

        writer = _ResponseWriter(self, req.method == "HEAD", req.version, req.keep_alive)
        try:
            await self.server.app(scope, receive, writer.send)
        except Exception as exc:  # noqa: BLE001 - the app's bug must not take the peer down
            self.server.stats["app_errors"] += 1
            if self.server.log is not None:
                self.server.log("http_app_error", path=path, method=req.method, error=repr(exc)[:300])
            if not writer.started:
                await self._send_quietly(_error_response(500, f"internal error: {type(exc).__name__}"))
            return False
        finally:
            done.set()
        if not writer.finished:
            if not writer.started:
                await self._send_quietly(_error_response(500, "the app sent no answer"))
            return False
        return writer.keep_alive


class _ResponseWriter:
    """Turns the app's `http.response.*` messages into bytes, in as few sends as it can."""

    def __init__(self, conn: _Connection, head_only: bool, version: str, keep_alive: bool) -> None:
        self.conn = conn
        self.stream = conn.stream
        self.head_only = head_only
        self.version = version
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.chunked = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.has_length = False
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
            self.has_length = any(k == b"content-length" for k, _ in self.headers)
            return
        if kind != "http.response.body":
            return
        if not self.started or self.finished:
            raise RuntimeError("http.response.body outside a response")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self.head_only or self.status in _NO_BODY_STATUSES:
            body = b""
        if not self.head_sent:
            extra: list[tuple[bytes, bytes]] = []
            if not self.has_length and not self.head_only and self.status not in _NO_BODY_STATUSES:
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
            await self.stream.send_all(data)

    def _chunk(self, body: bytes) -> bytes:
        if not body:
            return b""
        return b"%x\r\n%s\r\n" % (len(body), body)


@dataclass
class HttpServer:
    """Serves `app` until shutdown; `stats` counts connections, requests and refusals."""

    app: Asgi
    log: JsonLog | None = None
    # (method, raw path) -> handler, for the few hot routes that skip the framework; a request
    # with a query string always goes to the app.
    direct: dict[tuple[str, bytes], DirectHandler] = field(default_factory=dict)
    connections: set[_Connection] = field(default_factory=set)
    stats: dict[str, int] = field(
        default_factory=lambda: {"connections": 0, "requests": 0, "bad_requests": 0, "timeouts": 0, "app_errors": 0}
    )

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        self.connections.add(conn)
        await conn.run()

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
                    await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

            nursery.start_soon(accept)
            task_status.started(http_url((host, bound[1])))
            await shutdown.wait()
            accept_scope.cancel()
            # Idle connections go now; busy ones finish their request and then close.
            for conn in list(self.connections):
                conn.closing = True
                if not conn.busy:
                    conn.scope.cancel()
            with trio.move_on_after(GRACE):
                while self.connections:  # noqa: ASYNC110 - the baseline as it was
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
