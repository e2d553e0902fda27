"""A small keep-alive HTTP/1.1 client on trio: how peers and the load client call each other.

What it is for: the hot calls between murmur's processes (orders from `murmur flow`, a market
maker's claims, quotes and reservations) at a small, steady cost per call. httpx costs about
0.9 ms of CPU per request on this machine, more than the exchange spends answering it, so a load
client built on it measured itself (docs/BENCH.md, "HTTP server"). This one keeps a bounded pool
of connections per base URL, writes a request in one send and reads `Content-Length`, chunked or
close-delimited answers.

What it must never do: hand back a partial answer as a whole one, or silently send a request
twice. A request is retried once, on a new connection, only when a kept-alive connection turned
out to be closed before any byte of the answer came back (the server never saw it, or closed
it unread); every murmur request also carries an idempotency key, so even that retry is safe.
Tools that are not hot (`murmur members`, `top`, tests) keep using httpx.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

MAX_ANSWER = 16 * 1024 * 1024


class HttpError(Exception):
    """A call that got no complete answer: connection refused or lost, timeout, bad bytes."""


class HttpTimeout(HttpError):
    pass


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Conn:
    __slots__ = ("stream", "buffer", "reused")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.reused = False

    async def fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buffer += data
        if len(self.buffer) > MAX_ANSWER:
            raise HttpError(f"answer larger than {MAX_ANSWER} bytes")
        return True

    async def read_answer(self, head_only: bool) -> tuple[Answer, bool]:
        """One answer, and whether the connection can be reused. EOFError if closed before any byte."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            while end < 0:
                if not await self.fill():
                    if not self.buffer:
                        raise EOFError
                    raise HttpError("connection closed in the middle of an answer's head")
                end = self.buffer.find(b"\r\n\r\n")
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[: end + 4]
            parts = lines[0].split(b" ", 2)
            if (len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3
                    or not parts[1].isdigit()):
                raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise HttpError(f"malformed header line in answer: {line[:80]!r}")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            if 100 <= status < 200:
                continue  # 100 Continue and friends: the real answer follows
            break
        keep = headers.get("connection", "").lower() != "close" and parts[0] == b"HTTP/1.1"
        if head_only or status in (204, 304):
            return Answer(status, headers, b""), keep
        if "content-length" in headers:
            # A length beyond the answer cap is refused before int(): a 5,000-digit one would
            # raise ValueError out of int() itself.
            if not headers["content-length"].isdigit() or len(headers["content-length"]) > 18:
                raise HttpError(f"bad Content-Length {headers['content-length'][:20]!r}")
            length = int(headers["content-length"])
            if length > MAX_ANSWER:
                raise HttpError(f"answer larger than {MAX_ANSWER} bytes")
            while len(self.buffer) < length:
                if not await self.fill():
                    raise HttpError("connection closed in the middle of an answer's body")
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            return Answer(status, headers, body), keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Answer(status, headers, await self._read_chunked()), keep
        while await self.fill():  # delimited by the end of the connection
            pass
        body = bytes(self.buffer)
        self.buffer.clear()
        return Answer(status, headers, body), False

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                if not await self.fill():
                    raise HttpError("connection closed in a chunked answer")
            size_text = bytes(self.buffer[:end]).split(b";")[0].strip()
            try:
                if len(size_text) > 16 or not size_text or size_text.startswith((b"-", b"+")):
                    raise ValueError
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
            if len(out) + size > MAX_ANSWER:
                raise HttpError(f"answer larger than {MAX_ANSWER} bytes")
            del self.buffer[: end + 2]
            while len(self.buffer) < size + 2:
                if not await self.fill():
                    raise HttpError("connection closed in a chunked answer")
            out += self.buffer[:size]
            del self.buffer[: size + 2]
            if size == 0:
                return bytes(out)  # no trailers are sent by murmur's server


class HttpClient:
    """Calls one base URL over at most `max_connections` kept-alive connections."""

    def __init__(self, base_url: str, *, max_connections: int = 8, timeout: float = 5.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self._host_header = parts.netloc.encode()
        self._idle: list[_Conn] = []
        self._slots = trio.Semaphore(max_connections)
        self._closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Answer:
        return await self.request("POST", path, json=json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Answer:
        return await self.request("PUT", path, json=json, **kw)

    async def delete(self, path: str, json: Any = None, **kw: Any) -> Answer:
        return await self.request("DELETE", path, json=json, **kw)

    async def request(self, method: str, path: str, *, json: Any = None, timeout: float | None = None) -> Answer:
        if self._closed:
            raise HttpError("client is closed")
        data = self._encode(method, path, json)
        with trio.move_on_after(self.timeout if timeout is None else timeout) as scope:
            async with self._slots:
                return await self._exchange(data, method == "HEAD")
        assert scope.cancelled_caught
        raise HttpTimeout(f"{method} {self.base_url}{path}: no answer within {timeout or self.timeout} s")

    def _encode(self, method: str, path: str, json: Any) -> bytes:
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), path.encode(), self._host_header)
        if json is None:
            if method in ("POST", "PUT"):
                return head + b"content-length: 0\r\n\r\n"
            return head + b"\r\n"
        body = jsonlib.dumps(json, separators=(",", ":")).encode()
        return head + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def _exchange(self, data: bytes, head_only: bool) -> Answer:
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                await conn.stream.send_all(data)
                answer, keep = await conn.read_answer(head_only)
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._discard(conn)
                # A stale kept-alive connection: the server closed it before answering. Retry
                # once on a new one. A fresh connection failing is a real error.
                if conn.reused and attempt == 1 and isinstance(exc, (EOFError, trio.BrokenResourceError)):
                    continue
                raise HttpError(f"{self.base_url}: connection lost: {exc!r}") from exc
            except BaseException:
                await self._discard(conn)  # cancelled or bad bytes mid-answer: the stream is out of step
                raise
            if keep and not self._closed:
                conn.reused = True
                self._idle.append(conn)
            else:
                await self._discard(conn)
            return answer
        raise AssertionError("unreachable")

    async def _connect(self) -> _Conn:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise HttpError(f"{self.base_url}: cannot connect: {exc}") from exc
        return _Conn(stream)

    @staticmethod
    async def _discard(conn: _Conn) -> None:
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()
