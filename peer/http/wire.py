"""HTTP/1.1 framing for murmur's server and client, on llhttp (httptools): bytes in, messages out.

What it is for: reading requests (`RequestReader`, the server's side) and answers
(`AnswerReader`, the client's side) with a maintained parser, llhttp, the one uvicorn and Node
use, instead of the hand parsers each side had. llhttp checks the grammar (request line, header
tokens and values, Content-Length digits and duplicates, chunk sizes and the CRLF after each
chunk, trailers); these readers add murmur's policy on top: origin-form targets only, one Host on
HTTP/1.1, no request bodies sent chunked, `Expect: 100-continue` only, and the size limits.
Chosen by measurement over h11 (docs/BENCH.md, "HTTP framing (issue 10)").

What it must never do: I/O, clocks or sleeps (the trio shells in server.py and client.py do
those), hand on a message it did not fully read and check, or let one malformed message pass
as the start of the next: after an error a reader takes no more bytes.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import httptools

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
MAX_ANSWER = 16 * 1024 * 1024

_TARGET = re.compile(rb"/[\x21-\x7e]*")
_TARGET_RULE = "request target must be a path starting with /, in printable ASCII"
_VERSIONS = ("1.1", "1.0")


class BadRequest(Exception):
    """The bytes on the wire are not a request this server will hand to the app."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BadAnswer(Exception):
    """The bytes on the wire are not an answer the client will hand back."""


@dataclass(slots=True)
class Request:
    method: str
    raw_path: bytes
    query: bytes
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values stripped of spaces and tabs
    body: bytes
    keep_alive: bool


def _parser_error(exc: Exception) -> BadRequest:
    """llhttp's verdict as the status a client should see."""
    cause = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(cause, BadRequest):
        return cause
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return BadRequest(400, "request method is not a token this server knows")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return BadRequest(400, _TARGET_RULE)
    message = str(exc) or type(exc).__name__
    if "HTTP version" in message:
        return BadRequest(505, "HTTP version not supported (use HTTP/1.1)")
    return BadRequest(400, f"malformed request: {message}")


class RequestReader:
    """Requests out of a connection's bytes, in order, each read whole and checked.

    `feed` takes what arrived; `next` returns the next complete request, None while it is
    still arriving, or raises the BadRequest that ends the connection (after every request
    that came before it in the stream)."""

    __slots__ = ("_parser", "_done", "_error", "_in_head", "_head_fed", "_head_size", "_url",
                 "_headers", "_hosts", "_length", "_expect", "_body", "_current", "_continue_due")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._done: deque[Request] = deque()
        self._error: BadRequest | None = None
        self._current: Request | None = None  # head read, body still arriving
        self._continue_due = False
        self._in_head = False
        self._head_fed = 0
        self._reset()

    def _reset(self) -> None:
        self._head_size = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hosts = 0
        self._length = 0
        self._expect = b""
        self._body: list[bytes] = []

    @property
    def in_progress(self) -> bool:
        """A request has begun and is not complete: its deadline runs."""
        return self._in_head or self._current is not None

    def continue_due(self) -> bool:
        """True once per request that asked for `100 Continue` and whose body has not come yet."""
        due, self._continue_due = self._continue_due, False
        return due

    def next(self) -> Request | None:
        if self._done:
            return self._done.popleft()
        if self._error is not None:
            raise self._error
        return None

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        was_in_head = self._in_head or self._current is None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Upgrade or CONNECT: llhttp stops after the head. No protocol but HTTP/1.1 is spoken
            # here, so the request is answered as a plain one (bodies are refused in
            # on_headers_complete) and the bytes after it are read by a new parser.
            self._parser = httptools.HttpRequestParser(self)
            self._in_head = False
            self.feed(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as exc:
            self._fail(_parser_error(exc))
            return
        if self._in_head:
            # Bytes of a head still incomplete. When this feed began in a body, the count is
            # an upper bound; one read (64 KiB) never exceeds the limit on its own.
            self._head_fed = (self._head_fed if was_in_head else 0) + len(data)
            if self._head_fed > MAX_HEAD:
                self._fail(BadRequest(431, f"request head larger than {MAX_HEAD} bytes"))

    def _fail(self, error: BadRequest) -> None:
        self._error = error
        self._current = None
        self._in_head = False
        self._continue_due = False

    # --- llhttp's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True
        self._head_fed = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.strip(b" \t")
        if len(self._headers) >= MAX_HEADERS:
            raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
        self._head_size += len(name) + len(value) + 4
        if name == b"content-length":
            self._length = int(value)  # llhttp has checked the digits and refused duplicates
        elif name == b"transfer-encoding":
            raise BadRequest(411, "chunked request bodies are not accepted; send Content-Length")
        elif name == b"host":
            self._hosts += 1
        elif name == b"expect":
            # Every Expect must be 100-continue: a later one must not hide an earlier one.
            if value and value.lower() != b"100-continue":
                raise BadRequest(417, "only Expect: 100-continue is supported")
            self._expect = self._expect or value.lower()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        version = parser.get_http_version()
        if version not in _VERSIONS:
            raise BadRequest(505, f"HTTP version {version} not supported (use HTTP/1.1)")
        if not _TARGET.fullmatch(self._url):
            raise BadRequest(400, _TARGET_RULE)
        if self._head_size > MAX_HEAD:
            raise BadRequest(431, f"request head larger than {MAX_HEAD} bytes")
        if self._hosts > 1 or (version == "1.1" and not self._hosts):
            raise BadRequest(400, "a request needs one Host header (HTTP/1.1), never more")
        if self._length > MAX_BODY:
            raise BadRequest(413, f"request body larger than {MAX_BODY} bytes")
        if self._expect and self._expect != b"100-continue":
            raise BadRequest(417, "only Expect: 100-continue is supported")
        if self._length and parser.should_upgrade():
            raise BadRequest(400, "a request asking for another protocol cannot carry a body here")
        path, _, query = self._url.partition(b"?")
        self._current = Request(parser.get_method().decode("ascii"), path, query, version,
                                self._headers, b"", parser.should_keep_alive())
        self._continue_due = bool(self._expect) and self._length > 0

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._continue_due = False  # the client sent the body without waiting

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        request.body = b"".join(self._body)
        self._done.append(request)
        self._current = None
        self._continue_due = False


@dataclass(slots=True)
class Head:
    status: int
    headers: dict[str, str]  # names lower-case; a repeated header keeps its last value


class AnswerReader:
    """One answer out of a connection's bytes. `feed` returns True once it is complete."""

    __slots__ = ("_parser", "_head_only", "head", "_headers", "_body", "_size", "_fed", "complete",
                 "extra", "_keep")

    def __init__(self, *, head_only: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.head: Head | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._fed = 0
        self.complete = False
        self.extra = False  # bytes came after the answer: the connection is out of step
        self._keep = False

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        return self.complete and not self.extra and not self._head_only and self._keep

    def feed(self, data: bytes) -> bool:
        if self.complete:
            self.extra = True
            return True
        self._fed += len(data)
        if self._fed > MAX_ANSWER + MAX_HEAD:
            raise BadAnswer(f"answer larger than {MAX_ANSWER} bytes")
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                # Whatever came after a whole answer (or after a HEAD answer's headers, which
                # llhttp takes for a body) is not this answer's: the connection is out of step.
                self.extra = True
                return True
            cause = exc.__context__
            if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(cause, BadAnswer):
                raise cause from None
            if isinstance(exc, httptools.HttpParserUpgrade):
                raise BadAnswer("the server switched protocols") from None
            raise BadAnswer(f"malformed answer: {exc}") from None
        return self.complete

    def eof(self) -> None:
        """The server closed the connection: complete an answer delimited by the close, or raise."""
        if self.complete:
            return
        head = self.head
        if head is None:
            raise BadAnswer("connection closed in the middle of an answer's head")
        chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        if "content-length" in head.headers or chunked:
            raise BadAnswer("connection closed in the middle of an answer's body")
        self.complete = True

    # --- llhttp's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None:
            return  # a trailer, after a chunked body: murmur has no use for them
        self._headers[name.decode("latin-1").lower()] = value.strip(b" \t").decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # 100 Continue and friends: the real answer follows
        self.head = Head(status, self._headers)
        self._keep = self._parser.should_keep_alive()
        if self._head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._size += len(body)
        if self._size > MAX_ANSWER:
            raise BadAnswer(f"answer larger than {MAX_ANSWER} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.complete = True
