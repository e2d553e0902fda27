"""Simulated membership at scale: detection, dissemination, bytes per member, simulation speed.

Method: N real `GossipNode` shells on the in-memory network (`gossip.simcluster`), virtual
clock (trio MockClock, autojump), `lan` profile unless told otherwise, 2 ms +-1 ms link delay.
Nodes join through the first one over `--join-spread` simulated seconds. Once every node sees
all N alive, the steady state is measured for `--steady` simulated seconds (bytes sent per
member per protocol period, and simulated seconds per wall second); then one node is frozen
and we record, in protocol periods from the freeze: the first suspicion, the first `dead`
declaration (detection), and the moment the last other node holds it dead (full dissemination).

Run: .venv/bin/python bench/sim_scale.py --sizes 10,1000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import trio
from trio.testing import MockClock

from gossip.config import profile
from gossip.simcluster import SimCluster, deterministic_trio
from gossip.types import MemberState


async def measure(n: int, prof: str, seed: int, join_spread: float, steady: float) -> dict:
    config = profile(prof)
    cluster = SimCluster(n, config, seed, join_spread=join_spread, record_trace=False)
    period = config.probe_interval
    victim = cluster.names[n // 2]
    marks: dict[str, float] = {}
    dead_seen: set[str] = set()
    false_deaths = 0

    def listen(viewer: str, e) -> None:
        nonlocal false_deaths
        if "freeze" not in marks:
            return
        if e.new is MemberState.DEAD and e.node != victim:
            false_deaths += 1
        if e.node != victim:
            return
        if e.new is MemberState.SUSPECT:
            marks.setdefault("suspect", e.at)
        if e.new is MemberState.DEAD:
            marks.setdefault("dead", e.at)
            dead_seen.add(viewer)
            if len(dead_seen) == n - 1:
                marks["all_dead"] = e.at
                all_dead.set()

    all_dead = trio.Event()
    cluster.listeners.append(listen)
    out: dict = {"n": n, "profile": prof, "probe_interval": period}
    async with trio.open_nursery() as nursery:
        wall0 = time.perf_counter()
        await nursery.start(cluster.run)
        while not all(node.counts()["alive"] == n for node in cluster.nodes.values()):
            await trio.sleep(1.0)
            if int(trio.current_time()) % 10 == 0:
                least = min(node.counts()["alive"] for node in cluster.nodes.values())
                print(f"  ... t={trio.current_time():.0f}s  nodes={len(cluster.nodes)}  fewest alive seen={least}"
                      f"  wall={time.perf_counter() - wall0:.0f}s", file=sys.stderr, flush=True)
        out["converge_sim_s"] = round(trio.current_time(), 1)
        out["converge_wall_s"] = round(time.perf_counter() - wall0, 1)

        # Steady state: let the join broadcasts drain first, then count bytes.
        await trio.sleep(30 * period)
        before = cluster.net.total_stats()["bytes_out"]
        t0, w0 = trio.current_time(), time.perf_counter()
        await trio.sleep(steady)
        sent = cluster.net.total_stats()["bytes_out"] - before
        sim, wall = trio.current_time() - t0, time.perf_counter() - w0
        out["bytes_per_member_per_period"] = round(sent / n / (sim / period), 1)
        out["sim_s_per_wall_s"] = round(sim / wall, 2)

        marks["freeze"] = trio.current_time()
        cluster.freeze(victim)
        with trio.move_on_after(600):
            await all_dead.wait()
        f = marks["freeze"]
        for key in ("suspect", "dead", "all_dead"):
            out[f"{key}_periods"] = round((marks[key] - f) / period, 2) if key in marks else None
        out["dissemination_periods"] = (
            round((marks["all_dead"] - marks["dead"]) / period, 2) if "all_dead" in marks else None
        )
        out["false_deaths"] = false_deaths
        cluster.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,1000")
    ap.add_argument("--profile", default="lan")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--join-spread", type=float, default=30.0)
    ap.add_argument("--steady", type=float, default=30.0, help="simulated seconds of steady state measured")
    args = ap.parse_args()
    print(f"# sim_scale  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}  "
          f"{platform.node()}  {os.cpu_count()} cores  python {platform.python_version()}")
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        deterministic_trio(args.seed)
        r = trio.run(measure, n, args.profile, args.seed, args.join_spread if n > 50 else 2.0, args.steady,
                     clock=MockClock(autojump_threshold=0))
        results.append(r)
        print(json.dumps(r))
    if len(results) >= 2:
        small, big = results[0], results[-1]
        ratio = big["bytes_per_member_per_period"] / small["bytes_per_member_per_period"]
        print(f"bytes/member/period at {big['n']} vs {small['n']}: {ratio:.2f}x (goal <= 1.5x)")
    print(json.dumps({"bench": "sim_scale", "results": results}))


if __name__ == "__main__":
    main()
