"""The exchange's event tape: an append-only, checksummed write-ahead log of every event.

What it is for: every event the exchange accepts or rejects is appended here before anyone is
told about it; on restart the exchange rebuilds its book, quotes, authority and epochs by
replaying the tape from seq 1, and `murmur tape` and the checker read it to show what happened.
This module owns the file format, the writers and the reader; what a record means is the
exchange's business.

Format, version 1 (all integers big-endian)::

    file    := header record*
    header  := b"MURMTAPE" version:u16                            10 bytes
    record  := length:u32 crc32(payload):u32 payload               1 <= length <= MAX_RECORD
    payload := one CBOR map with `seq` (int: 1, 2, 3, ... no gaps) and `type` (str);
               every other field is the caller's

Damage and what is done about it:

- A torn tail is the last record left incomplete by a crash in the middle of a write: a short
  record header, a short payload, or a CRC mismatch, with no valid record anywhere after it.
  It was never acknowledged (acknowledgement waits for the fsync), so opening the tape for
  append cuts it (truncate + fsync) and reports how many bytes went.
- Everything else is corruption: a damaged record with valid records after it, a seq that is
  not the previous one plus 1, a payload whose CRC matches but is not a valid record. It is
  reported with its byte offset and the tape is refused (`CorruptTape`), for an operator to
  follow docs/runbook.md. Cutting there would silently drop acknowledged events.

It must never rewrite history (records are only appended; the one truncation is a torn tail),
never cut anything but a torn tail, and never acknowledge an append before the record is on
disk (written and fsynced). A failed write or fsync stops the writer for good: after a failed
fsync the kernel may have dropped the dirty pages, so a retry that "succeeds" proves nothing.

One writer a tape: the writer holds an exclusive `flock` on the file while it is open.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import trio

MAGIC = b"MURMTAPE"
VERSION = 1
HEADER = MAGIC + struct.pack(">H", VERSION)
HEADER_SIZE = len(HEADER)
FRAME = struct.Struct(">II")  # payload length, crc32 of the payload
FRAME_SIZE = FRAME.size
# Guards against a garbage length field making a reader allocate or skip gigabytes; an event
# anywhere near this size is a bug in the caller.
MAX_RECORD = 1 << 20
RUNBOOK = "see docs/runbook.md: corrupt tape"

_READ_CHUNK = 1 << 20
_NONZERO = re.compile(rb"[^\x00]")


class TapeError(Exception):
    """Base of every tape error."""


class NotATape(TapeError):
    """The file does not start with a murmur tape header of a version this code reads."""


class CorruptTape(TapeError):
    """A damaged record that is not a torn tail: refused, never cut."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str, *, last_seq: int):
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        self.last_seq = last_seq
        super().__init__(
            f"{self.path}: corrupt tape at byte {offset} (after seq {last_seq}): {reason}; "
            f"the tape is refused, not cut — {RUNBOOK}"
        )


class TapeLocked(TapeError):
    """Another writer (another exchange process, or another writer object) has the tape open."""


class TapeClosed(TapeError):
    """An append to a writer that is not running (not started yet, closed, or stopped)."""


class TapeWriteFailed(TapeError):
    """A write or fsync failed: the records of that batch may or may not be on disk."""


class InvalidRecord(TapeError, ValueError):
    """A record that cannot go on the tape (not a dict, no `type`, not CBOR, too large)."""


@dataclass(frozen=True)
class CorruptRecord:
    offset: int
    reason: str


@dataclass(frozen=True)
class TornTail:
    """The incomplete last record: `nbytes` from `offset` to the end of the file."""

    offset: int
    nbytes: int
    reason: str


@dataclass(frozen=True)
class ScanResult:
    """What a full pass over a tape found.

    `records` and `last_seq` count the valid prefix (what a replay gets); `valid_bytes` is its
    length. `torn_bytes` is the torn tail after the last valid record (cut on open); `corrupt`
    lists every damaged place in the middle (any entry means the tape is refused).
    """

    path: str
    records: int
    last_seq: int
    valid_bytes: int
    torn_bytes: int
    corrupt: list[CorruptRecord]
    file_bytes: int = 0
    torn: TornTail | None = None

    @property
    def ok(self) -> bool:
        return not self.corrupt


@dataclass(frozen=True)
class Recovery:
    """What opening a tape for append found and did: the writer's `task_status.started` value."""

    path: Path
    records: int
    last_seq: int
    created: bool = False
    cut_bytes: int = 0  # torn tail (or incomplete header) removed
    cut_offset: int | None = None
    cut_reason: str | None = None


@dataclass
class TapeStats:
    """Counters of one writer since it opened the tape."""

    records: int = 0
    bytes: int = 0
    fsyncs: int = 0
    batches: int = 0


# ---------------------------------------------------------------------------------------------
# Encoding and decoding one record


def encode_record(record: Mapping[str, Any], seq: int) -> bytes:
    """The framed bytes of `record` as seq `seq`: length, CRC, CBOR payload.

    The payload is a new map (`seq`, `type`, then the caller's fields); `record` is not changed.
    A `seq` already in `record` must be exactly `seq`.
    """
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"a tape record is a dict, got {type(record).__name__}")
    kind = record.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidRecord(f"a tape record needs a non-empty str 'type', got {kind!r}")
    if "seq" in record:
        given = record["seq"]
        if type(given) is not int or given != seq:
            raise InvalidRecord(
                f"record carries seq {given!r} but the next seq is {seq}; "
                "leave seq out and the writer assigns it"
            )
    payload: dict[Any, Any] = {"seq": seq, "type": kind}
    for key, value in record.items():
        if key != "seq" and key != "type":
            payload[key] = value
    try:
        data = cbor2.dumps(payload)
    except Exception as exc:  # the caller's values: any encoder error, cycles, odd types
        raise InvalidRecord(f"record of type {kind!r} is not CBOR-encodable: {exc}") from exc
    if len(data) > MAX_RECORD:
        raise InvalidRecord(
            f"record of type {kind!r} is {len(data)} bytes encoded; the limit is {MAX_RECORD}"
        )
    return FRAME.pack(len(data), zlib.crc32(data)) + data


def decode_payload(payload: bytes) -> dict[Any, Any]:
    """The record in a CRC-checked payload; InvalidRecord if it is not one CBOR map with seq/type."""
    fp = io.BytesIO(payload)
    try:
        record = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # any decoder error: the bytes are not what a writer makes
        raise InvalidRecord(f"payload is not CBOR: {exc}") from None
    if fp.tell() != len(payload):
        raise InvalidRecord(f"{len(payload) - fp.tell()} stray bytes after the CBOR payload")
    if not isinstance(record, dict):
        raise InvalidRecord(f"payload is a CBOR {type(record).__name__}, not a map")
    seq = record.get("seq")
    if type(seq) is not int or seq < 1:
        raise InvalidRecord(f"payload has no valid seq (got {seq!r})")
    if not isinstance(record.get("type"), str):
        raise InvalidRecord(f"payload has no str type (got {record.get('type')!r})")
    return record


# ---------------------------------------------------------------------------------------------
# Reading: a source of bytes, the frame parser, and the walk that classifies damage


class _Source:
    """Random access to the first `size` bytes of an open file, through a read-ahead buffer.

    pread, not mmap: an mmap'd file truncated by another process (a writer cutting a torn tail)
    kills the reader with SIGBUS; pread merely returns fewer bytes.
    """

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._start = 0
        self._buf = b""

    def read(self, offset: int, n: int) -> bytes:
        end = min(offset + n, self.size)
        if end <= offset:
            return b""
        buf_end = self._start + len(self._buf)
        if not (self._start <= offset and end <= buf_end):
            want = min(max(end - offset, _READ_CHUNK), self.size - offset)
            self._buf = _pread_all(self.fd, want, offset)
            self._start = offset
        return self._buf[offset - self._start : end - self._start]


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


# _read_frame outcomes
_OK = 0  # a valid record
_INVALID = 1  # CRC matches but the payload is not a record: written that way, never torn
_DAMAGED = 2  # short or CRC mismatch: torn if nothing valid follows, corrupt otherwise


def _read_frame(src: _Source, offset: int) -> tuple[int, Any, int]:
    """(outcome, record or reason, end offset) of the frame at `offset`."""
    head = src.read(offset, FRAME_SIZE)
    if len(head) < FRAME_SIZE:
        return _DAMAGED, f"short record header: {len(head)} of {FRAME_SIZE} bytes", 0
    length, stored = FRAME.unpack(head)
    if not 0 < length <= MAX_RECORD:
        return _DAMAGED, f"record length {length} out of range 1..{MAX_RECORD}", 0
    payload = src.read(offset + FRAME_SIZE, length)
    if len(payload) < length:
        return _DAMAGED, f"short payload: {len(payload)} of {length} bytes", 0
    computed = zlib.crc32(payload)
    if computed != stored:
        return _DAMAGED, f"CRC mismatch: stored {stored:08x}, computed {computed:08x}", 0
    end = offset + FRAME_SIZE + length
    try:
        return _OK, decode_payload(payload), end
    except InvalidRecord as exc:
        return _INVALID, str(exc), end


def _next_frame(src: _Source, start: int) -> int | None:
    """The first offset >= start where a CRC-valid frame begins, or None.

    This is what tells a torn tail (nothing valid after the damage) from corruption. Only
    offsets whose length field is plausible are checked: with MAX_RECORD at 1 MiB the first
    length byte is 0, so `find(b"\\0")` jumps between candidates, and runs of zeros (a crash
    on some file systems leaves a zero-filled tail) are skipped whole.
    """
    p = start
    while p + FRAME_SIZE <= src.size:
        chunk = src.read(p, _READ_CHUNK)
        last = len(chunk) - FRAME_SIZE  # the last candidate whose header is inside chunk
        i = 0
        while 0 <= i <= last:
            i = chunk.find(b"\x00", i, last + 1)
            if i < 0:
                break
            length = int.from_bytes(chunk[i : i + 4], "big")
            if length == 0:
                m = _NONZERO.search(chunk, i)
                if m is None:
                    break
                i = max(i + 1, m.start() - 3)
                continue
            if length <= MAX_RECORD and p + i + FRAME_SIZE + length <= src.size:
                if _read_frame(src, p + i)[0] != _DAMAGED:
                    return p + i
            i += 1
        p += last + 1
    return None


_RECORD, _CORRUPT, _TORN = "record", "corrupt", "torn"


def _walk(src: _Source) -> Iterator[tuple[str, int, Any]]:
    """Every record after the header, in file order, and every damaged place, classified.

    Yields (_RECORD, offset, record), (_CORRUPT, offset, reason) -- and goes on at the next
    valid frame, so a scan can list them all -- and at most one final (_TORN, offset, reason).
    """
    offset = HEADER_SIZE
    expected: int | None = 1  # None after damage: the seqs lost in it are unknown
    while offset < src.size:
        outcome, value, end = _read_frame(src, offset)
        if outcome == _OK:
            seq = value["seq"]
            if expected is not None and seq != expected:
                what = "a gap" if seq > expected else "not increasing"
                yield _CORRUPT, offset, f"seq {seq} where {expected} was expected ({what})"
            else:
                yield _RECORD, offset, value
            expected = seq + 1
            offset = end
        elif outcome == _INVALID:
            where = "" if expected is None else f" where seq {expected} was expected"
            yield _CORRUPT, offset, f"record{where}: {value}"
            expected = None
            offset = end
        else:
            following = _next_frame(src, offset + 1)
            if following is None:
                yield _TORN, offset, value
                return
            yield _CORRUPT, offset, f"{value}; valid records follow at byte {following}"
            expected = None
            offset = following


def _check_header(src: _Source, path: str | os.PathLike[str]) -> bool:
    """True for a complete header; False for an empty file or a header cut short (torn)."""
    head = src.read(0, HEADER_SIZE)
    if len(head) < HEADER_SIZE and HEADER.startswith(head):
        return False
    if head[: len(MAGIC)] != MAGIC:
        raise NotATape(
            f"{path}: not a murmur tape (it starts with {head[: len(MAGIC)]!r}, a tape with "
            f"{MAGIC!r})"
        )
    if len(head) < HEADER_SIZE:
        raise NotATape(f"{path}: not a murmur tape (header cut short after {head!r})")
    (version,) = struct.unpack(">H", head[len(MAGIC) :])
    if version != VERSION:
        raise NotATape(
            f"{path}: tape format version {version}; this murmur reads version {VERSION}"
        )
    return True


def _scan_source(src: _Source, path: str | os.PathLike[str]) -> ScanResult:
    if not _check_header(src, path):
        torn = TornTail(0, src.size, "incomplete file header") if src.size else None
        return ScanResult(str(path), 0, 0, 0, src.size, [], src.size, torn)
    records = last_seq = 0
    corrupt: list[CorruptRecord] = []
    torn = None
    for kind, offset, value in _walk(src):
        if kind == _RECORD:
            if not corrupt:
                records += 1
                last_seq = value["seq"]
        elif kind == _CORRUPT:
            corrupt.append(CorruptRecord(offset, value))
        else:
            torn = TornTail(offset, src.size - offset, value)
    if corrupt:
        valid_bytes = corrupt[0].offset
    elif torn is not None:
        valid_bytes = torn.offset
    else:
        valid_bytes = src.size
    return ScanResult(
        str(path),
        records,
        last_seq,
        valid_bytes,
        torn.nbytes if torn else 0,
        corrupt,
        src.size,
        torn,
    )


def scan(path: str | os.PathLike[str]) -> ScanResult:
    """Read the whole tape and report what is valid, torn and corrupt. Changes nothing.

    Raises NotATape for a wrong magic or version, OSError if the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _scan_source(_Source(fd, os.fstat(fd).st_size), path)
    finally:
        os.close(fd)


class TapeReader:
    """Reads a tape's records in order; changes nothing.

    `records()` yields each record as a dict and stops quietly at a torn tail (then `tail`
    says where and why); at corruption it raises CorruptTape after yielding every record
    before it. The file's length is taken when iteration starts: records appended later are not
    seen, and a record being written at that moment looks like a torn tail.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.tail: TornTail | None = None
        self.file_bytes = 0

    def __iter__(self) -> Iterator[dict[Any, Any]]:
        return self.records()

    def records(self) -> Iterator[dict[Any, Any]]:
        self.tail = None
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            src = _Source(fd, os.fstat(fd).st_size)
            self.file_bytes = src.size
            if not _check_header(src, self.path):
                if src.size:
                    self.tail = TornTail(0, src.size, "incomplete file header")
                return
            last_seq = 0
            for kind, offset, value in _walk(src):
                if kind == _RECORD:
                    last_seq = value["seq"]
                    yield value
                elif kind == _CORRUPT:
                    raise CorruptTape(self.path, offset, value, last_seq=last_seq)
                else:
                    self.tail = TornTail(offset, src.size - offset, value)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Writing: one open, locked, recovered file; a synchronous writer; the trio group-commit writer


def _sync_fd(fd: int) -> None:
    if sys.platform == "darwin":  # fsync on macOS does not reach the platter
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):  # an append changes the size, which fdatasync does flush
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _TapeFile:
    """A tape opened for append: created or recovered, locked, positioned at its end."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool):
        import fcntl

        self.path = Path(path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        created = False
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            if not create:
                raise
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd = os.open(self.path, flags)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TapeLocked(
                    f"{self.path} is open for append by another writer (a running exchange?); "
                    "stop it first"
                ) from None
            self.recovery = self._recover(fd, created)
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd

    def _recover(self, fd: int, created: bool) -> Recovery:
        src = _Source(fd, os.fstat(fd).st_size)
        result = _scan_source(src, self.path)
        if result.valid_bytes < HEADER_SIZE:
            # New, or a crash while it was being created: there is nothing in it to lose.
            os.ftruncate(fd, 0)
            _write_all(fd, HEADER)
            _sync_fd(fd)
            _fsync_dir(self.path.parent.resolve())
            return Recovery(
                self.path,
                0,
                0,
                created=created,
                cut_bytes=result.file_bytes,
                cut_offset=0 if result.file_bytes else None,
                cut_reason="incomplete file header" if result.file_bytes else None,
            )
        if result.corrupt:
            first = result.corrupt[0]
            raise CorruptTape(self.path, first.offset, first.reason, last_seq=result.last_seq)
        if result.torn is not None:
            os.ftruncate(fd, result.valid_bytes)
            _sync_fd(fd)
            return Recovery(
                self.path,
                result.records,
                result.last_seq,
                cut_bytes=result.torn.nbytes,
                cut_offset=result.torn.offset,
                cut_reason=result.torn.reason,
            )
        return Recovery(self.path, result.records, result.last_seq)

    def write_and_sync(self, data: bytes) -> None:
        """Append and fsync; on any failure the file is closed for good (see module doc)."""
        if self.fd is None:
            raise TapeClosed(f"{self.path}: the tape is closed")
        try:
            _write_all(self.fd, data)
            _sync_fd(self.fd)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # releases the lock


class TapeWriterSync:
    """A blocking writer: each `append` / `append_many` is one write and one fsync.

    For tools, tests and anything not on trio. Opening recovers the tape (cuts a torn tail,
    refuses corruption) and locks it until `close()`.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True):
        self._file = _TapeFile(path, create=create)
        self.path = self._file.path
        self.recovery = self._file.recovery
        self.stats = TapeStats()
        self._next_seq = self.recovery.last_seq + 1
        self._failed: BaseException | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the last record on disk (0 for an empty tape)."""
        return self._next_seq - 1

    def append(self, record: Mapping[str, Any]) -> int:
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Mapping[str, Any]]) -> list[int]:
        """Append records as consecutive seqs with one fsync; all or none are accepted.

        Not atomic across a crash: a prefix of them may survive it.
        """
        self._check_open()
        frames = [encode_record(r, self._next_seq + i) for i, r in enumerate(records)]
        if not frames:
            return []
        data = b"".join(frames)
        try:
            self._file.write_and_sync(data)
        except OSError as exc:
            self._failed = exc
            raise TapeWriteFailed(f"{self.path}: write or fsync failed: {exc}") from exc
        first = self._next_seq
        self._next_seq += len(frames)
        self.stats.records += len(frames)
        self.stats.bytes += len(data)
        self.stats.fsyncs += 1
        self.stats.batches += 1
        return list(range(first, self._next_seq))

    def _check_open(self) -> None:
        if self._failed is not None:
            raise TapeWriteFailed(f"{self.path}: an earlier write failed; reopen the tape")
        if self._file.fd is None:
            raise TapeClosed(f"{self.path}: the tape writer is closed")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TapeWriterSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_for_append(path: str | os.PathLike[str], *, create: bool = True) -> TapeWriterSync:
    """Recover `path` (cut a torn tail, refuse corruption) and open it for blocking appends."""
    return TapeWriterSync(path, create=create)


@dataclass(eq=False)
class _Batch:
    frames: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


_NEW, _RUNNING, _CLOSING, _STOPPED = "new", "running", "closing", "stopped"


class TapeWriter:
    """The trio writer with group commit: concurrent appends share one write and one fsync.

    Start it with `recovery = await nursery.start(writer.run)`; `recovery.path` and
    `recovery.last_seq` say what was found. `append(record)` assigns the next seq at once (so
    seqs follow the order of the calls), queues the frame, and returns the seq only once the
    batch holding it is written and fsynced. While one batch's fsync runs in a worker thread,
    the next batch gathers every append made meanwhile: under load the fsync count grows with
    the fsync rate the disk allows, not with the appends. `max_delay` (seconds) holds each batch
    open a little longer, trading latency for bigger batches; 0 adds no delay.

    If an append's caller is cancelled while it waits, its record is still written: once
    queued it has its seq and the tape's order. If a write or fsync fails, every waiting and
    later append raises TapeWriteFailed and `run` raises it too: those records may or may not
    be on disk, and only reopening the tape (its recovery) can tell.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        max_delay: float = 0.0,
        max_batch_bytes: int = 8 * MAX_RECORD,
    ):
        self.path = Path(path)
        self.stats = TapeStats()
        self.recovery: Recovery | None = None
        self._create = create
        self._max_delay = max_delay
        self._max_batch_bytes = max_batch_bytes
        self._file: _TapeFile | None = None
        self._state = _NEW
        self._failure: BaseException | None = None
        self._queue: deque[_Batch] = deque()
        self._wakeup = trio.Event()
        self._stopped = trio.Event()
        self._next_seq = 1
        self._durable_seq = 0

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (queued or durable)."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on disk."""
        return self._durable_seq

    async def run(self, *, task_status: trio.TaskStatus[Recovery] = trio.TASK_STATUS_IGNORED):
        """Open and recover the tape, then write batches until `close()` or cancellation.

        On cancellation, appends still queued fail with TapeClosed (never written); the batch
        whose fsync is under way finishes first, and its appends succeed.
        """
        if self._state != _NEW:
            raise RuntimeError("a TapeWriter runs once; make a new one to reopen the tape")
        self._state = _RUNNING
        try:
            self._file = await trio.to_thread.run_sync(
                lambda: _TapeFile(self.path, create=self._create)
            )
            self.recovery = self._file.recovery
            self._durable_seq = self.recovery.last_seq
            self._next_seq = self.recovery.last_seq + 1
            task_status.started(self.recovery)
            await self._commit_loop()
        finally:
            self._state = _STOPPED
            while self._queue:
                batch = self._queue.popleft()
                batch.error = self._failure or TapeClosed(
                    f"{self.path}: the tape writer stopped before this record was written"
                )
                batch.done.set()
            if self._file is not None:
                self._file.close()
            self._stopped.set()

    async def _commit_loop(self) -> None:
        assert self._file is not None
        while True:
            if not self._queue:
                if self._state == _CLOSING:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if self._max_delay > 0:
                await trio.sleep(self._max_delay)
            else:
                # Appenders already runnable in this scheduler pass join the batch.
                await trio.lowlevel.checkpoint()
            batch = self._queue.popleft()  # sealed: appends from now on start a new batch
            data = b"".join(batch.frames)
            try:
                # Not abandoned on cancel: the batch's fate must be known before we return.
                await trio.to_thread.run_sync(self._file.write_and_sync, data)
            except OSError as exc:
                self._failure = TapeWriteFailed(f"{self.path}: write or fsync failed: {exc}")
                batch.error = self._failure
                batch.done.set()
                raise self._failure from exc
            self.stats.records += len(batch.frames)
            self.stats.bytes += len(data)
            self.stats.fsyncs += 1
            self.stats.batches += 1
            self._durable_seq += len(batch.frames)
            batch.done.set()

    def _check_running(self) -> None:
        if self._failure is not None:
            raise TapeWriteFailed(f"{self.path}: an earlier write failed; reopen the tape")
        if self._state == _NEW:
            raise TapeClosed(
                f"{self.path}: the tape writer is not running; start it with "
                "`await nursery.start(writer.run)`"
            )
        if self._state != _RUNNING:
            raise TapeClosed(f"{self.path}: the tape writer is closed")

    def _enqueue(self, frame: bytes) -> _Batch:
        batch = self._queue[-1] if self._queue else None
        if batch is None or (batch.frames and batch.nbytes + len(frame) > self._max_batch_bytes):
            batch = _Batch()
            self._queue.append(batch)
        batch.frames.append(frame)
        batch.nbytes += len(frame)
        self._wakeup.set()
        return batch

    async def _wait(self, batch: _Batch) -> None:
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def append(self, record: Mapping[str, Any]) -> int:
        """Append `record` and return its seq once it is durable."""
        self._check_running()
        seq = self._next_seq
        batch = self._enqueue(encode_record(record, seq))
        self._next_seq += 1
        await self._wait(batch)
        return seq

    async def append_many(self, records: Iterable[Mapping[str, Any]]) -> list[int]:
        """Append records as consecutive seqs; returns them once all are durable.

        All or none are queued (an invalid one raises before any is). Not atomic across a
        crash: a prefix of them may survive it.
        """
        self._check_running()
        first = self._next_seq
        frames = [encode_record(r, first + i) for i, r in enumerate(records)]
        batches: list[_Batch] = []
        for frame in frames:
            batch = self._enqueue(frame)
            if not batches or batches[-1] is not batch:
                batches.append(batch)
        self._next_seq += len(frames)
        for batch in batches:
            await self._wait(batch)
        return list(range(first, first + len(frames)))

    def close(self) -> None:
        """Stop taking appends; queued ones are still written, then `run` returns."""
        if self._state == _RUNNING:
            self._state = _CLOSING
            self._wakeup.set()

    async def aclose(self) -> None:
        """`close()`, then wait until every queued record is written and the file is closed."""
        if self._state == _NEW:
            self._state = _STOPPED
            self._stopped.set()
        self.close()
        await self._stopped.wait()
