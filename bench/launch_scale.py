"""How many real peers launch and converge on this machine, and what an idle peer costs in CPU.

Method, for each size S (total OS processes: `murmur launch --peers S-2` = S-2 market makers +
exchange + ledger, profile `local`, one size at a time, each on a fresh data directory):
- launch time: from starting `murmur launch` to its cluster.json saying `running` (the launcher
  writes it once every peer answers /health, i.e. when it has finished starting peers).
- convergence: poll every peer's /members concurrently every `--poll-interval` s until every
  peer shows all S peers `alive`. Reported from the launcher finishing (cluster.json) and from
  the last peer's own start (the latest `started_at` in the peers' peer.json). Two figures:
  `poll` = when the poll saw it (upper bound, includes polling resolution and load), and `log`
  = the exact moment from the peers' JSON logs: the latest membership transition of any peer
  before the converged poll (each view is in its final, all-alive state from its last change).
  A negative figure means the cluster had converged before the launcher finished. Also from
  the last peer PROCESS creation (/proc/<pid>/stat starttime; the launcher spawns mm-1, waits for
  it, then spawns all others at once): this includes the time the peers take to start up.
  Goal: converged within 10 s of the last start, at 64 peers.
- CPU per idle peer: after convergence and `--settle` s without polling, utime+stime of every
  peer from /proc/<pid>/stat over `--cpu-window` s (default 20), as % of one core: mean, median,
  max per peer, and the sum; plus the whole machine's busy % over the same window (all cores)
  and suspicions/deaths logged meanwhile (an idle cluster should have none).

Run: .venv/bin/python bench/launch_scale.py [--sizes 16,32,48,64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _realcluster as rc
import trio

GOAL_S = 10.0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,32,48,64", help="total processes per cluster")
    ap.add_argument("--profile", default="local")
    rc.add_murmur_set(ap)
    ap.add_argument("--poll-interval", type=float, default=0.25)
    ap.add_argument(
        "--converge-bound",
        type=float,
        default=60.0,
        help="give up waiting for convergence after this (s after launcher finished)",
    )
    ap.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        help="passed to `murmur launch --startup-timeout` (its default is 30)",
    )
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--cpu-window", type=float, default=20.0)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true")
    return ap.parse_args()


async def measure(size: int, base: Path, args) -> dict[str, Any]:
    cluster = rc.MurmurCluster(
        size,
        base / f"launch-{size}",
        profile=args.profile,
        startup_timeout=args.startup_timeout,
        extra=rc.launch_set_args(args),
    )
    out: dict[str, Any] = {"size": size}
    try:
        t_launch = time.monotonic()
        cluster.start()  # on the main thread: PR_SET_PDEATHSIG follows the forking thread
        ready_mono = cluster.ready_mono
        ready_wall = time.time() - (time.monotonic() - ready_mono)
        out["launch_s"] = round(ready_mono - t_launch, 2)
        names = cluster.names()
        conv_mono = None
        last = ""
        rounds = 0
        async with rc.http_client(size, timeout=2.0) as client:
            with trio.move_on_after(args.converge_bound):
                while True:
                    vs = await rc.views(client, cluster.peers)
                    rounds += 1
                    if rc.all_alive(vs, names):
                        conv_mono = time.monotonic()
                        break
                    last = rc.not_alive_summary(vs, names)
                    await trio.sleep(args.poll_interval)
        started = cluster.peer_started_at()
        last_start_wall = max(started.values()) if started else None
        out["last_peer_start_after_ready_s"] = (
            round(last_start_wall - ready_wall, 2) if last_start_wall else None
        )
        spawned = [rc.proc_start_wall(p.pid) for p in cluster.peers]
        spawned = [s for s in spawned if s is not None]
        last_spawn_wall = max(spawned) if spawned else None
        out["last_spawn_to_ready_s"] = (
            round(ready_wall - last_spawn_wall, 2) if last_spawn_wall else None
        )
        if conv_mono is None:
            out["converged"] = False
            out["not_converged"] = last
            return out
        conv_wall = time.time() - (time.monotonic() - conv_mono)
        out["converged"] = True
        out["poll_rounds"] = rounds
        out["converge_poll_from_ready_s"] = round(conv_mono - ready_mono, 2)
        events = rc.member_events(cluster)
        before = [
            e["t_wall"] for e in events if e["t_wall"] is not None and e["t_wall"] <= conv_wall
        ]
        log_conv = max(before) if before else None
        out["converge_log_from_ready_s"] = round(log_conv - ready_wall, 2) if log_conv else None
        if last_start_wall:
            out["converge_poll_from_last_start_s"] = round(conv_wall - last_start_wall, 2)
            out["converge_log_from_last_start_s"] = (
                round(log_conv - last_start_wall, 2) if log_conv else None
            )
        if last_spawn_wall:
            out["converge_poll_from_last_spawn_s"] = round(conv_wall - last_spawn_wall, 2)
        out["transitions_until_converged"] = len(before)
        early = [
            e
            for e in events
            if e["t_wall"] is not None
            and e["t_wall"] <= conv_wall
            and e.get("new") in ("suspect", "dead")
        ]
        out["suspect_or_dead_until_converged"] = len(early)
        out["suspicions_until_converged"] = sum(1 for e in early if e.get("new") == "suspect")
        out["deaths_until_converged"] = sum(1 for e in early if e.get("new") == "dead")
        out["deaths_until_converged_examples"] = [
            {k: e.get(k) for k in ("ts", "viewer", "node", "old", "reason", "detail")}
            for e in early
            if e.get("new") == "dead"
        ][:5]
        worst = out.get("converge_poll_from_last_start_s", out["converge_poll_from_ready_s"])
        out["within_goal"] = worst <= GOAL_S

        # Idle CPU: no polling from here on.
        await trio.sleep(args.settle)
        w0 = time.time()
        pids = {p.name: p.pid for p in cluster.peers}
        launcher_cpu0 = rc.cpu_seconds(cluster.launcher.pid)
        cpu = await trio.to_thread.run_sync(rc.sample_cpu, pids, args.cpu_window)
        launcher_cpu1 = rc.cpu_seconds(cluster.launcher.pid)
        cpu["launcher_pct"] = (
            round(100 * (launcher_cpu1 - launcher_cpu0) / cpu["seconds"], 2)
            if launcher_cpu0 is not None and launcher_cpu1 is not None
            else None
        )
        out["cpu"] = {k: v for k, v in cpu.items() if k != "per_peer_pct"}
        out["cpu"]["per_peer_pct"] = cpu["per_peer_pct"]
        during = [
            e for e in rc.member_events(cluster, since=w0) if e.get("new") in ("suspect", "dead")
        ]
        out["suspect_or_dead_while_idle"] = len(during)
        async with rc.http_client(size, timeout=2.0) as client:
            vs = await rc.views(client, cluster.peers)
        out["still_all_alive_after_idle"] = rc.all_alive(vs, names)
        return out
    finally:
        left = cluster.stop()
        if left:
            out["sigkilled_leftovers"] = len(left)


async def main_async(args) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    method = [line.strip() for line in __doc__.split("\n\n")[1].splitlines()]
    method.append(rc.murmur_profile_line(args.profile, args.murmur_set))
    machine = rc.header(
        "launch_scale: peers that launch and converge; CPU per idle peer", method, args
    )
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-launch-"))
    results = []
    try:
        for size in sizes:
            print(f"== {size} peers ==", flush=True)
            try:
                r = await measure(size, base, args)
            except Exception as exc:
                print(f"  FAILED: {exc}", flush=True)
                r = {"size": size, "error": str(exc)}
            results.append(r)
            brief = {k: v for k, v in r.items() if k != "cpu"}
            print(f"  {brief}", flush=True)
            if "cpu" in r:
                c = r["cpu"]
                print(
                    f"  idle CPU over {c['seconds']}s: mean {c['mean_pct']}% of a core per peer, "
                    f"median {c['median_pct']}%, max {c['max_pct']}%, total {c['total_pct']}%; "
                    f"machine busy {c['machine_busy_pct_of_all_cores']}% of {c['ncpu']} cores; "
                    f"launcher {c['launcher_pct']}%",
                    flush=True,
                )
    finally:
        rc.keep_or_remove(base, args)

    rc.finish_machine(machine)
    print("\nLaunch and convergence (seconds; goal: converged <= 10 s after the last start)")
    rows = []
    for r in results:
        if "error" in r or not r.get("converged"):
            rows.append(
                [
                    str(r["size"]),
                    rc.fmt(r.get("launch_s")),
                    "FAILED" if "error" in r else "not converged",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        c = r.get("cpu", {})
        rows.append(
            [
                str(r["size"]),
                rc.fmt(r["launch_s"]),
                rc.fmt(r.get("converge_poll_from_last_start_s")),
                rc.fmt(r.get("converge_log_from_last_start_s")),
                rc.fmt(r["converge_poll_from_ready_s"]),
                rc.fmt(r["converge_log_from_ready_s"]),
                rc.fmt(r.get("converge_poll_from_last_spawn_s")),
                "yes" if r["within_goal"] else "NO",
                f"{r.get('suspicions_until_converged')}/{r.get('deaths_until_converged')}",
                rc.fmt(c.get("mean_pct")),
                rc.fmt(c.get("total_pct"), 1),
                rc.fmt(c.get("machine_busy_pct_of_all_cores"), 1),
            ]
        )
    print(
        rc.table(
            rows,
            [
                "peers",
                "launch",
                "conv(poll) from last start",
                "conv(log) from last start",
                "conv(poll) from ready",
                "conv(log) from ready",
                "conv(poll) from last spawn",
                "<=10s",
                "suspect/dead during launch",
                "idle CPU %/peer",
                "idle CPU % total",
                "machine busy %",
            ],
        )
    )
    ok = [r["size"] for r in results if r.get("within_goal")]
    print(f"\nlargest size within the goal: {max(ok) if ok else 'none'}")
    rc.json_line("launch_scale", machine, args, largest_within_goal=max(ok) if ok else None,
              results=results)
    return 0


def main() -> int:
    return trio.run(main_async, parse_args())


if __name__ == "__main__":
    sys.exit(main())
