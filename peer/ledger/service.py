"""The ledger role inside a peer process: the store, its group-commit writer, the update stream.

What it is for: driving `ledger.store.LedgerStore` for real. The store is opened (and checked)
in a worker thread (or however the caller's `run_sync` runs blocking calls); then every change (fill batches from the exchange's outbox, reservation
calls from market makers, the expiry sweep) goes through one queue, `peer.groupcommit`. Its
writer task takes everything queued (up to MAX_GROUP), runs it in a worker thread as ONE
transaction with one commit (one fsync), and only then publishes the committed position updates
to the in-memory tail of the stream, wakes the long polls and answers every request of the
group. While a group commits, the next one gathers, so the number of fsyncs grows with what the
disk allows, not with the requests.

Reads (positions, exposure) come from the view the last commit left; older fills and stream
catch-up come from a second SQLite connection, bounded by the last published sequence number.

It must never answer a request, publish an update or show a position before the transaction
holding it is committed, and never decide anything the store or `ledger.exposure` decides. If a
commit fails the writer stops and the peer with it: only a restart can say what is on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ledger.exposure import LIMIT, MAX_TTL, Refusal, Reservation, Usage
from ledger.store import (
    DB_FILE,
    GroupResult,
    LedgerDamaged,
    LedgerReader,
    LedgerStore,
    Op,
    Position,
    Sweep,
)
from peer.groupcommit import GroupCommit, Runner
from peer.logs import JsonLog

# Position updates kept in memory for the stream; older ones are read from the database.
TAIL_SIZE = 100_000
# At most this many requests in one transaction: bounds one commit's latency under a flood.
MAX_GROUP = 1000
SWEEP_INTERVAL = 1.0


class LedgerUnavailable(RuntimeError):
    """The writer is not running (starting, stopped, or stopped by a failed commit)."""


class LedgerService:
    def __init__(
        self,
        data_dir: Path,
        *,
        exposure_limit: int | tuple[int, int] = LIMIT,
        max_ttl: float = MAX_TTL,
        db_file: str = DB_FILE,
        sweep_interval: float = SWEEP_INTERVAL,
        tail_size: int = TAIL_SIZE,
        log: JsonLog | None = None,
        clock: Callable[[], float] = time.time,
        run_sync: Runner = trio.to_thread.run_sync,
        instance: str | None = None,
    ):
        """`run_sync` is how every blocking call runs (opening and checking the store, a group's
        commit, reads of older updates, closing): a worker thread by default; a simulation under
        trio's MockClock passes `peer.groupcommit.run_inline`, so no thread's timing decides the
        order of events. `instance` is the new database's instance id (reservation ids are
        `R<instance>-n`): random by default; a simulation fixes it from its seed. An existing
        database keeps its own."""
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / db_file
        self.exposure_limit = exposure_limit
        self.max_ttl = max_ttl
        self.sweep_interval = sweep_interval
        self.tail_size = tail_size
        self.log = log or JsonLog("ledger", stream=None)
        self.clock = clock
        self.run_sync = run_sync
        self.instance = instance
        self.store: LedgerStore | None = None
        self.reader: LedgerReader | None = None
        # The published view: what the last committed group left. Replaced, never changed in place.
        self.positions: dict[str, Position] = {}
        self.published_seq = 0
        self.tail: list[dict[str, Any]] = []
        self.symbol_tails: dict[str, list[dict[str, Any]]] = {}
        self.committed = trio.Event()  # set (and replaced) after every commit
        self.counters: dict[str, int] = {"requests": 0, "groups": 0, "max_group": 0, "refused": 0}
        self.opened: dict[str, Any] = {}
        self._running = False
        self._failure: BaseException | None = None
        self._commits: GroupCommit[Op, Any] = GroupCommit(
            self._apply,
            publish=self._publish,
            on_failure=self._commit_failed,
            closed=lambda: LedgerUnavailable("the ledger stopped before this was committed"),
            clock=lambda: self.clock(),  # read as each group is sealed, as `now` of its ops
            run_sync=run_sync,
            limit=MAX_GROUP,
        )
        self._read_lock = trio.Lock()

    # --- start, write, stop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[dict] = trio.TASK_STATUS_IGNORED) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # trio's clock, not the wall's: a monotonic clock in a real peer, the virtual one in a
        # simulation (where the open, run inline, takes no time and the figure stays the same).
        started = trio.current_time()
        try:
            self.store = await self.run_sync(partial(
                LedgerStore.open, self.db_path, limit=self.exposure_limit, max_ttl=self.max_ttl, now=self.clock(),
                instance=self.instance))
        except LedgerDamaged as exc:
            self.log("ledger_refused", path=exc.path, reason=exc.reason, error=str(exc))
            raise
        try:
            self.reader = await self.run_sync(self.store.reader)
            self.positions = self.store.positions
            self.published_seq = self.store.last_seq
            self._extend_tail(self.store.recent)
            self.store.recent = []
            self.opened = {**self.store.opened, "open_s": round(trio.current_time() - started, 3)}
            self.log("ledger_started", **self.opened, limit=[self.store.exposure.limit_bid,
                                                              self.store.exposure.limit_ask])
            self._running = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commits.run)
                nursery.start_soon(self._sweeper)
                task_status.started(self.opened)
        finally:
            self._running = False
            self._commits.close()  # anything still queued fails with LedgerUnavailable
            with trio.CancelScope(shield=True):
                # Not under a read still running in a thread; closing the last connection
                # checkpoints the log into the database file.
                async with self._read_lock:
                    await self.run_sync(self._close)

    def _close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.store is not None:
            self.store.close()

    async def submit(self, op: Op) -> dict[str, Any]:
        """Queue one change, wait until the group holding it is committed, return its answer.

        Raises the op's Refusal (or InvalidInput) if the rules refused it (nothing changed), or
        LedgerUnavailable if the writer is not running. A caller cancelled while it waits does
        not un-queue its op: once queued, it is committed with its group.
        """
        if self._failure is not None:
            raise LedgerUnavailable(f"the ledger's writer stopped: {self._failure}")
        if not self._running:
            raise LedgerUnavailable("the ledger is not running (starting or stopping)")
        self.counters["requests"] += 1
        answer = await self._commits.submit(op)  # queued before its first checkpoint
        if isinstance(answer, BaseException):
            if isinstance(answer, Refusal):
                self.counters["refused"] += 1
            raise answer
        return answer

    # The three GroupCommit callbacks: the blocking commit (in a worker thread, `now` read in
    # the trio task as the group is sealed), then what a committed or a failed group means.

    def _apply(self, ops: list[Op], now: float) -> GroupResult:
        assert self.store is not None
        return self.store.apply(ops, now)

    def _publish(self, ops: list[Op], result: GroupResult) -> list[Any]:
        """Publish a committed group: the view, the stream's tail, the log; its answers."""
        assert self.store is not None
        self.counters["groups"] += 1
        self.counters["max_group"] = max(self.counters["max_group"], len(ops))
        self.positions = self.store.positions
        self._extend_tail(result.updates)
        for name, fields in result.events:
            self.log(name, **fields)
        if result.updates:
            self.committed.set()
            self.committed = trio.Event()
        return result.results

    def _commit_failed(self, exc: Exception, ops: list[Op]) -> BaseException:
        self._failure = exc
        self.log("ledger_write_failed", error=str(exc), ops=len(ops), reason="commit-failed")
        return LedgerUnavailable(f"not committed: {exc}")

    async def _sweeper(self) -> None:
        """Records expired reservations; they already count for nothing from their expires_at."""
        assert self.store is not None
        while True:
            now = self.clock()
            due = self.store.exposure.next_expiry()
            if due is not None and due <= now:
                answer = await self.submit(Sweep())
                if answer["expired"]:
                    continue
            delay = self.sweep_interval if due is None else min(self.sweep_interval, max(0.0, due - now))
            # At least a little: a clock that does not move must not make this a busy loop.
            await trio.sleep(max(delay, 0.01))

    # --- the stream ---------------------------------------------------------------------------

    def _extend_tail(self, updates: list[dict[str, Any]]) -> None:
        if not updates:
            return
        self.tail.extend(updates)
        if len(self.tail) > 2 * self.tail_size:
            del self.tail[: len(self.tail) - self.tail_size]
        for u in updates:
            tail = self.symbol_tails.setdefault(u["symbol"], [])
            tail.append(u)
            if len(tail) > 2 * self.tail_size:
                del tail[: len(tail) - self.tail_size]
        self.published_seq = updates[-1]["seq"]

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._read_lock:
            return await self.run_sync(fn, *args)

    async def updates_after(self, after: int, limit: int, symbols: set[str] | None = None
                            ) -> tuple[list[dict[str, Any]], int]:
        """Committed updates with seq > after (of `symbols` only, if given), in commit order,
        and the `after` to ask with next (past whatever was scanned)."""
        up_to = self.published_seq
        if after >= up_to:
            return [], after
        first = self.tail[0]["seq"] if self.tail else up_to + 1
        if after + 1 >= first:
            out, last = [], after
            for i in range(after + 1 - first, len(self.tail)):
                u = self.tail[i]
                last = u["seq"]
                if symbols is None or u["symbol"] in symbols:
                    out.append(u)
                    if len(out) >= limit:
                        break
            return out, last
        assert self.reader is not None
        out = await self._read(self.reader.updates_after, after, limit, up_to, sorted(symbols) if symbols else None)
        return out, (out[-1]["seq"] if len(out) >= limit else up_to)

    async def symbol_updates(self, symbol: str, after_version: int, limit: int) -> list[dict[str, Any]]:
        """The symbol's committed updates with position_version > after_version, in order."""
        current = self.position(symbol).position_version
        if after_version >= current:
            return []
        tail = self.symbol_tails.get(symbol)
        if tail and after_version + 1 >= tail[0]["position_version"]:
            start = after_version + 1 - tail[0]["position_version"]
            return tail[start:start + limit]
        assert self.reader is not None
        return await self._read(self.reader.symbol_updates, symbol, after_version, limit, self.published_seq)

    async def fills_after(self, after: int, limit: int, symbol: str | None = None) -> list[dict[str, Any]]:
        assert self.reader is not None
        return await self._read(self.reader.fills_after, after, limit, self.published_seq, symbol)

    # --- reading ------------------------------------------------------------------------------

    def position(self, symbol: str) -> Position:
        return self.positions.get(symbol) or Position(symbol)

    def usage(self) -> Usage:
        assert self.store is not None
        return self.store.exposure.usage(self.clock())

    async def reservation(self, reservation_id: str) -> Reservation | None:
        assert self.store is not None and self.reader is not None
        exposure = self.store.exposure
        found = exposure.active.get(reservation_id)
        if found is None:
            found = await self._read(self.reader.reservation, reservation_id)
        return exposure.view(found, self.clock()) if found is not None else None

    def status(self) -> dict[str, Any]:
        store = self.store
        usage = self.usage().to_json() if store is not None else {}
        usage.pop("active", None)
        return {
            "running": self._running,
            "failed": str(self._failure) if self._failure else None,
            "path": str(self.db_path),
            "last_seq": self.published_seq,
            "symbols": len(self.positions),
            "tail": {"first_seq": self.tail[0]["seq"] if self.tail else None, "size": len(self.tail)},
            "opened": self.opened,
            "exposure": usage,
            "store": store.status() if store is not None else {},
            **self.counters,
        }
