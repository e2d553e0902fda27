"""`murmur check DATA_DIR`: the invariants of a finished or running cluster, from its files."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from ledger.exposure import LIMIT
from peer.commands._common import UsageError, positive_int_arg, positive_seconds_arg
from peer.exchange.tape import CorruptTape, NotATape, TapeReader
from peer.tools.checker import DELIVERY_BOUND, Verdict, check_ledger, check_tape

NAME = "check"
HELP = "check a cluster's invariants from the exchange's tape and the ledger's database"
DESCRIPTION = """\
Read what a cluster left behind -- the exchange's tape (<data-dir>/exchange/exchange.tape) and the
ledger's database (<data-dir>/ledger/ledger.db) -- and report, per invariant of docs/invariants.md, held
or violated, with the evidence (tape seqs, quote ids, epochs, fill ids). It re-derives every
invariant from the records themselves, not from the code that wrote them:

  1  quotes of at most one epoch are live per symbol at every point; epochs only grow; every
     fill executed a live quote of the live epoch
  2  fill ids are unique on the tape; the ledger holds each fill once, as the exchange created
     it, and every fill the ledger acknowledged
  3  each position is the signed sum of its fills; versions rise by one per fill
  4  active reservations never exceed the limit per side; every quote was live only while a
     granted reservation covered it

Invariants 5 (membership), 6 (liveness) and 7 (determinism) are about behaviour over time and
are checked by tests and benchmarks (docs/invariants.md), not from these files.

The files are only read. A running cluster can be checked: the ledger is read first, as one
snapshot, then the tape, and what happened after the snapshot is not judged against it (fills
not yet delivered are counted, not reported; quotes activated after it are skipped). The exchange and the ledger must share a
clock (as with `murmur launch`): reservations and quotes are compared by time.

Exit status: 0 all checked invariants held, 1 one was violated (or a file is corrupt), 2 nothing
to check (no tape and no ledger under DATA_DIR).

examples:
  murmur check data
  murmur check data --json | jq '.verdicts[] | select(.status != "held")'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the cluster's data directory (as given to launch)")
    p.add_argument("--exposure-limit", type=positive_int_arg, default=LIMIT,
                   help=f"the ledger's global exposure limit, each side (default: {LIMIT})")
    p.add_argument("--delivery-bound", type=positive_seconds_arg, default=DELIVERY_BOUND, metavar="SECONDS",
                   help="a fill the ledger lacks, older than this while the ledger was answering, is a violation "
                        f"of invariant 2 (default: {DELIVERY_BOUND:g}; on several machines add their clock skew)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")


def find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, *sorted(data_dir.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir} is not a directory")
    tape_path = find(data_dir, "exchange.tape")
    ledger_path = find(data_dir, "ledger.db")
    if tape_path is None and ledger_path is None:
        print(f"murmur check: no exchange.tape and no ledger.db under {data_dir}", file=sys.stderr)
        return 2
    verdicts: list[Verdict] = []
    problems: list[str] = []
    conn = None
    snapshot_at = math.inf
    if ledger_path is not None:
        try:
            # The ledger first, as a pinned read snapshot; the tape after it. The tape then holds
            # everything the snapshot refers to, and a running cluster is judged up to the snapshot.
            conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM fills").fetchone()
            snapshot_at = time.time()
        except sqlite3.DatabaseError as exc:
            problems.append(f"ledger {ledger_path}: {exc} (see docs/runbook.md, 'Damaged ledger database')")
            conn = None
    facts = None
    if tape_path is not None:
        try:
            tape_verdicts, facts = check_tape(TapeReader(tape_path).records())
            verdicts += tape_verdicts
        except (CorruptTape, NotATape) as exc:
            problems.append(f"tape {tape_path}: {exc}")
    if conn is not None:
        try:
            verdicts += check_ledger(conn, facts, args.exposure_limit, snapshot_at, args.delivery_bound)
        except sqlite3.DatabaseError as exc:
            problems.append(f"ledger {ledger_path}: {exc} (see docs/runbook.md, 'Damaged ledger database')")
        finally:
            conn.close()
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "tape": str(tape_path) if tape_path else None,
        "ledger": str(ledger_path) if ledger_path else None,
        "verdicts": [v.to_json() for v in verdicts],
        "problems": problems,
    }
    violated = problems or any(v.held is False for v in verdicts)
    report["result"] = "violated" if violated else "held"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        write_human(report)
    return 1 if violated else 0


def write_human(report: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"tape    {report['tape'] or '- (none found)'}\n")
    w(f"ledger  {report['ledger'] or '- (none found)'}\n\n")
    for v in report["verdicts"]:
        counts = ", ".join(f"{k} {n}" for k, n in v["counts"].items())
        w(f"{v['invariant']}  {v['status']:<11} {v['check']}\n")
        if counts:
            w(f"   {'':<11} {counts}\n")
        if v.get("note"):
            w(f"   {'':<11} note: {v['note']}\n")
        for line in v["evidence"]:
            w(f"   {'':<11} ! {line}\n")
    for problem in report["problems"]:
        w(f"!  {problem}\n")
    w(f"\n{report['result'].upper()}\n")
