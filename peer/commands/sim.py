"""`murmur sim`: the whole cluster in one process on a simulated network and clock, with faults."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peer.commands._common import UsageError, profile_arg

NAME = "sim"
HELP = "run the whole cluster with seeded faults in one process; print the verdicts and the trace hash"
DESCRIPTION = """\
Run the exchange, the ledger and N market makers -- their real services, their real HTTP server
and client code, their gossip nodes -- in one process, on an in-memory network under a virtual
clock, with the exchange's order flow and faults drawn from --seed (--faults: none; calm: loss
and delay; network: also partitions both ways and one way, an isolated peer, frozen peers,
duplicated and reordered packets; storage: crashes and restarts on their data, a torn tape
tail, a failing ledger commit, a ledger crash between a commit of fills and its answer; chaos:
all of these, and the clocks of the market makers and the ledger drifting; see
docs/simulation.md). The run ends with the checker of `murmur check` over the tape and the ledger it left, and
whether every symbol was quoted again within 10 s of the last fault. The same seed gives the same
trace hash, byte for byte. A failing seed prints the one line that reproduces it; --keep DIR keeps
its files for `murmur check DIR` and `murmur tape DIR/exchange/exchange.tape`.

--seeds A..B sweeps seeds (each in its own process, --jobs at once) and lists the failures;
with --budget S it starts a seed only if it should end within S seconds (CI sweeps what fits in 90).
--membership runs the older membership-only scenario (gossip peers, no trading).

Exit status 0 if every check held, 1 if one was violated.

examples:
  murmur sim --seed 1
  murmur sim --seed 7 --peers 5 --duration 120 --faults chaos --keep /tmp/sim7
  murmur sim --seeds 1..50 --jobs 2
  murmur sim --seeds 1..100000 --budget 90 --jobs 2 --peers 3 --duration 30
  murmur sim --membership --seed 1 --peers 100
"""

SEEDS = re.compile(r"(\d+)\.\.(\d+)")
# peer.sim.world.PROFILES, spelled out: importing the simulation (trio, every service) would slow
# the start of every `murmur` command, which builds all the parsers (tests/peer/sim/test_world.py
# checks the two agree).
PROFILES = ("none", "calm", "network", "storage", "chaos")


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="the seed everything derives from")
    which.add_argument("--seeds", metavar="A..B", help="sweep the seeds A to B, each in its own process")
    p.add_argument("--peers", type=int, default=None,
                   help="market makers (default 3), or gossip peers with --membership (default 20)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds (default: 60)")
    p.add_argument("--faults", default="chaos", choices=PROFILES, help="fault profile (default: chaos)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once by --seeds (default: 1)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="--seeds: start a seed only if, at the average seed's length so far, it ends within this "
                        "many seconds of wall time (CI sweeps what fits in 90)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the run's files in DIR (default: a temporary directory, removed)")
    p.add_argument("--membership", action="store_true", help="the membership-only scenario")
    p.add_argument("--profile", type=profile_arg, default="local", help="gossip timings: local or lan (default: local)")
    p.add_argument("--loss", type=float, default=0.02, help="--membership only: packet loss while faults run (default: 0.02)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--trace", action="store_true", help="--membership only: also print every membership event")


def run(args: argparse.Namespace) -> int:
    if args.membership:
        return _membership(args)
    peers = 3 if args.peers is None else args.peers
    if not 1 <= peers <= 200:
        raise UsageError(f"--peers must be from 1 to 200 market makers, got {peers}")
    if not 30 <= args.duration <= 24 * 3600:
        raise UsageError(f"--duration must be from 30 to 86400 simulated seconds, got {args.duration:g}")
    if args.seeds is not None:
        return _sweep(args, peers)
    return _one(args, peers)


def _reproduce(seed: int, peers: int, args: argparse.Namespace) -> str:
    return (f"murmur sim --seed {seed} --peers {peers} --duration {args.duration:g} --faults {args.faults} "
            f"--profile {args.profile} --keep /tmp/murmur-sim-{seed}")


def _one(args: argparse.Namespace, peers: int) -> int:
    import trio
    from trio.testing import MockClock

    from gossip.config import profile
    from gossip.simcluster import deterministic_trio
    from peer.sim.world import run_world

    data_dir = args.keep or Path(tempfile.mkdtemp(prefix=f"murmur-sim-{args.seed}-"))
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        raise UsageError(f"--keep {args.keep} is not empty: a run starts from nothing")
    deterministic_trio(args.seed)
    started = time.perf_counter()
    try:
        report = trio.run(lambda: run_world(args.seed, peers, profile(args.profile), data_dir,
                                            duration=args.duration, profile=args.faults),
                          clock=MockClock(autojump_threshold=0))
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    wall = time.perf_counter() - started
    out = report.to_json()
    out["wall_s"] = round(wall, 3)
    if args.keep is None:
        out["data_dir"] = None
    if args.json:
        print(json.dumps(out))
    else:
        print(f"murmur sim  seed {args.seed}  {peers} market makers + exchange + ledger  faults {args.faults}  "
              f"{args.duration:g} simulated s in {wall:.1f} s")
        for line in report.faults:
            print(f"  {line}")
        for v in report.verdicts:
            status = {True: "held", False: "VIOLATED", None: "not checked"}[v.held]
            print(f"  {v.invariant}  {status:<11} {v.check}")
            for e in v.evidence[:5]:
                print(f"     ! {e}")
        print(f"  6  {'held' if report.requoted_s is not None and report.requoted_s <= 10 else 'VIOLATED':<11} "
              f"every symbol quoted again within 10 s of the last fault ({report.requoted_s} s)")
        print(f"  fills {report.fills}, longest quote gap {report.longest_gap_s} s")
        print(f"trace {report.trace_hash}  ({report.events} membership events)")
        if not report.ok:
            print(f"FAILED; reproduce with: {_reproduce(args.seed, peers, args)}")
    return 0 if report.ok else 1


def _sweep(args: argparse.Namespace, peers: int) -> int:
    m = SEEDS.fullmatch(args.seeds)
    if m is None or int(m.group(1)) > int(m.group(2)):
        raise UsageError(f"--seeds takes A..B with A <= B, e.g. 1..50, got {args.seeds!r}")
    if not 1 <= args.jobs <= 64:
        raise UsageError(f"--jobs must be from 1 to 64, got {args.jobs}")
    seeds = range(int(m.group(1)), int(m.group(2)) + 1)
    common = ["--peers", str(peers), "--duration", f"{args.duration:g}", "--faults", args.faults,
              "--profile", args.profile, "--json"]
    started = time.perf_counter()

    def one(seed: int) -> dict:
        # A process a seed: trio's deterministic scheduling is global to a process.
        done = subprocess.run([sys.executable, "-m", "peer.cli", "sim", "--seed", str(seed), *common],
                              capture_output=True, text=True, check=False)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"seed": seed, "ok": False, "violations": [f"crashed: {done.stderr.strip()[-500:]}"]}

    if args.budget is not None and not 0 < args.budget <= 7 * 24 * 3600:
        raise UsageError(f"--budget must be a positive number of seconds, got {args.budget:g}")
    results: list[dict] = []
    pending = iter(seeds)
    lock = threading.Lock()

    took: list[float] = []

    def fits() -> bool:
        # A seed is started only if one more of the average length so far ends within the budget.
        if args.budget is None:
            return True
        expected = sum(took) / len(took) if took else 0.0
        return time.perf_counter() - started + expected <= args.budget

    def worker() -> None:
        # Each worker takes the next seed while the budget lasts; the results keep seed order.
        while True:
            with lock:
                seed = next(pending, None) if fits() else None
            if seed is None:
                return
            begun = time.perf_counter()
            result = one(seed)
            with lock:
                results.append(result)
                took.append(time.perf_counter() - begun)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in range(args.jobs):
            pool.submit(worker)
    results.sort(key=lambda r: r.get("seed", 0))
    wall = time.perf_counter() - started
    failed = [r for r in results if not r.get("ok")]
    if args.json:
        print(json.dumps({"seeds": len(results), "first": results[0]["seed"] if results else None,
                          "last": results[-1]["seed"] if results else None, "failed": failed,
                          "wall_s": round(wall, 3), "seeds_per_minute": round(60 * len(results) / wall, 2)}))
    else:
        swept = f"{results[0]['seed']}..{results[-1]['seed']}" if results else "none"
        print(f"murmur sim  seeds {swept}: {len(results)} run, {len(failed)} failed, {wall:.1f} s "
              f"({60 * len(results) / wall:.1f} seeds a minute)")
        for r in failed:
            print(f"  seed {r['seed']}: {'; '.join(r.get('violations', []))[:300]}")
            print(f"    reproduce: {_reproduce(r['seed'], peers, args)}")
    return 1 if failed else 0


def _membership(args: argparse.Namespace) -> int:
    if args.seed is None:
        raise UsageError("--membership runs one --seed")
    peers = 20 if args.peers is None else args.peers
    if not 4 <= peers <= 5000:
        raise UsageError(f"--peers must be from 4 to 5000, got {peers}")
    if not 0.0 <= args.loss < 0.5:
        raise UsageError(f"--loss must be from 0 to 0.5, got {args.loss}")
    import trio
    from trio.testing import MockClock

    from gossip.config import profile
    from gossip.scenario import run_scenario
    from gossip.simcluster import deterministic_trio

    deterministic_trio(args.seed)
    report = trio.run(run_scenario, args.seed, peers, profile(args.profile), args.loss,
                      clock=MockClock(autojump_threshold=0))
    if args.json:
        print(json.dumps({
            "seed": report.seed, "peers": report.peers, "profile": report.profile,
            "trace_hash": report.trace_hash, "events": report.events, "sim_seconds": report.sim_seconds,
            "ok": report.ok, "checks": [c.__dict__ for c in report.checks], "timeline": report.timeline,
        }, indent=2))
    else:
        print(f"murmur sim --membership  seed {report.seed}  {report.peers} peers  profile {report.profile}")
        for line in report.timeline:
            print("  " + line)
        for c in report.checks:
            print(f"  {'held    ' if c.held else 'VIOLATED'}  {c.name}: {c.evidence}")
        print(f"trace {report.trace_hash}  ({report.events} events, {report.sim_seconds:.1f} simulated s)")
    return 0 if report.ok else 1
