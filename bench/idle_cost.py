"""What an idle peer costs, murmur beside kinship in one run: CPU per peer and time to converge.

Method, for each of --rounds rounds, murmur then kinship (A B A B), one cluster at a time, each on
a fresh data directory, --peers processes each:
- murmur: `murmur launch --peers P-2 --profile local --flow-rate 0` (P-2 market makers + the
  exchange + the ledger; no order flow, so market makers only claim, renew and refresh), gossip
  sealed (the launcher writes cluster.key, as in production).
- kinship: P nodes of `bench/kinship_node.py` (`kinship.Config.local()`), named like murmur's
  peers (mm-1.., exchange, ledger), gossip encrypted with kinship's own encryption under a key
  of a murmur key file (`gossip.keyring.new_key_file`), so that both pay for cryptography.
  Both starters spawn the first peer, wait until it is up, then spawn all the others at once.
- converge from spawn: while the cluster starts, a thread of this script finds each peer's
  HTTP address as soon as it writes it (murmur `peer.json`, kinship `node.json`) and polls
  every known peer's `/members` every --poll-interval s (50 ms) until all P peers answer and
  each lists every other `alive`. Reported from the creation of the first peer process and of
  the last (/proc/<pid>/stat starttime), as seen by the poll (`poll`: includes the polling
  resolution) and from the peers' own logs (`log`: the latest membership transition any peer
  logged before the converged poll).
- CPU per idle peer: after convergence and --settle s without polling, utime+stime of every
  peer process from /proc/<pid>/stat over --cpu-window s, as % of one core: mean and median over
  all peers, and the market makers alone (murmur's exchange and ledger have role work: the
  ticker, the ledger's sweeps; kinship's nodes of the same names have none, and are shown apart
  all the same). Also the whole machine's busy % and suspect/dead transitions in the window.
- summary: per implementation, the mean over rounds of each figure, and murmur / kinship.

Run: .venv/bin/python bench/idle_cost.py [--peers 20] [--rounds 2] [--cpu-window 10] [--settle 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _realcluster as rc
import trio

from gossip.keyring import new_key_file

IMPLS = ("murmur", "kinship")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=20, help="processes per cluster (murmur: P-2 mm)")
    ap.add_argument("--rounds", type=int, default=2, help="murmur, kinship pairs (A B A B)")
    ap.add_argument("--cpu-window", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0, help="s after convergence before the window")
    ap.add_argument("--poll-interval", type=float, default=0.05)
    ap.add_argument("--converge-bound", type=float, default=90.0, help="s from the start")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true")
    return ap.parse_args()


def names(total: int) -> list[str]:
    return [f"mm-{i}" for i in range(1, total - 1)] + ["exchange", "ledger"]


def make_cluster(impl: str, d: Path, args) -> rc.RealCluster:
    if impl == "murmur":
        return rc.MurmurCluster(args.peers, d, startup_timeout=120.0, extra=["--flow-rate", "0"])
    d.mkdir(parents=True, exist_ok=True)
    key_file = d / "cluster.key"
    new_key_file(key_file)
    return rc.KinshipCluster(args.peers, d, startup_timeout=120.0, key_file=key_file)


class SpawnWatch(threading.Thread):
    """Polls, from its own thread and trio loop, until every expected peer answers and lists
    every other alive; peers are found through the file each writes once it is up."""

    def __init__(self, impl: str, data_dir: Path, expected: list[str], args) -> None:
        super().__init__(daemon=True)
        self.file = "peer.json" if impl == "murmur" else "node.json"
        self.data_dir = data_dir
        self.expected = expected
        self.every = args.poll_interval
        self.bound = args.converge_bound
        self.halt = threading.Event()
        self.found: dict[str, rc.Peer] = {}
        self.converged_wall: float | None = None
        self.polls = 0
        self.last = ""

    def discover(self) -> None:
        for n in self.expected:
            if n in self.found:
                continue
            try:
                info = json.loads((self.data_dir / n / self.file).read_text())
                self.found[n] = rc.Peer(n, "", int(info["pid"]), info["http"], Path())
            except (OSError, ValueError, KeyError):
                continue

    async def watch(self) -> None:
        t_end = time.monotonic() + self.bound
        async with rc.http_client(len(self.expected), timeout=1.0) as client:
            while time.monotonic() < t_end and not self.halt.is_set():
                t0 = time.monotonic()
                self.discover()
                if len(self.found) == len(self.expected):
                    vs = await rc.views(client, list(self.found.values()))
                    self.polls += 1
                    if rc.all_alive(vs, self.expected):
                        self.converged_wall = time.time()
                        return
                    self.last = rc.not_alive_summary(vs, self.expected)
                else:
                    self.last = f"{len(self.found)}/{len(self.expected)} peers up"
                await trio.sleep(max(0.0, self.every - (time.monotonic() - t0)))

    def run(self) -> None:
        trio.run(self.watch)


def mean_of(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.fmean(got), 3) if got else None


def measure(impl: str, round_: int, base: Path, args) -> dict[str, Any]:
    d = base / f"{impl}-{round_}"
    expected = names(args.peers)
    cluster = make_cluster(impl, d, args)
    watch = SpawnWatch(impl, d, expected, args)
    out: dict[str, Any] = {"impl": impl, "round": round_, "peers": args.peers}
    try:
        watch.start()
        t_start = time.time()
        cluster.start()  # on the main thread: PR_SET_PDEATHSIG follows the forking thread
        out["start_s"] = round(time.time() - t_start, 2)
        watch.join(timeout=args.converge_bound + 5)
        watch.halt.set()
        spawned = {p.name: rc.proc_start_wall(p.pid) for p in cluster.peers}
        spawns = [s for s in spawned.values() if s is not None]
        first, last = min(spawns), max(spawns)
        out["spawn_spread_s"] = round(last - first, 2)
        if watch.converged_wall is None:
            out["converged"] = False
            out["not_converged"] = watch.last
            return out
        conv = watch.converged_wall
        out["converged"] = True
        out["polls"] = watch.polls
        out["converge_poll_from_first_spawn_s"] = round(conv - first, 2)
        out["converge_poll_from_last_spawn_s"] = round(conv - last, 2)
        if impl == "murmur" and cluster.launcher is not None:
            launched = rc.proc_start_wall(cluster.launcher.pid)
            if launched is not None:
                out["converge_poll_from_launcher_spawn_s"] = round(conv - launched, 2)
        events = rc.member_events(cluster)
        before = [e["t_wall"] for e in events if e["t_wall"] is not None and e["t_wall"] <= conv]
        if before:
            out["converge_log_from_first_spawn_s"] = round(max(before) - first, 2)
            out["converge_log_from_last_spawn_s"] = round(max(before) - last, 2)
        out["suspect_or_dead_until_converged"] = sum(
            1 for e in events
            if e["t_wall"] is not None and e["t_wall"] <= conv and e.get("new") in ("suspect", "dead")
        )

        time.sleep(args.settle)  # no polling from here on
        w0 = time.time()
        cpu = rc.sample_cpu({p.name: p.pid for p in cluster.peers}, args.cpu_window)
        per = cpu["per_peer_pct"]
        mms = [v for n, v in per.items() if n.startswith("mm-")]
        out["cpu"] = {
            "seconds": cpu["seconds"],
            "mean_pct": cpu["mean_pct"],
            "median_pct": cpu["median_pct"],
            "max_pct": cpu["max_pct"],
            "total_pct": cpu["total_pct"],
            "mm_mean_pct": round(statistics.fmean(mms), 3) if mms else None,
            "mm_median_pct": round(statistics.median(mms), 3) if mms else None,
            "exchange_pct": per.get("exchange"),
            "ledger_pct": per.get("ledger"),
            "machine_busy_pct_of_all_cores": cpu["machine_busy_pct_of_all_cores"],
            "per_peer_pct": per,
        }
        out["suspect_or_dead_while_idle"] = sum(
            1 for e in rc.member_events(cluster, since=w0) if e.get("new") in ("suspect", "dead")
        )
        return out
    finally:
        watch.halt.set()
        left = cluster.stop()
        if left:
            out["sigkilled_leftovers"] = len(left)


ROW_HEADERS = [
    "impl", "conv(poll) from first spawn", "conv(poll) from last spawn", "conv(log) from first spawn",
    "CPU %/peer mean", "median", "mm mean", "mm median", "exchange", "ledger", "machine busy %",
    "suspect/dead idle",
]


def row(r: dict[str, Any]) -> list[str]:
    if "error" in r or not r.get("converged"):
        return [r["impl"], "FAILED" if "error" in r else "not converged"] + [""] * (len(ROW_HEADERS) - 2)
    c = r["cpu"]
    return [
        r["impl"],
        rc.fmt(r["converge_poll_from_first_spawn_s"]),
        rc.fmt(r["converge_poll_from_last_spawn_s"]),
        rc.fmt(r.get("converge_log_from_first_spawn_s")),
        rc.fmt(c["mean_pct"]),
        rc.fmt(c["median_pct"]),
        rc.fmt(c["mm_mean_pct"]),
        rc.fmt(c["mm_median_pct"]),
        rc.fmt(c["exchange_pct"]),
        rc.fmt(c["ledger_pct"]),
        rc.fmt(c["machine_busy_pct_of_all_cores"], 1),
        str(r["suspect_or_dead_while_idle"]),
    ]


SUMMARY_KEYS = (
    ("cpu", "mean_pct", "CPU % of a core per peer, mean"),
    ("cpu", "median_pct", "CPU % of a core per peer, median"),
    ("cpu", "mm_mean_pct", "CPU % of a core per market maker, mean"),
    ("cpu", "mm_median_pct", "CPU % of a core per market maker, median"),
    ("cpu", "exchange_pct", "CPU % of a core, exchange"),
    ("cpu", "ledger_pct", "CPU % of a core, ledger"),
    (None, "converge_poll_from_first_spawn_s", "converged (poll), s from the first spawn"),
    (None, "converge_poll_from_last_spawn_s", "converged (poll), s from the last spawn"),
    (None, "converge_log_from_first_spawn_s", "converged (log), s from the first spawn"),
    (None, "converge_log_from_last_spawn_s", "converged (log), s from the last spawn"),
)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, key, label in SUMMARY_KEYS:
        out[key] = {"label": label}
    for impl in IMPLS:
        ok = [r for r in results if r["impl"] == impl and r.get("converged") and "cpu" in r]
        for group, key, _ in SUMMARY_KEYS:
            vals = [(r[group] if group else r).get(key) for r in ok]
            out[key][impl] = mean_of(vals)
    for key, d in out.items():
        m, k = d.get("murmur"), d.get("kinship")
        d["ratio_murmur_over_kinship"] = round(m / k, 2) if m is not None and k else None
        out[key] = d
    return out


def main() -> int:
    args = parse_args()
    method = [line.strip() for line in __doc__.split("\n\n")[1].splitlines()]
    method.append(rc.murmur_profile_line("local"))
    machine = rc.header("idle_cost: CPU per idle peer and convergence from spawn, murmur beside kinship",
                        method, args)
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-idle-"))
    results: list[dict[str, Any]] = []
    try:
        for round_ in range(1, args.rounds + 1):
            this_round = []
            for impl in IMPLS:
                print(f"== round {round_}: {impl}, {args.peers} peers ==", flush=True)
                try:
                    r = measure(impl, round_, base, args)
                except Exception as exc:
                    print(f"  FAILED: {exc}", flush=True)
                    r = {"impl": impl, "round": round_, "error": str(exc)}
                brief = {k: v for k, v in r.items() if k != "cpu"}
                print(f"  {brief}", flush=True)
                results.append(r)
                this_round.append(r)
            print(f"\nround {round_} ({args.peers} peers; seconds, % of one core)")
            print(rc.table([row(r) for r in this_round], ROW_HEADERS), flush=True)
            print()
    finally:
        rc.keep_or_remove(base, args)

    rc.finish_machine(machine)
    summ = summarize(results)
    print(f"\nSummary: mean over {args.rounds} round(s), {args.peers} peers, idle")
    rows = [
        [d["label"], rc.fmt(d["murmur"]), rc.fmt(d["kinship"]), rc.fmt(d["ratio_murmur_over_kinship"])]
        for d in summ.values()
    ]
    print(rc.table(rows, ["figure", "murmur", "kinship", "murmur/kinship"]))
    rc.json_line("idle_cost", machine, args, summary=summ, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
