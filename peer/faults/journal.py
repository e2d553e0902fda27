"""The fault journal: `<data-dir>/faults.jsonl`, one JSON object a line, and what was active when.

What it is for: every fault command (`murmur partition`, `heal`, `freeze`, `thaw`, `kill`,
`restart`) appends what it did with `append_fault`; `murmur check` reads the journal back with
`read_faults` and turns it into intervals with `fault_intervals`, so that each quote gap can name
the faults active during it. The record format is in docs/interface.md ("faults.jsonl").

Rules of the intervals (`fault_intervals`, a pure function of the records and an end time):
- a `partition` ends at the first `heal` after it or at its own `until`, whichever is first;
- a `freeze` of a peer ends at the first `thaw` of that peer after it, or at its `restart` (a
  restarted peer is a new process, which is not stopped);
- a `kill` of a peer ends at the first `restart` of that peer after it;
- `heal`, `thaw` and `restart` only end intervals, they are not intervals themselves; a record of
  any other kind is kept in the journal but makes no interval.
"After" is the journal's order (the file is appended in the order the commands ran); the times
are the records' `at`, wall-clock seconds, the same clock as the exchange tape's `at`.

It must never crash on a damaged journal: a line that is not a JSON object with a numeric `at`
and a string `fault` is skipped and reported as a problem. Only a journal that cannot be read at
all raises `JournalError`. Reading never writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_NAME = "faults.jsonl"
INTERVAL_KINDS = ("partition", "freeze", "kill")
ENDING_KINDS = ("heal", "thaw", "restart")


class JournalError(Exception):
    """The journal exists but cannot be read (permissions, a directory in its place, I/O)."""


def journal_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def iso_time(at: float) -> str:
    """`at` (time.time() seconds) as ISO 8601 UTC with milliseconds: 2026-11-26T12:00:00.123Z."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def append_fault(data_dir: Path, record: dict[str, Any], *, now: float) -> dict[str, Any]:
    """Append one fault record to `<data_dir>/faults.jsonl` and return it as written.

    `record` needs a string `fault` (partition, heal, freeze, thaw, kill, restart); `at` (= now)
    and `time` are put first, overriding any given. The line is flushed and fsynced before this
    returns, so a fault the command reported is in the journal even if the machine stops next.
    The data directory must exist (it is the cluster's)."""
    if not isinstance(record.get("fault"), str) or not record["fault"]:
        raise ValueError("a fault record needs a string 'fault'")
    full = {"at": now, "time": iso_time(now), **{k: v for k, v in record.items() if k not in ("at", "time")}}
    line = json.dumps(full, separators=(", ", ": "), allow_nan=False) + "\n"
    path = journal_path(data_dir)
    created = not path.exists()
    with open(path, "a", encoding="utf-8") as f:  # O_APPEND: concurrent commands never interleave a line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if created:
        # The new file's name must be durable too.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return full


def read_faults(data_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The journal's records in file order, and a list of problems (skipped lines, each saying
    which line and why). No journal: ([], []). Raises JournalError if it exists but cannot be read."""
    path = journal_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise JournalError(f"{path}: {exc}") from exc
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        torn = number == len(lines)  # no newline after it: a write cut short
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting raises the last
            why = "an unfinished last line" if torn else f"not JSON ({exc})"
            problems.append(f"{path} line {number}: {why}; skipped")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{path} line {number}: not a JSON object; skipped")
            continue
        at = rec.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            problems.append(f"{path} line {number}: no numeric 'at'; skipped")
            continue
        if not isinstance(rec.get("fault"), str):
            problems.append(f"{path} line {number}: no string 'fault'; skipped")
            continue
        records.append(rec)
    return records, problems


@dataclass
class FaultInterval:
    kind: str  # partition, freeze, kill
    subject: str  # the partition's groups ("mm-1,mm-2 | mm-3,..."), or the peer frozen or killed
    start: float
    end: float | None  # None: still active at the end time given to fault_intervals
    record: dict[str, Any]
    ended_by: str | None = None  # "heal", "until", "thaw", "restart"; None while active

    @property
    def summary(self) -> str:
        """One line for people: 'partition mm-1,mm-2 | mm-3,exchange', 'freeze mm-1'."""
        return f"{self.kind} {self.subject}".strip()

    def active_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def overlaps(self, start: float, end: float | None) -> bool:
        """Active at some point of [start, end) (end None: open)."""
        return (end is None or self.start < end) and (self.end is None or self.end > start)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "summary": self.summary, "start": self.start,
                "end": self.end, "ended_by": self.ended_by}


def _subject(rec: dict[str, Any]) -> str:
    if rec["fault"] == "partition":
        if isinstance(rec.get("summary"), str) and rec["summary"]:
            return rec["summary"]
        groups = rec.get("groups")
        if isinstance(groups, list) and all(isinstance(g, list) for g in groups):
            return " | ".join(",".join(str(p) for p in g) for g in groups)
        return str(rec.get("id", ""))
    return str(rec.get("peer", ""))


def fault_intervals(records: Iterable[dict[str, Any]], end_at: float | None) -> list[FaultInterval]:
    """The intervals during which each partition, freeze and kill was active, in journal order.

    `end_at`: the end of the history judged (the tape's last record, say): an interval not ended
    by then has end None. None means no end: only intervals never ended have end None."""
    horizon = math.inf if end_at is None else end_at
    intervals: list[FaultInterval] = []
    open_: list[FaultInterval] = []  # not yet ended by a later record

    def close(iv: FaultInterval, at: float, by: str) -> None:
        iv.end, iv.ended_by = at, by
        open_.remove(iv)

    for rec in records:
        kind, at = rec.get("fault"), rec.get("at")
        if not isinstance(at, int | float):
            continue
        # A partition whose `until` came before this record had already ended by itself.
        for iv in [iv for iv in open_ if iv.kind == "partition"]:
            until = iv.record.get("until")
            if isinstance(until, int | float) and until <= at:
                close(iv, max(until, iv.start), "until")
        if kind == "heal":
            for iv in [iv for iv in open_ if iv.kind == "partition"]:
                close(iv, at, "heal")
        elif kind == "thaw":
            for iv in [iv for iv in open_ if iv.kind == "freeze" and iv.subject == rec.get("peer")]:
                close(iv, at, "thaw")
        elif kind == "restart":
            for iv in [iv for iv in open_ if iv.kind in ("freeze", "kill") and iv.subject == rec.get("peer")]:
                close(iv, at, "restart")
        elif kind in INTERVAL_KINDS:
            iv = FaultInterval(kind, _subject(rec), float(at), None, rec)
            intervals.append(iv)
            open_.append(iv)
    for iv in list(open_):
        until = iv.record.get("until")
        if iv.kind == "partition" and isinstance(until, int | float):
            close(iv, max(until, iv.start), "until")
    # Judged as of end_at: what ended later was still active then.
    for iv in intervals:
        if iv.end is not None and iv.end > horizon:
            iv.end, iv.ended_by = None, None
    return intervals


def active_at(intervals: Iterable[FaultInterval], t: float) -> list[FaultInterval]:
    """The intervals active at time t (start <= t < end)."""
    return [iv for iv in intervals if iv.active_at(t)]
