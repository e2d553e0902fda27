"""`murmur check DATA_DIR`: the invariants of a finished or running cluster, from its files."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.exposure import LIMIT
from peer.commands._common import UsageError, positive_int_arg, positive_seconds_arg
from peer.exchange.tape import CorruptTape, NotATape, TapeReader
from peer.faults.journal import (
    FaultInterval,
    JournalError,
    fault_intervals,
    journal_path,
    read_faults,
)
from peer.tools.checker import (
    DELIVERY_BOUND,
    Liveness,
    Verdict,
    check_ledger,
    check_tape,
    quote_liveness,
    requoted_within,
)

LIST_GAPS = 0.5  # a hand-over's withdraw-then-quote takes milliseconds: not worth a line each
MAX_LISTED = 10  # gaps listed per symbol; the rest are summed up

NAME = "check"
HELP = "check a cluster's invariants from the exchange's tape and the ledger's database"
DESCRIPTION = """\
Read what a cluster left behind -- the exchange's tape (<data-dir>/exchange/exchange.tape) and the
ledger's database (<data-dir>/ledger/ledger.db) -- and report, per invariant of docs/invariants.md, held
or violated, with the evidence (tape seqs, quote ids, epochs, fill ids). It re-derives every
invariant from the records themselves, not from the code that wrote them:

  1  quotes of at most one epoch are live per symbol at every point; epochs only grow; every
     accepted quote operation carried the symbol's held epoch and holder, its lease live (rebuilt
     from the claims, renewals and releases alone); every fill executed a live quote of the live
     epoch
  2  fill ids are unique on the tape; the ledger holds each fill once, as the exchange created
     it, and every fill the ledger acknowledged
  3  each position is the signed sum of its fills; versions rise by one per fill
  4  active reservations never exceed the limit per side; every quote was live only while a
     granted reservation covered it

Invariants 5 (membership) and 7 (determinism) are about behaviour over time and are checked by
tests and benchmarks (docs/invariants.md), not from these files. Invariant 6 (liveness) is
measured, not judged: per symbol, the gaps during which none of its quotes was live (after its
first quote), their start, end and the faults active then, and after each fault ended, how long
until every symbol was quoted again. Liveness never changes the exit status: how long a gap may
be depends on the faults injected, so the bound is the reader's (the scenario tests state theirs).

Faults: <data-dir>/faults.jsonl, written by `murmur partition`, `heal`, `freeze`, `thaw`, `kill`
and `restart`, is shown as a timeline (time, what, until when). A damaged line in it is skipped
and reported, and does not change the exit status either.

The files are only read. A running cluster can be checked: the ledger is read first, as one
snapshot, then the tape, and what happened after the snapshot is not judged against it (fills
not yet delivered are counted, not reported; quotes activated after it are skipped). The exchange and the ledger must share a
clock (as with `murmur launch`): reservations and quotes are compared by time.

Exit status: 0 all checked invariants held, 1 one was violated (or a file is corrupt), 2 nothing
to check (no tape and no ledger under DATA_DIR).

examples:
  murmur check data
  murmur check data --json | jq '.verdicts[] | select(.status != "held")'
  murmur check data --json | jq '.liveness.symbols | map_values(.longest_gap.duration)'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the cluster's data directory (as given to launch)")
    p.add_argument("--exposure-limit", type=positive_int_arg, default=LIMIT,
                   help=f"the ledger's global exposure limit, each side (default: {LIMIT})")
    p.add_argument("--delivery-bound", type=positive_seconds_arg, default=DELIVERY_BOUND, metavar="SECONDS",
                   help="a fill the ledger lacks, older than this while the ledger was answering, is a violation "
                        f"of invariant 2 (default: {DELIVERY_BOUND:g}; on several machines add their clock skew)")
    p.add_argument("--list-gaps", type=float, default=LIST_GAPS, metavar="SECONDS",
                   help="list each quote gap at least this long (shorter ones are counted, not listed; "
                        f"--json has them all) (default: {LIST_GAPS:g})")
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
    faults, intervals = read_journal(data_dir)
    liveness = quote_liveness(facts, intervals) if facts is not None else None
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "tape": str(tape_path) if tape_path else None,
        "ledger": str(ledger_path) if ledger_path else None,
        "verdicts": [v.to_json() for v in verdicts],
        "problems": problems,
        "faults": faults,
        "liveness": liveness_report(liveness, intervals) if liveness is not None else None,
    }
    violated = problems or any(v.held is False for v in verdicts)
    report["result"] = "violated" if violated else "held"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        write_human(report, args.list_gaps)
    return 1 if violated else 0  # liveness and the fault journal never change it


def read_journal(data_dir: Path) -> tuple[dict[str, Any], list[FaultInterval]]:
    """The `faults` key of the report, and the intervals for the liveness figures."""
    path = journal_path(data_dir)
    try:
        records, journal_problems = read_faults(data_dir)
    except JournalError as exc:
        records, journal_problems = [], [str(exc)]
    # Judged with every end the journal knows, also after the tape's end (a heal after the
    # exchange stopped still ended its partition).
    intervals = fault_intervals(records, None)
    return {"path": str(path) if path.exists() else None, "records": records,
            "intervals": [iv.to_json() for iv in intervals], "problems": journal_problems}, intervals


def liveness_report(liveness: Liveness, intervals: list[FaultInterval]) -> dict[str, Any]:
    """The `liveness` key: the gaps per symbol, and after each fault that ended, how long each
    symbol took to be quoted again (0: it was quoted at that moment; null: not again on the tape)."""
    out = liveness.to_json()
    after = []
    for iv in intervals:
        if iv.end is None or iv.end > liveness.end_at:
            continue
        within = requoted_within(liveness, iv.end)
        known = [s for s in within.values() if s is not None]
        after.append({"fault": iv.summary, "ended_at": iv.end, "ended_by": iv.ended_by, "requoted_s": within,
                      "every_symbol_within_s": max(known, default=0.0) if len(known) == len(within) else None})
    out["after_faults"] = after
    return out


def clock(at: float | None) -> str:
    """A time of the run as people read it in the logs: HH:MM:SS.mmm UTC."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def write_human(report: dict[str, Any], list_gaps: float = LIST_GAPS) -> None:
    w = sys.stdout.write
    faults = report["faults"]
    w(f"tape    {report['tape'] or '- (none found)'}\n")
    w(f"ledger  {report['ledger'] or '- (none found)'}\n")
    w(f"faults  {faults['path'] or '- (none recorded)'}\n\n")
    for v in report["verdicts"]:
        counts = ", ".join(f"{k} {n}" for k, n in v["counts"].items())
        w(f"{v['invariant']}  {v['status']:<11} {v['check']}\n")
        if counts:
            w(f"   {'':<11} {counts}\n")
        if v.get("note"):
            w(f"   {'':<11} note: {v['note']}\n")
        for line in v["evidence"]:
            w(f"   {'':<11} ! {line}\n")
    write_faults(w, faults)
    if report["liveness"] is not None:
        write_liveness(w, report["liveness"], list_gaps)
    for problem in report["problems"]:
        w(f"!  {problem}\n")
    w(f"\n{report['result'].upper()}\n")


def write_faults(w: Any, faults: dict[str, Any]) -> None:
    if not faults["records"] and not faults["problems"]:
        return
    w(f"\nfaults ({len(faults['records'])} recorded; times UTC)\n")
    # Each interval belongs to the record that began it, in journal order.
    starts = iter(faults["intervals"])
    for rec in faults["records"]:
        what = rec["fault"]
        until = ""
        if what in ("partition", "freeze", "kill"):
            iv = next(starts)
            what = iv["summary"]
            if rec.get("one_way"):
                what += "  (one way)"
            if rec.get("cut") is False:
                degraded = [f"{k} {rec[k]:g}" for k in ("loss", "delay_ms", "jitter_ms", "duplicate") if rec.get(k)]
                what += f"  ({', '.join(degraded) or 'degraded'})"
            until = (f"until {clock(iv['end'])} ({iv['ended_by']}, {iv['end'] - iv['start']:.2f} s)"
                     if iv["end"] is not None else "still active")
        elif rec.get("peer"):
            what += f" {rec['peer']}"
        w(f"   {clock(rec['at'])}  {what:<44} {until}\n".rstrip() + "\n")
    for problem in faults["problems"]:
        w(f"   ~ {problem}\n")


def write_liveness(w: Any, live: dict[str, Any], list_gaps: float) -> None:
    w("\nliveness (invariant 6, a figure: it never changes the exit status; times UTC)\n")
    for symbol, s in live["symbols"].items():
        if s["first_quote_at"] is None:
            w(f"   {symbol:<8} never quoted\n")
            continue
        line = f"   {symbol:<8} first quoted {clock(s['first_quote_at'])}  "
        if not s["gap_count"]:
            w(line + "no gaps\n")
            continue
        longest = s["longest_gap"]
        w(line + f"{s['gap_count']} gap(s), {s['unquoted_s']:.2f} s unquoted, longest {_gap(longest)}\n")
        # The longest is on the summary line; a lone gap needs no list.
        listed = [g for g in s["gaps"] if g["duration"] >= list_gaps] if s["gap_count"] > 1 else []
        for g in listed[:MAX_LISTED]:
            w(f"   {'':<8}   gap {_gap(g)}\n")
        rest = s["gap_count"] - len(listed[:MAX_LISTED]) - (0 if longest in listed[:MAX_LISTED] else 1)
        if rest > 0:
            w(f"   {'':<8}   {rest} more not listed (--list-gaps SECONDS lists shorter ones, --json all)\n")
    for a in live["after_faults"]:
        slowest = [sym for sym, t in a["requoted_s"].items() if t is None or t == a["every_symbol_within_s"]]
        if a["every_symbol_within_s"] is None:
            what = "not every symbol quoted again on the tape: " + ", ".join(
                sym for sym, t in a["requoted_s"].items() if t is None)
        else:
            what = f"every symbol quoted within {a['every_symbol_within_s']:.2f} s"
            if a["every_symbol_within_s"] > 0 and slowest:
                what += f" (slowest {slowest[0]})"
        w(f"   after {a['fault']} ended ({a['ended_by']}) at {clock(a['ended_at'])}: {what}\n")


def _gap(g: dict[str, Any]) -> str:
    end = clock(g["end"]) if g["end"] is not None else "still open at the tape's end"
    text = f"{g['duration']:.2f} s {clock(g['start'])} -> {end} (last quote: {g['quote_ended']})"
    if g["faults"]:
        text += "  during " + "; ".join(g["faults"])
    return text
