"""Shared machinery for the real-process benchmarks: start clusters, poll views, clean up.

What it is for: `detection_real.py`, `launch_scale.py` and `soak_starved.py` start whole clusters
of OS processes on 127.0.0.1 (murmur through `murmur launch`, or kinship nodes through
`bench/kinship_node.py`), read every peer's `GET /members` concurrently with httpx, read the
peers' JSON logs, and sample CPU time from /proc. Every process started here is stopped in
`stop()`, which ends with SIGCONT + SIGKILL by pid for anything still there (pids from
cluster.json, the Popen objects, and a /proc scan for processes whose command line holds this
run's own data directory). It must never kill a process it did not start.

Start clusters from the main thread (not `trio.to_thread`): children get PR_SET_PDEATHSIG, which
the kernel fires when the *thread* that forked them exits, and trio retires idle worker threads
after about 10 s, which would kill the launcher and with it every peer.

These are scripts for a person, not tests: CI never runs them.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from peer.tools.processes import NotInTime, kill_hard, pid_alive, poll_until, stop_group

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


# -- reporting --------------------------------------------------------------------------------


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def busy_foreign_processes(window: float = 1.0, threshold: float = 10.0) -> list[str]:
    """Processes not started by this script that used > threshold % of a core over `window`."""
    mine = {os.getpid()}

    def snap() -> dict[int, tuple[float, str, int]]:
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                rest = stat.rsplit(")", 1)[1].split()
                ppid = int(rest[1])
                ticks = int(rest[11]) + int(rest[12])
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out[int(d.name)] = (ticks / CLK_TCK, cmd.strip()[:100], ppid)
            except (OSError, ValueError, IndexError):
                continue
        return out

    a = snap()
    time.sleep(window)
    b = snap()
    busy = []
    for pid, (t1, cmd, ppid) in b.items():
        if pid in mine or ppid in mine or pid not in a:
            continue
        pct = 100.0 * (t1 - a[pid][0]) / window
        if pct >= threshold:
            busy.append(f"pid {pid} {pct:.0f}% {cmd}")
    return busy


class ForeignLoad(threading.Thread):
    """Samples, every `every` s, the CPU used by processes that are not this script or its
    descendants (other people's tests on a shared machine), so the output can say whether the
    figures were measured on a quiet machine."""

    def __init__(self, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.halt = threading.Event()
        self.samples: list[float] = []  # % of one core, per interval
        self.by_cmd: dict[str, float] = {}  # CPU seconds per command line

    @staticmethod
    def _snap() -> dict[int, tuple[int, float, str]]:
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                rest = (d / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ticks = (int(rest[11]) + int(rest[12])) / CLK_TCK
                out[int(d.name)] = (int(rest[1]), ticks, cmd.strip()[:80])
            except (OSError, ValueError, IndexError):
                continue
        return out

    @staticmethod
    def _mine(snap: dict[int, tuple[int, float, str]]) -> set[int]:
        mine = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in snap.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        return mine

    def run(self) -> None:
        prev = self._snap()
        t_prev = time.monotonic()
        while not self.halt.wait(self.every):
            cur = self._snap()
            t = time.monotonic()
            mine = self._mine(cur)
            total = 0.0
            for pid, (_, ticks, cmd) in cur.items():
                if pid in mine or pid not in prev or not cmd:
                    continue
                d = max(0.0, ticks - prev[pid][1])
                total += d
                if d > 0:
                    self.by_cmd[cmd] = self.by_cmd.get(cmd, 0.0) + d
            self.samples.append(100.0 * total / max(1e-9, t - t_prev))
            prev, t_prev = cur, t

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(timeout=5)
        top = sorted(self.by_cmd.items(), key=lambda kv: -kv[1])[:3]
        return {
            "mean_pct_of_core": round(statistics.fmean(self.samples), 1) if self.samples else None,
            "max_pct_of_core": round(max(self.samples), 1) if self.samples else None,
            "share_of_samples_above_20pct": round(
                sum(1 for x in self.samples if x > 20) / len(self.samples), 2
            )
            if self.samples
            else None,
            "top": [f"{round(sec, 1)} cpu-s {cmd}" for cmd, sec in top if sec >= 1.0],
        }


def report_foreign(load: dict[str, Any]) -> None:
    print(
        f"# other processes during the run (not started by this script): mean "
        f"{load['mean_pct_of_core']}% of a core, max {load['max_pct_of_core']}%, "
        f"{load['share_of_samples_above_20pct']} of 2-s samples above 20%"
    )
    for line in load["top"]:
        print(f"#   {line}")


def source_fingerprint() -> str:
    """sha256 (12 hex) over murmur's gossip/ and peer/ sources: other people edit them while a
    benchmark runs, and a peer started after an edit runs the new code."""
    h = hashlib.sha256()
    for d in ("gossip", "peer"):
        for f in sorted((ROOT / d).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def murmur_profile_line(name: str, overrides: list[str] | None = None) -> str:
    """The murmur protocol parameters a cluster launched now with this profile would use."""
    from gossip.config import profile

    kv = dict(o.split("=", 1) for o in overrides or [])
    p = profile(name)
    text = ", ".join(f"{k} {v}" for k, v in p.to_dict().items() if k != "name")
    return f"murmur profile {p.name}: {text}" + (f"; overrides {kv}" if kv else "")


def add_murmur_set(ap: argparse.ArgumentParser, flag: str = "--set") -> None:
    """The option that overrides a murmur protocol parameter, repeatable, as `args.murmur_set`;
    `launch_set_args(args)` turns it into `murmur launch` arguments."""
    ap.add_argument(flag, dest="murmur_set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a murmur protocol parameter (`murmur launch --set`)")


def launch_set_args(args: Any) -> list[str]:
    return [a for kv in args.murmur_set for a in ("--set", kv)]


def header(title: str, method: list[str], args: Any) -> dict[str, Any]:
    """Print the machine/method header; return the machine facts for the JSON line."""
    machine = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": now_iso(),
        "loadavg_at_start": loadavg(),
        "murmur_source_sha256": source_fingerprint(),
    }
    try:
        import kinship

        machine["kinship"] = getattr(kinship, "__version__", "?")
    except ImportError:
        machine["kinship"] = None
    busy = busy_foreign_processes()
    machine["other_busy_processes_at_start"] = busy
    print(f"# {title}")
    print(
        f"# machine: nproc={machine['nproc']}  python {machine['python']}  "
        f"{machine['platform']}  date {machine['date']}"
    )
    print(f"# loadavg at start: {machine['loadavg_at_start']}")
    print(f"# murmur source (gossip/, peer/) sha256: {machine['murmur_source_sha256']}")
    if busy:
        print("# WARNING: other processes were busy at start (figures may be distorted):")
        for line in busy:
            print(f"#   {line}")
    else:
        print("# no other process above 10% of a core at start")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# arguments: {vars(args)}")
    print("# method:")
    for line in method:
        print(f"#   {line}")
    print(flush=True)
    global _MONITOR
    _MONITOR = ForeignLoad()
    _MONITOR.start()
    return machine


_MONITOR: ForeignLoad | None = None


def finish_machine(machine: dict[str, Any]) -> None:
    """Stop the load monitor started by `header`; print and record what else ran meanwhile."""
    if _MONITOR is None:
        return
    load = _MONITOR.stop()
    machine["other_processes_during_run"] = load
    machine["loadavg_at_end"] = loadavg()
    print()
    report_foreign(load)
    print(f"# loadavg at end: {machine['loadavg_at_end']}")
    end = source_fingerprint()
    machine["murmur_source_sha256_at_end"] = end
    if end != machine.get("murmur_source_sha256"):
        print(
            f"# WARNING: murmur's source changed during the run ({machine.get('murmur_source_sha256')}"
            f" -> {end}): clusters started after the edit ran the new code"
        )


def keep_or_remove(base: Path, args: Any, what: str = "logs") -> None:
    """At the end of a run: say where its data directory is if it is kept (`--keep`, or a
    `--data-dir` of the caller's), else remove it."""
    if args.keep or args.data_dir:
        print(f"\ndata ({what}) kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


def json_line(bench: str, machine: dict[str, Any], args: Any, **fields: Any) -> None:
    """Print the run's one JSON line (what bench/results/ keeps): the benchmark, the machine,
    the arguments (values that are not JSON, such as paths, as text), then `fields`."""
    print(json.dumps({"bench": bench, "machine": machine, "args": vars(args), **fields}, default=str))


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None, "min": None, "mean": None}
    return {
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)))
    return "\n".join(out)


# -- processes --------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the benchmark dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def pids_with_arg(text: str) -> list[int]:
    """Pids whose command line contains `text` (this run's unique data directory)."""
    found = []
    needle = text.encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_start_wall(pid: int) -> float | None:
    """Wall time a process was created (/proc/<pid>/stat starttime against /proc/uptime)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - int(rest[19]) / CLK_TCK)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def sample_cpu(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU % of one core per process over `seconds`, plus the whole machine's busy %."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    m0 = machine_busy_seconds()
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    m1 = machine_busy_seconds()
    per = {
        n: 100.0 * (after[n] - before[n]) / elapsed
        for n in pids
        if before[n] is not None and after[n] is not None
    }
    values = list(per.values())
    ncpu = os.cpu_count() or 1
    return {
        "seconds": round(elapsed, 2),
        "per_peer_pct": {n: round(v, 2) for n, v in per.items()},
        "mean_pct": round(statistics.fmean(values), 2) if values else None,
        "median_pct": round(statistics.median(values), 2) if values else None,
        "max_pct": round(max(values), 2) if values else None,
        "total_pct": round(sum(values), 1),
        "machine_busy_pct_of_all_cores": round(
            100.0 * (m1[0] - m0[0]) / max(1e-9, (m1[1] - m0[1])), 1
        ),
        "ncpu": ncpu,
    }


STALL_CODE = r"""
import sys, time
out = open(sys.argv[1], "a", buffering=1)
step, thresh = 0.01, float(sys.argv[2])
def cpu():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f[:8]) - f[3] - f[4], f[7]
last_t = time.monotonic(); last_cpu = cpu(); last_report = last_t
worst = 0.0
while True:
    t0 = time.monotonic()
    time.sleep(step)
    late = time.monotonic() - t0 - step
    if late > thresh:
        out.write(f"stall {time.time():.3f} {late * 1000:.0f}\n")
    worst = max(worst, late)
    now = time.monotonic()
    if now - last_report >= 1.0:
        c = cpu()
        out.write(f"sec {time.time():.3f} busy_ticks {c[0] - last_cpu[0]} steal_ticks "
                  f"{c[1] - last_cpu[1]} worst_late_ms {worst * 1000:.0f}\n")
        last_cpu, last_report, worst = c, now, 0.0
"""


class StallWatch:
    """A tiny separate process that sleeps 10 ms at a time and writes down every oversleep
    above `threshold_ms` (the whole machine, or this process's share of it, stalled), and once a
    second the machine's busy and steal ticks. Lets a burst of suspicions be matched with a
    machine-wide stall."""

    def __init__(self, path: Path, threshold_ms: float = 50.0) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [PYTHON, "-c", STALL_CODE, str(path), str(threshold_ms / 1000)],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def stop(self) -> None:
        kill_hard(self.proc.pid)
        self.proc.wait()

    def read(self) -> tuple[list[tuple[float, float]], list[tuple[float, int, int, float]]]:
        """(stalls as (wall, ms), seconds as (wall, busy ticks, steal ticks, worst late ms))."""
        stalls, secs = [], []
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return stalls, secs
        for line in lines:
            f = line.split()
            try:
                if f[0] == "stall":
                    stalls.append((float(f[1]), float(f[2])))
                elif f[0] == "sec":
                    secs.append((float(f[1]), int(f[3]), int(f[5]), float(f[7])))
            except (IndexError, ValueError):
                continue
        return stalls, secs


# -- clusters ---------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    role: str
    pid: int
    http: str
    log: Path


@dataclass
class RealCluster:
    """A cluster of OS processes with an HTTP `/members` each. Subclasses start and stop it."""

    kind: str
    data_dir: Path
    peers: list[Peer] = field(default_factory=list)
    ready_mono: float | None = None  # when the starter finished starting every peer

    def by_name(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)

    def names(self) -> list[str]:
        return [p.name for p in self.peers]

    def victims(self) -> list[Peer]:
        """Peers that may be frozen: market makers (murmur) / the same share of nodes (kinship)."""
        return [p for p in self.peers if p.role == "mm"]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def all_pids(self) -> list[int]:
        return [p.pid for p in self.peers]

    def sweep(self) -> list[int]:
        """SIGKILL anything of ours that is still running; returns the pids that were."""
        left = [pid for pid in self.all_pids() if pid_alive(pid)]
        left += [pid for pid in pids_with_arg(str(self.data_dir)) if pid not in left]
        stop_group(left, grace=0, signum=signal.SIGKILL)
        return left


class MurmurCluster(RealCluster):
    """`murmur launch --peers total-2` (market makers + exchange + ledger = total processes)."""

    def __init__(
        self,
        total: int,
        data_dir: Path,
        profile: str = "local",
        startup_timeout: float = 30.0,
        extra: list[str] | None = None,
    ) -> None:
        super().__init__("murmur", data_dir)
        if total < 3:
            raise ValueError("a murmur cluster has at least 3 processes (1 mm + exchange + ledger)")
        self.total = total
        self.profile = profile
        self.startup_timeout = startup_timeout
        self.extra = extra or []
        self.launcher: subprocess.Popen | None = None
        self.launch_started_mono: float | None = None
        self.info: dict[str, Any] = {}

    def start(self, bound: float | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.data_dir / "launcher.out", "ab")  # noqa: SIM115
        argv = [
            PYTHON,
            "-m",
            "peer.cli",
            "launch",
            "--peers",
            str(self.total - 2),
            "--data-dir",
            str(self.data_dir),
            "--profile",
            self.profile,
            "--startup-timeout",
            str(self.startup_timeout),
            *self.extra,
        ]
        self.launch_started_mono = time.monotonic()
        try:
            self.launcher = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        path = self.data_dir / "cluster.json"
        deadline = time.monotonic() + (bound or self.startup_timeout + 30)
        while True:
            if self.launcher.poll() is not None:
                raise RuntimeError(
                    f"murmur launch exited with {self.launcher.returncode}:\n{self.launcher_output()}"
                )
            try:
                info = json.loads(path.read_text())
                if info.get("status") == "running":
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no cluster.json in time:\n{self.launcher_output()}")
            time.sleep(0.02)
        self.ready_mono = time.monotonic()
        self.info = info
        self.peers = [
            Peer(p["name"], p["role"], p["pid"], p["http"], Path(p["log"])) for p in info["peers"]
        ]

    def launcher_output(self) -> str:
        try:
            return (self.data_dir / "launcher.out").read_text()[-3000:]
        except OSError:
            return ""

    def peer_started_at(self) -> dict[str, float]:
        """Wall time each peer reported itself up (peer.json `started_at`)."""
        out = {}
        for p in self.peers:
            try:
                info = json.loads((p.log.parent / "peer.json").read_text())
                out[p.name] = _dt.datetime.fromisoformat(info["started_at"]).timestamp()
            except (OSError, ValueError, KeyError):
                continue
        return out

    def stop(self, grace: float = 15.0) -> list[int]:
        """Graceful stop through the launcher (SIGINT), then SIGKILL by pid whatever is left."""
        for p in self.peers:  # a frozen peer cannot handle SIGTERM
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.launcher is not None:
            stop_group([self.launcher], grace=grace, signum=signal.SIGINT)
        return self.sweep()

    def all_pids(self) -> list[int]:
        pids = super().all_pids()
        try:
            info = json.loads((self.data_dir / "cluster.json").read_text())
            pids += [p["pid"] for p in info.get("peers", []) if p["pid"] not in pids]
        except (OSError, ValueError):
            pass
        if self.launcher is not None:
            pids.append(self.launcher.pid)
        return pids


class KinshipCluster(RealCluster):
    """`total` kinship nodes, each `bench/kinship_node.py` in its own process."""

    def __init__(
        self,
        total: int,
        data_dir: Path,
        overrides: dict[str, Any] | None = None,
        startup_timeout: float = 60.0,
        key_file: Path | None = None,
    ) -> None:
        super().__init__("kinship", data_dir)
        self.total = total
        self.overrides = overrides or {}
        self.key_file = key_file  # a murmur key file: kinship encrypts with its primary key
        self.startup_timeout = startup_timeout
        self.procs: dict[str, subprocess.Popen] = {}

    def _names(self) -> list[tuple[str, str]]:
        # Same shape as a murmur cluster, so that victims are drawn from the same share.
        names = [(f"mm-{i}", "mm") for i in range(1, self.total - 1)]
        return names + [("exchange", "exchange"), ("ledger", "ledger")]

    def _spawn(self, name: str, role: str, seed: str | None) -> None:
        d = self.data_dir / name
        d.mkdir(parents=True, exist_ok=True)
        argv = [
            PYTHON,
            str(BENCH / "kinship_node.py"),
            "--name",
            name,
            "--role",
            role,
            "--dir",
            str(d),
        ]
        if seed:
            argv += ["--seed", seed]
        for k, v in self.overrides.items():
            argv += ["--set", f"{k}={v}"]
        if self.key_file is not None:
            argv += ["--key-file", str(self.key_file)]
        err = open(d / "stderr.log", "ab")  # noqa: SIM115
        try:
            self.procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, preexec_fn=_die_with_parent
            )
        finally:
            err.close()

    def _wait_info(self, name: str, deadline: float) -> dict[str, Any]:
        path = self.data_dir / name / "node.json"
        proc = self.procs[name]
        while True:
            if proc.poll() is not None:
                err = (self.data_dir / name / "stderr.log").read_text()[-2000:]
                raise RuntimeError(f"kinship node {name} exited with {proc.returncode}:\n{err}")
            try:
                info = json.loads(path.read_text())
                if info.get("pid") == proc.pid:
                    return info
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kinship node {name} did not come up")
            time.sleep(0.02)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.startup_timeout
        names = self._names()
        first, role = names[0]
        self._spawn(first, role, None)
        seed = self._wait_info(first, deadline)["gossip"]
        for name, role in names[1:]:
            self._spawn(name, role, seed)
        infos = {first: self._wait_info(first, deadline)}
        for name, _ in names[1:]:
            infos[name] = self._wait_info(name, deadline)
        self.ready_mono = time.monotonic()
        self.peers = [
            Peer(n, r, infos[n]["pid"], infos[n]["http"], self.data_dir / n / "events.log")
            for n, r in names
        ]

    def stop(self) -> list[int]:
        stop_group(self.procs.values(), grace=0, signum=signal.SIGKILL)
        return self.sweep()

    def all_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]


# -- views ------------------------------------------------------------------------------------


def http_client(n: int, timeout: float = 1.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


# A kept-alive connection the server closed just as we reuse it (hypercorn closes idle
# connections after 5 s, the soak's polling period): not a peer that fails to answer.
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def view(client: httpx.AsyncClient, peer: Peer) -> dict[str, dict] | None:
    """`/members` of one peer by member name, or None if it does not answer."""
    for attempt in (1, 2):
        try:
            r = await client.get(f"{peer.http}/members")
            r.raise_for_status()
            return {row["name"]: row for row in r.json()}
        except _STALE_CONNECTION:
            if attempt == 2:
                return None
        except (httpx.HTTPError, ValueError):
            return None
    return None


async def views(client: httpx.AsyncClient, peers: list[Peer]) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {}

    async def one(p: Peer) -> None:
        out[p.name] = await view(client, p)

    async with trio.open_nursery() as nursery:
        for p in peers:
            nursery.start_soon(one, p)
    return out


def all_alive(all_views: dict[str, dict | None], names: list[str]) -> bool:
    for v in all_views.values():
        if v is None:
            return False
        for n in names:
            row = v.get(n)
            if row is None or row["state"] != "alive":
                return False
    return True


def not_alive_summary(all_views: dict[str, dict | None], names: list[str]) -> str:
    bad = []
    for viewer, v in sorted(all_views.items()):
        if v is None:
            bad.append(f"{viewer}: no answer")
            continue
        rows = [
            f"{n}={v[n]['state'] if n in v else 'unknown'}"
            for n in names
            if n not in v or v[n]["state"] != "alive"
        ]
        if rows:
            bad.append(f"{viewer}: {', '.join(rows[:6])}{' ...' if len(rows) > 6 else ''}")
    return "; ".join(bad[:8]) + (f" ... ({len(bad)} viewers)" if len(bad) > 8 else "")


async def wait_all_alive(
    cluster: RealCluster, bound: float, every: float = 0.1, client: httpx.AsyncClient | None = None
) -> tuple[bool, float, str]:
    """Until every peer's /members shows every peer alive. (ok, seconds waited, last problem)."""
    names = cluster.names()
    t0 = time.monotonic()
    last = [""]
    own = client is None
    client = client or http_client(len(names))

    async def everyone_alive() -> bool:
        vs = await views(client, cluster.peers)
        if all_alive(vs, names):
            return True
        last[0] = not_alive_summary(vs, names)
        return False

    try:
        await poll_until(everyone_alive, bound, "every peer sees every peer alive", every=every)
        return True, time.monotonic() - t0, ""
    except NotInTime:
        return False, time.monotonic() - t0, last[0]
    finally:
        if own:
            await client.aclose()


METRICS_OF_INTEREST = (
    "recv_dropped_full",
    "oversize_dropped",
    "send_errors",
    "stream_errors",
    "dropped_malformed",
    "dropped_version",
    "push_pull_failures",
    "probe_failures",
    "probes",
    "suspicions",
    "suspicion_confirmations",
    "refutations",
    "deaths",
    "packets_in",
    "packets_out",
)


async def scrape_counters(
    client: httpx.AsyncClient, peers: list[Peer]
) -> dict[str, dict[str, float]]:
    """Per peer, the `/metrics` counters whose name ends in one of METRICS_OF_INTEREST."""
    out: dict[str, dict[str, float]] = {}

    async def one(p: Peer) -> None:
        try:
            r = await client.get(f"{p.http}/metrics")
            r.raise_for_status()
        except httpx.HTTPError:
            return
        got: dict[str, float] = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0].removesuffix("_total")
            for key in METRICS_OF_INTEREST:
                if name.endswith("_" + key):
                    try:
                        got[key] = got.get(key, 0.0) + float(value)
                    except ValueError:
                        pass
        out[p.name] = got

    async with trio.open_nursery() as nursery:
        for p in peers:
            nursery.start_soon(one, p)
    return out


def counters_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Sum over peers of after - before, and the peers with a nonzero drop/error counter."""
    total: dict[str, float] = {}
    nonzero: dict[str, dict[str, float]] = {}
    for name, a in after.items():
        b = before.get(name, {})
        for key, v in a.items():
            d = v - b.get(key, 0.0)
            total[key] = total.get(key, 0.0) + d
            if d and key in (
                "recv_dropped_full",
                "oversize_dropped",
                "send_errors",
                "dropped_malformed",
                "dropped_version",
                "stream_errors",
            ):
                nonzero.setdefault(name, {})[key] = d
    return {
        "sum_over_peers": {k: int(v) for k, v in sorted(total.items())},
        "peers_with_drops_or_errors": nonzero,
    }


# -- logs -------------------------------------------------------------------------------------


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def ts_of(rec: dict[str, Any]) -> float | None:
    """Wall time of a log line: murmur writes ISO 8601 `ts`, kinship_node.py a float `t`."""
    if isinstance(rec.get("t"), (int, float)):
        return float(rec["t"])
    ts = rec.get("ts")
    if isinstance(ts, str):
        try:
            return _dt.datetime.fromisoformat(ts).timestamp()
        except ValueError:
            return None
    return None


def member_events(cluster: RealCluster, since: float | None = None) -> list[dict[str, Any]]:
    """Every membership transition logged by every peer (with `viewer` = the logging peer)."""
    out = []
    for p in cluster.peers:
        for rec in read_json_lines(p.log):
            if rec.get("event") != "member":
                continue
            t = ts_of(rec)
            if since is not None and (t is None or t < since):
                continue
            rec["viewer"] = p.name
            rec["t_wall"] = t
            out.append(rec)
    return out
