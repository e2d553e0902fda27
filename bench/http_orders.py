"""Orders per second through the exchange's HTTP API, and the cost of a market maker's call.

Method: one real exchange process (`murmur peer --role exchange`, its own flow off, tape on the
local disk with group commit) on 127.0.0.1; this process runs the load client (`peer.tools.loadgen`:
`peer.http.client` over keep-alive connections, the seeded external flow) at each concurrency for
`--duration` seconds and reports orders/s and latency percentiles, measured from request sent to
answer read. Then the peer-to-peer interface a market maker uses (HTTP/JSON: claim once, then
`PUT /quotes/{symbol}` replaces, one at a time) is timed the same way. Both sides share the
machine's 2 cores, so the client's own cost is inside the figures.

Run: .venv/bin/python bench/http_orders.py [--duration 10] [--concurrency 8,16,32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from peer.http.client import HttpClient, path
from peer.tools.loadgen import run_load
from peer.tools.processes import PeerDidNotStart, start_peer

SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]


def start_exchange(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real exchange process on port 0 (its own flow off, an hour's lease) and its URL."""
    try:
        return trio.run(partial(start_peer, "exchange", data_dir, "--lease", "3600", "--insecure", bound=30))
    except PeerDidNotStart as exc:
        raise SystemExit(f"the exchange did not start: {exc}") from None


async def quote_calls(url: str, n: int) -> dict:
    async with HttpClient(url, timeout=10) as c:
        r = await c.post(path("authority", "MSFT", "claim"), json={"holder": "bench-mm", "epoch": int(time.time())})
        epoch = r.json()["authority"]["epoch"]
        price = (await c.get(path("prices", "MSFT"))).json()["price"]
        lat = []
        for i in range(n):
            body = {"holder": "bench-mm", "epoch": epoch, "seq": i + 1, "quote_id": f"bq-{epoch}-{i}",
                    "bid_price": price - 50 - i % 3, "bid_quantity": 1, "ask_price": price + 50 + i % 3,
                    "ask_quantity": 1}
            t0 = time.perf_counter()
            r = await c.put(path("quotes", "MSFT"), json=body)
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200, r.body
    lat.sort()
    return {"calls": n, "p50_ms": round(lat[n // 2], 2), "p99_ms": round(lat[int(n * 0.99)], 2),
            "max_ms": round(lat[-1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", default="8,16,32")
    ap.add_argument("--quote-calls", type=int, default=2000)
    args = ap.parse_args()
    print(f"# http_orders  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  {platform.node()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}  loadavg {os.getloadavg()}")
    results = {"bench": "http_orders", "load": [], "quote_put": None}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_exchange(Path(tmp))
        try:
            for conc in (int(x) for x in args.concurrency.split(",")):
                report = trio.run(lambda c=conc: run_load(url, SYMBOLS, concurrency=c, duration=args.duration,
                                                          id_prefix=f"bench{c}"))
                row = {"concurrency": conc, **report.to_json()}
                results["load"].append(row)
                print(f"concurrency {conc:3d}: {row['orders_per_s']:8.1f} orders/s  p50 {row['p50_ms']:6.2f} ms  "
                      f"p99 {row['p99_ms']:6.2f} ms  statuses {row['by_status']}  errors {row['errors']}")
            results["quote_put"] = trio.run(quote_calls, url, args.quote_calls)
            q = results["quote_put"]
            print(f"PUT /quotes (market maker's call, sequential): p50 {q['p50_ms']} ms  p99 {q['p99_ms']} ms  "
                  f"max {q['max_ms']} ms over {q['calls']} calls")
            results["exchange"] = httpx.get(f"{url}/exchange").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
