"""Fill to replacement quote live at the exchange: how fast a market maker requotes after a fill.

Method: `murmur launch --peers P --profile local --flow-rate R` (P market makers, default 3,
plus the exchange and the ledger, 8 symbols, all on 127.0.0.1); the exchange's own seeded
external flow (`--flow-rate`) trades against the quotes. Wait until every symbol has an active
quote (exchange `GET /quotes`), let the cluster run `--warmup` s, then measure for `--duration`
s, stop the cluster (SIGINT to the launcher) and read what happened afterwards, from files only:

- the exchange's tape (`<data-dir>/exchange/exchange.tape`): every fill is inside the record of
  the command that made it (a flow order, or a quote that crossed on arrival). A fill's
  **reaction time** is the `at` of the first later accepted `put_quote` record with reason
  `activated` (a new quote, not a refresh) for the same symbol by the same holder, minus the
  `at` of the fill's record. Both are the exchange's wall clock in one process, so there is no
  clock skew; `at` is taken when the command runs, before its tape fsync.
- Fills counted: those whose record lies in the measured window, except the last
  `--tail` s before the stop (a replacement needs time to arrive); a counted fill without a
  replacement before the stop is reported as such. Reported over all fills, and over the first
  fill of each quote (later fills of the same quote find a replacement already on its way).
- Fill rate: fills (with a market-maker holder) per second in the window, from the tape; flow
  orders per second beside it. On this machine the built-in flow tops out at about 530 orders/s
  whatever `--flow-rate` asks above that (it sends one order at a time and each waits for its
  tape fsync), which gives 175-190 fills/s over 8 symbols with 3 market makers: the default
  `--flow-rate` 1000 is simply "as fast as the flow goes". Check the printed rates.
- Stages, from the JSON logs (`ts`, wall clock with millisecond resolution, truncated: +0.5 ms is
  added to each, so a stage is within about +-1 ms), all measured from the fill's tape `at`:
  ledger committed the fill (`ledger_reservation_fill`, logged after the commit), the holder
  saw the fill (`mm_fill`, from its `GET /fills` long poll), the replacement's
  `mm_quote_attempt` (with its `reason`: `fill`, `position`, `price-move` ...), its
  `mm_reservation` (the ledger's answer back), the exchange activated it (tape), and the holder
  read the exchange's answer (`mm_quote_active`, after the tape fsync). Stages only over fills
  whose replacement attempt was logged after the fill (not already in flight).
- CPU of every process of the cluster over the window (/proc utime+stime, % of one core).

Goal (issue 5): p50 at most 2 ms, p99 at most 10 ms, at 200 fills/s over 8 symbols on loopback.

Run: .venv/bin/python bench/mm_reaction.py [--duration 30] [--flow-rate 1000] [--peers 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from _realcluster import (
    MurmurCluster,
    cpu_seconds,
    finish_machine,
    header,
    json_line,
    keep_or_remove,
    read_json_lines,
    table,
    ts_of,
)

from peer.exchange.tape import TapeReader

LOG_RESOLUTION_FIX = 0.0005  # log `ts` is truncated to the millisecond


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=3, help="market makers (default 3)")
    ap.add_argument("--flow-rate", type=float, default=1000.0,
                    help="the exchange's nominal external orders per second (default 1000: ~200 fills/s here)")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after every symbol is quoted")
    ap.add_argument("--tail", type=float, default=1.0,
                    help="fills in the last TAIL s before the stop are not counted (default 1)")
    ap.add_argument("--profile", default="local")
    ap.add_argument("--market-seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the data dir (tape, logs) afterwards")
    return ap.parse_args()


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of sorted `values`."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[k]


def dist_ms(values: list[float]) -> dict[str, Any]:
    v = sorted(x * 1000 for x in values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": round(pct(v, 50), 2), "p90": round(pct(v, 90), 2),
            "p99": round(pct(v, 99), 2), "max": round(v[-1], 2), "mean": round(statistics.fmean(v), 2)}


def wait_all_quoted(exchange_url: str, bound: float) -> tuple[bool, float, list[str]]:
    """Until the exchange shows an active quote on every symbol it lists."""
    t0 = time.monotonic()
    missing: list[str] = []
    with httpx.Client(timeout=1.0) as client:
        symbols = list(client.get(f"{exchange_url}/prices").json()["prices"])
        while time.monotonic() - t0 < bound:
            try:
                quoted = {q["symbol"] for q in client.get(f"{exchange_url}/quotes").json()["quotes"]}
            except (httpx.HTTPError, ValueError, KeyError):
                quoted = set()
            missing = [s for s in symbols if s not in quoted]
            if not missing:
                return True, time.monotonic() - t0, []
            time.sleep(0.1)
    return False, time.monotonic() - t0, missing


def fsync_ms(directory: Path, n: int = 100) -> dict[str, float]:
    """What one small append + fsync costs on the data directory's disk (the exchange's tape and
    the ledger's commits each pay one on the fill's path)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 200)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    d = dist_ms(times)
    return {"p50": d["p50"], "p99": d["p99"]}


def cluster_cpu(cluster: MurmurCluster) -> dict[str, float | None]:
    return {p.name: cpu_seconds(p.pid) for p in cluster.peers}


# -- analysis ---------------------------------------------------------------------------------


def read_tape(path: Path) -> list[dict[str, Any]]:
    return list(TapeReader(path).records())


def log_index(data_dir: Path, names: list[str]) -> dict[str, Any]:
    """From the JSON logs: per fill_id and per quote_id, when each stage was logged."""
    idx: dict[str, Any] = {"ledger_fill": {}, "mm_fill": {}, "attempt": {}, "reservation": {}, "active": {},
                           "refresh_attempts": [], "quote_outcomes": set()}
    for name in names:
        for rec in read_json_lines(data_dir / name / f"{name}.log"):
            ev = rec.get("event")
            t = ts_of(rec)
            if t is None:
                continue
            t += LOG_RESOLUTION_FIX
            if ev == "ledger_reservation_fill" and rec.get("fill_id"):
                idx["ledger_fill"].setdefault(rec["fill_id"], t)
            elif ev == "mm_fill":
                idx["mm_fill"].setdefault(rec["fill_id"], t)
            elif ev == "mm_quote_attempt" and rec.get("kind") == "new":
                idx["attempt"].setdefault(rec["quote_id"], (t, rec.get("reason")))
            elif ev == "mm_quote_attempt" and rec.get("kind") == "refresh":
                idx["refresh_attempts"].append((name, rec["quote_id"], rec.get("seq"), rec.get("reason")))
            elif ev in ("mm_quote_refreshed", "mm_quote_refused"):
                idx["quote_outcomes"].add((name, rec.get("quote_id"), rec.get("seq")))
            elif ev == "mm_reservation":
                idx["reservation"].setdefault(rec["quote_id"], t)
            elif ev == "mm_quote_active":
                idx["active"].setdefault(rec["quote_id"], t)
    return idx


def analyse(records: list[dict[str, Any]], t_from: float, t_to: float, t_stop: float,
            idx: dict[str, Any]) -> dict[str, Any]:
    """Reaction times of fills whose record `at` is in [t_from, t_to); replacements until t_stop."""
    # Walk the tape once; a fill waits in `pending[(symbol, holder)]` until an activation.
    pending: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    measured: list[dict[str, Any]] = []
    orders = fills_all = 0
    seen_quotes: set[str] = set()
    for rec in records:
        at = rec.get("at")
        if at is None:
            continue
        if rec["type"] == "put_quote" and rec.get("accepted") and rec.get("reason") == "refreshed" and at < t_stop:
            # A refresh keeps the quote as it is, legs filled or not: the fill was not replaced.
            for f in pending.get((rec["symbol"], rec["args"]["holder"]), []):
                f.setdefault("refreshed_first_after", at - f["at"])
        if rec["type"] == "put_quote" and rec.get("accepted") and rec.get("reason") == "activated" and at < t_stop:
            key = (rec["symbol"], rec["args"]["holder"])
            for f in pending.pop(key, []):
                f["replacement"] = rec["args"]["quote_id"]
                f["latency"] = at - f["at"]
                f["replacement_at"] = at
        if rec["type"] == "submit_order" and t_from <= at < t_to:
            orders += 1
        for fill in rec.get("fills") or []:
            if not fill.get("holder"):
                continue
            if t_from <= at < t_to:
                fills_all += 1
                f = {"at": at, "fill_id": fill["fill_id"], "symbol": fill["symbol"], "holder": fill["holder"],
                     "quote_id": fill["quote_id"], "first_of_quote": fill["quote_id"] not in seen_quotes,
                     "in_record": rec["type"], "latency": None}
                measured.append(f)
                pending[(fill["symbol"], fill["holder"])].append(f)
            seen_quotes.add(fill["quote_id"])
    window = t_to - t_from
    done = [f for f in measured if f["latency"] is not None]
    first = [f for f in done if f["first_of_quote"]]
    missing = [f for f in measured if f["latency"] is None]
    out: dict[str, Any] = {
        "window_s": round(window, 2),
        "fills": len(measured),
        "fills_per_s": round(len(measured) / window, 1) if window > 0 else None,
        "flow_orders_per_s": round(orders / window, 1) if window > 0 else None,
        "fills_by_symbol": dict(sorted(Counter(f["symbol"] for f in measured).items())),
        "fills_by_holder": dict(sorted(Counter(f["holder"] for f in measured).items())),
        "all_fills_ms": dist_ms([f["latency"] for f in done]),
        "first_fill_of_quote_ms": dist_ms([f["latency"] for f in first]),
        "no_replacement_before_stop": len(missing),
        # The fill's next quote operation was a refresh of the (partly filled) quote, not a new one.
        "refreshed_before_replaced": sum(1 for f in measured if "refreshed_first_after" in f),
        "refreshed_before_replaced_ms": dist_ms([f["latency"] for f in done if "refreshed_first_after" in f]),
        "replaced_without_refresh_ms": dist_ms([f["latency"] for f in done if "refreshed_first_after" not in f]),
        "no_replacement_examples": [
            {k: f[k] for k in ("fill_id", "symbol", "holder", "quote_id", "at")} for f in missing[:5]],
    }
    # Slowest reactions, for a person to look up in the logs.
    out["slowest"] = [
        {"fill_id": f["fill_id"], "symbol": f["symbol"], "holder": f["holder"], "ms": round(f["latency"] * 1000, 1),
         "replacement": f["replacement"],
         "replacement_reason": (idx["attempt"].get(f["replacement"]) or (None, None))[1]}
        for f in sorted(done, key=lambda f: -f["latency"])[:5]
    ]
    # Stages (log times minus the fill's tape time).
    stages: dict[str, list[float]] = defaultdict(list)
    reasons: Counter[str] = Counter()
    in_flight = 0
    for f in done:
        q = f["replacement"]
        attempt = idx["attempt"].get(q)
        if attempt is None:
            continue
        t_attempt, reason = attempt
        reasons[str(reason)] += 1
        if t_attempt < f["at"] - LOG_RESOLUTION_FIX:
            in_flight += 1  # the replacement was on its way before this fill happened
            continue
        for name, t in (("ledger committed", idx["ledger_fill"].get(f["fill_id"])),
                        ("mm saw fill (mm_fill)", idx["mm_fill"].get(f["fill_id"])),
                        ("replacement attempt", t_attempt),
                        ("reservation answered", idx["reservation"].get(q)),
                        ("activated at exchange (tape)", f["replacement_at"]),
                        ("mm has the answer (mm_quote_active)", idx["active"].get(q))):
            if t is not None:
                stages[name].append(t - f["at"])
    out["stages_ms"] = {k: dist_ms(v) for k, v in stages.items()}
    out["replacement_reasons"] = dict(reasons.most_common())
    out["replacement_already_in_flight"] = in_flight
    # Whole run, from the logs: refreshes asked for because of a fill (same terms as the live
    # quote, so its filled legs are not restored), and refresh attempts with no logged outcome
    # (`_refresh` returns without a log line when the ledger does not renew the reservation).
    ref = idx["refresh_attempts"]
    out["refresh_attempts"] = len(ref)
    out["refresh_attempts_after_fill"] = sum(1 for _, _, _, reason in ref if str(reason).startswith("fill"))
    out["refresh_attempts_without_logged_outcome"] = sum(
        1 for name, q, seq, _ in ref if (name, q, seq) not in idx["quote_outcomes"])
    return out


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    method = [line.strip() for line in __doc__.split("\n\n")[1].splitlines()]
    method += [line.strip() for part in __doc__.split("\n\n")[2:4] for line in part.splitlines()]
    machine = header("mm_reaction: fill to replacement quote live at the exchange", method, args)
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-reaction-"))
    data_dir = base / "cluster"
    extra = ["--flow-rate", str(args.flow_rate), "--market-seed", str(args.market_seed)]
    cluster = MurmurCluster(args.peers + 2, data_dir, profile=args.profile, extra=extra)
    result: dict[str, Any] = {}
    probe = fsync_ms(base)
    print(f"fsync of a 200-byte append on the data directory's disk: p50 {probe['p50']} ms, "
          f"p99 {probe['p99']} ms", flush=True)
    try:
        t_launch = time.monotonic()
        cluster.start()
        print(f"cluster up in {time.monotonic() - t_launch:.1f}s ({args.peers} market makers, flow "
              f"{args.flow_rate}/s)", flush=True)
        exchange = cluster.by_name("exchange")
        ok, waited, missing = wait_all_quoted(exchange.http, 30.0)
        if not ok:
            raise RuntimeError(f"symbols never all quoted within 30 s: {missing}")
        print(f"every symbol quoted {waited:.2f}s later; warm-up {args.warmup}s", flush=True)
        time.sleep(args.warmup)
        cpu0, w0 = cluster_cpu(cluster), time.monotonic()
        t_from = time.time()
        next_report = time.monotonic() + 5
        end = time.monotonic() + args.duration
        with httpx.Client(timeout=1.0) as client:
            last_fills = client.get(f"{exchange.http}/exchange").json().get("fills", 0)
            while time.monotonic() < end:
                time.sleep(min(0.5, max(0.0, end - time.monotonic())))
                if time.monotonic() >= next_report:
                    next_report += 5
                    try:
                        n = client.get(f"{exchange.http}/exchange").json().get("fills", 0)
                    except (httpx.HTTPError, ValueError):
                        continue
                    print(f"  t+{args.duration - (end - time.monotonic()):5.1f}s  fills so far {n - last_fills}",
                          flush=True)
        t_stop = time.time()
        cpu1, w1 = cluster_cpu(cluster), time.monotonic()
        cpu = {n: round(100 * (cpu1[n] - cpu0[n]) / (w1 - w0), 1)
               for n in cpu0 if cpu0[n] is not None and cpu1.get(n) is not None}
        print(f"stopping the cluster; CPU over the window (% of one core): {cpu}", flush=True)
        cluster.stop()
        records = read_tape(data_dir / "exchange" / "exchange.tape")
        idx = log_index(data_dir, [p.name for p in cluster.peers])
        result = analyse(records, t_from, t_stop - args.tail, t_stop, idx)
        result["fsync_ms"] = probe
        result["cpu_pct_of_core"] = cpu
        result["cpu_total_pct_of_core"] = round(sum(cpu.values()), 1)
    finally:
        left = cluster.stop()
        if left:
            print(f"# killed leftover pids {left}")
        keep_or_remove(base, args, "tape, logs")
    finish_machine(machine)

    a, f1 = result["all_fills_ms"], result["first_fill_of_quote_ms"]
    print(f"\nwindow {result['window_s']}s: {result['fills']} fills = {result['fills_per_s']} fills/s "
          f"(flow {result['flow_orders_per_s']} orders/s); by symbol {result['fills_by_symbol']}")
    if result["flow_orders_per_s"] is not None and result["flow_orders_per_s"] < 0.8 * args.flow_rate:
        print(f"NOTE: the exchange's built-in flow reached {result['flow_orders_per_s']} of the nominal "
              f"{args.flow_rate:g} orders/s")
    if result["fills_per_s"] is not None and not 180 <= result["fills_per_s"] <= 220:
        print(f"NOTE: {result['fills_per_s']} fills/s, not the 200 fills/s of the goal's conditions")
    print("\nFill -> replacement quote activated at the exchange (tape `at` minus fill `at`), ms")
    rows = []
    for label, d in (("every fill", a), ("first fill of each quote", f1)):
        rows.append([label, str(d.get("n")), *(str(d.get(k, "-")) for k in ("p50", "p90", "p99", "max"))])
    print(table(rows, ["fills", "n", "p50", "p90", "p99", "max"]))
    print(f"fills with no replacement before the stop (older than {args.tail}s): "
          f"{result['no_replacement_before_stop']}")
    print(f"fills whose next quote operation was a refresh of the partly filled quote (terms unchanged "
          f"by the new position): {result['refreshed_before_replaced']} -> reaction "
          f"p50 {result['refreshed_before_replaced_ms'].get('p50')} p99 {result['refreshed_before_replaced_ms'].get('p99')}"
          f" ms; the others p50 {result['replaced_without_refresh_ms'].get('p50')} p99 "
          f"{result['replaced_without_refresh_ms'].get('p99')} ms")
    print(f"whole run, from the logs: {result['refresh_attempts']} refresh attempts, "
          f"{result['refresh_attempts_after_fill']} of them triggered by a fill; "
          f"{result['refresh_attempts_without_logged_outcome']} with no logged outcome")
    goal_ok = a.get("p50") is not None and a["p50"] <= 2 and a["p99"] <= 10
    print(f"goal p50 <= 2 ms, p99 <= 10 ms: {'met' if goal_ok else 'NOT met'}")
    print("\nStages from the fill's tape time (ms; log times, +-1 ms), fills whose replacement was "
          "attempted after the fill:")
    rows = [[k, str(d.get("n")), *(str(d.get(x, "-")) for x in ("p50", "p90", "p99", "max"))]
            for k, d in result["stages_ms"].items()]
    print(table(rows, ["stage reached", "n", "p50", "p90", "p99", "max"]))
    print(f"replacement attempts by reason: {result['replacement_reasons']}; already in flight at the "
          f"fill: {result['replacement_already_in_flight']}")
    print(f"slowest: {result['slowest']}")
    json_line("mm_reaction", machine, args, goal_met=goal_ok, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
