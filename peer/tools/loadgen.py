"""A load client for the exchange: deterministic orders through `POST /orders`, concurrently.

What it is for: `murmur flow` and `bench/http_orders.py`. It takes the seeded external flow
(`book.market.OrderFlow`, with its own order-id prefix so it never collides with the exchange's
built-in flow), and sends it with `concurrency` workers over keep-alive connections (`peer.http.client`), either as
fast as the exchange answers or at a target rate, for a duration or a count. It reports orders
per second, latency percentiles and the answers by status. It must never read the exchange's
state to decide what to send (an order publisher has no authority and no inputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from book.market import OrderFlow, ReferencePrices
from peer.http.client import HttpClient, HttpError


@dataclass
class LoadReport:
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

    def to_json(self) -> dict:
        return {
            "sent": self.sent,
            "orders_per_s": round(self.sent / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else None,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
        }


async def run_load(
    url: str,
    symbols: list[str],
    *,
    seed: int = 2,
    concurrency: int = 16,
    duration: float = 10.0,
    count: int | None = None,
    rate: float | None = None,
    id_prefix: str = "load",
) -> LoadReport:
    """Send orders until `duration` seconds or `count` orders; `rate` caps orders per second."""
    prices = ReferencePrices(1, symbols)  # the exchange's default market seed: orders near its prices
    flow = OrderFlow(seed, symbols, prices, rate=1000.0, id_prefix=f"{id_prefix}-{int(time.time())}")
    intents = iter(())
    report = LoadReport()
    horizon = 0.0
    start = time.perf_counter()
    deadline = start + duration

    def next_body() -> dict | None:
        nonlocal intents, horizon
        while True:
            for intent in intents:
                if intent.cancel_of is None:
                    return intent.to_json()
            horizon += 1.0
            intents = iter(flow.next_batch(horizon))

    async def worker(client: HttpClient) -> None:
        while True:
            now = time.perf_counter()
            if now >= deadline or (count is not None and report.sent >= count):
                return
            if rate:
                due = start + report.sent / rate
                if due > now:
                    await trio.sleep(due - now)
            body = next_body()
            report.sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/orders", json=body)
                report.by_status[r.status] = report.by_status.get(r.status, 0) + 1
            except HttpError:
                report.errors += 1
                continue
            report.latencies_ms.append((time.perf_counter() - t0) * 1000)

    async with HttpClient(url, max_connections=concurrency, timeout=10.0) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, client)
    report.elapsed_s = time.perf_counter() - start
    return report
