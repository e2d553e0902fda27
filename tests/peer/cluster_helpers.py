"""Helpers for tests that run real clusters: `murmur launch` as a subprocess, polled over HTTP.

Every process a test starts is stopped in a `finally`, even when an assertion fails: first the
launcher is asked (SIGINT, so peers leave), then anything still running is SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from peer.tools.processes import CLI, NotInTime, pid_alive, poll_until, read_json, stop_group

__all__ = ["CLI", "pid_alive"]  # re-exported for the tests that import them from here


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

    async def restart(self, name: str) -> subprocess.Popen:
        """Start a peer again with the command cluster.json gives for it (same data dir)."""
        proc = await trio.to_thread.run_sync(
            spawn, self.peer(name)["restart"], self.data_dir / f"{name}.restart.out"
        )
        self.extra.append(proc)
        return proc


def spawn(argv: list[str], out_path: Path) -> subprocess.Popen:
    """Start `argv` with its stdout and stderr appended to `out_path` (blocking: a fork)."""
    with open(out_path, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def start_launcher(data_dir: Path, peers: int, extra_args: list[str]) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [*CLI, "launch", "--peers", str(peers), "--data-dir", str(data_dir), *extra_args]
    return spawn(argv, data_dir / "launcher.out")


async def wait_cluster_file(cluster: Cluster, bound: float = 60.0) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        if cluster.launcher.poll() is not None:
            raise AssertionError(
                f"launcher exited with {cluster.launcher.returncode}:\n" + cluster.launcher_output()
            )
        info = await read_json(cluster.data_dir / "cluster.json")
        return info if info is not None and info.get("status") == "running" else None

    try:
        return await poll_until(running, bound, "cluster.json says running", every=0.1)
    except NotInTime as exc:
        raise NotInTime(f"{exc}\n{cluster.launcher_output()}") from None


def stop_everything(cluster: Cluster, grace: float = 15.0) -> None:
    """Ask the launcher to stop the cluster, then make sure nothing is left, whatever happened.
    Blocking: `launched` runs it in a worker thread."""
    stop_group([cluster.launcher], grace=grace, signum=signal.SIGINT)
    stop_group(cluster.extra, grace=5.0)
    # Whatever the launcher left behind (it was killed, or a peer ignored it).
    stop_group([p["pid"] for p in cluster.info.get("peers", [])], grace=0)


@asynccontextmanager
async def launched(
    data_dir: Path, peers: int = 5, extra_args: list[str] | None = None
) -> AsyncIterator[Cluster]:
    launcher = await trio.to_thread.run_sync(start_launcher, data_dir, peers, extra_args or [])
    cluster = Cluster(data_dir, launcher)
    try:
        cluster.info = await wait_cluster_file(cluster)
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop_everything, cluster)


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
    last: list[Any] = [None]

    async def ok() -> bool:
        done, last[0] = await check()
        return done

    try:
        await poll_until(ok, bound, what, every=every)
    except NotInTime as exc:
        raise NotInTime(f"{exc}\nlast observed: {last[0]!r}") from None
    return last[0]


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


async def log_lines(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    text = await trio.Path(cluster.peer(name)["log"]).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
