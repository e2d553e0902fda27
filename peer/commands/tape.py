"""`murmur tape`: replay, filter and summarise the exchange's event tape (`peer/exchange/tape/__init__.py`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from contextlib import closing
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TextIO

from peer.commands._common import UsageError, positive_int_arg
from peer.exchange.tape import (
    HEADER_SIZE,
    RUNBOOK,
    VERSION,
    CorruptTape,
    NotATape,
    TapeReader,
    TornTail,
)

NAME = "tape"
HELP = "replay, filter and summarise the exchange's event tape"
DESCRIPTION = f"""\
Read an exchange's event tape (every event it accepted or rejected, in seq order) and print the
records that match, one a line:

  seq  type  symbol  field=value ...

or, with --json, one JSON object a line (bytes as hex, decimals as strings). --summary prints
counts by type and by symbol, the first and last seq, the time span (from the records' `at`
field, when they carry one) and the state of the tape instead of the records. Filters combine:
a record is printed if its type matches one of the --type patterns, its symbol one of the
--symbol patterns, and its seq is above --after. Patterns take shell wildcards (`*_quote`).

The tape is only read, never changed. An incomplete last record (a torn tail: the exchange
crashed mid-write, or is writing right now) is noted and is not an error: the exchange cuts it
when it reopens the tape. A corrupt record in the middle is: every record before it is printed,
then the error with its byte offset, and the exit status is 1 ({RUNBOOK}). A missing file or a
file that is not a tape exits with status 2.

examples:
  murmur tape data/exchange/exchange.tape --summary
  murmur tape data/exchange/exchange.tape --type put_quote --symbol MSFT
  murmur tape data/exchange/exchange.tape --type '*_quote' --after 1200 --limit 20
  murmur tape data/exchange/exchange.tape --json | jq -c 'select(.fills != null)'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, metavar="FILE", help="the tape file to read")
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="T",
        help="only records of this type (repeat for several; wildcards like '*_quote' work)",
    )
    p.add_argument(
        "--symbol",
        dest="symbols",
        action="append",
        metavar="S",
        help="only records of this symbol (repeat for several; wildcards work)",
    )
    p.add_argument(
        "--after", type=int, default=0, metavar="SEQ", help="only records with a seq above SEQ"
    )
    p.add_argument(
        "--limit",
        type=positive_int_arg,
        metavar="N",
        help="stop after N matching records (the rest of the tape is not checked)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print counts by type and symbol, seq and time range, torn tail and corruption "
        "instead of the records",
    )
    p.add_argument(
        "--json", action="store_true", help="JSON lines (or, with --summary, one object)"
    )


class Selection:
    """The filters: which records to print or count."""

    def __init__(self, types: list[str] | None, symbols: list[str] | None, after: int):
        self.types = types
        self.symbols = symbols
        self.after = after

    def __call__(self, record: dict[Any, Any]) -> bool:
        if record["seq"] <= self.after:
            return False
        if self.types and not any(fnmatchcase(record["type"], t) for t in self.types):
            return False
        if self.symbols:
            symbol = record.get("symbol")
            if symbol is None or not any(fnmatchcase(str(symbol), s) for s in self.symbols):
                return False
        return True


class Summary:
    """Counts over the selected records, and what the reader found."""

    def __init__(self) -> None:
        self.read = 0
        self.selected = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.by_type: Counter[str] = Counter()
        self.by_symbol: Counter[str] = Counter()
        self.stopped_early = False  # --limit reached: the rest of the tape was not read

    def add(self, record: dict[Any, Any]) -> None:
        self.selected += 1
        seq = record["seq"]
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.by_type[record["type"]] += 1
        symbol = record.get("symbol")
        self.by_symbol["-" if symbol is None else str(symbol)] += 1
        at = record.get("at")
        # Compared, not converted: float() of a 400-digit `at` overflows, and NaN fails both.
        if isinstance(at, (int, float)) and not isinstance(at, bool) and -1e18 < at < 1e18:
            self.first_at = at if self.first_at is None else min(self.first_at, at)
            self.last_at = at if self.last_at is None else max(self.last_at, at)

    def as_json(
        self, path: Path, file_bytes: int, tail: TornTail | None, error: CorruptTape | None
    ) -> dict[str, Any]:
        span = None if self.first_at is None else self.last_at - self.first_at  # type: ignore[operator]
        return {
            "path": str(path),
            "format_version": VERSION,
            "file_bytes": file_bytes,
            "records_read": self.read,
            "selected": self.selected,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "span_seconds": span,
            "by_type": dict(sorted_counts(self.by_type)),
            "by_symbol": dict(sorted_counts(self.by_symbol)),
            "read_to_end": error is None and not self.stopped_early,
            "torn_tail": None if tail is None else tail.__dict__,
            "corrupt": None if error is None else {"offset": error.offset, "reason": error.reason},
        }

    def write_human(
        self,
        out: TextIO,
        path: Path,
        file_bytes: int,
        tail: TornTail | None,
        error: CorruptTape | None,
    ) -> None:
        w = out.write
        w(f"tape        {path}  (murmur tape v{VERSION}, {file_bytes:,} bytes)\n")
        w(f"records     {self.selected:,} selected of {self.read:,} read\n")
        if self.first_seq is None:
            w("seq         -\n")
        else:
            w(f"seq         {self.first_seq} .. {self.last_seq}\n")
        if self.first_at is None:
            w("time        - (no record carries an `at` field)\n")
        else:
            span = self.last_at - self.first_at  # type: ignore[operator]
            w(f"time        at {self.first_at:.3f} .. {self.last_at:.3f}  (span {span:.3f} s)\n")
        for title, counts in (("by type", self.by_type), ("by symbol", self.by_symbol)):
            w(f"{title}\n")
            rows = sorted_counts(counts)
            width = max((len(k) for k, _ in rows), default=0)
            for key, n in rows:
                w(f"  {key.ljust(width)}  {n:>8,}\n")
        if tail is None:
            reached = error is None and not self.stopped_early
            w("tail        clean\n" if reached else "tail        - (not reached)\n")
        else:
            w(
                f"tail        torn: {tail.nbytes} bytes at byte {tail.offset} ({tail.reason}); "
                "cut when the exchange reopens the tape\n"
            )
        if error is None:
            w("corruption  none\n")
        else:
            w(f"corruption  at byte {error.offset}: {error.reason}\n")


def sorted_counts(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def to_jsonable(value: Any) -> Any:
    """A record as plain JSON: bytes as hex, decimals and other CBOR types as strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def human_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else json.dumps(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return json.dumps(to_jsonable(value), separators=(",", ":"), ensure_ascii=False)


def format_human(record: dict[Any, Any]) -> str:
    symbol = record.get("symbol")
    fields = " ".join(
        f"{k}={human_value(v)}" for k, v in record.items() if k not in ("seq", "type", "symbol")
    )
    line = f"{record['seq']:>7}  {record['type']:<18} {'-' if symbol is None else symbol!s:<10} {fields}"
    return line.rstrip()


def format_json(record: dict[Any, Any]) -> str:
    return json.dumps(to_jsonable(record), separators=(",", ":"), ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    try:
        return replay(args, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # `murmur tape ... | head`: the reader has seen enough. Quiet the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path: Path = args.file
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a tape file")
    selected = Selection(args.types, args.symbols, args.after)
    summary = Summary()
    reader = TapeReader(path)
    error: CorruptTape | None = None
    try:
        with closing(reader.records()) as records:
            for record in records:
                summary.read += 1
                if not selected(record):
                    continue
                summary.add(record)
                if not args.summary:
                    out.write((format_json if args.json else format_human)(record) + "\n")
                if args.limit is not None and summary.selected >= args.limit:
                    summary.stopped_early = True
                    break
    except NotATape as exc:
        raise UsageError(str(exc)) from None
    except CorruptTape as exc:
        error = exc
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None

    if args.summary:
        if args.json:
            doc = summary.as_json(path, reader.file_bytes, reader.tail, error)
            out.write(json.dumps(doc, indent=2) + "\n")
        else:
            summary.write_human(out, path, reader.file_bytes, reader.tail, error)
    elif reader.tail is not None:
        tail = reader.tail
        where = "file header" if tail.offset < HEADER_SIZE else "last record"
        err.write(
            f"murmur tape: note: incomplete {where} at byte {tail.offset} ({tail.nbytes} bytes: "
            f"{tail.reason}): a torn tail the exchange cuts when it reopens the tape, or a "
            "write in progress\n"
        )
    out.flush()
    if error is not None:
        err.write(f"murmur tape: {error}\n")
        return 1
    return 0
