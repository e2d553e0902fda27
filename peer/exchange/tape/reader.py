"""Reading a tape: the walk over its frames that tells a torn tail from corruption.

What it is for: `scan` (a full pass that reports what is valid, torn and corrupt), `TapeReader`
(the records in order, for replay, `murmur tape` and the checker) and the walk the writer's
recovery uses when it opens a tape for append.

Damage and what it is:

- A torn tail is the last record left incomplete by a crash in the middle of a write: a short
  record header, a short payload, or a CRC mismatch, with no valid record anywhere after it.
  It was never acknowledged (acknowledgement waits for the fsync); opening the tape for append
  cuts it (see writer.py).
- Everything else is corruption: a damaged record with valid records after it, a seq that is
  not the previous one plus 1, a payload whose CRC matches but is not a valid record. It is
  reported with its byte offset and the tape is refused (`CorruptTape`), for an operator to
  follow docs/runbook.md. Cutting there would silently drop acknowledged events.

It must never change the file (read-only descriptors, no truncation) and never map it into
memory (a writer cutting a torn tail would kill the reader with SIGBUS); and it must never call
corruption a torn tail: only "nothing valid after the damage" makes a tail torn.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .format import (
    FRAME,
    FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    VERSION,
    CorruptTape,
    InvalidRecord,
    NotATape,
    decode_payload,
)

_READ_CHUNK = 1 << 20
_NONZERO = re.compile(rb"[^\x00]")


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
