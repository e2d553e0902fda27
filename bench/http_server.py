"""What serving a request costs: murmur's HTTP server against hypercorn, same app, same run.

Method: one small Starlette app (`POST /echo`: parse a JSON body, answer a JSON object, like the
exchange's order endpoint without the book) is served in a child process by each server in
turn: `peer.http.server` (what peers run) and hypercorn 0.18 on trio (what they ran before; a
bench extra). A second child process is the load client: 8 workers on keep-alive connections,
each sending a request and reading the answer, hand-written on raw trio streams so that the
client is as cheap as it can be and the server is what is measured. For each server it reports
requests/s, latency p50/p99, and the server process's CPU time per request (from
/proc/PID/stat), which is the figure that matters on a 2-core machine shared with the client.

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

SERVER = r"""
import sys, json, trio
sys.path.insert(0, {root!r})
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def echo(request):
    body = json.loads(await request.body())
    return JSONResponse({{"accepted": True, "fields": len(body)}}, status_code=201)

app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "murmur":
    from peer.http.server import HttpServer
    trio.run(lambda: HttpServer(app).serve(("127.0.0.1", port), trio.Event()))
else:
    import hypercorn.trio
    from hypercorn.config import Config
    config = Config()
    config.bind = [f"127.0.0.1:{{port}}"]
    config.accesslog = config.errorlog = None
    config.keep_alive_max_requests = 10**9  # its default (1,000) would close connections mid-run
    trio.run(hypercorn.trio.serve, app, config)
"""

CLIENT = r"""
import sys, time, json, trio
port, conc, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"order_id": "x" * 20, "symbol": "MSFT", "side": "buy", "type": "limit",
                   "quantity": 3, "limit_price": 41234}).encode()
request = (b"POST /echo HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(body), body))
lat = []

async def worker(deadline):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = b""
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await stream.send_all(request)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) >= end + 4 + length:
                    buf = buf[end + 4 + length:]
                    break
            data = await stream.receive_some(65536)
            if not data:
                raise SystemExit("server closed the connection")
            buf += data
        lat.append(time.perf_counter() - t0)

async def main():
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(conc):
            nursery.start_soon(worker, start + duration)
    elapsed = time.perf_counter() - start
    lat.sort()
    print(json.dumps({"requests": len(lat), "per_s": len(lat) / elapsed,
                      "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}))

trio.run(main)
"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _realcluster import cpu_seconds  # noqa: E402


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


def measure(kind: str, duration: float, concurrency: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=ROOT), kind, str(port)])
    try:
        wait_listening(port)
        before = cpu_seconds(server.pid)
        out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(concurrency), str(duration)],
                             capture_output=True, text=True, check=True).stdout
        used = cpu_seconds(server.pid) - before
    finally:
        server.kill()
        server.wait()
    row = json.loads(out)
    row["server_cpu_ms_per_request"] = used * 1000 / row["requests"]
    return {"server": kind, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    print(f"# http_server  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  {platform.node()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}  loadavg {os.getloadavg()}")
    rows = []
    for kind in ("hypercorn", "murmur"):
        row = measure(kind, args.duration, args.concurrency)
        rows.append(row)
        print(f"{kind:10s} {row['per_s']:8.0f} req/s  p50 {row['p50_ms']:5.2f} ms  p99 {row['p99_ms']:5.2f} ms  "
              f"server CPU {row['server_cpu_ms_per_request']:.3f} ms/request")
    print(json.dumps({"bench": "http_server", "concurrency": args.concurrency, "rows": rows}))


if __name__ == "__main__":
    main()
