"""Helpers for the tests that a service is deterministic under the simulation's conditions.

What it is for: running one async scenario the way `murmur sim` runs a cluster (one `trio.run`
under `MockClock(autojump_threshold=0)` with `gossip.simcluster.deterministic_trio(seed)`), with
every way of starting a thread refused, and running the same scenario in a fresh interpreter under
another PYTHONHASHSEED. It must leave trio's scheduling as it found it for the tests that follow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio._threads
from trio.testing import MockClock

from gossip.simcluster import deterministic_trio

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0  # the virtual wall clock's start, as in tests/conftest.py


def virtual_wall() -> float:
    """The wall clock a simulated peer reads: T0 plus trio's virtual time."""
    return T0 + trio.current_time()


def run_simulated(main: Callable[[], Awaitable[Any]], seed: int) -> Any:
    """`trio.run(main)` as the simulation runs it: virtual clock, deterministic scheduling, and
    no thread: any attempt to start one (trio.to_thread, or a thread of its own) raises."""
    from trio._core import _run

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread was started under the simulation")

    saved = _run._ALLOW_DETERMINISTIC_SCHEDULING, _run._r.getstate()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trio._threads, "start_thread_soon", refuse)
        patch.setattr(trio.to_thread, "run_sync", refuse)
        patch.setattr(threading.Thread, "start", refuse)
        deterministic_trio(seed)
        try:
            return trio.run(main, clock=MockClock(autojump_threshold=0))
        finally:
            _run._ALLOW_DETERMINISTIC_SCHEDULING = saved[0]  # type: ignore[misc]
            _run._r.setstate(saved[1])


def in_fresh_interpreter(module: str, function: str, data_dir: Path, hashseed: str) -> str:
    """`module.function(data_dir)` (which prints a digest) in a new interpreter with the given
    PYTHONHASHSEED: what it prints."""
    code = f"import sys; from {module} import {function}; {function}(sys.argv[1])"
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, check=True)
    return out.stdout.strip()
