"""The fault scenarios on real clusters, as a table: what each fault cost, and that nothing broke.

Method: each scenario of `peer/faults/scenarios.py` (the same code the tests in
tests/peer/faults/test_scenarios.py run) launches its own cluster with `murmur launch --peers 4`
(`local` profile, lease 2 s, the exchange's own flow at 20 orders/s, 8 symbols), waits until every
symbol is quoted, trades 1.5 s, injects its fault through the Nemesis (the `murmur partition/heal/
freeze/thaw/kill/restart` code), heals, and waits until every symbol is quoted by its rendezvous
owner again. The cluster is then stopped and judged: `murmur check --json` for every safety
invariant, and the tape for the liveness figures:

- heal -> quoted: from the heal (or thaw, or restart) to the end of the last quote gap that
  reaches past it, per the tape: when every symbol was quoted again for good;
- longest gap: the longest time, from the first fault on, that some symbol had no live quote;
- fills: fills on the tape from the first fault to the end; violations: `murmur check`'s.

Run: .venv/bin/python bench/partitions.py [--only split-halves,one-way] [--keep]
(`netns-split` needs root on Linux.)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import trio
from _realcluster import fmt, header, json_line, table

from peer.faults.scenarios import SCENARIOS, ScenarioReport, run_scenario


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated scenario names (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep each scenario's data directory")
    ap.add_argument("--data-dir", type=Path, help="where the scenarios' data directories go")
    return ap.parse_args()


async def run_all(names: list[str], base: Path) -> list[ScenarioReport]:
    reports = []
    for name in names:
        what, scenario, launch_args = SCENARIOS[name]
        try:
            report = await run_scenario(name, base / name, scenario=scenario, what=what, launch_args=launch_args)
        except Exception as exc:  # a scenario that failed to finish is a row of the table too
            report = ScenarioReport(name, what, violations=[f"did not finish: {type(exc).__name__}: {exc}"[:300]])
        reports.append(report)
        print(f"{name}: check exit {report.check_exit}, heal->quoted {fmt(report.heal_to_quoted_s)} s, "
              f"longest gap {fmt(report.longest_gap_s)} s, fills {report.fills}, notes {report.notes}", flush=True)
    return reports


def main() -> None:
    args = parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    machine = header("fault scenarios on real clusters (peer/faults/scenarios.py)",
                     (__doc__ or "").split("Method: ", 1)[1].split("\n\nRun:")[0].splitlines(), args)
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-partitions-"))
    reports = trio.run(run_all, names, base)
    rows = [[r.name, fmt(r.heal_to_quoted_s), fmt(r.longest_gap_s), str(r.gaps), str(r.fills),
             str(len(r.violations)), str(r.check_exit)] for r in reports]
    print()
    print(table(rows, ["scenario", "heal->quoted s", "longest gap s", "gaps", "fills", "violations", "check exit"]))
    json_line("partitions", machine, args, scenarios=[r.to_json() for r in reports])
    if args.keep or args.data_dir:
        print(f"\ndata kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
