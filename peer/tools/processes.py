"""The kit the tests and the benchmarks share: start a peer process, wait with a bound, stop.

What it is for: the real-process tests (tests/peer/) and the scripts in bench/ start
`murmur peer` processes, wait until each answers `/health`, ask whether a pid is still alive,
stop whatever they started, and wait for conditions with a bound. One copy of each serves both.
`poll_until` also serves in-process tests, in real time or on trio's virtual clock alike.

What it must never do: wait without a bound, or signal a process it was not handed (everything
here acts on the Popen objects and pids its caller gives it).

Processes started here get no PR_SET_PDEATHSIG: `start_peer` forks from a trio worker thread (as
`trio.lowlevel.open_process` does), and that signal would fire when the thread retires.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from peer.runner import PEER_FILE

CLI = [sys.executable, "-m", "peer.cli"]
# After SIGKILL a process is gone at once unless the machine is stalled; this bounds the wait.
KILL_WAIT = 5.0

T = TypeVar("T")


class NotInTime(AssertionError):
    """What `poll_until` waited for did not happen within its bound (the message says what)."""


class PeerDidNotStart(RuntimeError):
    """A peer process exited, or did not answer /health in time, while it was starting."""


# --- waiting ----------------------------------------------------------------------------------


async def poll_until(
    predicate: Callable[[], T | Awaitable[T]], bound: float, what: str, *, every: float = 0.02
) -> T:
    """Call `predicate` (plain or async) every `every` s until it returns something truthy, and
    return that. After `bound` seconds raise NotInTime naming `what` and the last value seen.

    Seconds are trio's: on the virtual clock (pytest-trio's `autojump_clock`) both the bound and
    the period are virtual. In-process, prefer waiting on a trio.Event when the code under test
    has one to offer; this is for conditions nobody signals (another process, a counter).
    """
    last: Any = None
    with trio.move_on_after(bound):
        while True:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            await trio.sleep(every)
    seen = repr(last)
    raise NotInTime(f"not within {bound:g} s: {what} (last seen: {seen[:500]})")


# --- processes --------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a container's init may never reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_hard(pid: int) -> None:
    """SIGCONT (a stopped process would sit on the kill) then SIGKILL; gone already is fine."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return


def _running(proc: subprocess.Popen | int) -> bool:
    if isinstance(proc, int):
        return pid_alive(proc)
    return proc.poll() is None


def _pid(proc: subprocess.Popen | int) -> int:
    return proc if isinstance(proc, int) else proc.pid


def stop_group(
    procs: Iterable[subprocess.Popen | int], *, grace: float = 10.0, signum: int = signal.SIGTERM
) -> list[int]:
    """Stop a group of processes this run started (Popen objects, or pids it read from its own
    cluster.json): each gets SIGCONT and `signum` (SIGTERM: leave gracefully), then whatever is
    still there after `grace` seconds is SIGKILLed. Popen objects are reaped. Returns the pids
    that had to be killed. Blocking: from async code, run it in a thread (see `stop_process`)."""
    procs = list(procs)
    for p in procs:
        if _running(p):
            for sig in (signal.SIGCONT, signum):
                try:
                    os.kill(_pid(p), sig)
                except (ProcessLookupError, PermissionError):
                    break
    deadline = time.monotonic() + grace
    while any(_running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = [_pid(p) for p in procs if _running(p)]
    for pid in killed:
        kill_hard(pid)
    deadline = time.monotonic() + KILL_WAIT
    while any(_running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if not isinstance(p, int):
            try:
                p.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass
    return killed


async def stop_process(
    proc: subprocess.Popen | int, *, grace: float = 10.0, signum: int = signal.SIGTERM
) -> list[int]:
    """`stop_group` for one process from async code: in a worker thread, shielded, so that a
    test being cancelled (its fail_after ran out) still stops what it started."""
    with trio.CancelScope(shield=True):
        return await trio.to_thread.run_sync(
            partial(stop_group, [proc], grace=grace, signum=signum)
        )


# --- one peer -----------------------------------------------------------------------------------


def peer_argv(role: str, data_dir: Path, *extra: str, name: str | None = None) -> list[str]:
    """`murmur peer` with gossip and HTTP on 127.0.0.1 port 0 and the local profile, sealed with
    the key file of the directory that holds `data_dir` (`shared_key_file`), unless `extra`
    names a --key-file or --insecure."""
    security = [] if {"--key-file", "--insecure"} & set(extra) else [
        "--key-file", str(shared_key_path(Path(data_dir).parent))]
    return [*CLI, "peer", "--role", role, "--name", name or role, "--bind", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--data-dir", str(data_dir), "--profile", "local", "--quiet",
            *security, *extra]


def shared_key_path(directory: Path) -> Path:
    return Path(directory) / "cluster.key"


def shared_key_file(directory: Path) -> Path:
    """`directory`/cluster.key, made once: peers whose data directories sit side by side (as a
    test's tmp_path/a, tmp_path/b) share one cluster key. Safe when several threads race to make
    it: each writes its own file and links it in; the first link wins. Blocking."""
    from gossip.keyring import new_key_file

    path = shared_key_path(directory)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    new_key_file(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def spawn_peer(role: str, data_dir: Path, *extra: str, name: str | None = None) -> subprocess.Popen:
    """Start `murmur peer` (see `peer_argv`); its stderr goes to `<data_dir>.stderr` beside the
    data directory. A peer.json left by an earlier run is removed first, so that the one read
    afterwards is this process's. Blocking (a fork and a file open)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PEER_FILE).unlink(missing_ok=True)
    if not {"--key-file", "--insecure"} & set(extra):
        shared_key_file(data_dir.parent)
    with open(stderr_path(data_dir), "ab") as err:
        return subprocess.Popen(peer_argv(role, data_dir, *extra, name=name),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)


def stderr_path(data_dir: Path) -> Path:
    return Path(data_dir).parent / f"{Path(data_dir).name}.stderr"


async def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file another process writes, or None (absent, half written, not
    an object)."""
    try:
        data = json.loads(await trio.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def wait_healthy(
    proc: subprocess.Popen, data_dir: Path, bound: float, *, every: float = 0.02
) -> str:
    """Until the peer wrote its peer.json (this pid) and its `/health` answers 200; returns its
    HTTP URL. Raises PeerDidNotStart if it exits first or `bound` seconds pass."""
    what = f"{Path(data_dir).name} (pid {proc.pid}) answers /health"

    async with httpx.AsyncClient(timeout=1.0) as client:

        async def healthy() -> str | None:
            if proc.poll() is not None:
                raise PeerDidNotStart(f"{what}: it exited with {proc.returncode}; see "
                                      f"{stderr_path(data_dir)}")
            info = await read_json(Path(data_dir) / PEER_FILE)
            if info is None or info.get("pid") != proc.pid or "http" not in info:
                return None
            try:
                r = await client.get(f"{info['http']}/health")
            except httpx.HTTPError:
                return None
            return info["http"] if r.status_code == 200 else None

        try:
            return await poll_until(healthy, bound, what, every=every)
        except NotInTime as exc:
            raise PeerDidNotStart(f"{exc}; see {stderr_path(data_dir)}") from None


async def start_peer(
    role: str, data_dir: Path, *extra: str, name: str | None = None, bound: float = 20.0,
    every: float = 0.02,
) -> tuple[subprocess.Popen, str]:
    """One `murmur peer --role ROLE` process on port 0: returns it and its HTTP URL once
    `/health` answers. If it does not come up it is killed and PeerDidNotStart says why."""
    proc = await trio.to_thread.run_sync(partial(spawn_peer, role, data_dir, *extra, name=name))
    try:
        return proc, await wait_healthy(proc, data_dir, bound, every=every)
    except BaseException:
        await stop_process(proc, grace=0)
        raise


async def run_command(argv: list[str], *, bound: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `argv` to its end (e.g. `[*CLI, "check", DIR]`) with its output captured as text; the
    exit code is the caller's to judge. After `bound` seconds it is stopped and trio.TooSlowError
    raised."""
    with trio.fail_after(bound):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL)
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))
