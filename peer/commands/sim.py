"""`murmur sim`: a whole cluster in one process on a simulated network and clock, with faults."""

from __future__ import annotations

import argparse
import json

from peer.commands._common import UsageError, profile_arg

NAME = "sim"
HELP = "run a seeded cluster with faults in one process; print the trace hash and the checks"
DESCRIPTION = """\
Run N gossip peers (the same code a peer process runs) on an in-memory network under a virtual
clock. Under packet loss, one peer is frozen then thawed, one crashes and restarts, and the
cluster is cut in halves then healed; once the faults stop, every view must converge.

The run is a function of --seed: the same seed prints the same trace hash, byte for byte. Exit
status 0 if every check held, 1 if one was violated.

examples:
  murmur sim --seed 1
  murmur sim --seed 7 --peers 100 --profile lan --loss 0.05
  murmur sim --seed 1 --json | jq .checks
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, required=True, help="the seed everything derives from")
    p.add_argument("--peers", type=int, default=20, help="number of peers (default: 20, at least 4)")
    p.add_argument("--profile", type=profile_arg, default="local", help="local or lan (default: local)")
    p.add_argument("--loss", type=float, default=0.02, help="packet loss while faults run (default: 0.02)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--trace", action="store_true", help="also print every membership event")


def run(args: argparse.Namespace) -> int:
    if not 4 <= args.peers <= 5000:
        raise UsageError(f"--peers must be from 4 to 5000, got {args.peers}")
    if not 0.0 <= args.loss < 0.5:
        raise UsageError(f"--loss must be from 0 to 0.5, got {args.loss}")
    import trio
    from trio.testing import MockClock

    from gossip.config import profile
    from gossip.scenario import run_scenario
    from gossip.simcluster import deterministic_trio

    deterministic_trio(args.seed)
    report = trio.run(run_scenario, args.seed, args.peers, profile(args.profile), args.loss,
                      clock=MockClock(autojump_threshold=0))
    if args.json:
        print(json.dumps({
            "seed": report.seed, "peers": report.peers, "profile": report.profile,
            "trace_hash": report.trace_hash, "events": report.events, "sim_seconds": report.sim_seconds,
            "ok": report.ok, "checks": [c.__dict__ for c in report.checks], "timeline": report.timeline,
        }, indent=2))
    else:
        print(f"murmur sim  seed {report.seed}  {report.peers} peers  profile {report.profile}")
        for line in report.timeline:
            print("  " + line)
        for c in report.checks:
            print(f"  {'held    ' if c.held else 'VIOLATED'}  {c.name}: {c.evidence}")
        print(f"trace {report.trace_hash}  ({report.events} events, {report.sim_seconds:.1f} simulated s)")
    return 0 if report.ok else 1
