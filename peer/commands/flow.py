"""`murmur flow`: drive an exchange's `POST /orders` with a deterministic, concurrent load."""

from __future__ import annotations

import argparse
import json

from peer.commands._common import UsageError

NAME = "flow"
HELP = "send deterministic external orders to an exchange, concurrently, and report the rate"
DESCRIPTION = """\
Send external orders (the seeded flow of book.market: mostly crossing, small quantities) to an
exchange's POST /orders from several concurrent connections, and print orders per second,
latency p50/p99 and the answers by HTTP status. The load client reads nothing of the
exchange's state: it only publishes orders.

examples:
  murmur flow --exchange http://127.0.0.1:8081 --duration 10
  murmur flow --exchange http://127.0.0.1:8081 --rate 200 --concurrency 4 --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exchange", required=True, metavar="URL", help="the exchange peer's HTTP URL")
    p.add_argument("--symbols", default="AAPL,AMZN,GOOG,META,MSFT,NFLX,NVDA,TSLA",
                   help="symbols to send orders for (must be listed by the exchange)")
    p.add_argument("--seed", type=int, default=2, help="seed of the order flow (default: 2)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent connections (default: 16)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default: 10)")
    p.add_argument("--count", type=int, help="stop after this many orders")
    p.add_argument("--rate", type=float, help="cap on orders per second (default: as fast as answered)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.concurrency <= 1024:
        raise UsageError(f"--concurrency must be from 1 to 1024, got {args.concurrency}")
    if not 0 < args.duration <= 24 * 3600:
        raise UsageError(f"--duration must be above 0, got {args.duration}")
    if args.rate is not None and args.rate <= 0:
        raise UsageError(f"--rate must be above 0, got {args.rate}")
    import trio

    from peer.exchange.service import parse_symbols
    from peer.tools.loadgen import run_load

    try:
        symbols = parse_symbols(args.symbols)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = trio.run(lambda: run_load(args.exchange.rstrip("/"), symbols, seed=args.seed,
                                       concurrency=args.concurrency, duration=args.duration,
                                       count=args.count, rate=args.rate))
    out = report.to_json()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"sent {out['sent']} orders in {out['elapsed_s']} s: {out['orders_per_s']} orders/s, "
              f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, by status {out['by_status']}, errors {out['errors']}")
    return 0 if out["sent"] and not out["errors"] else 1
