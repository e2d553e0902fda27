"""Group commit: concurrent submitters share one blocking commit (one write, one fsync).

What it is for: the exchange's tape and the ledger both make a change durable before they
answer, and a durable commit costs an fsync. Here every `submit(item)` queues its item and
waits; one worker task (`run`) takes everything queued (up to `limit`), calls the blocking
`commit(batch)` once, and wakes each submitter with its own result. While one batch commits the
next one gathers, so the number of commits grows with what the disk allows, not with the
submitters.

How the blocking call runs is an argument, `run_sync` (default `trio.to_thread.run_sync`, a
worker thread): a simulation under trio's MockClock passes `run_inline`, so no thread timing is
hard-wired into the order of events.

It must never wake a submitter before the commit holding its item has returned, never wake one
twice, and never retry a commit: once `commit` raises, nobody knows what reached the disk (after
a failed fsync the kernel may have dropped the dirty pages, so a retry that "succeeds" proves
nothing). The failed batch, everything queued and every later submit fail with one error, and
`run` re-raises what `commit` raised. A submitter cancelled while it waits does not take its item
back: once queued it keeps its place and is committed with its batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")

Runner = Callable[..., Awaitable[Any]]


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    """A `run_sync` that calls `fn(*args)` in the trio thread, for deterministic simulations.

    No checkpoint after the call on purpose: a cancellation must not land between a commit
    that returned and the result that reports it.
    """
    return fn(*args)


class _Batch:
    """Items that will be committed together, and the one event that wakes all their submitters.

    A batch is open while it is the last one queued and under `limit`; the worker seals the first
    one by taking it off the queue.
    """

    __slots__ = ("items", "weight", "results", "error", "done")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.weight = 0
        self.results: Sequence[Any] = ()
        self.error: BaseException | None = None
        self.done = trio.Event()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class GroupCommit(Generic[T, R]):
    """A queue of items, committed in batches by one worker task.

    - `commit(batch)` (blocking; `commit(batch, clock())` when `clock` is given, the clock read
      in the worker task as the batch is sealed, so commit itself reads no clock) makes the
      batch durable and returns what `publish` needs.
    - `publish(batch, outcome)` runs in the worker task after commit returns and before anyone
      is woken (publish the new state, count); it returns one result per item. Without it the
      outcome is that sequence.
    - `on_failure(exc, batch)` runs in the worker task once, when commit (or publish) raises; it
      returns the error submitters see (default: `exc` itself).
    - `closed()` makes the error of a submit when the worker does not take items (closed or
      stopped), and of items still queued when it stops without committing them.
    - `limit` bounds a batch by the sum of `weight(item)` (1 each by default); a batch always
      takes at least one item. `delay` (seconds) holds each batch open that long before it is
      sealed, trading latency for bigger batches; 0 only lets submitters that are already
      runnable join.

    Items may be submitted before `run` starts: they wait for it.
    """

    def __init__(
        self,
        commit: Callable[..., Any],
        *,
        publish: Callable[[list[T], Any], Sequence[R]] | None = None,
        on_failure: Callable[[Exception, list[T]], BaseException] | None = None,
        closed: Callable[[], BaseException] = lambda: trio.ClosedResourceError(
            "the group commit is not taking items"
        ),
        clock: Callable[[], Any] | None = None,
        run_sync: Runner = trio.to_thread.run_sync,
        limit: int | None = None,
        weight: Callable[[T], int] | None = None,
        delay: float = 0.0,
    ):
        self._commit = commit
        self._publish = publish
        self._on_failure = on_failure
        self._closed = closed
        self._clock = clock
        self._run_sync = run_sync
        self._limit = limit
        self._weight = weight
        self._delay = delay
        self._queue: deque[_Batch] = deque()  # the last one is open, the others full
        self._sealed: _Batch | None = None  # the batch being committed
        self._wakeup = trio.Event()
        self._started = False
        self._closing = False
        self._stopped = False
        self.error: BaseException | None = None  # what every submit raises after a failure

    # --- submitting ---------------------------------------------------------------------------

    async def submit(self, item: T) -> R:
        """Queue `item`; return its result once the batch holding it is committed."""
        self._check_open()
        batch = self._enqueue(item)
        index = len(batch.items) - 1
        self._wakeup.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    async def submit_many(self, items: Iterable[T]) -> list[R]:
        """Queue `items` in order, all at once; return their results once all are committed.

        They may be split across batches (`limit`); if any of those fails, this raises.
        """
        self._check_open()
        places = []
        for item in items:
            batch = self._enqueue(item)
            places.append((batch, len(batch.items) - 1))
        if not places:
            return []
        self._wakeup.set()
        results = []
        for batch, index in places:
            await batch.done.wait()  # returns at once for a batch already waited for
            if batch.error is not None:
                raise batch.error
            results.append(batch.results[index])
        return results

    def _enqueue(self, item: T) -> _Batch:
        weight = 1 if self._weight is None else self._weight(item)
        batch = self._queue[-1] if self._queue else None
        if batch is None or (
            self._limit is not None and batch.items and batch.weight + weight > self._limit
        ):
            batch = _Batch()
            self._queue.append(batch)
        batch.items.append(item)
        batch.weight += weight
        return batch

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing or self._stopped:
            raise self._closed()

    # --- the worker ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches until `close()` has been called and the queue is empty.

        On cancellation the batch whose commit is under way finishes first (with the default
        runner) and its submitters get their results; items still queued fail with `closed()`.
        After a failed commit it fails everyone (see the module doc) and re-raises.
        """
        if self._started:
            raise RuntimeError("a GroupCommit runs once")
        self._started = True
        try:
            task_status.started()
            await self._loop()
        finally:
            self._stopped = True
            error = self.error or self._closed()
            if self._sealed is not None:
                # Only a runner that can be cancelled leaves a sealed batch here: its fate is
                # unknown, so it is failed, never acknowledged.
                self._sealed.fail(error)
                self._sealed = None
            self._fail_queued(error)

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if self._delay > 0:
                await trio.sleep(self._delay)
            else:
                # Submitters already runnable in this scheduler pass join the batch.
                await trio.lowlevel.checkpoint()
            batch = self._sealed = self._queue.popleft()  # later submits open the next batch
            items = batch.items
            try:
                if self._clock is None:
                    outcome = await self._run_sync(self._commit, items)
                else:
                    outcome = await self._run_sync(self._commit, items, self._clock())
                results = outcome if self._publish is None else self._publish(items, outcome)
                if len(results) != len(items):
                    raise ValueError(f"{len(results)} results for a batch of {len(items)} items")
            except Exception as exc:
                self.error = exc if self._on_failure is None else self._on_failure(exc, items)
                batch.fail(self.error)
                self._sealed = None
                self._fail_queued(self.error)
                raise
            self._sealed = None
            batch.results = results
            batch.done.set()

    def _fail_queued(self, error: BaseException) -> None:
        queued, self._queue = self._queue, deque()
        for batch in queued:
            batch.fail(error)

    def close(self) -> None:
        """Take no more items; those queued are still committed, then `run` returns.

        If `run` never started (or has stopped), queued items fail now with `closed()`.
        """
        self._closing = True
        self._wakeup.set()
        if not self._started or self._stopped:
            self._stopped = True
            self._fail_queued(self.error or self._closed())
