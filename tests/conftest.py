"""What every test may use: a wall clock the test moves, peer processes that never outlive a test;
and the order in which a parallel run hands out its tests (long ones first, spread over workers).

The rest of the kit is `peer.tools.processes` (shared with bench/): `poll_until`, `start_peer`,
`stop_process`, `stop_group`, `pid_alive`. Virtual time is pytest-trio's `autojump_clock`
fixture; DEVELOPERS.md ("Test kit") says when a test can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from peer.tools.processes import start_peer, stop_group

T0 = 1_700_000_000.0  # the fake clock's start: a plausible wall time (seconds since the epoch)


class FakeClock:
    """A wall clock (the `clock=` of the services, `time.time` in production) that moves only
    when the test moves it: `clock()` is now; `clock.advance(6)` or `clock.t += 6` moves it.
    It is not trio's clock: timers (trio.sleep, leases waited on with move_on_after) still run
    on trio's time, real or virtual."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    """A FakeClock at T0."""
    return FakeClock()


@pytest.fixture
async def peers(tmp_path: Path):
    """`await peers(role, *extra, data_dir=None, name=None, bound=20.0)` starts a `murmur peer`
    (port 0, local profile; its data in `tmp_path/<name>` unless given) and returns (Popen, HTTP
    URL) once /health answers. Every process started so is stopped (SIGTERM, then SIGKILL) when
    the test ends, whatever happened; a test may stop one earlier (`stop_process`)."""
    started = []

    async def start(role: str, *extra: str, data_dir: Path | None = None, name: str | None = None,
                    bound: float = 20.0):
        proc, url = await start_peer(role, data_dir or tmp_path / (name or role), *extra, name=name,
                                     bound=bound)
        started.append(proc)
        return proc, url

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop_group, started)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: xdist splits what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), start the long tests at once, one worker each in turn.

    `--dist worksteal` hands each worker a contiguous share of the collected order (the first
    N // workers to the first worker, and so on) and later moves tests from the tail of a busy
    worker's queue. A test of a minute or more (`@pytest.mark.early(seconds=...)`, the simulation
    sweeps) collected late would start late and finish the run alone, and several at the head of
    one share would run one after another while the other worker runs dry. So each long test
    goes to the head of the share whose long tests add up to the least (longest first), and the
    shares keep the sizes xdist will cut them at. Outside xdist the order is left alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    early = [item for item in items if item.get_closest_marker("early")]
    if workers < 2 or not early:
        return
    rest = [item for item in items if not item.get_closest_marker("early")]
    early.sort(key=lambda item: -item.get_closest_marker("early").kwargs["seconds"])
    sizes, left = [], len(items)
    for i in range(workers):  # xdist's own split: worksteal.check_schedule
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    heads: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in early:
        open_ = [w for w in range(workers) if len(heads[w]) < sizes[w]]
        w = min(open_, key=lambda k: load[k])
        heads[w].append(item)
        load[w] += item.get_closest_marker("early").kwargs["seconds"]
    ordered: list[pytest.Item] = []
    for w in range(workers):
        take = sizes[w] - len(heads[w])
        ordered += heads[w] + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest
