"""Soak: many real peers for minutes with one peer's CPU starved; count false deaths.

Method:
- `murmur launch --peers P-2 --profile local` (P OS processes on 127.0.0.1, default 60), wait
  until every peer's /members shows all P alive.
- Starve one market maker (`--victim`, default: a seeded random one other than mm-1, the seed)
  for the whole `--duration` (default 600 s) by duty-cycling signals from a thread of this
  script: SIGCONT, sleep `--run-ms` (20), SIGSTOP, sleep `--period-ms` - `--run-ms` (180). The
  peer is runnable at most run/period of the wall time (10%) and never for more than ~20 ms at
  a stretch: its timers fire late, its acks leave late, and when it runs it sees everyone else's
  acks as late. The achieved on/off times are measured and reported.
- Every `--snapshot-interval` s (5), the /members of every other peer is read, one peer at a
  time spread evenly over the interval (`--poll-mode staggered`, about 12 requests/s at 60
  peers), to see how the others see the starved peer and whether a healthy peer is not alive.
  (`--poll-mode burst` asks all peers at the same instant: 60 Python processes waking together on
  2 cores is a load spike of its own, and it measurably triggers suspicions; see the README.)
  A separate 10-ms sleeper process records machine stalls (oversleeps > 50 ms) and per-second
  busy/steal ticks, so a burst of suspicions can be set against a machine-wide hiccup.
- At the end: SIGCONT for good, wait until everyone sees everyone alive, then read every peer's
  JSON log (<data-dir>/<name>/<name>.log; `event: member` lines with node, old, new,
  incarnation, reason, detail) over the soak window:
  * false deaths: transitions to `dead` of any node other than the starved one (goal: 0);
  * suspicions of healthy peers (and who raised them), refutations (`reason: refute`, logged
    by the refuting peer itself) by healthy peers and by the starved one;
  * the starved peer: how often it was suspected / declared dead / came back, per viewer.

Run: .venv/bin/python bench/soak_starved.py [--peers 60] [--duration 600]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio
from _realcluster import (
    MurmurCluster,
    StallWatch,
    add_murmur_set,
    counters_delta,
    cpu_seconds,
    finish_machine,
    header,
    http_client,
    json_line,
    keep_or_remove,
    launch_set_args,
    loadavg,
    machine_busy_seconds,
    member_events,
    murmur_profile_line,
    read_json_lines,
    scrape_counters,
    table,
    view,
    views,
    wait_all_alive,
)

from peer.tools.processes import pid_alive


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=60, help="total processes (default 60)")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of starvation")
    ap.add_argument("--run-ms", type=float, default=20.0, help="ms the victim may run per period")
    ap.add_argument("--period-ms", type=float, default=200.0, help="duty-cycle period in ms")
    ap.add_argument("--victim", default=None, help="name of the starved peer (default: random mm)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", default="local")
    add_murmur_set(ap)
    ap.add_argument("--snapshot-interval", type=float, default=5.0)
    ap.add_argument(
        "--poll-mode",
        choices=("staggered", "burst"),
        default="staggered",
        help="staggered: one peer at a time, spread over the interval (default); burst: all "
        "peers at once every interval (60 processes waking together on 2 cores is itself a "
        "load spike that can delay probe acks)",
    )
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--converge-bound", type=float, default=120.0)
    ap.add_argument("--recover-bound", type=float, default=60.0)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the data dir (logs) afterwards")
    return ap.parse_args()


class DutyCycle(threading.Thread):
    """SIGCONT for run_s, SIGSTOP for the rest of each period, until stopped."""

    def __init__(self, pid: int, run_s: float, period_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.run_s, self.period_s = pid, run_s, period_s
        self.halt = threading.Event()
        self.on_time = 0.0
        self.off_time = 0.0
        self.cycles = 0
        self.max_on = 0.0
        self.max_off = 0.0
        self.error: str | None = None

    def run(self) -> None:
        nxt = time.monotonic()
        try:
            while not self.halt.is_set():
                t_cont = time.monotonic()
                os.kill(self.pid, signal.SIGCONT)
                time.sleep(max(0.0, nxt + self.run_s - time.monotonic()))
                os.kill(self.pid, signal.SIGSTOP)
                t_stop = time.monotonic()
                on = t_stop - t_cont
                self.on_time += on
                self.max_on = max(self.max_on, on)
                nxt += self.period_s
                if nxt < t_stop:  # we fell behind: keep the off time, drop the missed periods
                    nxt = t_stop + (self.period_s - self.run_s)
                time.sleep(max(0.0, nxt - time.monotonic()))
                off = time.monotonic() - t_stop
                self.off_time += off
                self.max_off = max(self.max_off, off)
                self.cycles += 1
        except ProcessLookupError:
            self.error = "the starved peer exited"
        finally:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def analyse(cluster: MurmurCluster, victim: str, w0: float, w1: float) -> dict[str, Any]:
    events = [
        e for e in member_events(cluster, since=w0) if e["t_wall"] is not None and e["t_wall"] <= w1
    ]
    healthy = [e for e in events if e["node"] != victim]
    false_deaths = [e for e in healthy if e.get("new") == "dead"]
    suspicions = [e for e in healthy if e.get("new") == "suspect"]
    refutes = [e for e in events if e.get("reason") == "refute" and e["node"] == e["viewer"]]
    about_victim = [e for e in events if e["node"] == victim and e["viewer"] != victim]
    by = Counter()
    for e in suspicions:
        src = (e.get("detail") or {}).get("by", "?")
        by["starved peer" if src == victim else "healthy peer" if src != "?" else "?"] += 1
    victim_states = Counter(e.get("new") for e in about_victim)
    victim_reasons = Counter(
        f"{e.get('old')}->{e.get('new')} ({e.get('reason')})" for e in about_victim
    )
    dead_viewers = Counter(e["viewer"] for e in about_victim if e.get("new") == "dead")
    victim_log = read_json_lines(cluster.by_name(victim).log)
    victim_incs = [
        r.get("incarnation") for r in victim_log if r.get("event") == "incarnation_persisted"
    ]
    own_view = [e for e in events if e["viewer"] == victim and e["node"] != victim]
    other_errors = Counter()
    for p in cluster.peers:
        for r in read_json_lines(p.log):
            ev = r.get("event")
            if ev not in (
                "member",
                "incarnation_persisted",
                "peer_started",
                "signal",
                "peer_stopping",
                "peer_left",
                "peer_stopped",
            ):
                other_errors[ev] += 1

    def fmt_event(e):
        return {
            k: e.get(k)
            for k in ("ts", "viewer", "node", "old", "new", "incarnation", "reason", "detail")
        }

    return {
        "transitions_total": len(events),
        "false_deaths": len(false_deaths),
        "false_deaths_examples": [fmt_event(e) for e in false_deaths[:20]],
        "false_death_nodes": dict(Counter(e["node"] for e in false_deaths)),
        "healthy_suspicions": len(suspicions),
        "healthy_suspicions_raised_by": dict(by),
        "healthy_suspected_nodes": len({e["node"] for e in suspicions}),
        "healthy_suspicion_examples": [fmt_event(e) for e in suspicions[:5]],
        "refutations_by_healthy": sum(1 for e in refutes if e["node"] != victim),
        "refutations_by_starved": sum(1 for e in refutes if e["node"] == victim),
        "victim_transitions_seen_by_others": dict(victim_states),
        "victim_transition_kinds": dict(victim_reasons.most_common(12)),
        "victim_declared_dead_by_viewers": len(dead_viewers),
        "victim_declared_dead_total": sum(dead_viewers.values()),
        "victim_incarnation_bumps": len(victim_incs),
        "victim_final_incarnation_logged": victim_incs[-1] if victim_incs else None,
        "victim_own_view_transitions": dict(Counter(e.get("new") for e in own_view)),
        "non_member_log_events": dict(other_errors),
    }


async def staggered_views(client, peers, spread: float) -> dict[str, dict | None]:
    """/members of each peer in turn, spaced evenly over `spread` seconds."""
    out: dict[str, dict | None] = {}
    step = spread / max(1, len(peers))
    nxt = time.monotonic()
    for p in peers:
        out[p.name] = await view(client, p)
        nxt += step
        await trio.sleep(max(0.0, nxt - time.monotonic()))
    return out


def stall_report(
    watch: StallWatch,
    cluster: MurmurCluster,
    victim: str,
    w0: float,
    w1: float,
    snaps: list[dict[str, Any]],
) -> dict[str, Any]:
    """Bursts of suspicions of healthy peers, set against machine stalls and our own polls."""
    stalls, secs = watch.read()
    stalls = [(t, ms) for t, ms in stalls if w0 <= t <= w1]
    secs = [x for x in secs if w0 <= x[0] <= w1]
    per_second = Counter()
    nodes: dict[int, set[str]] = {}
    for e in member_events(cluster, since=w0):
        if e["t_wall"] is None or e["t_wall"] > w1 or e["node"] == victim:
            continue
        if e.get("new") == "suspect":
            sec = int(e["t_wall"])
            per_second[sec] += 1
            nodes.setdefault(sec, set()).add(e["node"])
    polls = [s["poll_wall"] for s in snaps]
    bursts = []
    for sec, count in sorted(per_second.items()):
        if count < 10:
            continue
        near = [ms for t, ms in stalls if sec - 1 <= t <= sec + 2]
        busy = [b for t, b, _, _ in secs if sec - 1 <= t <= sec + 2]
        steal = [st for t, _, st, _ in secs if sec - 1 <= t <= sec + 2]
        poll_gap = min((abs(sec + 0.5 - p0) for p0, _ in polls), default=None)
        if polls and polls[0][1] - polls[0][0] > 1.0:  # staggered sweeps: no single poll moment
            poll_gap = None
        bursts.append(
            {
                "at": _dt_iso(sec),
                "healthy_suspicions": count,
                "nodes": len(nodes[sec]),
                "max_stall_ms_nearby": max(near, default=0),
                "max_busy_ticks_per_s_nearby": max(busy, default=None),
                "max_steal_ticks_per_s_nearby": max(steal, default=None),
                "nearest_snapshot_poll_s": round(poll_gap, 1) if poll_gap is not None else None,
            }
        )
    ms = [m for _, m in stalls]
    return {
        "stalls_over_50ms": len(ms),
        "stalls_over_100ms": sum(1 for m in ms if m > 100),
        "stalls_over_250ms": sum(1 for m in ms if m > 250),
        "max_stall_ms": max(ms, default=0),
        "worst_stalls": [(_dt_iso(t), m) for t, m in sorted(stalls, key=lambda x: -x[1])[:5]],
        "steal_ticks_total": sum(st for _, _, st, _ in secs),
        "suspicion_bursts": bursts,
    }


def _dt_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


async def main_async(args) -> int:
    method = [line.strip() for line in __doc__.split("\n\n")[1].splitlines()]
    method.append(murmur_profile_line(args.profile, args.murmur_set))
    machine = header(
        "soak_starved: real peers, one CPU-starved, false deaths of healthy peers", method, args
    )
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-soak-"))
    cluster = MurmurCluster(
        args.peers,
        base / f"soak-{args.peers}",
        profile=args.profile,
        startup_timeout=args.startup_timeout,
        extra=launch_set_args(args),
    )
    result: dict[str, Any] = {"peers": args.peers, "duration_s": args.duration}
    duty: DutyCycle | None = None
    stallwatch: StallWatch | None = None
    try:
        t_launch = time.monotonic()
        cluster.start()  # on the main thread: PR_SET_PDEATHSIG follows the forking thread
        result["launch_s"] = round(time.monotonic() - t_launch, 2)
        ok, waited, last = await wait_all_alive(cluster, args.converge_bound, every=0.5)
        if not ok:
            raise RuntimeError(f"did not converge within {args.converge_bound}s: {last}")
        result["converged_after_ready_s"] = round(waited, 2)
        mms = [p.name for p in cluster.victims() if p.name != "mm-1"]
        victim_name = args.victim or random.Random(args.seed).choice(mms)
        victim = cluster.by_name(victim_name)
        result["victim"] = victim_name
        print(
            f"launched {args.peers} peers in {result['launch_s']}s, converged {waited:.2f}s "
            f"later; starving {victim_name} (pid {victim.pid}) for {args.duration:g}s: runs "
            f"{args.run_ms:g} ms of every {args.period_ms:g} ms",
            flush=True,
        )
        others = [p for p in cluster.peers if p.name != victim_name]
        other_names = {p.name for p in others}
        cpu0 = {p.name: cpu_seconds(p.pid) for p in cluster.peers}
        m0 = machine_busy_seconds()
        stallwatch = StallWatch(base / "stallwatch.log", threshold_ms=50.0)
        w0 = time.time()
        t0 = time.monotonic()
        async with http_client(len(cluster.peers), timeout=2.0) as client:
            counters0 = await scrape_counters(client, cluster.peers)
        duty = DutyCycle(victim.pid, args.run_ms / 1000, args.period_ms / 1000)
        duty.start()
        snaps: list[dict[str, Any]] = []
        async with http_client(len(cluster.peers), timeout=1.0) as client:
            next_report = 60.0
            while time.monotonic() - t0 < args.duration:
                poll_start = time.time()
                if args.poll_mode == "burst":
                    await trio.sleep(args.snapshot_interval)
                    poll_start = time.time()
                    vs = await views(client, others)
                else:
                    vs = await staggered_views(client, others, args.snapshot_interval)
                poll_end = time.time()
                seen = Counter()
                healthy_bad = []
                for viewer, v in vs.items():
                    if v is None:
                        seen["no answer"] += 1
                        continue
                    seen[(v.get(victim_name) or {}).get("state", "unknown")] += 1
                    for n, row in v.items():
                        if n in other_names and row["state"] != "alive":
                            healthy_bad.append((viewer, n, row["state"]))
                el = time.monotonic() - t0
                gone = [p.name for p in cluster.peers if not pid_alive(p.pid)]
                if gone:
                    print(f"  t={el:5.0f}s  ABORT: peer process(es) exited: {gone}", flush=True)
                    result["aborted"] = f"peer process(es) exited at t={el:.0f}s: {gone}"
                    break
                snaps.append(
                    {
                        "t": round(el, 1),
                        "poll_wall": (poll_start, poll_end),
                        "victim_seen": dict(seen),
                        "healthy_not_alive": healthy_bad[:10],
                        "healthy_not_alive_count": len(healthy_bad),
                    }
                )
                if el >= next_report or healthy_bad:
                    print(
                        f"  t={el:5.0f}s  others see {victim_name}: {dict(seen)}; healthy peers "
                        f"seen not alive: {len(healthy_bad)} {healthy_bad[:3]}; load "
                        f"{loadavg()}",
                        flush=True,
                    )
                    if el >= next_report:
                        next_report += 60.0
        duty.halt.set()
        duty.join(timeout=5)
        w1 = time.time()
        elapsed = time.monotonic() - t0
        cpu1 = {p.name: cpu_seconds(p.pid) for p in cluster.peers}
        m1 = machine_busy_seconds()
        result["peers_exited_during_soak"] = [p.name for p in cluster.peers if not pid_alive(p.pid)]
        try:
            os.kill(victim.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        ok, rec, last = await wait_all_alive(cluster, args.recover_bound, every=0.25)
        result["recovered_after_s"] = round(rec, 2) if ok else None
        if not ok:
            result["not_recovered"] = last
        result["duty_cycle"] = {
            "cycles": duty.cycles,
            "runnable_fraction": round(duty.on_time / max(1e-9, duty.on_time + duty.off_time), 4),
            "mean_on_ms": round(1000 * duty.on_time / max(1, duty.cycles), 2),
            "max_on_ms": round(1000 * duty.max_on, 1),
            "mean_off_ms": round(1000 * duty.off_time / max(1, duty.cycles), 2),
            "max_off_ms": round(1000 * duty.max_off, 1),
            "error": duty.error,
        }
        pct = {
            n: 100 * (cpu1[n] - cpu0[n]) / elapsed
            for n in cpu0
            if cpu0[n] is not None and cpu1[n] is not None
        }
        healthy_pct = [v for n, v in pct.items() if n != victim_name]
        result["cpu_pct_of_core"] = {
            "victim": round(pct.get(victim_name, float("nan")), 2),
            "healthy_mean": round(statistics.fmean(healthy_pct), 2) if healthy_pct else None,
            "healthy_max": round(max(healthy_pct), 2) if healthy_pct else None,
            "all_peers_total": round(sum(pct.values()), 1),
            "machine_busy_pct_of_all_cores": round(
                100 * (m1[0] - m0[0]) / max(1e-9, m1[1] - m0[1]), 1
            ),
        }
        # Count over the soak and the recovery after it.
        async with http_client(len(cluster.peers), timeout=2.0) as client:
            counters1 = await scrape_counters(client, cluster.peers)
        result["counters"] = counters_delta(counters0, counters1)
        result.update(analyse(cluster, victim_name, w0, time.time()))
        stallwatch.stop()
        result.update(stall_report(stallwatch, cluster, victim_name, w0, w1, snaps))
        result["soak_window_s"] = round(w1 - w0, 1)
        result["snapshots"] = len(snaps)
        result["snapshots_with_healthy_not_alive"] = sum(
            1 for s in snaps if s["healthy_not_alive_count"]
        )
        victim_seen = Counter()
        for s in snaps:
            for state, k in s["victim_seen"].items():
                victim_seen[state] += k
        total = sum(victim_seen.values()) or 1
        result["victim_seen_share"] = {k: round(v / total, 3) for k, v in victim_seen.items()}
        result["data_dir"] = str(base)
    finally:
        if duty is not None:
            duty.halt.set()
            duty.join(timeout=5)
        if stallwatch is not None:
            stallwatch.stop()
        left = cluster.stop()
        if left:
            result["sigkilled_leftovers"] = len(left)
        keep_or_remove(base, args)

    finish_machine(machine)
    print()
    print(
        f"Soak: {args.peers} peers, {result.get('soak_window_s')} s, {result.get('victim')} "
        f"starved ({args.run_ms:g} ms of every {args.period_ms:g} ms)"
    )
    d = result.get("duty_cycle", {})
    c = result.get("cpu_pct_of_core", {})
    rows = [
        ["ABORTED (figures invalid)", str(result.get("aborted", "no"))],
        ["FALSE DEATHS of healthy peers (goal 0)", str(result.get("false_deaths"))],
        [
            "  ... distinct healthy nodes falsely dead",
            str(len(result.get("false_death_nodes", {}))),
        ],
        ["suspicions of healthy peers", str(result.get("healthy_suspicions"))],
        ["  raised by", str(result.get("healthy_suspicions_raised_by"))],
        ["  distinct healthy nodes suspected", str(result.get("healthy_suspected_nodes"))],
        ["refutations by healthy peers", str(result.get("refutations_by_healthy"))],
        ["refutations by the starved peer", str(result.get("refutations_by_starved"))],
        [
            "starved peer: transitions seen by others",
            str(result.get("victim_transitions_seen_by_others")),
        ],
        [
            "starved peer: declared dead (events / viewers)",
            f"{result.get('victim_declared_dead_total')} / {result.get('victim_declared_dead_by_viewers')}",
        ],
        ["starved peer: how others saw it (snapshots)", str(result.get("victim_seen_share"))],
        ["starved peer: incarnation bumps", str(result.get("victim_incarnation_bumps"))],
        [
            "snapshots with a healthy peer not alive",
            f"{result.get('snapshots_with_healthy_not_alive')} / {result.get('snapshots')}",
        ],
        [
            "machine stalls seen by a 10-ms sleeper (>100 ms / >250 ms / max ms)",
            f"{result.get('stalls_over_100ms')} / {result.get('stalls_over_250ms')} / "
            f"{result.get('max_stall_ms')}",
        ],
        [
            "bursts of healthy suspicions (>=10 in a second)",
            str(len(result.get("suspicion_bursts", []))),
        ],
        [
            "gossip/transport counters, sum over peers during the soak",
            str(result.get("counters", {}).get("sum_over_peers")),
        ],
        [
            "peers with receive drops or errors",
            str(result.get("counters", {}).get("peers_with_drops_or_errors")),
        ],
        ["peers that exited during the soak", str(result.get("peers_exited_during_soak"))],
        ["back alive everywhere after the soak (s)", str(result.get("recovered_after_s"))],
        [
            "duty cycle achieved",
            f"runnable {d.get('runnable_fraction')}, on mean "
            f"{d.get('mean_on_ms')} ms (max {d.get('max_on_ms')}), off mean {d.get('mean_off_ms')} ms "
            f"(max {d.get('max_off_ms')})",
        ],
        [
            "CPU % of a core: starved / healthy mean / all / machine",
            f"{c.get('victim')} / {c.get('healthy_mean')} / {c.get('all_peers_total')} / "
            f"{c.get('machine_busy_pct_of_all_cores')}% of all cores",
        ],
    ]
    print(table(rows, ["figure", "value"]))
    if result.get("suspicion_bursts"):
        print(
            "\nbursts of suspicions of healthy peers (second, count, nodes, nearby stall/steal/poll):"
        )
        for b in result["suspicion_bursts"]:
            print(f"  {json.dumps(b)}")
    if result.get("false_deaths_examples"):
        print("\nfalse deaths (first 20):")
        for e in result["false_deaths_examples"]:
            print(f"  {json.dumps(e)}")
    json_line("soak_starved", machine, args, result=result)
    return 0


def main() -> int:
    return trio.run(main_async, parse_args())


if __name__ == "__main__":
    sys.exit(main())
