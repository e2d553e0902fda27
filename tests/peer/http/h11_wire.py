"""Test helpers that read HTTP/1.1 off raw streams with h11, a parser independent of murmur's.

The tests of the server write raw bytes (malformed ones too) and read what comes back with h11's
client side; the tests of the client stand up scripted servers that read requests with h11's
server side. So no test has a parser of its own, and each side of murmur is checked by a
parser that is not the one it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import h11
import trio

RECEIVE = 65536


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class RawClient:
    """Writes raw request bytes to a server and reads its answers, in order, with h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def reply(self, method: str = "GET", *, interim: bool = False) -> Reply:
        """The next answer, to a request made with `method` (HEAD answers have no body).
        With interim=True, a `1xx` answer is returned instead of skipped."""
        conn = self.h11
        if conn.our_state is h11.IDLE:
            # h11 reads an answer only to a request it saw leave: tell it what was sent.
            conn.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
            conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                if interim:
                    return Reply(event.status_code, _headers(event.headers), b"")
                continue
            if isinstance(event, h11.Response):
                status, headers = event.status_code, _headers(event.headers)
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                return Reply(status, headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection before answering")

    async def replies(self, n: int, method: str = "GET") -> list[Reply]:
        return [await self.reply(method) for _ in range(n)]

    async def closed(self, within: float = 5.0) -> bool:
        """True once the server has closed the connection, with nothing more sent."""
        with trio.fail_after(within):
            data = await self.stream.receive_some(RECEIVE)
        return data == b""


def _headers(items) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in items}


class RawServerSide:
    """Reads requests off a stream with h11's server side; the script writes what it likes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def request(self) -> h11.Request | None:
        """The next whole request (its body is read and dropped), or None if the client closed."""
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        found = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(RECEIVE))
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                found = event
            elif isinstance(event, h11.EndOfMessage):
                return found

    def answered(self) -> None:
        """The script wrote a whole answer of its own (raw bytes): let h11 take the next request."""
        conn = self.h11
        conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        conn.send(h11.EndOfMessage())
