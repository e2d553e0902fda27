"""What sealing gossip costs: packets a second through seal and open, and CPU per idle peer.

Method:
  1. In this process, `gossip.seal.seal` and `open_sealed` (with a replay guard, as a peer runs
     them) on payloads of 100, 500 and 1,358 bytes (the largest a sealed packet carries), each
     for --micro-seconds; the figure is packets a second on one core, and the microseconds each.
  2. Real processes: `murmur launch --peers N-2` sealed (the default: the launcher's cluster.key)
     and with `--insecure`, alternating sealed, insecure, sealed, insecure (--rounds pairs), one
     cluster at a time, idle (`--flow-rate 0`: no orders, so market makers only renew and
     refresh), until every peer sees every other alive, then --settle s, then the CPU of every
     peer process from /proc/<pid>/stat over --cpu-window s, as % of one core.
  Detection time with sealing beside kinship with its own encryption is
  `bench/detection_real.py --impls murmur,murmur-insecure,kinship-sealed`.

Run: .venv/bin/python bench/sealing.py [--peers 12] [--rounds 2] [--cpu-window 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import _realcluster as rc
import trio

from gossip.keyring import Keyring, generate_key
from gossip.seal import ReplayGuard, open_sealed, seal

SIZES = (100, 500, 1358)


def micro(seconds: float) -> list[dict]:
    ring = Keyring([generate_key()])
    rows = []
    for size in SIZES:
        payload = os.urandom(size)
        now = 1_700_000_000.0
        n, t0 = 0, time.perf_counter()
        frames = []
        while time.perf_counter() - t0 < seconds:
            for _ in range(200):
                frames.append(seal(ring, "bench", b"p", payload, now, os.urandom(12)))
            n += 200
        seal_s = (time.perf_counter() - t0) / n
        guard = ReplayGuard()
        t0 = time.perf_counter()
        for frame in frames:
            open_sealed(ring, "bench", b"p", frame, now, guard)
        open_s = (time.perf_counter() - t0) / len(frames)
        rows.append({"bytes": size, "seal_per_s": round(1 / seal_s), "open_per_s": round(1 / open_s),
                     "seal_us": round(seal_s * 1e6, 2), "open_us": round(open_s * 1e6, 2)})
    return rows


async def converged(cluster: rc.MurmurCluster, bound: float) -> float:
    t0 = time.monotonic()
    async with rc.http_client(len(cluster.peers)) as client:
        while time.monotonic() - t0 < bound:
            if rc.all_alive(await rc.views(client, cluster.peers), cluster.names()):
                return time.monotonic() - t0
            await trio.sleep(0.2)
    raise RuntimeError(f"not converged within {bound} s")


def idle_cpu(sealed: bool, peers: int, base: Path, round_: int, args) -> dict:
    extra = ["--flow-rate", "0"] + ([] if sealed else ["--insecure"])
    cluster = rc.MurmurCluster(peers, base / f"{'sealed' if sealed else 'insecure'}-{round_}", extra=extra)
    cluster.start()
    try:
        waited = trio.run(converged, cluster, 60.0)
        time.sleep(args.settle)
        cpu = rc.sample_cpu({p.name: p.pid for p in cluster.peers}, args.cpu_window)
    finally:
        cluster.stop()
    per = cpu["per_peer_pct"]
    mms = [v for n, v in per.items() if n.startswith("mm-")]
    return {"sealed": sealed, "round": round_, "converged_s": round(waited, 2), "mean_pct": cpu["mean_pct"],
            "mm_mean_pct": round(statistics.fmean(mms), 3), "median_pct": cpu["median_pct"],
            "machine_busy_pct": cpu["machine_busy_pct_of_all_cores"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=12, help="processes a cluster (default 12)")
    ap.add_argument("--rounds", type=int, default=2, help="sealed/insecure pairs (default 2)")
    ap.add_argument("--cpu-window", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--micro-seconds", type=float, default=1.0)
    ap.add_argument("--skip-processes", action="store_true")
    args = ap.parse_args()
    machine = rc.header("sealing: seal/open per second, CPU per idle peer sealed and insecure",
                        [line.strip() for line in __doc__.split("\n\n")[1].splitlines()], args)
    rows = micro(args.micro_seconds)
    print(rc.table([[str(r["bytes"]), f"{r['seal_per_s']:,}", f"{r['open_per_s']:,}", str(r["seal_us"]),
                     str(r["open_us"])] for r in rows],
                   ["payload bytes", "seal / s", "open / s", "seal us", "open us"]), flush=True)
    idle = []
    if not args.skip_processes:
        base = Path(tempfile.mkdtemp(prefix="murmur-bench-sealing-"))
        for r in range(args.rounds):
            for sealed in (True, False):
                out = idle_cpu(sealed, args.peers, base, r, args)
                print(f"  round {r + 1} {'sealed  ' if sealed else 'insecure'}: {out}", flush=True)
                idle.append(out)
        for sealed in (True, False):
            runs = [o for o in idle if o["sealed"] is sealed]
            print(f"{'sealed  ' if sealed else 'insecure'}: CPU per idle peer "
                  f"{statistics.fmean(o['mean_pct'] for o in runs):.3f}% of a core (market makers "
                  f"{statistics.fmean(o['mm_mean_pct'] for o in runs):.3f}%), rounds "
                  f"{[o['mean_pct'] for o in runs]}", flush=True)
    rc.finish_machine(machine)
    rc.json_line("sealing", machine, args, micro=rows, idle=idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
