"""Order-book operations in process: murmur's `OrderBook` beside `limit-order-book` and `order-matching`.

Method. One seeded workload is generated first (untimed) and then replayed, identically, into
each engine; the orders themselves are built before the clock starts, so what is timed is the
engine's own work per operation. Two mixes, each starting from the same warm book of `--book`
resting orders (half bids, half asks, within 50 ticks of a mid of 10,000, quantities 1-10):

- add/cancel: non-crossing limit orders around the mid and cancels of a random live order, about
  50/50 (a gentle pull keeps the book near its warm size); nothing executes.
- match-heavy: 35% limit orders crossing the spread by 0-2 ticks with quantities of 1-20 (they
  sweep several makers, fill partially, and rest what is left), 45% passive limit orders 1-20
  ticks behind the opposite best, 20% cancels of a random live order (that share is pulled
  up or down to keep the book near its warm size). The live set for the cancels comes from
  running the workload through murmur's book while generating it.

Figures: ops/s from a plain loop (best and median of `--repeat` runs), and latency per operation
from a separate run with `time.perf_counter_ns()` around each call (that run's own ops/s is
shown too: the timer costs about 0.1 us a call). `order-matching` (PyPI, pure Python, float
prices, polars/pandera beside it) is driven through its public API: `place(Orders([o]))` then
`match(timestamp)` per order, `cancel_order(order_id)` per cancel, its loguru debug logging
disabled. It is O(live orders) per call (order lookup by id is a linear scan), so it runs on the
first `--om-ops` operations of each mix only; murmur's book is timed on that same prefix too,
and the two books are compared after it (traded volume, live orders, top 10 levels).
`order-matching` rests a market order's unfilled rest (at price inf/0) instead of cancelling
it, so market orders are left out of the shared workload. One thread; the process is not pinned.

`limit-order-book` (PyPI, a C++ price-time book built from its sdist with g++ -O3, driven over
ctypes) is the second anchor: it runs every operation of both mixes, timed exactly like murmur's
book (the same plain loop, best and median of `--repeat`, then the per-op-timed run), through its
public API: `limit(is_buy, uid, qty, price)` per order (a crossing limit order sweeps price-time,
fills partially and rests the rest, as murmur's does), `cancel(uid)` per cancel. Its ids are
64-bit integers, given to the string ids before the clock starts. A cancel of an id it does not
hold aborts the process (a C++ exception through the C API), so the plan is first replayed once
untimed with `has()` before every cancel; the timed runs happen only if every cancel found its
order. It returns no fills to Python, so the cross-check is on what it shows: live orders and
resting quantity per side, best bid and ask, and the resting quantity at murmur's top 10 prices
after the per-op-timed runs. Printed: murmur / limit-order-book, as ratios of the best, the median
and the per-op-timed ops/s. Not installed (or `--no-lob`): the bench says so and runs without it.

Run: .venv/bin/python bench/book_ops.py [--ops 200000] [--om-ops 20000] [--book 1000] [--seed 7]
     [--repeat 3] [--no-lob]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import time

from book.orderbook import OrderBook
from book.orders import Kind, Order, Side

SYMBOL = "BENCH"
MID = 10_000
ADD, CROSS, CANCEL = 0, 1, 2
OP_NAMES = {ADD: "add", CROSS: "cross", CANCEL: "cancel"}


# -- workload --------------------------------------------------------------------------------


class LiveSet:
    """Live order ids with O(1) add, remove and uniform random pick."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, oid: str) -> None:
        self.pos[oid] = len(self.ids)
        self.ids.append(oid)

    def remove(self, oid: str) -> None:
        i = self.pos.pop(oid)
        last = self.ids.pop()
        if last != oid:
            self.ids[i] = last
            self.pos[last] = i

    def pick(self, rng: random.Random) -> str:
        return self.ids[rng.randrange(len(self.ids))]


# An op is (code, order_id, is_buy, price, qty); a cancel carries only code and order_id.


def warm_ops(rng: random.Random, n: int) -> list[tuple]:
    out = []
    for i in range(n):
        buy = i % 2 == 0
        price = MID - rng.randint(1, 50) if buy else MID + rng.randint(1, 50)
        out.append((ADD, f"w{i}", buy, price, rng.randint(1, 10)))
    return out


def gen_add_cancel(rng: random.Random, n: int, warm: list[tuple]) -> list[tuple]:
    live = LiveSet()
    for op in warm:
        live.add(op[1])
    target = len(warm)
    ops = []
    for i in range(n):
        p_add = min(0.9, max(0.1, 0.5 + 0.5 * (target - len(live)) / max(target, 1)))
        if not live or rng.random() < p_add:
            buy = rng.random() < 0.5
            price = MID - rng.randint(1, 50) if buy else MID + rng.randint(1, 50)
            oid = f"a{i}"
            ops.append((ADD, oid, buy, price, rng.randint(1, 10)))
            live.add(oid)
        else:
            oid = live.pick(rng)
            live.remove(oid)
            ops.append((CANCEL, oid))
    return ops


def gen_match_heavy(rng: random.Random, n: int, warm: list[tuple]) -> list[tuple]:
    oracle = OrderBook(SYMBOL)
    live = LiveSet()
    for _, oid, buy, price, qty in warm:
        oracle.submit(make_order(oid, buy, price, qty), 0.0)
        live.add(oid)
    target = len(warm)
    ops = []
    for i in range(n):
        # Cancels are 20% of the ops at the warm book size, fewer when the book thins and more
        # when it grows: a gentle pull that keeps the book near its warm size. Of the rest,
        # 7/16 cross (35% of all ops) and 9/16 rest passively (45%).
        p_cancel = min(0.3, max(0.05, 0.2 * len(live) / max(target, 1)))
        if live and rng.random() < p_cancel:
            victim = live.pick(rng)
            live.remove(victim)
            oracle.cancel(victim)
            ops.append((CANCEL, victim))
            continue
        oid = f"m{i}"
        buy = rng.random() < 0.5
        bid, ask = oracle.best_bid(), oracle.best_ask()
        opposite = ask if buy else bid
        if rng.random() < 7 / 16 and opposite is not None:
            code, qty = CROSS, rng.randint(1, 20)
            price = opposite + rng.randint(0, 2) if buy else opposite - rng.randint(0, 2)
        else:
            code, qty = ADD, rng.randint(1, 10)
            if buy:
                price = (ask if ask is not None else MID + 1) - rng.randint(1, 20)
            else:
                price = (bid if bid is not None else MID - 1) + rng.randint(1, 20)
            price = max(price, 1)
        order = make_order(oid, buy, price, qty)
        for e in oracle.submit(order, 0.0):
            if e.maker.remaining == 0:
                live.remove(e.maker.order_id)
        if order.remaining:
            live.add(oid)
        ops.append((code, oid, buy, price, qty))
    return ops


def make_order(oid: str, buy: bool, price: int, qty: int) -> Order:
    return Order(oid, SYMBOL, Side.BUY if buy else Side.SELL, Kind.LIMIT, qty, price, 0.0)


# -- engines ---------------------------------------------------------------------------------


class Murmur:
    name = "murmur"

    def __init__(self, warm: list[tuple]) -> None:
        self.book = OrderBook(SYMBOL)
        self.all_orders: list[Order] = []
        for _, oid, buy, price, qty in warm:
            order = make_order(oid, buy, price, qty)
            self.all_orders.append(order)
            self.book.submit(order, 0.0)

    def prepare(self, ops: list[tuple]) -> list[tuple]:
        plan = []
        for op in ops:
            if op[0] == CANCEL:
                plan.append((False, op[1]))
            else:
                order = make_order(*op[1:])
                self.all_orders.append(order)
                plan.append((True, order))
        return plan

    def run(self, plan: list[tuple]) -> int:
        submit, cancel = self.book.submit, self.book.cancel
        t0 = time.perf_counter_ns()
        for is_add, x in plan:
            if is_add:
                submit(x, 0.0)
            else:
                cancel(x)
        return time.perf_counter_ns() - t0

    def run_timed(self, plan: list[tuple]) -> tuple[int, list[int]]:
        submit, cancel, clock = self.book.submit, self.book.cancel, time.perf_counter_ns
        lat = [0] * len(plan)
        t0 = clock()
        for i, (is_add, x) in enumerate(plan):
            t = clock()
            if is_add:
                submit(x, 0.0)
            else:
                cancel(x)
            lat[i] = clock() - t
        return clock() - t0, lat

    def volume(self) -> int:
        return sum(o.filled for o in self.all_orders if o.side is Side.BUY)

    def live(self) -> int:
        return len(self.book)

    def top(self) -> dict:
        return self.book.depth(10)


class OrderMatching:
    """The `order-matching` package's MatchingEngine, through its public API."""

    name = "order-matching"

    def __init__(self, warm: list[tuple], seed: int) -> None:
        from loguru import logger
        from order_matching.enums import Side as OMSide
        from order_matching.matching_engine import MatchingEngine
        from order_matching.order import LimitOrder
        from order_matching.orders import Orders

        logger.disable("order_matching")  # its per-call debug lines would go to stderr
        self.Orders, self.LimitOrder, self.OMSide = Orders, LimitOrder, OMSide
        self.base = datetime.datetime(2026, 1, 1)
        self.tick = 0
        self.engine = MatchingEngine(seed=seed)
        self.all_orders: list = []
        for op in warm:
            order = self._order(*op[1:])
            self.engine.place(Orders([order]))
            self.engine.match(timestamp=order.timestamp)

    def _order(self, oid: str, buy: bool, price: int, qty: int):
        # Strictly increasing timestamps: the engine orders its queues by timestamp.
        self.tick += 1
        order = self.LimitOrder(
            side=self.OMSide.BUY if buy else self.OMSide.SELL,
            price=price,
            size=qty,
            timestamp=self.base + datetime.timedelta(microseconds=self.tick),
            order_id=oid,
            trader_id="t",
        )
        self.all_orders.append((order, qty))
        return order

    def prepare(self, ops: list[tuple]) -> list[tuple]:
        return [(False, op[1]) if op[0] == CANCEL else (True, self._order(*op[1:])) for op in ops]

    def run_timed(self, plan: list[tuple]) -> tuple[int, list[int], int]:
        engine, Orders, clock = self.engine, self.Orders, time.perf_counter_ns
        lat = [0] * len(plan)
        errors = 0
        t0 = clock()
        for i, (is_add, x) in enumerate(plan):
            t = clock()
            if is_add:
                engine.place(Orders([x]))
                engine.match(timestamp=x.timestamp)
            else:
                try:
                    engine.cancel_order(x)
                except ValueError:
                    errors += 1
            lat[i] = clock() - t
        return clock() - t0, lat, errors

    def volume(self) -> int:
        return int(sum(qty - o.size for o, qty in self.all_orders if o.side is self.OMSide.BUY))

    def live(self) -> int:
        book = self.engine.unprocessed_orders
        return sum(len(v) for v in book.bids.values()) + sum(len(v) for v in book.offers.values())

    def top(self) -> dict:
        book = self.engine.unprocessed_orders
        return {
            "bids": [[int(p), int(q)] for p, q in book.bids_depth[:10]],
            "asks": [[int(p), int(q)] for p, q in book.asks_depth[:10]],
        }


class LimitOrderBookCpp:
    """The `limit-order-book` package (C++ over ctypes), through its public `LimitOrderBook` API.

    Its ids are unsigned 64-bit integers: each string id gets a number in `prepare`, before the
    clock starts. It reports no fills to Python, so it is compared on what it can show: the live
    orders and resting quantity of each side, the best bid and ask, and the resting quantity at
    murmur's top 10 prices. A cancel of an id it does not hold raises a C++ exception through the
    C API, which ends the process, so `checked_run` replays the plan once with `has()` before
    every cancel, untimed, and the timed runs happen only if every cancel found its order.
    """

    name = "limit-order-book"

    def __init__(self, warm: list[tuple]) -> None:
        from limit_order_book import LimitOrderBook

        self.book = LimitOrderBook()
        self.uids: dict[str, int] = {}
        for _, oid, buy, price, qty in warm:
            self.book.limit(buy, self._uid(oid), qty, price)

    def _uid(self, oid: str) -> int:
        uid = self.uids.get(oid)
        if uid is None:
            uid = self.uids[oid] = len(self.uids) + 1
        return uid

    def prepare(self, ops: list[tuple]) -> list[tuple]:
        plan = []
        for op in ops:
            if op[0] == CANCEL:
                plan.append((False, self.uids[op[1]]))
            else:
                _, oid, buy, price, qty = op
                plan.append((True, (buy, self._uid(oid), qty, price)))
        return plan

    def checked_run(self, plan: list[tuple]) -> int:
        book, missing = self.book, 0
        for is_add, x in plan:
            if is_add:
                book.limit(*x)
            elif book.has(x):
                book.cancel(x)
            else:
                missing += 1
        return missing

    def run(self, plan: list[tuple]) -> int:
        limit, cancel = self.book.limit, self.book.cancel
        t0 = time.perf_counter_ns()
        for is_add, x in plan:
            if is_add:
                limit(*x)
            else:
                cancel(x)
        return time.perf_counter_ns() - t0

    def run_timed(self, plan: list[tuple]) -> tuple[int, list[int]]:
        limit, cancel, clock = self.book.limit, self.book.cancel, time.perf_counter_ns
        lat = [0] * len(plan)
        t0 = clock()
        for i, (is_add, x) in enumerate(plan):
            t = clock()
            if is_add:
                limit(*x)
            else:
                cancel(x)
            lat[i] = clock() - t
        return clock() - t0, lat

    def state(self, prices: dict) -> dict:
        """What both books can show, at murmur's top-10 `prices` ({"bids": [...], "asks": [...]})."""
        b = self.book
        return {
            "live": [b.count_buy(), b.count_sell()],
            "resting": [b.volume_buy(), b.volume_sell()],
            "best": [b.best_buy() or None, b.best_sell() or None],
            "bids": [[p, b.volume_buy(p)] for p, _ in prices["bids"]],
            "asks": [[p, b.volume_sell(p)] for p, _ in prices["asks"]],
        }


def murmur_state(book: OrderBook) -> dict:
    """murmur's side of `LimitOrderBookCpp.state`."""
    live = book.live_orders()
    buys = [o for o in live if o.side is Side.BUY]
    sells = [o for o in live if o.side is Side.SELL]
    top = book.depth(10)
    return {
        "live": [len(buys), len(sells)],
        "resting": [sum(o.remaining for o in buys), sum(o.remaining for o in sells)],
        "best": [book.best_bid(), book.best_ask()],
        "bids": top["bids"],
        "asks": top["asks"],
    }


# -- figures ---------------------------------------------------------------------------------


def pct(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def latency_summary(ops: list[tuple], lat: list[int]) -> dict:
    out = {}
    groups: dict[str, list[int]] = {"all": sorted(lat)}
    for code, name in OP_NAMES.items():
        xs = sorted(ns for op, ns in zip(ops, lat, strict=True) if op[0] == code)
        if xs:
            groups[name] = xs
    for name, xs in groups.items():
        out[name] = {
            "n": len(xs),
            "p50_us": round(pct(xs, 0.50), 2),
            "p99_us": round(pct(xs, 0.99), 2),
            "p999_us": round(pct(xs, 0.999), 2),
        }
    return out


def fmt_lat(summary: dict) -> str:
    return "  ".join(
        f"{k} p50 {v['p50_us']:.2f} us / p99 {v['p99_us']:.2f} us (n={v['n']})"
        for k, v in summary.items()
    )


def bench_murmur(warm: list[tuple], ops: list[tuple], repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        engine = Murmur(warm)
        plan = engine.prepare(ops)
        gc.collect()
        runs.append(engine.run(plan))
    engine = Murmur(warm)
    plan = engine.prepare(ops)
    gc.collect()
    elapsed, lat = engine.run_timed(plan)
    engine.book.check_invariants()
    rates = [len(ops) / (ns / 1e9) for ns in runs]
    return {
        "ops": len(ops),
        "ops_per_s_best": round(max(rates)),
        "ops_per_s_median": round(statistics.median(rates)),
        "ops_per_s_runs": [round(r) for r in rates],
        "ops_per_s_timed_run": round(len(ops) / (elapsed / 1e9)),
        "latency": latency_summary(ops, lat),
        "volume": engine.volume(),
        "live_after": engine.live(),
        "top_after": engine.top(),
        "state_after": murmur_state(engine.book),
    }


def bench_lob(warm: list[tuple], ops: list[tuple], repeat: int, prices: dict) -> dict:
    engine = LimitOrderBookCpp(warm)
    plan = engine.prepare(ops)
    missing = engine.checked_run(plan)
    if missing:  # the books disagree on what is live: a timed run would cancel unknown ids
        return {"ops": len(ops), "cancel_not_found": missing}
    runs = []
    for _ in range(repeat):
        engine = LimitOrderBookCpp(warm)
        plan = engine.prepare(ops)
        gc.collect()
        runs.append(engine.run(plan))
    engine = LimitOrderBookCpp(warm)
    plan = engine.prepare(ops)
    gc.collect()
    elapsed, lat = engine.run_timed(plan)
    rates = [len(ops) / (ns / 1e9) for ns in runs]
    return {
        "ops": len(ops),
        "cancel_not_found": 0,
        "ops_per_s_best": round(max(rates)),
        "ops_per_s_median": round(statistics.median(rates)),
        "ops_per_s_runs": [round(r) for r in rates],
        "ops_per_s_timed_run": round(len(ops) / (elapsed / 1e9)),
        "latency": latency_summary(ops, lat),
        "state_after": engine.state(prices),
    }


def bench_order_matching(warm: list[tuple], ops: list[tuple], seed: int) -> dict:
    engine = OrderMatching(warm, seed)
    plan = engine.prepare(ops)
    gc.collect()
    elapsed, lat, errors = engine.run_timed(plan)
    return {
        "ops": len(ops),
        "ops_per_s_timed_run": round(len(ops) / (elapsed / 1e9)),
        "latency": latency_summary(ops, lat),
        "cancel_not_found": errors,
        "volume": engine.volume(),
        "live_after": engine.live(),
        "top_after": engine.top(),
    }


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=200_000, help="operations per mix for murmur")
    ap.add_argument(
        "--om-ops",
        type=int,
        default=20_000,
        help="prefix of each mix run on order-matching (0: skip)",
    )
    ap.add_argument("--book", type=int, default=1000, help="resting orders in the warm book")
    ap.add_argument(
        "--repeat", type=int, default=3, help="plain-loop runs per mix, murmur and limit-order-book"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--no-lob", action="store_true", help="leave out limit-order-book (the C++ book)"
    )
    args = ap.parse_args()

    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    om_version = None
    if args.om_ops:
        try:
            from importlib.metadata import version

            om_version = version("order-matching")
        except Exception:  # not installed: run murmur alone
            om_version = None
    lob_version = None
    if not args.no_lob:
        try:
            from importlib.metadata import version

            import limit_order_book  # noqa: F401  (the ctypes library loads on import)

            lob_version = version("limit-order-book")
        except Exception:  # not installed, or its library does not load: go on without it
            lob_version = None
    m = machine()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(
        f"# book_ops  {now}  {m['host']}  {m['cpu']}  {cores} cores  python {platform.python_version()}"
    )
    print(
        f"# {m['platform']}  order-matching {om_version or 'not installed'}  limit-order-book "
        f"{lob_version or ('skipped' if args.no_lob else 'not installed: murmur runs without it')}"
    )
    print(
        f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
        f"  -> machine {'BUSY' if load_before[0] >= 0.75 else 'quiet'} ({cores} cores)"
    )
    print(
        f"# seed {args.seed}, warm book {args.book} orders, {args.ops} ops a mix for murmur, "
        f"first {args.om_ops} of them for order-matching; method in the module docstring"
    )

    rng = random.Random(args.seed)
    warm = warm_ops(rng, args.book)
    mixes = {
        "add_cancel": gen_add_cancel(random.Random(args.seed + 1), args.ops, warm),
        "match_heavy": gen_match_heavy(random.Random(args.seed + 2), args.ops, warm),
    }
    results: dict = {}
    for mix, ops in mixes.items():
        counts = {OP_NAMES[c]: sum(1 for op in ops if op[0] == c) for c in OP_NAMES}
        print(f"\n== {mix}: {len(ops)} ops {counts}")
        full = bench_murmur(warm, ops, args.repeat)
        print(
            f"murmur          {full['ops_per_s_best']:>10,} ops/s best, {full['ops_per_s_median']:,} median "
            f"(runs {full['ops_per_s_runs']}); per-op-timed run {full['ops_per_s_timed_run']:,} ops/s"
        )
        print(f"                {fmt_lat(full['latency'])}")
        print(
            f"                traded volume {full['volume']:,}, live after {full['live_after']:,}"
        )
        res = {"ops_counts": counts, "murmur": full}
        if lob_version:
            cpp = bench_lob(warm, ops, args.repeat, full["state_after"])
            if cpp["cancel_not_found"]:
                print(
                    f"limit-order-book: {cpp['cancel_not_found']} cancels found no live order in "
                    "the checked run (the books disagree); not timed"
                )
            else:
                same = cpp["state_after"] == full["state_after"]
                print(
                    f"limit-order-book {cpp['ops_per_s_best']:>9,} ops/s best, "
                    f"{cpp['ops_per_s_median']:,} median (runs {cpp['ops_per_s_runs']}); "
                    f"per-op-timed run {cpp['ops_per_s_timed_run']:,} ops/s"
                )
                print(f"                {fmt_lat(cpp['latency'])}")
                st = full["state_after"]
                print(
                    f"same book after (live {st['live']} bid/ask, resting {st['resting']}, best "
                    f"{st['best']}, top 10 levels): {'yes' if same else 'NO'}"
                )
                ratio = {
                    "best": full["ops_per_s_best"] / cpp["ops_per_s_best"],
                    "median": full["ops_per_s_median"] / cpp["ops_per_s_median"],
                    "timed_run": full["ops_per_s_timed_run"] / cpp["ops_per_s_timed_run"],
                }
                print(
                    f"murmur / limit-order-book: {ratio['best']:.2f} (best), {ratio['median']:.2f} "
                    f"(median), {ratio['timed_run']:.2f} (per-op-timed runs)"
                )
                res.update(
                    same_as_lob=same, murmur_over_lob={k: round(v, 3) for k, v in ratio.items()}
                )
            cpp.pop("state_after", None)
            res["limit_order_book"] = cpp
        if om_version and args.om_ops:
            prefix = ops[: args.om_ops]
            mine = bench_murmur(warm, prefix, args.repeat)
            theirs = bench_order_matching(warm, prefix, args.seed)
            same = (mine["volume"], mine["live_after"], mine["top_after"]) == (
                theirs["volume"],
                theirs["live_after"],
                theirs["top_after"],
            )
            print(f"-- first {len(prefix)} ops, both engines")
            print(
                f"murmur          {mine['ops_per_s_best']:>10,} ops/s best; per-op-timed run "
                f"{mine['ops_per_s_timed_run']:,} ops/s"
            )
            print(f"                {fmt_lat(mine['latency'])}")
            print(f"order-matching  {theirs['ops_per_s_timed_run']:>10,} ops/s (per-op-timed run)")
            print(f"                {fmt_lat(theirs['latency'])}")
            print(
                f"same outcome (volume {mine['volume']:,} vs {theirs['volume']:,}, live {mine['live_after']} vs "
                f"{theirs['live_after']}, top 10 levels): {'yes' if same else 'NO'}; "
                f"order-matching cancels not found: {theirs['cancel_not_found']}"
            )
            print(
                f"speed-up on this prefix: {mine['ops_per_s_best'] / theirs['ops_per_s_timed_run']:.0f}x (plain loop vs "
                f"theirs), {mine['ops_per_s_timed_run'] / theirs['ops_per_s_timed_run']:.0f}x (both per-op-timed)"
            )
            for r in (mine, theirs):
                r.pop("top_after")
            mine.pop("state_after")
            res.update(
                prefix_ops=len(prefix), murmur_prefix=mine, order_matching=theirs, same_outcome=same
            )
        full.pop("top_after")
        full.pop("state_after")
        results[mix] = res

    load_after = os.getloadavg()
    print(f"\n# load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    ac = results["add_cancel"]["murmur"]["ops_per_s_best"]
    print(
        f"goal >= 300,000 add/cancel ops/s on one core: {ac:,} -> {'met' if ac >= 300_000 else 'NOT met'}"
    )
    print(
        json.dumps(
            {
                "bench": "book_ops",
                "date": now,
                "machine": m,
                "python": platform.python_version(),
                "order_matching_version": om_version,
                "limit_order_book_version": lob_version,
                "seed": args.seed,
                "warm_book": args.book,
                "load_before": load_before,
                "load_after": load_after,
                "busy": load_before[0] >= 0.75,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
