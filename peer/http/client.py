"""A small keep-alive HTTP/1.1 client on trio: how peers and the load client call each other.

What it is for: the hot calls between murmur's processes (orders from `murmur flow`, a market
maker's claims, quotes and reservations) at a small, steady cost per call. httpx costs about
0.9 ms of CPU per request on this machine, more than the exchange spends answering it, so a load
client built on it measured itself (docs/BENCH.md, "HTTP server"). This one keeps a bounded pool
of connections per base URL, writes a request in one send and reads the answer with llhttp
(`peer.http.wire.AnswerReader`: `Content-Length`, chunked with its CRLFs and trailers checked,
or close-delimited; at most 16 MiB). Paths with ids in them are built with `path(...)`, which
percent-encodes each segment; a path that is not printable ASCII is refused before it is sent.

What it must never do: hand back a partial answer as a whole one, or silently send a request
twice. A request is retried once, on a new connection, only when a kept-alive connection turned
out to be closed before any byte of the answer came back (the server never saw it, or closed
it unread); once a byte of the answer was read, a lost connection is an error, never a retry.
Every murmur request also carries an idempotency key, so even that retry is safe. Whoever makes
an HttpClient closes it (`aclose`, or `async with`). Tools that are not hot (`murmur members`,
`top`, tests) keep using httpx.

A peer's clients say who calls (`sender`: the header `x-murmur-peer: <name>` on every request,
which the other side's server filters by) and obey the peer's link filter (`links`,
peer/faults/links.py): a call to a cut peer never connects and ends as HttpTimeout at its own
deadline; a degraded link delays it.

Given a `signer` (peer/http/signing.py), every request is signed: the `x-murmur-*` headers carry
the caller's name, the time, a fresh nonce, the key id and an HMAC over the request, which the
other side checks on the calls that change authority or money. A retry on a new connection is
signed anew (a fresh nonce), so the server's replay memory does not refuse it.

`connect` (an async `(host, port) -> trio.abc.Stream`) replaces `trio.open_tcp_stream`: the
simulation dials `gossip.simnet.SimNetwork.connect` with it, and any trio stream will do.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import trio

from peer.http.wire import MAX_ANSWER, AnswerReader, BadAnswer

if TYPE_CHECKING:
    from peer.faults.links import LinkFilter
    from peer.http.signing import Signer

__all__ = ["MAX_ANSWER", "Answer", "HttpClient", "HttpError", "HttpTimeout", "path"]

RECEIVE = 65536
# What a request target may hold once built: an absolute path in printable ASCII (no spaces, no
# CR or LF that would end the request line early and let an id write headers of its own).
_TARGET = re.compile(r"/[\x21-\x7e]*")
# The header naming the calling peer (peer/http/server.py drops requests from a cut one).
PEER_HEADER = "x-murmur-peer"
_SENDER = re.compile(r"[\x21-\x7e]{1,128}")


class HttpError(Exception):
    """A call that got no complete answer: connection refused or lost, timeout, bad bytes."""


class HttpTimeout(HttpError):
    pass


def path(*segments: str | int, query: dict[str, Any] | None = None) -> str:
    """A request path from its segments, each percent-encoded whole: `path("reservations", rid,
    "renew")`. Ids read from answers go through here, never into an f-string: a `/`, `?`,
    `%`, space or line break in one stays inside its segment. Empty, `.` and `..` segments are
    refused."""
    parts = []
    for segment in segments:
        text = str(segment)
        if text in ("", ".", ".."):
            raise ValueError(f"a path segment cannot be {text!r}")
        parts.append(quote(text, safe=""))
    built = "/" + "/".join(parts)
    if query:
        built += "?" + urlencode(query)
    return built


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
    __slots__ = ("stream", "reused", "answered")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reused = False
        self.answered = False  # a byte of the current answer has come: never send it again

    async def read_answer(self, head_only: bool) -> tuple[Answer, bool]:
        """One answer, and whether the connection can be reused; EOFError if it was closed
        before any byte of the answer came."""
        reader = AnswerReader(head_only=head_only)
        try:
            while True:
                data = await self.stream.receive_some(RECEIVE)
                if not data:
                    if not self.answered:
                        raise EOFError
                    reader.eof()
                    break
                self.answered = True
                if reader.feed(data):
                    break
        except BadAnswer as exc:
            raise HttpError(str(exc)) from None
        head = reader.head
        assert head is not None
        return Answer(head.status, head.headers, reader.body), reader.keep_alive


class HttpClient:
    """Calls one base URL over at most `max_connections` kept-alive connections."""

    def __init__(self, base_url: str, *, max_connections: int = 8, timeout: float = 5.0,
                 links: LinkFilter | None = None, sender: str | None = None,
                 connect: Callable[[str, int], Awaitable[trio.abc.Stream]] | None = None,
                 signer: Signer | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self._host_header = parts.netloc.encode()
        self.links = links
        if sender is not None and not _SENDER.fullmatch(sender):
            raise ValueError(f"sender must be a peer name in printable ASCII, not {sender[:80]!r}")
        if signer is not None and sender is not None and sender != signer.name:
            raise ValueError(f"sender {sender!r} is not the signer's name {signer.name!r}")
        self.signer = signer
        # A signer names the caller in its own headers: the sender header is not sent twice.
        self._sender_header = (b"" if sender is None or signer is not None
                               else b"%s: %s\r\n" % (PEER_HEADER.encode(), sender.encode()))
        self._open_stream = connect or trio.open_tcp_stream
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

    # The per-call bound stays a parameter: it is this client's own deadline, reported as
    # HttpTimeout (a failed call, like a lost connection), not the caller's cancellation.
    async def request(self, method: str, path: str, *, json: Any = None,
                      timeout: float | None = None) -> Answer:  # noqa: ASYNC109
        if self._closed:
            raise HttpError("client is closed")
        target, body = self._target(path), self._body(json)
        with trio.move_on_after(self.timeout if timeout is None else timeout) as scope:
            if self.links:
                blocked, delay = self.links.http((self.host, self.port), time.time())
                if blocked:
                    # A cut link: no connection ever comes up; this call's deadline ends it.
                    await trio.sleep_forever()
                if delay > 0:
                    await trio.sleep(delay)
            async with self._slots:
                return await self._exchange(lambda: self._encode(method, target, body), method == "HEAD")
        assert scope.cancelled_caught
        limit = self.timeout if timeout is None else timeout
        raise HttpTimeout(f"{method} {self.base_url}{path}: no answer within {limit} s")

    @staticmethod
    def _target(target: str) -> str:
        if not _TARGET.fullmatch(target):
            raise ValueError("request target must be a path in printable ASCII "
                             f"(build it with path()): {target[:80]!r}")
        return target

    @staticmethod
    def _body(json: Any) -> bytes | None:
        return None if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()

    def _encode(self, method: str, target: str, body: bytes | None) -> bytes:
        signed = b""
        if self.signer is not None:
            headers = self.signer.headers(method, target, body or b"")
            signed = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s" % (method.encode(), target.encode(),
                                                          self._host_header, self._sender_header, signed)
        if body is None:
            if method in ("POST", "PUT"):
                return head + b"content-length: 0\r\n\r\n"
            return head + b"\r\n"
        return head + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            len(body), body)

    async def _exchange(self, encode: Callable[[], bytes], head_only: bool) -> Answer:
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else await self._connect()
            conn.answered = False
            try:
                # Encoded (and signed) once the connection is there, and again for a retry.
                await conn.stream.send_all(encode())
                answer, keep = await conn.read_answer(head_only)
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._discard(conn)
                # A stale kept-alive connection: the server closed it before answering. Retry
                # once on a new one. A fresh connection failing is a real error, and so is a
                # connection lost after part of the answer came: the server may have acted.
                if (conn.reused and attempt == 1 and not conn.answered
                        and isinstance(exc, (EOFError, trio.BrokenResourceError))):
                    continue
                raise HttpError(f"{self.base_url}: connection lost: {exc!r}") from exc
            except BaseException:
                # Cancelled, or bad bytes mid-answer: the stream is out of step.
                await self._discard(conn)
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
            stream = await self._open_stream(self.host, self.port)
        except (OSError, trio.BrokenResourceError) as exc:
            raise HttpError(f"{self.base_url}: cannot connect: {exc}") from exc
        return _Conn(stream)

    @staticmethod
    async def _discard(conn: _Conn) -> None:
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()
