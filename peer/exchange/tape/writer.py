"""Writing a tape: open for append (recover, lock), a blocking writer, the trio group-commit writer.

What it is for: the exchange appends every event here before anyone is told about it.
Opening a tape for append scans it (reader.py): a torn tail is cut (truncate + fsync) and
reported in `Recovery`; corruption is refused with `CorruptTape`. `TapeWriterSync` writes and
fsyncs each call, for tools and tests; `TapeWriter` is the exchange's: concurrent appends share
one write and one fsync through `peer.groupcommit.GroupCommit`.

It must never rewrite history (records are only appended; the one truncation is a torn tail),
never cut anything but a torn tail, and never acknowledge an append before the record is on
disk (written and fsynced). A failed write or fsync stops the writer for good: after a failed
fsync the kernel may have dropped the dirty pages, so a retry that "succeeds" proves nothing.

One writer a tape: the writer holds an exclusive `flock` on the file while it is open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from peer.groupcommit import GroupCommit, Runner

from .format import HEADER, HEADER_SIZE, MAX_RECORD, CorruptTape, TapeError, encode_record
from .reader import _scan_source, _Source


class TapeLocked(TapeError):
    """Another writer (another exchange process, or another writer object) has the tape open."""


class TapeClosed(TapeError):
    """An append to a writer that is not running (not started yet, closed, or stopped)."""


class TapeWriteFailed(TapeError):
    """A write or fsync failed: the records of that batch may or may not be on disk."""


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


_NEW, _OPENING, _RUNNING, _CLOSING, _STOPPED = "new", "opening", "running", "closing", "stopped"


class TapeWriter:
    """The trio writer with group commit: concurrent appends share one write and one fsync.

    Start it with `recovery = await nursery.start(writer.run)`; `recovery.path` and
    `recovery.last_seq` say what was found. `append(record)` assigns the next seq at once (so
    seqs follow the order of the calls), queues the frame, and returns the seq only once the
    batch holding it is written and fsynced. While one batch's fsync runs in a worker thread,
    the next batch gathers every append made meanwhile: under load the fsync count grows with
    the fsync rate the disk allows, not with the appends. `max_delay` (seconds) holds each batch
    open a little longer, trading latency for bigger batches; 0 adds no delay. `run_sync` is how
    the blocking open and write + fsync run (a worker thread; a simulation passes
    `peer.groupcommit.run_inline`).

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
        run_sync: Runner = trio.to_thread.run_sync,
    ):
        self.path = Path(path)
        self.stats = TapeStats()
        self.recovery: Recovery | None = None
        self._create = create
        self._run_sync = run_sync
        self._file: _TapeFile | None = None
        self._state = _NEW
        self._failure: BaseException | None = None
        self._stopped = trio.Event()
        self._next_seq = 1
        self._durable_seq = 0
        self._commits: GroupCommit[bytes, None] = GroupCommit(
            self._write_batch,
            publish=self._written,
            on_failure=self._write_failed,
            closed=lambda: TapeClosed(
                f"{self.path}: the tape writer stopped before this record was written"
            ),
            run_sync=run_sync,
            limit=max_batch_bytes,
            weight=len,
            delay=max_delay,
        )

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
        self._state = _OPENING
        try:
            self._file = await self._run_sync(lambda: _TapeFile(self.path, create=self._create))
            self.recovery = self._file.recovery
            self._durable_seq = self.recovery.last_seq
            self._next_seq = self.recovery.last_seq + 1
            if self._state == _OPENING:  # not closed meanwhile
                self._state = _RUNNING
            task_status.started(self.recovery)
            try:
                await self._commits.run()
            except OSError as exc:
                assert self._failure is not None
                raise self._failure from exc
        finally:
            self._state = _STOPPED
            if self._file is not None:
                self._file.close()
            self._stopped.set()

    # The three GroupCommit callbacks: the blocking write, then (in the trio task) what a
    # durable batch or a failed one means for this writer.

    def _write_batch(self, frames: list[bytes]) -> int:
        assert self._file is not None
        data = b"".join(frames)
        self._file.write_and_sync(data)
        return len(data)

    def _written(self, frames: list[bytes], nbytes: int) -> list[None]:
        self.stats.records += len(frames)
        self.stats.bytes += nbytes
        self.stats.fsyncs += 1
        self.stats.batches += 1
        self._durable_seq += len(frames)
        return [None] * len(frames)

    def _write_failed(self, exc: Exception, frames: list[bytes]) -> BaseException:
        if not isinstance(exc, OSError):
            return exc
        self._failure = TapeWriteFailed(f"{self.path}: write or fsync failed: {exc}")
        return self._failure

    def _check_running(self) -> None:
        if self._failure is not None or self._commits.error is not None:
            raise TapeWriteFailed(f"{self.path}: an earlier write failed; reopen the tape")
        if self._state in (_NEW, _OPENING):  # no seq can be given before the tape is read
            raise TapeClosed(
                f"{self.path}: the tape writer is not running; start it with "
                "`await nursery.start(writer.run)`"
            )
        if self._state != _RUNNING:
            raise TapeClosed(f"{self.path}: the tape writer is closed")

    async def append(self, record: Mapping[str, Any]) -> int:
        """Append `record` and return its seq once it is durable."""
        self._check_running()
        seq = self._next_seq
        frame = encode_record(record, seq)
        self._next_seq += 1
        await self._commits.submit(frame)  # queued before its first checkpoint
        return seq

    async def append_many(self, records: Iterable[Mapping[str, Any]]) -> list[int]:
        """Append records as consecutive seqs; returns them once all are durable.

        All or none are queued (an invalid one raises before any is). Not atomic across a
        crash: a prefix of them may survive it.
        """
        self._check_running()
        first = self._next_seq
        frames = [encode_record(r, first + i) for i, r in enumerate(records)]
        self._next_seq += len(frames)
        await self._commits.submit_many(frames)
        return list(range(first, first + len(frames)))

    def close(self) -> None:
        """Stop taking appends; queued ones are still written, then `run` returns."""
        if self._state in (_OPENING, _RUNNING):
            self._state = _CLOSING
            self._commits.close()

    async def aclose(self) -> None:
        """`close()`, then wait until every queued record is written and the file is closed."""
        if self._state == _NEW:
            self._state = _STOPPED
            self._stopped.set()
        self.close()
        await self._stopped.wait()
