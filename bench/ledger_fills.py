"""Durable fills per second at the ledger, acknowledgement latency, and restart time.

Method:

1. Throughput. One real ledger process (`murmur peer --role ledger`, SQLite in WAL mode with
   synchronous=FULL, group commit) on 127.0.0.1. This process runs C concurrent clients (trio +
   `peer.http.client`, keep-alive: the client the exchange's outbox uses), each POSTing `{"fills": [...]}` batches of B new fills to `/fills` as fast
   as the answers come, for `--duration` seconds. A fill counts once its 200 answer is read: it
   is then committed and fsynced. `/ledger` before and after gives the commits, so fills per
   commit (per fsync) is printed too. The clients share the machine's cores with the ledger.
2. Latency at an offered `--rate` fills/s, two ways, each with latency from the moment a fill
   is due to the answer that acknowledges it (so a backlog shows; no coordinated omission):
   (a) as the exchange's outbox sends them: fills are born on a fixed schedule and one sender
       POSTs everything pending (at most 200), waits for the answer, repeats;
   (b) open loop: requests scheduled at a fixed rate, each carrying `--latency-batch` fills and
       sent from its own task whatever the earlier ones are doing (1 fill a request is the
       harshest case: one HTTP request per fill).
3. Restart. A database with N fills (default 1,000,000) is built by direct SQLite inserts (fast,
   unsynchronised: it is a fixture, not the thing measured), then timed: `LedgerStore.open`
   in-process (header and write-ahead-log checks, PRAGMA quick_check, the position invariants,
   loading positions, active reservations and the stream's tail), and a real ledger process
   from spawn to `/health` 200 (adds Python start-up, gossip and HTTP). Then 20,000 fills are
   posted, the process is SIGKILLed (its log not checkpointed) and the restart is timed again.
   The page cache is warm (the file was just written): a cold disk adds its read time.

Run: .venv/bin/python bench/ledger_fills.py [--duration 10] [--concurrency 4,16] [--batch 100]
        [--rate 1000] [--restart-fills 1000000]
Small, for a quick look: --duration 2 --concurrency 8 --rate 500 --restart-fills 100000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sqlite3
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from ledger.store import DB_FILE, LedgerStore
from peer.http.client import HttpClient
from peer.tools.processes import PeerDidNotStart, start_peer, stop_group

SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]


def start_ledger(data_dir: Path) -> tuple[subprocess.Popen, str, float]:
    """A real ledger process on port 0, its URL, and the seconds from spawn to /health 200."""
    t0 = time.perf_counter()
    try:
        proc, url = trio.run(partial(start_peer, "ledger", data_dir, "--insecure", bound=60, every=0.01))
    except PeerDidNotStart as exc:
        raise SystemExit(f"the ledger did not start: {exc}") from None
    return proc, url, time.perf_counter() - t0


def stop(proc: subprocess.Popen) -> None:
    stop_group([proc], grace=15)


def make_fill(prefix: str, i: int) -> dict:
    return {"fill_id": f"{prefix}-{i}", "seq": i, "order_id": f"{prefix}-o{i}", "symbol": SYMBOLS[i % 8],
            "side": "buy" if i % 3 else "sell", "quantity": 1 + i % 5, "price": 10_000 + i % 100,
            "quote_id": f"{prefix}-q{i // 20}", "epoch": 1, "holder": "bench-mm", "reservation_id": None,
            "created_at": 1_700_000_000.0 + i / 1000}


def pct(sorted_ms: list[float], p: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))], 2) if sorted_ms else float("nan")


async def throughput(url: str, concurrency: int, batch: int, duration: float, prefix: str) -> dict:
    counter = iter(range(1, 10**12))
    acked = 0
    lat: list[float] = []
    errors = 0
    async with HttpClient(url, timeout=30, max_connections=concurrency) as c:
        before = (await c.get("/ledger")).json()
        t_end = time.perf_counter() + duration

        async def client() -> None:
            nonlocal acked, errors
            while time.perf_counter() < t_end:
                body = {"fills": [make_fill(prefix, next(counter)) for _ in range(batch)]}
                t0 = time.perf_counter()
                r = await c.post("/fills", json=body)
                if r.status == 200:
                    acked += batch
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for _ in range(concurrency):
                n.start_soon(client)
        elapsed = time.perf_counter() - t0
        after = (await c.get("/ledger")).json()
    commits = after["store"]["commits"] - before["store"]["commits"]
    lat.sort()
    return {"concurrency": concurrency, "batch": batch, "fills": acked, "seconds": round(elapsed, 2),
            "fills_per_s": round(acked / elapsed, 1), "requests_per_s": round(len(lat) / elapsed, 1),
            "commits": commits, "fills_per_commit": round(acked / commits, 1) if commits else None,
            "request_p50_ms": pct(lat, 0.5), "request_p99_ms": pct(lat, 0.99), "errors": errors}


async def latency(url: str, rate: float, batch: int, duration: float, prefix: str) -> dict:
    interval = batch / rate
    n_requests = int(duration / interval)
    lat: list[float] = []
    errors = 0
    async with HttpClient(url, timeout=30, max_connections=200) as c:
        await c.get("/health")
        start = time.perf_counter() + 0.05

        async def one(k: int) -> None:
            nonlocal errors
            scheduled = start + k * interval
            body = {"fills": [make_fill(prefix, k * batch + j + 1) for j in range(batch)]}
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await trio.sleep(delay)
            r = await c.post("/fills", json=body)
            if r.status == 200:
                lat.append((time.perf_counter() - scheduled) * 1000)
            else:
                errors += 1

        async with trio.open_nursery() as n:
            for k in range(n_requests):
                n.start_soon(one, k)
                # Spawn ahead of schedule by a little only: thousands of sleeping tasks cost nothing,
                # but building every body up front would skew the first seconds.
                if k % 50 == 49:
                    await trio.sleep(max(0.0, start + (k - 25) * interval - time.perf_counter()))
    lat.sort()
    return {"mode": "open-loop requests", "offered_fills_per_s": rate, "batch": batch, "requests": n_requests,
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99), "max_ms": round(lat[-1], 2) if lat else None, "errors": errors}


async def outbox_latency(url: str, rate: float, duration: float, prefix: str) -> dict:
    """Fills are born at `rate` per second (on a fixed schedule); one sender does what the
    exchange's outbox does: POST everything pending (at most 200), wait for the answer, repeat.
    A fill's latency runs from its birth to the answer that acknowledges it."""
    total = int(rate * duration)
    start = time.perf_counter() + 0.05
    born = [start + i / rate for i in range(total)]
    lat: list[float] = []
    batches = []
    sent = 0
    async with HttpClient(url, timeout=30, max_connections=1) as c:
        await c.get("/health")
        while sent < total:
            now = time.perf_counter()
            ready = sent
            while ready < total and born[ready] <= now and ready - sent < 200:
                ready += 1
            if ready == sent:
                await trio.sleep(max(0.0, born[sent] - now))
                continue
            r = await c.post("/fills", json={"fills": [make_fill(prefix, i + 1) for i in range(sent, ready)]})
            assert r.status == 200, r.body
            acked = time.perf_counter()
            lat += [(acked - born[i]) * 1000 for i in range(sent, ready)]
            batches.append(ready - sent)
            sent = ready
    lat.sort()
    return {"mode": "outbox", "offered_fills_per_s": rate, "fills": total, "requests": len(batches),
            "mean_batch": round(total / len(batches), 1), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "max_ms": round(lat[-1], 2)}


def build_db(path: Path, n: int) -> float:
    """A ledger with n fills, by direct inserts: the store creates the schema, we fill it."""
    t0 = time.perf_counter()
    LedgerStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    net = {s: 0 for s in SYMBOLS}
    ver = {s: 0 for s in SYMBOLS}
    last = {}

    def rows():
        for i in range(1, n + 1):
            f = make_fill("R", i)
            s = f["symbol"]
            ver[s] += 1
            net[s] += f["quantity"] if f["side"] == "buy" else -f["quantity"]
            last[s] = f["fill_id"]
            yield (i, f["fill_id"], i, f["order_id"], s, f["side"], f["quantity"], f["price"], f["quote_id"], 1,
                   "bench-mm", None, f["created_at"], ver[s], net[s], f["created_at"])

    conn.execute("BEGIN")
    conn.executemany("INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
    conn.executemany("INSERT INTO positions VALUES (?, ?, ?, ?, ?)",
                     [(s, net[s], ver[s], last[s], 1_700_000_000.0) for s in SYMBOLS if ver[s]])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def restart(n: int, tmp: Path) -> dict:
    data = tmp / "restart"
    data.mkdir()
    path = data / DB_FILE
    built = build_db(path, n)
    size_mb = path.stat().st_size / 1e6
    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        store = LedgerStore.open(path)
        opens.append(time.perf_counter() - t0)
        assert store.last_seq == n
        store.close()
    proc, url, clean_s = start_ledger(data)
    try:
        # Leave unflushed work in the write-ahead log, then crash.
        with httpx.Client(base_url=url, timeout=30) as c:
            for k in range(0, 20_000, 500):
                c.post("/fills", json={"fills": [make_fill("K", k + j + 1) for j in range(500)]}).raise_for_status()
    finally:
        stop_group([proc], grace=0, signum=signal.SIGKILL)
    wal_mb = path.with_name(DB_FILE + "-wal").stat().st_size / 1e6
    proc, url, crash_s = start_ledger(data)
    try:
        status = httpx.get(f"{url}/ledger").json()
        assert status["last_seq"] == n + 20_000, status
    finally:
        stop(proc)
    return {"fills": n, "db_mb": round(size_mb, 1), "build_s": round(built, 1),
            "open_s": [round(x, 3) for x in opens], "process_to_health_s": round(clean_s, 3),
            "after_sigkill": {"wal_mb": round(wal_mb, 1), "process_to_health_s": round(crash_s, 3),
                              "open_s": status["opened"]["open_s"], "wal_frames": status["opened"]["wal_frames"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per throughput point and latency run")
    ap.add_argument("--concurrency", default="4,16", help="concurrent clients, comma-separated (empty: skip)")
    ap.add_argument("--batch", type=int, default=100, help="fills per POST in the throughput runs")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered fills/s in the latency runs (0: skip)")
    ap.add_argument("--latency-batch", default="1,10",
                    help="fills per request in the open-loop latency runs (empty: skip them)")
    ap.add_argument("--restart-fills", type=int, default=1_000_000, help="0 skips the restart measurement")
    args = ap.parse_args()
    print(f"# ledger_fills  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  {platform.node()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}  sqlite {sqlite3.sqlite_version}  "
          f"loadavg {os.getloadavg()}")
    results: dict = {"bench": "ledger_fills", "throughput": [], "latency": [], "restart": None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "ledger"
        data.mkdir()
        proc, url, _ = start_ledger(data)
        try:
            for conc in (int(x) for x in args.concurrency.split(",") if x):
                row = trio.run(throughput, url, conc, args.batch, args.duration, f"T{conc}")
                results["throughput"].append(row)
                print(f"throughput  clients {conc:3d} x {args.batch} fills/POST: {row['fills_per_s']:9.1f} durable fills/s"
                      f"  {row['fills_per_commit']} fills/commit  request p50 {row['request_p50_ms']} ms"
                      f"  p99 {row['request_p99_ms']} ms  errors {row['errors']}")
            if args.rate > 0:
                row = trio.run(outbox_latency, url, args.rate, args.duration, "O")
                results["latency"].append(row)
                print(f"latency     offered {args.rate:g} fills/s, sent like the exchange's outbox (mean "
                      f"{row['mean_batch']} fills/request): p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                      f"max {row['max_ms']} ms")
            for b in (int(x) for x in args.latency_batch.split(",") if x and args.rate > 0):
                row = trio.run(latency, url, args.rate, b, args.duration, f"L{b}")
                results["latency"].append(row)
                print(f"latency     offered {args.rate:g} fills/s, {b} fill(s)/request: p50 {row['p50_ms']} ms"
                      f"  p99 {row['p99_ms']} ms  max {row['max_ms']} ms  errors {row['errors']}")
            results["ledger"] = httpx.get(f"{url}/ledger").json()
        finally:
            stop(proc)
        if args.restart_fills:
            r = restart(args.restart_fills, tmp)
            results["restart"] = r
            print(f"restart     {r['fills']} fills ({r['db_mb']} MB, built in {r['build_s']} s): LedgerStore.open "
                  f"{r['open_s']} s; process spawn to /health {r['process_to_health_s']} s; after SIGKILL with "
                  f"{r['after_sigkill']['wal_mb']} MB of log: {r['after_sigkill']['process_to_health_s']} s "
                  f"(open {r['after_sigkill']['open_s']} s)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
