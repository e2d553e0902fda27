"""HTTP/1.1 framing on llhttp: the request reader's verdicts, the answer reader, and the server
driven with generated and mutated requests against h11's verdict as the oracle (hypothesis).
"""

from __future__ import annotations

import re

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peer.http.server import HttpServer
from peer.http.wire import MAX_BODY, MAX_HEAD, AnswerReader, BadAnswer, BadRequest, RequestReader
from tests.peer.http.h11_wire import RawClient

# --- RequestReader -------------------------------------------------------------------------------


def read_all(*chunks: bytes) -> list:
    """Every request the reader makes of `chunks`, then the BadRequest that ended them, if any."""
    reader = RequestReader()
    for chunk in chunks:
        reader.feed(chunk)
    out: list = []
    try:
        while (request := reader.next()) is not None:
            out.append(request)
    except BadRequest as exc:
        out.append(exc)
    return out


def test_reader_reads_method_path_query_headers_and_body():
    [req] = read_all(
        b"POST /orders/a%20b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nContent-Length:  3 \r\n\r\nabc"
    )
    assert (req.method, req.raw_path, req.query, req.version) == (
        "POST",
        b"/orders/a%20b",
        b"x=1&y=2",
        "1.1",
    )
    assert req.headers == [(b"host", b"h"), (b"content-length", b"3")]
    assert req.body == b"abc" and req.keep_alive


def test_reader_reads_a_request_given_one_byte_at_a_time_and_pipelined_ones_in_order():
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    one_by_one = read_all(*(raw[i : i + 1] for i in range(len(raw))))
    assert [(r.raw_path, r.body) for r in one_by_one] == [(b"/a", b"hi"), (b"/b", b"")]
    assert [(r.raw_path, r.body) for r in read_all(raw)] == [(b"/a", b"hi"), (b"/b", b"")]


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [
        (b"HTTP/1.1", b"", True),
        (b"HTTP/1.1", b"Connection: close\r\n", False),
        (b"HTTP/1.1", b"Connection: keep-alive, Upgrade\r\n", True),
        (b"HTTP/1.0", b"", False),
        (b"HTTP/1.0", b"Connection: Keep-Alive\r\n", True),
    ],
)
def test_reader_keep_alive_follows_version_and_connection_header(version, connection, keep):
    [req] = read_all(b"GET / " + version + b"\r\nHost: h\r\n" + connection + b"\r\n")
    assert req.keep_alive is keep


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GET /\r\n\r\n", 505, "not supported"),  # llhttp reads it as HTTP/0.9
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "not supported"),
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "not supported"),
        (b"GET / SPDY/3\r\n\r\n", 400, "malformed"),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method"),
        (b"GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nno-colon-here\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n folded\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nbad name: x\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nA: b\x00c\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400, "malformed"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
            "Content-Length",
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -3\r\n\r\n", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400, "Content-Length"),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
            "Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
            413,
            "larger",
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n", 417, "100-continue"),
        (b"GET / HTTP/1.1\r\nHost: h" + b"\r\nx: y" * 101 + b"\r\n\r\n", 431, "header fields"),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n",
            431,
            "head larger",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 1\r\n\r\nx",
            400,
            "protocol",
        ),
    ],
)
def test_reader_refuses_malformed_requests_with_a_status_and_reason(raw, status, words):
    [refusal] = read_all(raw)
    assert isinstance(refusal, BadRequest)
    assert refusal.status == status
    assert words in str(refusal)


def test_reader_refuses_a_head_that_never_ends_before_it_grows_past_the_limit():
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
    for _ in range(MAX_HEAD // 65536 + 1):
        reader.feed(b"a" * 65536)
    with pytest.raises(BadRequest, match="head larger"):
        reader.next()


def test_reader_answers_requests_before_an_error_then_raises_it_and_takes_nothing_more():
    reader = RequestReader()
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nbad line\r\n\r\n")
    assert reader.next().raw_path == b"/1"
    with pytest.raises(BadRequest):
        reader.next()
    reader.feed(b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(BadRequest):
        reader.next()


def test_reader_serves_an_upgrade_request_without_a_body_as_a_plain_one_and_reads_on():
    got = read_all(
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [r.raw_path for r in got] == [b"/a", b"/b"]


def test_reader_asks_for_100_continue_only_while_the_body_has_not_come():
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert reader.next() is None and reader.in_progress
    assert reader.continue_due() and not reader.continue_due()  # once
    reader.feed(b"ok")
    assert reader.next().body == b"ok" and not reader.in_progress
    eager = RequestReader()
    eager.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
    assert not eager.continue_due()


def test_blank_lines_before_a_request_are_not_a_request_in_progress():
    reader = RequestReader()
    reader.feed(b"\r\n\r\n")
    assert not reader.in_progress and reader.next() is None
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert reader.next().raw_path == b"/"


# --- AnswerReader --------------------------------------------------------------------------------


def answer_of(*chunks: bytes, head_only: bool = False, eof: bool = False) -> AnswerReader:
    reader = AnswerReader(head_only=head_only)
    for chunk in chunks:
        reader.feed(chunk)
    if eof:
        reader.eof()
    return reader


def test_answer_reader_reads_length_chunked_and_close_delimited_answers():
    fixed = answer_of(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b \r\n\r\nok")
    assert (fixed.complete, fixed.head.status, fixed.head.headers["x-a"], fixed.body) == (
        True,
        201,
        "b",
        b"ok",
    )
    assert fixed.keep_alive
    chunked = answer_of(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", b"0\r\n\r\n"
    )
    assert chunked.complete and chunked.body == b"ok" and chunked.keep_alive
    closing = answer_of(b"HTTP/1.1 200 OK\r\n\r\nto the end", eof=True)
    assert closing.complete and closing.body == b"to the end" and not closing.keep_alive


def test_answer_reader_keep_alive_follows_version_connection_and_extra_bytes():
    assert not answer_of(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ).keep_alive
    assert not answer_of(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    extra = answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert extra.complete and extra.extra and not extra.keep_alive
    head = answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head_only=True)
    assert head.complete and head.body == b"" and not head.keep_alive


@pytest.mark.parametrize(
    ("chunks", "words"),
    [
        (
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",),
            "malformed",
        ),
        ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",), "malformed"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",), "malformed"),
        ((b"HTTP/1.1 2000 OK\r\n\r\n",), "malformed"),
        ((b"SMTP ready\r\n\r\n",), "malformed"),
        (
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",),
            "protocols",
        ),
    ],
)
def test_answer_reader_refuses_bad_framing(chunks, words):
    with pytest.raises(BadAnswer, match=words):
        answer_of(*chunks)


def test_answer_reader_refuses_an_answer_cut_by_the_close():
    with pytest.raises(BadAnswer, match="body"):
        answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", eof=True)
    with pytest.raises(BadAnswer, match="head"):
        answer_of(b"HTTP/1.1 200 OK\r\nContent-Le", eof=True)


# --- the server against h11 as the oracle (hypothesis) -------------------------------------------

# llhttp knows these methods; h11 takes any token (the app would answer 405).
LLHTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"}


async def ok_app(scope, receive, send):
    """Answers 200 to whatever reaches it: any other status is the server's own."""
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def h11_verdict(raw: bytes) -> tuple[str, h11.Request | None]:
    """What h11 makes of the first request in `raw`, the client having closed after it:
    "accepted" (a whole request), "refused" (a protocol error) or "incomplete"."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(raw)
    conn.receive_data(b"")
    request = None
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return "accepted", request
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return "incomplete", request
    except h11.RemoteProtocolError:
        return "refused", request


def server_verdict(raw: bytes) -> tuple[str, int | None]:
    """What murmur's server answers first to `raw` sent on a fresh connection, then closed:
    "accepted" (the app's 200), "refused" (a 4xx/5xx of its own) or "silent" (no answer)."""

    async def run() -> tuple[str, int | None]:
        client, server_side = trio.testing.memory_stream_pair()
        server = HttpServer(ok_app)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, server_side)
            await client.send_all(raw)
            await client.send_eof()
            data = b""
            while chunk := await client.receive_some(65536):
                data += chunk
        if not data:
            return "silent", None
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        while not isinstance(event := conn.next_event(), h11.Response):
            assert isinstance(event, h11.InformationalResponse), event
        status = event.status_code
        return ("accepted" if status == 200 else "refused"), status

    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


def stricter_than_h11(request: h11.Request, raw: bytes) -> str | None:
    """Why murmur's server refuses a request that h11 accepts, by design; None if it must not."""
    end = re.search(rb"\r?\n\r?\n", raw)
    head = raw[: end.end()] if end else raw
    if re.search(rb"(?<!\r)\n", head):
        return "a line ended by a bare LF (RFC 9112 2.2 lets a server require CRLF)"
    if re.search(rb"\r\n[ \t]", head):
        return "a header folded onto a second line (obs-fold: RFC 9112 5.2 lets a server refuse it)"
    headers = [(name.lower(), value.strip()) for name, value in request.headers]
    names = [name for name, _ in headers]
    if request.method.decode() not in LLHTTP_METHODS:
        return "a method llhttp does not know"
    if not re.fullmatch(rb"/[\x21-\x7e]*", request.target):
        return "a target that is not an origin-form path in printable ASCII"
    if request.http_version not in (b"1.0", b"1.1"):
        return "an HTTP version other than 1.0 and 1.1"
    if b"transfer-encoding" in names:
        return "a request body sent chunked (411)"
    if any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value) for _, value in headers):
        return "a control character in a header value (RFC 9110 5.5: not a field-vchar)"
    # h11 folds "Content-Length: 1,1" into 1: the list is seen in the raw head only.
    if names.count(b"content-length") > 1 or re.search(rb"(?im)^content-length:[^\r\n]*,", head):
        return "a Content-Length repeated or given as a list, even of one value"
    if any(
        name == b"expect" and value and value.lower() != b"100-continue" for name, value in headers
    ):
        return "an Expect other than 100-continue (417)"
    lengths = [int(value) for name, value in headers if name == b"content-length"]  # one, now
    if lengths and lengths[0] > MAX_BODY:
        return "a body over 1 MiB (413)"
    connection = b",".join(value.lower() for name, value in headers if name == b"connection")
    upgrade = request.method == b"CONNECT" or (b"upgrade" in connection and b"upgrade" in names)
    if lengths and lengths[0] > 0 and upgrade:
        return "a body on a request asking for another protocol (llhttp would not read it)"
    return None


def lenient_where_h11_is_not(raw: bytes) -> bool:
    """llhttp skips empty lines before a request (RFC 9112 2.2: a server SHOULD) and reads a
    request line split by runs of spaces (RFC 9112 3: it MAY); h11 refuses both. Nothing else
    that h11 refuses may be accepted."""
    line, sep, rest = raw.lstrip(b"\r\n").partition(b"\r\n")
    tidied = re.sub(rb" +", b" ", line) + sep + rest
    return tidied != raw and h11_verdict(tidied)[0] == "accepted"


def check_against_h11(raw: bytes) -> None:
    oracle, request = h11_verdict(raw)
    verdict, status = server_verdict(raw)
    if oracle == "accepted":
        why = stricter_than_h11(request, raw)
        if why is None:
            assert verdict == "accepted", (raw, status)
        else:
            assert verdict == "refused", (raw, why)
    elif oracle == "refused":
        assert verdict != "accepted" or lenient_where_h11_is_not(raw), (raw, status)
    else:  # the request never ended: nothing may reach the app
        assert verdict != "accepted", (raw, status)


TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=8,
)
METHODS = st.one_of(st.sampled_from(sorted(LLHTTP_METHODS)), TOKEN)
TARGETS = st.one_of(
    st.sampled_from(
        ["/", "/orders", "/quotes/MSFT?x=1", "/a%20b", "*", "http://h/x", "/a/../b", "//x"]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12).map(
        lambda t: "/" + t
    ),
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9"])
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
            "Upgrade",
            "Content-Type",
            "X-Id",
        ]
    ),
    TOKEN,
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "h",
            "0",
            "3",
            "12",
            "chunked",
            "close",
            "keep-alive",
            "upgrade",
            "100-continue",
            " spaced ",
            "a\tb",
            "application/json",
            "-1",
            "1,1",
            "99999999999999999999",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10),
)


@st.composite
def requests(draw) -> bytes:
    method, target, version = draw(METHODS), draw(TARGETS), draw(VERSIONS)
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("Host", "h"))
    body = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    head = (
        f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    )
    return head.encode("latin-1") + body


INTERESTING = [
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b":",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"0",
    b"a",
    b"/",
    b"?",
    b"%",
]


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        piece = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=3)))
        if op == "insert":
            raw[at:at] = piece
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 4))]
        elif op == "replace":
            raw[at : at + len(piece)] = piece
        elif op == "duplicate":
            end = raw.find(b"\r\n", at)
            if end >= 0:
                raw[at:at] = raw[at : end + 2]
        else:
            del raw[at:]
    return bytes(raw)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(requests())
@example(b"GET / HTTP/1.1\r\n\r\n")
@example(b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
@example(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
@example(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: \r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: h\r\n\nX-A: b\r\n\r\n")
@example(b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,1\r\n\r\na")
@example(b"CONNECT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
@example(b"CONNECT / HTTP/1.1\r\nHost: h\r\nExpect: h\r\nExpect: 100-continue\r\n\r\n")
@example(b"CONNECT / HTTP/1.1\r\nHost:\x01 h\r\n\r\n")
def test_server_verdict_on_generated_requests_matches_h11(raw):
    check_against_h11(raw)


@SETTINGS
@given(mutated())
def test_server_verdict_on_mutated_requests_matches_h11(raw):
    check_against_h11(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
                b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
                b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n",
                b"\r\n",
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 7),
)
def test_pipelined_requests_cut_anywhere_are_each_answered_once_in_order(parts, cut):
    """The server answers a pipeline of valid requests whatever the reads split them into."""
    raw = b"".join(parts)
    methods = [p.split(b" ")[0].decode() for p in parts if p != b"\r\n"]

    async def run():
        client, server_side = trio.testing.memory_stream_pair()
        server = HttpServer(ok_app)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, server_side)
            for i in range(0, len(raw), cut):
                await client.send_all(raw[i : i + cut])
                await trio.testing.wait_all_tasks_blocked()
            raw_client = RawClient(client)
            replies = [await raw_client.reply(method) for method in methods]
            await client.send_eof()
        assert [r.status for r in replies] == [200] * len(methods)
        assert [r.body for r in replies] == [b"" if m == "HEAD" else b"ok" for m in methods]
        assert server.stats["requests"] == len(methods)

    trio.run(run)
