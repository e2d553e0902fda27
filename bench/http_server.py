"""What serving a request costs: the HTTP parsers and servers murmur could run, same app, same run.

Method: one small Starlette app (`POST /echo`: parse a JSON body, answer a JSON object, like the
exchange's order endpoint without the book), plus the same answer as a direct route
(`POST /direct`, what the exchange's `POST /orders` is), is served in a child process by each
server in turn:
- `hand`: the server peers ran before issue 10, which read requests with a few bytes operations
  of its own (`bench/_hand_parsed_server.py`, kept only for this row);
- `llhttp`: `peer.http.server` as it is now, reading with llhttp (httptools) through
  `peer.http.wire`;
- `hypercorn`: hypercorn 0.18 on trio (h11 inside; what peers ran first; a bench extra), app only.
A second child process is the load client: `--concurrency` workers on keep-alive connections of
`peer.http.client`, each sending a request and reading the answer. For each server it reports
requests/s, latency p50/p99, and the server process's CPU time per request (from
/proc/PID/stat), which is the figure that matters on a 2-core machine shared with the client.
Before the servers, in this process, it times the parsers alone on the same request: the hand
parser, `peer.http.wire.RequestReader` (llhttp), and h11 (read the request and write the
answer, which h11 needs to take the next one); then the hand and the llhttp servers whole, one
request after another over trio memory streams (no sockets, no other process: the CPU time of
this process per request, in alternating rounds, so a busy machine weighs on both alike).

Run: .venv/bin/python bench/http_server.py [--duration 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time

import _hand_parsed_server
import h11
import trio
import trio.testing
from _realcluster import cpu_seconds

from peer.http.server import HttpServer
from peer.http.wire import RequestReader

BENCH = os.path.dirname(os.path.abspath(__file__))

SERVER = r"""
import sys, json, trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def echo(request):
    body = json.loads(await request.body())
    return JSONResponse({"accepted": True, "fields": len(body)}, status_code=201)

async def direct(raw):
    body = json.loads(raw)
    return 201, json.dumps({"accepted": True, "fields": len(body)}, separators=(",", ":")).encode()

app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
routes = {("POST", b"/direct"): direct}
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "hypercorn":
    import hypercorn.trio
    from hypercorn.config import Config
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    config.keep_alive_max_requests = 10**9  # its default (1,000) would close connections mid-run
    trio.run(hypercorn.trio.serve, app, config)
else:
    if kind == "hand":
        from _hand_parsed_server import HttpServer  # the child runs in bench/
    else:
        from peer.http.server import HttpServer
    trio.run(lambda: HttpServer(app, direct=routes).serve(("127.0.0.1", port), trio.Event()))
"""

CLIENT = r"""
import sys, time, json, trio
from peer.http.client import HttpClient
port, conc, duration, route = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
body = {"order_id": "x" * 20, "symbol": "MSFT", "side": "buy", "type": "limit", "quantity": 3,
        "limit_price": 41234}
lat = []

async def worker(client, deadline):
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        answer = await client.post(route, json=body)
        if answer.status != 201:
            raise SystemExit(f"answer {answer.status}: {answer.body[:200]!r}")
        lat.append(time.perf_counter() - t0)

async def main():
    start = time.perf_counter()
    async with HttpClient(f"http://127.0.0.1:{port}", max_connections=conc, timeout=10) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(worker, client, start + duration)
    elapsed = time.perf_counter() - start
    lat.sort()
    print(json.dumps({"requests": len(lat), "per_s": len(lat) / elapsed,
                      "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}))

trio.run(main)
"""

BODY = json.dumps({"order_id": "x" * 20, "symbol": "MSFT", "side": "buy", "type": "limit",
                   "quantity": 3, "limit_price": 41234}, separators=(",", ":")).encode()
REQUEST = (b"POST /orders HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY))


def parse_hand() -> None:
    buffer = bytearray(REQUEST)
    end = buffer.find(b"\r\n\r\n")
    head = _hand_parsed_server.parse_head(bytes(buffer[:end]))
    del buffer[: end + 4]
    bytes(buffer[: head.content_length])


def parser_llhttp():
    reader = RequestReader()

    def parse() -> None:
        reader.feed(REQUEST)
        reader.next()

    return parse


def parser_h11():
    conn = h11.Connection(h11.SERVER)
    answer = h11.Response(status_code=201, headers=[(b"content-type", b"application/json"),
                                                    (b"content-length", b"%d" % len(BODY))])

    def parse() -> None:
        conn.receive_data(REQUEST)
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        # h11 takes the next request only once it has written this one's answer.
        conn.send(answer)
        conn.send(h11.Data(data=BODY))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()

    return parse


def time_parsers(n: int = 20000) -> dict[str, float]:
    out = {}
    for name, parse in (("hand", parse_hand), ("llhttp", parser_llhttp()), ("h11", parser_h11())):
        for _ in range(1000):
            parse()
        t0 = time.perf_counter()
        for _ in range(n):
            parse()
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


class _NoSocket:
    """What the hand server asks of a stream's socket, for a memory stream: no peer address."""

    def getpeername(self):
        raise OSError("a memory stream")

    getsockname = getpeername


async def _echo_app(scope, receive, send):
    body = json.loads((await receive())["body"])
    answer = json.dumps({"accepted": True, "fields": len(body)}).encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


async def _direct(raw: bytes) -> tuple[int, bytes]:
    body = json.loads(raw)
    return 201, json.dumps({"accepted": True, "fields": len(body)}, separators=(",", ":")).encode()


async def _serve_in_memory(kind: str, path: bytes, n: int) -> float:
    """CPU seconds of this process for n requests answered one after another over memory streams."""
    client, server_side = trio.testing.memory_stream_pair()
    routes = {("POST", b"/direct"): _direct}
    if kind == "hand":
        server_side.socket = _NoSocket()
        serve = _hand_parsed_server.HttpServer(_echo_app, direct=routes)._handle
    else:
        serve = HttpServer(_echo_app, direct=routes).serve_connection
    request = REQUEST.replace(b"/orders", path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, server_side)
        await client.send_all(request)
        first = await client.receive_some(65536)  # one answer: its length is every answer's
        t0 = time.process_time()
        for _ in range(n):
            await client.send_all(request)
            got = 0
            while got < len(first):
                got += len(await client.receive_some(65536))
        used = time.process_time() - t0
        nursery.cancel_scope.cancel()
    return used


def time_servers_in_memory(n: int = 5000, rounds: int = 4) -> dict[str, float]:
    """Microseconds of CPU per request, the fastest of `rounds` alternating rounds."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for kind in ("hand", "llhttp"):
            for path in (b"/echo", b"/direct"):
                used = trio.run(_serve_in_memory, kind, path, n) / n * 1e6
                key = f"{kind} {path.decode()}"
                best[key] = min(best.get(key, used), used)
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not start")


def measure(kind: str, route: str, duration: float, concurrency: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port)], cwd=BENCH)
    try:
        wait_listening(port)
        before = cpu_seconds(server.pid)
        out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(concurrency), str(duration), route],
                             capture_output=True, text=True, check=True).stdout
        used = cpu_seconds(server.pid) - before
    finally:
        server.kill()
        server.wait()
    row = json.loads(out)
    row["server_cpu_ms_per_request"] = used * 1000 / row["requests"]
    return {"server": kind, "route": route, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    print(f"# http_server  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  {platform.node()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}  loadavg {os.getloadavg()}")
    parsers = time_parsers()
    print("parser alone, one POST request (us): " + "  ".join(f"{k} {v:.1f}" for k, v in parsers.items()))
    in_memory = time_servers_in_memory()
    print("server whole over memory streams, CPU per request (us): "
          + "  ".join(f"{k} {v:.1f}" for k, v in in_memory.items()))
    rows = []
    for kind, route in (("hand", "/echo"), ("llhttp", "/echo"), ("hypercorn", "/echo"),
                        ("hand", "/direct"), ("llhttp", "/direct")):
        row = measure(kind, route, args.duration, args.concurrency)
        rows.append(row)
        print(f"{kind:10s} {route:8s} {row['per_s']:8.0f} req/s  p50 {row['p50_ms']:5.2f} ms  "
              f"p99 {row['p99_ms']:5.2f} ms  server CPU {row['server_cpu_ms_per_request']:.3f} ms/request")
    print(json.dumps({"bench": "http_server", "concurrency": args.concurrency, "parser_us": parsers,
                      "in_memory_us": in_memory,
                      "rows": rows}))


if __name__ == "__main__":
    main()
