"""The ledger's durable store: every fill once, positions derived from them, exposure reservations.

What it is for: one SQLite database (`ledger.db`, standard library `sqlite3`) in WAL mode with
`synchronous=FULL`, so a COMMIT returns only once the write-ahead log is fsynced. `apply(ops,
now)` runs a whole group of operations (fill batches and reservation calls from many clients)
as ONE transaction with one commit: that is the group commit, and the answers it returns are
promises that survive a crash. Inside it:

- a fill is recorded once by `fill_id`; a retry gets the original result (`duplicate`, with the
  `position_version` and `net_quantity` it produced); the same id with other content is refused
  naming the fields that differ; one conflicting fill refuses its whole batch;
- each applied fill moves its symbol's position in the same transaction (`net_quantity` +=
  the signed quantity, `position_version` + 1, `last_fill_id`) and gets the next global commit
  sequence number (`update_seq`), the order of the position update stream;
- a fill that names a reservation reduces it (once per fill_id); reservations follow the rules
  of `ledger.exposure` and live in the same database, so capacity never leaks across a crash.

On open the file is checked before anything trusts it (see `check_file` and `_verify`): the
SQLite header, a truncated main file, damaged frames in the write-ahead log with acknowledged
commits after them, `PRAGMA quick_check`, and the ledger's own invariants (positions agree with
their last fills, `update_seq` has no gaps). A damaged file raises `LedgerDamaged`, which names
the file and the runbook section.

It must never rebuild, truncate or "repair" a damaged file, never answer an operation before
its transaction is committed, and never change the in-memory view (positions, active
reservations) unless the transaction that made the change committed. A failed commit stops the
store for good: after a failed fsync nobody knows what is on disk, so only a reopen may tell.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sqlite3
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from book import bounds
from ledger.exposure import (
    ACTIVE,
    LIMIT,
    MAX_TTL,
    SIDES,
    AppliedFill,
    ExposureBook,
    InvalidInput,
    Refusal,
    Reservation,
    ReservationRequest,
    differences,
    only,
    symbol_name,
    text,
    whole,
)

DB_FILE = "ledger.db"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x4D524D4C  # "MRML": tells a ledger database from any other SQLite file
RUNBOOK = 'see docs/runbook.md, section "Damaged ledger database"'
# How many recent position updates are loaded on open (the stream's in-memory tail).
TAIL_ON_OPEN = 10_000

FILL_FIELDS = ("fill_id", "seq", "order_id", "symbol", "side", "quantity", "price", "quote_id", "epoch",
               "holder", "reservation_id", "created_at")
REQUIRED_FILL_FIELDS = ("fill_id", "order_id", "symbol", "side", "quantity", "price", "quote_id", "created_at")
RESERVATION_COLUMNS = tuple(f.name for f in dataclasses.fields(Reservation))

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- update_seq is the rowid: the global commit order, 1, 2, 3... with no gaps.
CREATE TABLE fills (
    update_seq INTEGER PRIMARY KEY,
    fill_id TEXT NOT NULL UNIQUE,
    seq INTEGER, order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    quantity INTEGER NOT NULL, price INTEGER NOT NULL, quote_id TEXT NOT NULL, epoch INTEGER,
    holder TEXT, reservation_id TEXT, created_at REAL NOT NULL,
    position_version INTEGER NOT NULL, net_quantity INTEGER NOT NULL, recorded_at REAL NOT NULL
);
-- One fill per (symbol, version): the per-symbol stream resumes from a version through it.
CREATE UNIQUE INDEX fills_by_symbol ON fills (symbol, position_version);
CREATE TABLE positions (
    symbol TEXT PRIMARY KEY, net_quantity INTEGER NOT NULL, position_version INTEGER NOT NULL,
    last_fill_id TEXT NOT NULL, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE reservations (
    num INTEGER PRIMARY KEY,
    reservation_id TEXT NOT NULL UNIQUE,
    quote_id TEXT NOT NULL UNIQUE,
    holder TEXT NOT NULL, symbol TEXT NOT NULL, bid_quantity INTEGER NOT NULL, ask_quantity INTEGER NOT NULL,
    requested_expires_at REAL, ttl REAL, replaces TEXT, decision TEXT NOT NULL,
    reserved_bid_quantity INTEGER NOT NULL, reserved_ask_quantity INTEGER NOT NULL,
    expires_at REAL NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    filled_bid_quantity INTEGER NOT NULL, filled_ask_quantity INTEGER NOT NULL,
    ended_at REAL, ended_reason TEXT
);
CREATE INDEX reservations_active ON reservations (state) WHERE state = '{ACTIVE}';
-- Which fill was counted against which reservation: apply-fill is idempotent by fill_id.
-- side is the fill's: buy (counted against the bid) or sell (against the ask).
CREATE TABLE reservation_fills (
    fill_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, side TEXT NOT NULL,
    quantity INTEGER NOT NULL, applied_at REAL NOT NULL
) WITHOUT ROWID;
"""
_TABLES = {"meta", "fills", "positions", "reservations", "reservation_fills"}


# --- errors -------------------------------------------------------------------------------------


class LedgerError(Exception):
    """Base of the store's own errors."""


class LedgerDamaged(LedgerError, RuntimeError):
    """The database file is damaged, truncated or not a ledger: refused, never rebuilt."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: damaged ledger database: {reason}; the ledger refuses to start and has changed "
            f"nothing (it never rebuilds or cuts a damaged file) — {RUNBOOK}"
        )


class LedgerWriteFailed(LedgerError):
    """A write or commit failed: the store is stopped, and only a reopen can tell what is on disk."""


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    net_quantity: int = 0
    position_version: int = 0
    last_fill_id: str | None = None
    updated_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_fill(obj: Any, where: str = "") -> dict[str, Any]:
    """A fill as the exchange sends it (`book.fills.Fill.to_json`), checked field by field.

    Returns the fill with every field of FILL_FIELDS (absent optional ones as None); raises
    InvalidInput naming the field (prefixed with `where`, e.g. "fills[3].").
    """
    if not isinstance(obj, dict):
        raise InvalidInput(where.rstrip(".") or "body", "a fill must be a JSON object")
    only(obj, FILL_FIELDS, where)
    for name in REQUIRED_FILL_FIELDS:
        if obj.get(name) is None:
            raise InvalidInput(where + name, "required")
    side = obj["side"]
    if type(side) is not str or side not in ("buy", "sell"):
        raise InvalidInput(where + "side", f"must be 'buy' (the market maker bought) or 'sell', got {bounds.short(side)}")
    created_at = bounds.seconds(obj["created_at"], where + "created_at", error=InvalidInput)
    opt = {k: obj.get(k) for k in ("seq", "epoch", "holder", "reservation_id")}
    return {
        "fill_id": text(obj["fill_id"], where + "fill_id"),
        "seq": whole(opt["seq"], where + "seq", minimum=1) if opt["seq"] is not None else None,
        "order_id": text(obj["order_id"], where + "order_id"),
        "symbol": symbol_name(obj["symbol"], where + "symbol"),
        "side": side,
        "quantity": bounds.quantity(obj["quantity"], where + "quantity", error=InvalidInput),
        "price": bounds.price(obj["price"], where + "price", error=InvalidInput),
        "quote_id": text(obj["quote_id"], where + "quote_id"),
        "epoch": whole(opt["epoch"], where + "epoch") if opt["epoch"] is not None else None,
        "holder": text(opt["holder"], where + "holder") if opt["holder"] is not None else None,
        "reservation_id": (text(opt["reservation_id"], where + "reservation_id")
                           if opt["reservation_id"] is not None else None),
        "created_at": created_at,
    }


# --- operations: what a group commit applies ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordFills:
    fills: tuple[dict[str, Any], ...]  # each already through validate_fill


@dataclass(frozen=True, slots=True)
class Reserve:
    request: ReservationRequest


@dataclass(frozen=True, slots=True)
class ApplyFill:
    reservation_id: str
    fill_id: str
    side: str  # "bid" or "ask"
    quantity: int


@dataclass(frozen=True, slots=True)
class Release:
    reservation_id: str
    reason: str = "released"


@dataclass(frozen=True, slots=True)
class Renew:
    reservation_id: str
    expires_at: float | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    pass


Op = RecordFills | Reserve | ApplyFill | Release | Renew | Sweep


@dataclass
class GroupResult:
    """One answer per op (a dict, or the Refusal that refused it, or an internal error), the
    committed position updates in commit order, and the log lines the group's changes deserve."""

    results: list[dict[str, Any] | Exception]
    updates: list[dict[str, Any]]
    events: list[tuple[str, dict[str, Any]]]


@dataclass
class _Work:
    """The state a transaction works on; kept only if it commits."""

    positions: dict[str, Position]
    exposure: ExposureBook
    next_seq: int
    next_reservation: int
    updates: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    active_before: set[str] = field(default_factory=set)  # reservation ids active before the op

    def snapshot(self) -> tuple:
        return (dict(self.positions), self.exposure.copy(), self.next_seq, self.next_reservation,
                len(self.updates), len(self.events), set(self.dirty), dict(self.counters))

    def restore(self, snap: tuple) -> None:
        (self.positions, self.exposure, self.next_seq, self.next_reservation, n_updates, n_events,
         self.dirty, self.counters) = snap
        del self.updates[n_updates:]
        del self.events[n_events:]

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n


# --- the file check -------------------------------------------------------------------------------

_SQLITE_MAGIC = b"SQLite format 3\x00"
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def check_wal(wal: Path) -> dict[str, int]:
    """Look for acknowledged commits that SQLite's own recovery would silently drop.

    SQLite replays the write-ahead log up to the first frame whose checksum fails and ignores
    the rest: right for a torn tail (the last transaction, never acknowledged), silent loss for
    a damaged frame in the middle. A frame past the first bad one can still be checked against
    its predecessor's stored checksum; two valid commit frames after a bad frame mean the first
    of them was fsynced (the next transaction only starts after that) and acknowledged, so the
    file is refused. One commit frame after it cannot be told from a torn last transaction.
    """
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return {"frames": 0}
    if len(data) < _WAL_HEADER.size:
        return {"frames": 0}
    magic, version, page_size, _ckpt, salt1, salt2, c1, c2 = _WAL_HEADER.unpack_from(data)
    big = magic & 1 == 1
    valid_page = 512 <= page_size <= 65536 and page_size & (page_size - 1) == 0
    if (magic not in _WAL_MAGIC or version != 3007000 or not valid_page
            or _wal_checksum(data[:24], 0, 0, big) != (c1, c2)):
        if data.strip(b"\x00"):
            raise LedgerDamaged(wal.with_name(wal.name.removesuffix("-wal")),
                                f"its write-ahead log {wal.name} has a damaged header")
        return {"frames": 0}  # never written: nothing in it was ever committed
    frame_size = _FRAME_HEADER.size + page_size
    s = (c1, c2)
    first_bad = None
    frames = []  # (offset, commit_size, stored checksum)
    offset = _WAL_HEADER.size
    while offset + frame_size <= len(data):
        pgno, commit, fs1, fs2, k1, k2 = _FRAME_HEADER.unpack_from(data, offset)
        if (fs1, fs2) != (salt1, salt2):
            break  # a frame of an earlier generation of the log: the end of this one
        frames.append((offset, commit, (k1, k2)))
        if first_bad is None:
            s = _wal_checksum(data[offset:offset + 8] + data[offset + 24:offset + frame_size], *s, big)
            if s != (k1, k2):
                first_bad = len(frames) - 1
        offset += frame_size
    if first_bad is None:
        return {"frames": len(frames)}
    commits_after = 0
    for i in range(first_bad + 1, len(frames)):
        off, commit, stored = frames[i]
        if commit and _wal_checksum(data[off:off + 8] + data[off + 24:off + frame_size], *frames[i - 1][2], big) == stored:
            commits_after += 1
    if commits_after >= 2:
        raise LedgerDamaged(wal.with_name(wal.name.removesuffix("-wal")),
                            f"frame {first_bad + 1} of its write-ahead log {wal.name} is damaged and "
                            f"{commits_after} committed transactions follow it")
    return {"frames": len(frames), "torn_frames": len(frames) - first_bad}


def check_file(path: Path) -> dict[str, Any]:
    """The checks that need no SQLite: header, size, write-ahead log. Raises LedgerDamaged."""
    wal = path.with_name(path.name + "-wal")
    size = path.stat().st_size
    if size < 100:
        raise LedgerDamaged(path, f"{size} bytes: too short to be a ledger database (truncated?)")
    with open(path, "rb") as f:
        header = f.read(100)
    if header[:16] != _SQLITE_MAGIC:
        raise LedgerDamaged(path, "not an SQLite database (wrong header)")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        raise LedgerDamaged(path, f"invalid page size {page_size} in the header")
    if size % page_size:
        raise LedgerDamaged(path, f"truncated: {size} bytes is not a whole number of {page_size}-byte pages")
    wal_info = check_wal(wal)
    pages = struct.unpack(">I", header[28:32])[0]
    header_size_valid = header[24:28] == header[92:96]
    # With frames in the log, a checkpoint cut short may have grown page 1's count before the
    # file: SQLite finishes it from the log. Without frames, the file must hold every page.
    if not wal_info["frames"] and header_size_valid and pages * page_size > size:
        raise LedgerDamaged(path, f"truncated: the header counts {pages} pages, the file holds {size // page_size}")
    return {"page_size": page_size, "bytes": size, "wal_frames": wal_info["frames"],
            "wal_torn_frames": wal_info.get("torn_frames", 0)}


# --- the store ------------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), not the module's.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, now: float, instance: str | None = None) -> None:
    """A new, empty ledger, made under another name and renamed into place: a crash during
    creation leaves no half-made `ledger.db` that a restart would have to refuse. Its instance id
    is `instance`, or random (see `LedgerStore.open`)."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    conn = _connect(tmp)
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema_version", str(SCHEMA_VERSION)), ("instance", instance if instance is not None else secrets.token_hex(4)), ("created_at", repr(now)),
        ])
        conn.execute("COMMIT")
    finally:
        conn.close()  # the last connection checkpoints the log into the file and removes it
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fill_json(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in FILL_FIELDS}
    out.update(update_seq=row["update_seq"], position_version=row["position_version"],
               net_quantity=row["net_quantity"], recorded_at=row["recorded_at"])
    return out


def update_json(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """One committed position update (a fill's effect), as the stream serves it."""
    return {"seq": row["update_seq"], "symbol": row["symbol"], "net_quantity": row["net_quantity"],
            "position_version": row["position_version"], "last_fill_id": row["fill_id"],
            "fill_id": row["fill_id"], "updated_at": row["recorded_at"]}


_UPDATE_COLUMNS = "update_seq, symbol, net_quantity, position_version, fill_id, recorded_at"


class LedgerStore:
    """The open database. Use `LedgerStore.open(path)` (blocking: run it in a thread).

    `positions`, `exposure` and `last_seq` are the committed view; they are replaced (never
    changed in place) when a transaction commits, so a reader on another thread sees the state
    before or after a commit, never half of one. `apply` must not run concurrently with itself.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, *, limit: int | tuple[int, int], max_ttl: float):
        self.path = path
        self._conn = conn
        self.failed: BaseException | None = None
        self.instance = ""
        self.positions: dict[str, Position] = {}
        self.exposure = ExposureBook(limit, max_ttl=max_ttl)
        self.last_seq = 0
        self.next_reservation = 1
        self.recent: list[dict[str, Any]] = []  # the last TAIL_ON_OPEN updates at open time
        self.opened: dict[str, Any] = {}
        self.counters: dict[str, int] = {"commits": 0, "ops": 0}

    # --- open ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, limit: int | tuple[int, int] = LIMIT,
             max_ttl: float = MAX_TTL, now: float = 0.0, create: bool = True,
             instance: str | None = None) -> LedgerStore:
        """Open (or create) the ledger at `path`, check it, load the committed view.

        `instance` is the id written into a database this call creates (reservation ids are
        `R<instance>-n`): random when None, so two ledgers never share reservation ids; a
        deterministic simulation passes one drawn from its seed. An existing database keeps its own.
        Raises LedgerDamaged for anything that is not an intact ledger database.
        """
        if instance is not None and (not isinstance(instance, str) or not instance):
            raise ValueError(f"instance must be a non-empty string, got {instance!r}")
        path = Path(path)
        wal = path.with_name(path.name + "-wal")
        created = False
        if not path.exists():
            if wal.exists() and wal.stat().st_size > 0:
                raise LedgerDamaged(path, f"the database file is missing but its write-ahead log {wal.name} is there")
            if not create:
                raise FileNotFoundError(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _create(path, now, instance)
            created = True
        info = check_file(path)
        try:
            conn = _connect(path)
        except sqlite3.DatabaseError as exc:
            raise LedgerDamaged(path, f"SQLite cannot open it: {exc}") from exc
        store = cls(path, conn, limit=limit, max_ttl=max_ttl)
        try:
            store._verify()
            store._load()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerDamaged(path, f"SQLite: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        store.opened = {**info, "created": created, "fills": store.last_seq, "symbols": len(store.positions),
                        "active_reservations": len(store.exposure.active), "instance": store.instance}
        return store

    def _verify(self) -> None:
        conn = self._conn
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise LedgerDamaged(self.path, "an SQLite database, but not a murmur ledger (application_id)")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise LedgerDamaged(self.path, f"schema version {version}, this code reads {SCHEMA_VERSION}")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise LedgerDamaged(self.path, "cannot switch the database to WAL mode")
        # FULL: the log is fsynced at every commit, so a commit that returned survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not _TABLES <= tables:
            raise LedgerDamaged(self.path, f"tables missing: {', '.join(sorted(_TABLES - tables))}")
        # quick_check reads every page and checks the b-tree structure (not index-to-table
        # agreement, which integrity_check adds at about 3x the time): ~0.3 s for a million
        # fills on this machine, warm. The ledger's own invariants below cover the rest cheaply.
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(20)")]
        if problems != ["ok"]:
            raise LedgerDamaged(self.path, "PRAGMA quick_check: " + "; ".join(p.replace("\n", " ") for p in problems))

    def _load(self) -> None:
        conn = self._conn
        meta = {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
        if meta.get("schema_version") != str(SCHEMA_VERSION) or not meta.get("instance"):
            raise LedgerDamaged(self.path, "the meta table is missing its schema version or instance")
        self.instance = meta["instance"]
        count, last = conn.execute("SELECT count(*), coalesce(max(update_seq), 0) FROM fills").fetchone()
        if count != last:
            raise LedgerDamaged(self.path, f"{count} fills but the last update_seq is {last} (a gap)")
        self.last_seq = last
        positions = {}
        versions = 0
        for row in conn.execute("SELECT * FROM positions"):
            p = Position(row["symbol"], row["net_quantity"], row["position_version"], row["last_fill_id"],
                         row["updated_at"])
            # A position is derived: it must agree with the fill that last moved it, and no later
            # fill of the symbol may exist.
            last_fill = conn.execute("SELECT fill_id, net_quantity FROM fills WHERE symbol = ? AND position_version = ?",
                                     (p.symbol, p.position_version)).fetchone()
            beyond = conn.execute("SELECT 1 FROM fills WHERE symbol = ? AND position_version > ? LIMIT 1",
                                  (p.symbol, p.position_version)).fetchone()
            if last_fill is None or beyond or tuple(last_fill) != (p.last_fill_id, p.net_quantity):
                raise LedgerDamaged(self.path, f"position {p.symbol} (version {p.position_version}) disagrees with "
                                    "its recorded fills")
            positions[p.symbol] = p
            versions += p.position_version
        if versions != count:
            raise LedgerDamaged(self.path, f"positions account for {versions} fills, {count} are recorded")
        self.positions = positions
        active = [Reservation.from_row(dict(r)) for r in
                  conn.execute(f"SELECT * FROM reservations WHERE state = '{ACTIVE}'")]
        self.exposure.active = {r.reservation_id: r for r in active}
        self.next_reservation = conn.execute("SELECT coalesce(max(num), 0) + 1 FROM reservations").fetchone()[0]
        rows = conn.execute(f"SELECT {_UPDATE_COLUMNS} FROM fills ORDER BY update_seq DESC LIMIT ?",
                            (TAIL_ON_OPEN,)).fetchall()
        self.recent = [update_json(r) for r in reversed(rows)]

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass

    # --- the group commit ---------------------------------------------------------------------

    def apply(self, ops: list[Op], now: float) -> GroupResult:
        """Apply every op in ONE transaction with one commit; answers only once it is durable.

        An op the rules refuse (a Refusal) is rolled back alone (a savepoint each) and answered
        with its Refusal (an op that fails with any other non-SQLite error likewise, answered
        with that error); the others commit. If the commit itself fails, the store stops and
        LedgerWriteFailed is raised: nothing of the group may be reported as done.
        """
        if self.failed is not None:
            raise LedgerWriteFailed(f"{self.path}: an earlier commit failed; restart the ledger") from self.failed
        conn = self._conn
        work = _Work(dict(self.positions), self.exposure.copy(), self.last_seq + 1, self.next_reservation)
        results: list[dict[str, Any] | Exception] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                snap = work.snapshot()
                conn.execute("SAVEPOINT op")
                try:
                    results.append(self._apply_one(work, op, now))
                    conn.execute("RELEASE op")
                except sqlite3.Error:
                    raise  # the database itself is in trouble: the whole group fails
                except Exception as exc:
                    # Refused by the rules (or a bug in one op): that op alone is undone, in the
                    # database and in the working view; the rest of the group goes on.
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    work.restore(snap)
                    results.append(exc)
                    if isinstance(exc, Refusal):
                        work.events.append(("ledger_refused", {"op": type(op).__name__, **exc.to_json()}))
                    elif not isinstance(exc, InvalidInput):
                        work.events.append(("ledger_op_failed", {"op": type(op).__name__, "error": repr(exc),
                                                                 "reason": "internal-error"}))
            for symbol in sorted(work.dirty):
                p = work.positions[symbol]
                conn.execute("INSERT INTO positions VALUES (?, ?, ?, ?, ?) ON CONFLICT (symbol) DO UPDATE SET "
                             "net_quantity = excluded.net_quantity, position_version = excluded.position_version, "
                             "last_fill_id = excluded.last_fill_id, updated_at = excluded.updated_at",
                             (p.symbol, p.net_quantity, p.position_version, p.last_fill_id, p.updated_at))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.failed = exc
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
                raise LedgerDamaged(self.path, f"SQLite while writing: {exc}") from exc
            raise LedgerWriteFailed(f"{self.path}: the group commit failed ({exc}); its {len(ops)} operations "
                                    "were not acknowledged; restart the ledger") from exc
        # Committed and durable: now, and only now, the view moves.
        self.positions = work.positions
        self.exposure = work.exposure
        self.last_seq = work.next_seq - 1
        self.next_reservation = work.next_reservation
        self.counters["commits"] += 1
        self.counters["ops"] += len(ops)
        for key, n in work.counters.items():
            self.counters[key] = self.counters.get(key, 0) + n
        return GroupResult(results, work.updates, work.events)

    def _apply_one(self, work: _Work, op: Op, now: float) -> dict[str, Any]:
        work.active_before = set(work.exposure.active)
        if isinstance(op, RecordFills):
            return self._record_fills(work, op.fills, now)
        if isinstance(op, Reserve):
            return self._reserve(work, op.request, now)
        if isinstance(op, ApplyFill):
            reservation = self._reservation(work, op.reservation_id)
            answer = self._apply_fill(work, reservation, op.fill_id, op.side, op.quantity, now, source="apply-fill")
            return answer.to_json()
        if isinstance(op, Release):
            reservation = self._reservation(work, op.reservation_id)
            answer = work.exposure.release(reservation, now, op.reason)
            self._persist(work, answer.changed, None, now)
            return {**answer.to_json(), "released": not answer.duplicate}
        if isinstance(op, Renew):
            reservation = self._reservation(work, op.reservation_id)
            answer = work.exposure.renew(reservation, now, expires_at=op.expires_at, ttl=op.ttl)
            self._persist(work, answer.changed, None, now)
            return answer.to_json()
        if isinstance(op, Sweep):
            ended = work.exposure.sweep(now)
            self._persist(work, ended, None, now)
            return {"expired": [r.reservation_id for r in ended]}
        raise TypeError(f"unknown ledger operation {op!r}")

    # --- fills --------------------------------------------------------------------------------

    def _record_fills(self, work: _Work, fills: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
        # First every lookup, then every change: one conflict refuses the whole batch before any
        # position moves.
        plan: list[tuple[str, dict[str, Any]]] = []
        batch: dict[str, dict[str, Any]] = {}
        conflicts = []
        for f in fills:
            recorded = batch.get(f["fill_id"])
            kind = "again"
            if recorded is None:
                recorded = self._recorded_fill(f["fill_id"])
                kind = "duplicate" if recorded is not None else "new"
            if recorded is not None:
                diff = differences(recorded, f, FILL_FIELDS)
                if diff:
                    conflicts.append({"fill_id": f["fill_id"], "differences": diff})
                    continue
            if kind == "new":
                batch[f["fill_id"]] = f
            plan.append((kind, recorded if kind == "duplicate" else f))
        if conflicts:
            work.count("fill_conflicts", len(conflicts))
            raise Refusal("fill-conflict", f"{len(conflicts)} fill id(s) were recorded with other content "
                          f"({conflicts[0]['fill_id']!r} differs in {', '.join(conflicts[0]['differences'])}); "
                          "nothing in this batch was applied", conflicts=conflicts)
        results = []
        applied: dict[str, dict[str, Any]] = {}
        for kind, f in plan:
            if kind == "duplicate":
                results.append({"fill_id": f["fill_id"], "status": "duplicate", "position_version": f["position_version"],
                                "net_quantity": f["net_quantity"], "update_seq": f["update_seq"]})
                continue
            if kind == "again":  # the same fill twice in one batch: the second is a retry of the first
                results.append({**applied[f["fill_id"]], "status": "duplicate"})
                continue
            result = self._apply_new_fill(work, f, now)
            applied[f["fill_id"]] = result
            results.append(result)
        n_applied = len(applied)
        work.count("fills_applied", n_applied)
        work.count("fills_duplicate", len(results) - n_applied)
        if results:
            seqs = [r["update_seq"] for r in results if r["status"] == "applied"]
            work.events.append(("ledger_fills", {
                "received": len(results), "applied": n_applied, "duplicates": len(results) - n_applied,
                "first_seq": seqs[0] if seqs else None, "last_seq": seqs[-1] if seqs else None,
                "reason": "recorded" if n_applied else "retry",
            }))
        return {"results": results}

    def _recorded_fill(self, fill_id: str) -> dict[str, Any] | None:
        """The committed fill with this id, or None: the lookup that makes a resent fill a
        duplicate instead of a second application (exactly-once; the UNIQUE constraint on
        `fills.fill_id` is the second line). Named so that a test can switch the rule off."""
        row = self._conn.execute("SELECT * FROM fills WHERE fill_id = ?", (fill_id,)).fetchone()
        return dict(row) if row is not None else None

    def _apply_new_fill(self, work: _Work, f: dict[str, Any], now: float) -> dict[str, Any]:
        symbol = f["symbol"]
        before = work.positions.get(symbol) or Position(symbol)
        signed = f["quantity"] if f["side"] == "buy" else -f["quantity"]
        net = before.net_quantity + signed
        if abs(net) > bounds.MAX_POSITION:
            # Out of reach in practice (9 * 10**9 fills of the largest quantity, all one way), and
            # refused rather than stored past what JSON consumers read exactly: the batch is
            # refused whole (409), and the exchange's outbox reports a refusal that will not pass.
            raise Refusal("position-bound", f"fill {f['fill_id']!r} would take the {symbol} position to {net}, "
                          f"beyond the bound of +-{bounds.MAX_POSITION}; nothing in this batch was applied",
                          field="net_quantity", fill_id=f["fill_id"])
        seq = work.next_seq
        after = Position(symbol, net, before.position_version + 1, f["fill_id"], now)
        self._conn.execute(
            "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, *(f[k] for k in FILL_FIELDS), after.position_version, after.net_quantity, now),
        )
        work.next_seq += 1
        work.positions[symbol] = after
        work.dirty.add(symbol)
        work.updates.append({"seq": seq, "symbol": symbol, "net_quantity": after.net_quantity,
                             "position_version": after.position_version, "last_fill_id": f["fill_id"],
                             "fill_id": f["fill_id"], "updated_at": now})
        if f["reservation_id"] is not None:
            self._fill_reduces_reservation(work, f, now)
        return {"fill_id": f["fill_id"], "status": "applied", "position_version": after.position_version,
                "net_quantity": after.net_quantity, "update_seq": seq}

    def _fill_reduces_reservation(self, work: _Work, f: dict[str, Any], now: float) -> None:
        # The fill is the exchange's fact and is recorded whatever happens here: an unknown
        # reservation or a market maker's conflicting apply-fill is counted and logged, never a
        # reason to refuse the fill (that would stall the exchange's outbox for good).
        try:
            reservation = self._reservation(work, f["reservation_id"])
            self._apply_fill(work, reservation, f["fill_id"], "bid" if f["side"] == "buy" else "ask",
                             f["quantity"], now, source="fill")
        except Refusal as exc:
            work.count("fill_reservation_" + exc.reason.replace("-", "_"))
            work.events.append(("ledger_fill_reservation_skipped", {
                "fill_id": f["fill_id"], "reservation_id": f["reservation_id"], "reason": exc.reason,
                "error": exc.message}))

    # --- reservations -------------------------------------------------------------------------

    def _reservation(self, work: _Work, reservation_id: str) -> Reservation:
        current = work.exposure.active.get(reservation_id)
        if current is not None:
            return current
        row = self._conn.execute("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,)).fetchone()
        if row is None:
            raise Refusal("unknown-reservation", f"no reservation {reservation_id!r}", field="reservation_id")
        return Reservation.from_row(dict(row))

    def _reserve(self, work: _Work, request: ReservationRequest, now: float) -> dict[str, Any]:
        conn = self._conn
        row = conn.execute("SELECT * FROM reservations WHERE quote_id = ?", (request.quote_id,)).fetchone()
        existing = Reservation.from_row(dict(row)) if row is not None else None
        replaced = None
        if existing is None and request.replaces is not None:
            try:
                replaced = self._reservation(work, request.replaces)
            except Refusal:
                replaced = None  # the core refuses it, naming the field
        reservation_id = f"R{self.instance}-{work.next_reservation}"
        answer = work.exposure.reserve(request, now, reservation_id=reservation_id, existing=existing,
                                       replaced=replaced)
        if not answer.duplicate:
            work.next_reservation += 1
            usage = work.exposure.usage(now)
            r = answer.reservation
            work.count(f"reservations_{r.decision}")
            work.events.append(("ledger_reservation", {
                "reservation_id": r.reservation_id, "quote_id": r.quote_id, "holder": r.holder,
                "symbol": r.symbol, "decision": r.decision, "reason": _decision_reason(r),
                "requested": [r.bid_quantity, r.ask_quantity],
                "reserved": [r.reserved_bid_quantity, r.reserved_ask_quantity], "expires_at": r.expires_at,
                "replaces": r.replaces, "used": [usage.used_bid, usage.used_ask]}))
        self._persist(work, answer.changed, None, now)
        return answer.to_json()

    def _apply_fill(self, work: _Work, reservation: Reservation, fill_id: str, side: str, quantity: int,
                    now: float, *, source: str):
        row = self._conn.execute("SELECT * FROM reservation_fills WHERE fill_id = ?", (fill_id,)).fetchone()
        recorded = (AppliedFill(row["fill_id"], row["reservation_id"], SIDES[row["side"]], row["quantity"])
                    if row is not None else None)
        answer = work.exposure.apply_fill(reservation, fill_id, side, quantity, now, recorded=recorded)
        if not answer.duplicate:
            work.count("reservation_fills")
        self._persist(work, answer.changed, answer.applied, now, source=source)
        return answer

    def _persist(self, work: _Work, changed: Iterable[Reservation], applied: AppliedFill | None, now: float,
                 *, source: str | None = None) -> None:
        conn = self._conn
        for r in changed:
            values = dataclasses.astuple(r)
            conn.execute(
                f"INSERT INTO reservations ({', '.join(RESERVATION_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RESERVATION_COLUMNS))}) ON CONFLICT (reservation_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in RESERVATION_COLUMNS if c != "reservation_id"),
                values,
            )
            if r.state != ACTIVE and r.reservation_id in work.active_before:
                work.events.append(("ledger_reservation_ended", {
                    "reservation_id": r.reservation_id, "quote_id": r.quote_id, "state": r.state,
                    "reason": r.ended_reason}))
                work.count(f"reservations_{r.state}")
        if applied is not None:
            # Stored with the fill's own word for the side (buy = bid, sell = ask), as in `fills`.
            conn.execute("INSERT INTO reservation_fills VALUES (?, ?, ?, ?, ?)",
                         (applied.fill_id, applied.reservation_id, "buy" if applied.side == "bid" else "sell",
                          applied.quantity, now))
            work.events.append(("ledger_reservation_fill", {**applied.to_json(), "source": source,
                                                            "reason": "fill-reduces-reservation"}))

    # --- reading (on a reader connection, see LedgerReader) -----------------------------------

    def reader(self) -> LedgerReader:
        return LedgerReader(self.path)

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "instance": self.instance, "last_seq": self.last_seq,
                "symbols": len(self.positions), "active_reservations": len(self.exposure.active),
                "failed": repr(self.failed) if self.failed else None, **self.counters}


def _decision_reason(r: Reservation) -> str:
    if r.decision == "granted":
        return "capacity-available"
    if r.decision == "reduced":
        return "capped-at-available-capacity"
    return "no-capacity"


class LedgerReader:
    """A second connection for reads: WAL lets it read committed data while the writer writes.

    Every read is bounded by `up_to` (the last update_seq the service has published), so a
    reader never serves a fill whose commit has not been reported yet. Blocking: call it in a
    thread, one call at a time.
    """

    def __init__(self, path: Path):
        self._conn = _connect(path)
        self._conn.execute("PRAGMA query_only = 1")

    def close(self) -> None:
        self._conn.close()

    def fills_after(self, after: int, limit: int, up_to: int, symbol: str | None = None) -> list[dict[str, Any]]:
        if symbol is None:
            rows = self._conn.execute("SELECT * FROM fills WHERE update_seq > ? AND update_seq <= ? "
                                      "ORDER BY update_seq LIMIT ?", (after, up_to, limit))
        else:
            # Walks the symbol's index in version order (the same order as update_seq for one
            # symbol); update_seq is in every index entry, so skipped entries cost no table read.
            rows = self._conn.execute("SELECT * FROM fills WHERE symbol = ? AND update_seq > ? AND update_seq <= ? "
                                      "ORDER BY position_version LIMIT ?", (symbol, after, up_to, limit))
        return [_fill_json(r) for r in rows]

    def updates_after(self, after: int, limit: int, up_to: int, symbols: Iterable[str] | None = None) -> list[dict]:
        if not symbols:
            rows = self._conn.execute(f"SELECT {_UPDATE_COLUMNS} FROM fills WHERE update_seq > ? AND update_seq <= ? "
                                      "ORDER BY update_seq LIMIT ?", (after, up_to, limit))
        else:
            symbols = list(symbols)
            marks = ", ".join("?" * len(symbols))
            rows = self._conn.execute(f"SELECT {_UPDATE_COLUMNS} FROM fills WHERE update_seq > ? AND update_seq <= ? "
                                      f"AND symbol IN ({marks}) ORDER BY update_seq LIMIT ?",
                                      (after, up_to, *symbols, limit))
        return [update_json(r) for r in rows]

    def symbol_updates(self, symbol: str, after_version: int, limit: int, up_to: int) -> list[dict[str, Any]]:
        rows = self._conn.execute(f"SELECT {_UPDATE_COLUMNS} FROM fills WHERE symbol = ? AND position_version > ? "
                                  "AND update_seq <= ? ORDER BY position_version LIMIT ?",
                                  (symbol, after_version, up_to, limit))
        return [update_json(r) for r in rows]

    def reservation(self, reservation_id: str) -> Reservation | None:
        row = self._conn.execute("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,)).fetchone()
        return Reservation.from_row(dict(row)) if row is not None else None

    def signed_sums(self) -> dict[str, tuple[int, int]]:
        """{symbol: (signed sum of its fills, number of fills)}: for checkers and tests."""
        rows = self._conn.execute("SELECT symbol, sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), "
                                  "count(*) FROM fills GROUP BY symbol")
        return {r[0]: (r[1], r[2]) for r in rows}
