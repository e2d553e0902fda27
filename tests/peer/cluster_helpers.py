"""Helpers for tests that run real clusters: `murmur launch` as a subprocess, polled over HTTP.

Every process a test starts is stopped in a `finally`, even when an assertion fails: first the
launcher is asked (SIGINT, so peers leave), then anything still running is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

CLI = [sys.executable, "-m", "peer.cli"]


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


@dataclass
class Cluster:
    data_dir: Path
    launcher: subprocess.Popen
    info: dict[str, Any] = field(default_factory=dict)
    extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def peers(self) -> list[dict[str, Any]]:
        return self.info["peers"]

    def peer(self, name: str) -> dict[str, Any]:
        (p,) = [p for p in self.peers if p["name"] == name]
        return p

    def others(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.peers if p["name"] != name]

    def peer_pids(self) -> list[int]:
        return [p["pid"] for p in self.peers] + [p.pid for p in self.extra]

    def launcher_output(self) -> str:
        try:
            return (self.data_dir / "launcher.out").read_text()
        except OSError:
            return ""

    def restart(self, name: str) -> subprocess.Popen:
        """Start a peer again with the command cluster.json gives for it (same data dir)."""
        p = self.peer(name)
        out = open(self.data_dir / f"{name}.restart.out", "ab")  # noqa: SIM115
        proc = subprocess.Popen(p["restart"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        self.extra.append(proc)
        return proc


def start_launcher(data_dir: Path, peers: int, extra_args: list[str]) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(data_dir / "launcher.out", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [*CLI, "launch", "--peers", str(peers), "--data-dir", str(data_dir), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    finally:
        out.close()


async def wait_cluster_file(cluster: Cluster, bound: float = 60.0) -> dict[str, Any]:
    path = cluster.data_dir / "cluster.json"
    with trio.move_on_after(bound):
        while True:
            if cluster.launcher.poll() is not None:
                raise AssertionError(
                    f"launcher exited with {cluster.launcher.returncode}:\n"
                    + cluster.launcher_output()
                )
            try:
                info = json.loads(path.read_text())
                if info.get("status") == "running":
                    return info
            except (OSError, ValueError):
                pass
            await trio.sleep(0.1)
    raise AssertionError(f"no cluster.json within {bound}s:\n{cluster.launcher_output()}")


def stop_everything(cluster: Cluster, grace: float = 15.0) -> None:
    """Ask the launcher to stop the cluster, then make sure nothing is left, whatever happened."""
    if cluster.launcher.poll() is None:
        cluster.launcher.send_signal(signal.SIGINT)
        try:
            cluster.launcher.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            cluster.launcher.kill()
            cluster.launcher.wait()
    for proc in cluster.extra:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(p.poll() is None for p in cluster.extra) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in cluster.extra:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for pid in [p["pid"] for p in cluster.info.get("peers", [])]:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@asynccontextmanager
async def launched(
    data_dir: Path, peers: int = 5, extra_args: list[str] | None = None
) -> AsyncIterator[Cluster]:
    cluster = Cluster(data_dir, start_launcher(data_dir, peers, extra_args or []))
    try:
        cluster.info = await wait_cluster_file(cluster)
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            stop_everything(cluster)


async def view(client: httpx.AsyncClient, peer: dict[str, Any]) -> dict[str, dict] | None:
    """`/members` of one peer by name, or None if it does not answer."""
    try:
        r = await client.get(f"{peer['http']}/members")
        r.raise_for_status()
        return {row["name"]: row for row in r.json()}
    except (httpx.HTTPError, ValueError):
        return None


async def views(client: httpx.AsyncClient, peers: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def one(p: dict[str, Any]) -> None:
        out[p["name"]] = await view(client, p)

    async with trio.open_nursery() as nursery:
        for p in peers:
            nursery.start_soon(one, p)
    return out


async def eventually(
    check: Callable[[], Awaitable[tuple[bool, Any]]], bound: float, what: str, every: float = 0.1
) -> Any:
    """Poll `check` (-> (ok, observed)) until ok; fail after `bound` seconds with the last view."""
    observed: Any = None
    with trio.move_on_after(bound):
        while True:
            ok, observed = await check()
            if ok:
                return observed
            await trio.sleep(every)
    raise AssertionError(f"not within {bound}s: {what}\nlast observed: {observed!r}")


def states_of(all_views: dict[str, Any], node: str) -> dict[str, str | None]:
    """How each viewer sees `node` (None when the viewer did not answer or does not know it)."""
    return {
        viewer: (v.get(node) or {}).get("state") if v is not None else None
        for viewer, v in all_views.items()
    }


async def wait_state(
    client: httpx.AsyncClient,
    viewers: list[dict[str, Any]],
    node: str,
    state: str,
    bound: float,
    *,
    min_incarnation: int | None = None,
) -> dict[str, Any]:
    """Until every viewer sees `node` in `state` (with at least `min_incarnation`)."""

    async def check() -> tuple[bool, Any]:
        all_views = await views(client, viewers)
        rows = {n: (v or {}).get(node) for n, v in all_views.items()}
        ok = all(
            row is not None
            and row["state"] == state
            and (min_incarnation is None or row["incarnation"] >= min_incarnation)
            for row in rows.values()
        )
        seen = {n: (r["state"], r["incarnation"]) if r else None for n, r in rows.items()}
        return ok, (all_views if ok else seen)

    return await eventually(check, bound, f"every peer sees {node} {state}")


def log_lines(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    path = Path(cluster.peer(name)["log"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_peer(role: str, data_dir: Path, *extra: str, bound: float = 20.0) -> tuple[subprocess.Popen, str]:
    """One `murmur peer --role ROLE` process on port 0; returns it and its HTTP URL once /health
    answers. Its stderr goes to `<data_dir>.stderr` beside the data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "peer.json").unlink(missing_ok=True)
    with open(data_dir.parent / f"{data_dir.name}.stderr", "ab") as err:
        proc = subprocess.Popen(
            [*CLI, "peer", "--role", role, "--name", role, "--bind", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--data-dir", str(data_dir), "--profile", "local", "--quiet", *extra],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the {role} exited with {proc.returncode}")
        try:
            url = json.loads((data_dir / "peer.json").read_text())["http"]
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the {role} did not come up within {bound}s")
