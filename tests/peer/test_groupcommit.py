"""Group commit (`peer/groupcommit.py`) on its own: batches, results, failure, close, cancellation.

Most tests run the commit inline (`run_inline`) or behind a virtual-clock sleep that stands for
the fsync, so the order of events is the scheduler's alone; one test uses the real worker
thread to show that a commit under way is never abandoned.
"""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from peer.groupcommit import GroupCommit, run_inline


class Disk:
    """A commit that records each batch it was given and answers `item * 10` for each item."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.fail_on = fail_on  # the index of the batch that fails

    def commit(self, batch: list[int]) -> list[int]:
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            self.batches.append(batch)
            raise OSError(5, "Input/output error")
        self.batches.append(batch)
        return [item * 10 for item in batch]


async def fsync_takes_a_second(fn, *args):
    """A runner for the virtual clock: the commit takes one (virtual) second before it runs."""
    await trio.sleep(1)
    return fn(*args)


async def test_concurrent_submits_are_one_commit_and_each_gets_its_own_result():
    disk = Disk()
    commits = GroupCommit(disk.commit, run_sync=run_inline)
    results: dict[int, int] = {}

    async def submitter(i):
        results[i] = await commits.submit(i)

    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        async with trio.open_nursery() as submitters:
            for i in range(50):
                submitters.start_soon(submitter, i)
        commits.close()
    assert len(disk.batches) == 1 and sorted(disk.batches[0]) == list(range(50))
    assert results == {i: i * 10 for i in range(50)}


async def test_the_next_batch_gathers_while_one_commits(autojump_clock):
    disk = Disk()
    commits = GroupCommit(disk.commit, run_sync=fsync_takes_a_second)
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        first = trio.Event()

        async def submit_first():
            assert await commits.submit(1) == 10
            first.set()

        nursery.start_soon(submit_first)
        await trio.sleep(0.5)  # batch [1] is committing
        async with trio.open_nursery() as submitters:
            for i in (2, 3, 4):
                submitters.start_soon(commits.submit, i)
            await first.wait()
            assert trio.current_time() == pytest.approx(1.0)
        commits.close()
    assert [sorted(b) for b in disk.batches] == [[1], [2, 3, 4]]  # trio starts tasks in any order
    assert trio.current_time() == pytest.approx(2.0)


async def test_limit_and_weight_bound_a_batch_which_always_takes_at_least_one_item():
    batches: list[list[str]] = []

    def commit(batch):
        batches.append(batch)
        return [len(s) for s in batch]

    commits = GroupCommit(commit, run_sync=run_inline, limit=8, weight=len)
    words = ["aaaa", "bbb", "c", "dddddddddddd", "ee", "ffffff", "g"]
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        assert await commits.submit_many(words) == [len(w) for w in words]
        commits.close()
    # Greedy in queue order: the overweight word goes alone.
    assert batches == [["aaaa", "bbb", "c"], ["dddddddddddd"], ["ee", "ffffff"], ["g"]]


async def test_submit_many_queues_its_items_together_and_in_order(autojump_clock):
    disk = Disk()
    commits = GroupCommit(disk.commit, run_sync=run_inline, limit=2, delay=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        assert await commits.submit_many([]) == []
        async with trio.open_nursery() as submitters:
            submitters.start_soon(commits.submit_many, [1, 2, 3])
            await trio.testing.wait_all_tasks_blocked()
            submitters.start_soon(commits.submit_many, [4, 5])
        commits.close()
    assert disk.batches == [[1, 2], [3, 4], [5]]


async def test_publish_runs_before_anyone_is_woken_and_the_clock_when_the_batch_is_sealed(
    autojump_clock,
):
    seen = []
    published: list[list[int]] = []

    def commit(batch, now):
        seen.append((batch, now))
        return now

    def publish(batch, now):
        published.append(batch)
        return [(item, now) for item in batch]

    commits = GroupCommit(
        commit, publish=publish, clock=trio.current_time, run_sync=run_inline, delay=5
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        start = trio.current_time()
        item, now = await commits.submit(7)
        assert published == [[7]]
        assert (item, now) == (7, start + 5)
        commits.close()
    assert seen == [([7], start + 5)]


async def test_a_failed_commit_fails_its_batch_everything_queued_and_every_later_submit(
    autojump_clock,
):
    disk = Disk(fail_on=1)  # the second batch fails
    failures: list[BaseException] = []

    class Refused(Exception):
        pass

    def on_failure(exc, batch):
        failures.append(exc)
        return Refused(f"not committed: {exc}")

    commits = GroupCommit(disk.commit, on_failure=on_failure, run_sync=fsync_takes_a_second)
    outcome: dict[int, object] = {}

    async def submitter(i):
        try:
            outcome[i] = await commits.submit(i)
        except Refused as exc:
            outcome[i] = exc

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="Input/output")):
        async with trio.open_nursery() as nursery:
            await nursery.start(commits.run)
            nursery.start_soon(submitter, 1)
            await trio.sleep(0.5)  # [1] is committing
            nursery.start_soon(submitter, 2)
            nursery.start_soon(submitter, 3)
            await trio.sleep(1)  # [2, 3] is committing, and fails
            nursery.start_soon(submitter, 4)  # queued: never committed
    assert [sorted(b) for b in disk.batches] == [[1], [2, 3]]
    assert outcome[1] == 10, "a committed batch keeps its results"
    assert len(failures) == 1
    error = commits.error
    assert isinstance(error, Refused) and outcome[2] is outcome[3] is outcome[4] is error
    with pytest.raises(Refused) as later:
        await commits.submit(5)
    assert later.value is error


async def test_close_commits_what_is_queued_then_refuses_new_items():
    disk = Disk()
    commits = GroupCommit(disk.commit, closed=lambda: RuntimeError("closed"), run_sync=run_inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        async with trio.open_nursery() as submitters:
            for i in range(3):
                submitters.start_soon(commits.submit, i)
            await trio.testing.wait_all_tasks_blocked()
            commits.close()  # before the worker has taken them
        with pytest.raises(RuntimeError, match="closed"):
            await commits.submit(9)
    assert [sorted(b) for b in disk.batches] == [[0, 1, 2]]
    with pytest.raises(RuntimeError, match="runs once"):
        await commits.run()


async def test_items_submitted_before_run_wait_for_it_or_fail_if_it_is_closed_first():
    disk = Disk()
    commits = GroupCommit(disk.commit, run_sync=run_inline)
    async with trio.open_nursery() as nursery:
        results = []

        async def submitter(i):
            results.append(await commits.submit(i))

        nursery.start_soon(submitter, 1)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(commits.run)
        commits.close()
    assert results == [10]

    never_run = GroupCommit(disk.commit, closed=lambda: RuntimeError("closed"))
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="closed")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(never_run.submit, 2)
            await trio.testing.wait_all_tasks_blocked()
            never_run.close()


async def test_a_cancelled_submitter_keeps_its_item_in_the_batch(autojump_clock):
    disk = Disk()
    commits = GroupCommit(disk.commit, run_sync=run_inline, delay=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        with trio.move_on_after(0.5):
            await commits.submit(1)
        assert await commits.submit(2) == 20
        commits.close()
    assert disk.batches == [[1, 2]]


async def test_cancelling_the_worker_fails_what_is_queued(autojump_clock):
    disk = Disk()
    commits = GroupCommit(disk.commit, closed=lambda: RuntimeError("stopped"), delay=60)
    outcome = []

    async def submitter():
        try:
            await commits.submit(1)
        except RuntimeError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(commits.run)
            outer.start_soon(submitter)
            await trio.sleep(1)  # the batch is held open (delay), not sealed
            nursery.cancel_scope.cancel()
    assert [str(e) for e in outcome] == ["stopped"] and disk.batches == []
    with pytest.raises(RuntimeError, match="stopped"):
        await commits.submit(2)


async def test_cancelling_the_worker_finishes_the_commit_under_way_in_its_thread():
    """With the default runner (a worker thread) a commit is never abandoned: the batch under
    way is committed and answered; what queued behind it fails."""
    entered = trio.Event()
    release = threading.Event()
    token = trio.lowlevel.current_trio_token()
    batches = []

    def commit(batch):
        batches.append(batch)
        trio.from_thread.run_sync(entered.set, trio_token=token)
        release.wait()
        return batch

    commits = GroupCommit(commit, closed=lambda: RuntimeError("stopped"))
    outcome = {}

    async def submitter(i):
        try:
            outcome[i] = await commits.submit(i)
        except RuntimeError as exc:
            outcome[i] = str(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(commits.run)
                outer.start_soon(submitter, 1)
                await entered.wait()
                outer.start_soon(submitter, 2)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
                release.set()
    assert batches == [[1]]
    assert outcome == {1: 1, 2: "stopped"}


async def test_the_ledger_group_commits_through_an_inline_runner(tmp_path):
    # The ledger takes the runner a simulation passes (peer.ledger.service uses this primitive).
    from ledger.store import RecordFills, validate_fill
    from peer.ledger.service import LedgerService

    def fill(n: int) -> dict:
        return validate_fill({"fill_id": f"F-{n}", "seq": n, "order_id": f"o{n}", "symbol": "AAPL",
                              "side": "buy", "quantity": 1, "price": 100, "quote_id": "q",
                              "reservation_id": None, "created_at": 1_700_000_000.0})

    service = LedgerService(tmp_path, clock=lambda: 1_700_000_000.0, run_sync=run_inline)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            async with trio.open_nursery() as clients:
                for i in range(1, 21):
                    clients.start_soon(service.submit, RecordFills((fill(i),)))
            assert service.published_seq == 20
            assert service.counters["groups"] == 1 and service.counters["max_group"] == 20
            nursery.cancel_scope.cancel()
