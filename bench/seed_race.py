"""Ten peers started together, each joining through the first: how long until every view is whole.

What it measures: the case of a LAN after a power cut, or of peers started by a service manager.
All `--peers` processes are spawned at once (m0 first, then the others without waiting), with the
`lan` profile; m0 binds a port chosen beforehand and joins nobody, every other peer `--join`s it.
m0 is often not listening yet when the others make their first push-pull. Convergence is the
first poll (every `--poll` s, each peer's `GET /members`, concurrently) at which every peer sees
all peers `alive`, timed from the moment the processes were spawned: process start-up is
included. Also reported: when m0 first answered HTTP (its gossip port is bound before), from
the same origin, and convergence counted from that moment, which leaves out the start-up of the
seed (a murmur peer imports far more than a kinship node).

The same is done for kinship (`bench/kinship_node.py --profile lan`, `kinship.Config.lan()`),
runs of the two interleaved so both see the same machine. A run that does not converge within
`--bound` s is counted as such. Runs stop being started once `--budget` s of wall time are used;
the number of runs done is printed. Every process is stopped (SIGTERM, then SIGKILL) after each
run, and its directory removed unless `--keep`.

Run: .venv/bin/python bench/seed_race.py [--runs 20] [--peers 10] [--budget 600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from _realcluster import BENCH, PYTHON, ROOT, _die_with_parent

from peer.tools.processes import kill_hard, pid_alive, shared_key_file


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now (released before use)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            udp.close()
            tcp.close()
    raise RuntimeError("no free port")


def argv_for(kind: str, name: str, d: Path, bind: str, seed: str | None) -> list[str]:
    if kind == "murmur":
        argv = [PYTHON, "-m", "peer.cli", "peer", "--role", "mm", "--name", name, "--bind", bind,
                "--http", "127.0.0.1:0", "--data-dir", str(d), "--profile", "lan", "--quiet",
                "--key-file", str(shared_key_file(d.parent))]  # sealed, as a peer runs
        return argv + (["--join", seed] if seed else [])
    argv = [PYTHON, str(BENCH / "kinship_node.py"), "--name", name, "--dir", str(d), "--bind", bind,
            "--profile", "lan"]
    return argv + (["--seed", seed] if seed else [])


def info_path(kind: str, d: Path) -> Path:
    return d / ("peer.json" if kind == "murmur" else "node.json")


async def converge(kind: str, dirs: list[Path], names: list[str], t0: float, bound: float,
                   poll: float) -> tuple[float | None, float | None]:
    """(seconds to convergence or None, seconds until m0 answered HTTP or None), from t0."""
    urls: dict[str, str] = {}
    seed_up: float | None = None
    expected = set(names)
    async with httpx.AsyncClient(timeout=1.0) as client:
        with trio.move_on_after(max(0.0, t0 + bound - time.monotonic())):
            while True:
                for name, d in zip(names, dirs, strict=True):
                    if name not in urls:
                        try:
                            urls[name] = json.loads(await trio.Path(info_path(kind, d)).read_text())["http"]
                        except (OSError, ValueError, KeyError):
                            pass
                views: dict[str, set[str] | None] = {}

                async def one(name: str, url: str, views: dict = views) -> None:
                    try:
                        rows = (await client.get(f"{url}/members")).json()
                        views[name] = {r["name"] for r in rows if r["state"] == "alive"}
                    except (httpx.HTTPError, ValueError, KeyError, TypeError):
                        views[name] = None

                async with trio.open_nursery() as n:
                    for name, url in urls.items():
                        n.start_soon(one, name, url)
                if seed_up is None and views.get(names[0]) is not None:
                    seed_up = time.monotonic() - t0
                if len(views) == len(names) and all(v == expected for v in views.values()):
                    return time.monotonic() - t0, seed_up
                await trio.sleep(poll)
    return None, seed_up


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_hard(p.pid)
            p.wait()
    assert not any(pid_alive(p.pid) for p in procs)


def run_once(kind: str, base: Path, n: int, bound: float, poll: float) -> dict:
    names = [f"m{i}" for i in range(n)]
    dirs = [base / name for name in names]
    for d in dirs:
        d.mkdir(parents=True)
    port = free_port()
    seed = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        for i, (name, d) in enumerate(zip(names, dirs, strict=True)):
            err = open(d / "stderr.log", "ab")  # noqa: SIM115
            try:
                procs.append(subprocess.Popen(
                    argv_for(kind, name, d, seed if i == 0 else "127.0.0.1:0", None if i == 0 else seed),
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err, preexec_fn=_die_with_parent,
                ))
            finally:
                err.close()
        took, seed_up = trio.run(converge, kind, dirs, names, t0, bound, poll)
    finally:
        stop_all(procs)
    exited = [p.returncode for p in procs]
    return {"kind": kind, "converged_s": took, "seed_up_s": seed_up, "exit_codes": exited}


def summary(values: list[float | None], bound: float) -> str:
    done = sorted(v for v in values if v is not None)
    missed = len(values) - len(done)
    if not done:
        return f"runs {len(values)}, none converged within {bound:g} s"
    return (f"runs {len(values)}: median {statistics.median(done):.2f} s, max {done[-1]:.2f} s, "
            f"min {done[0]:.2f} s, over 5 s {sum(v > 5 for v in done) + missed}, "
            f"not converged within {bound:g} s {missed}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each kind")
    ap.add_argument("--peers", type=int, default=10)
    ap.add_argument("--kinds", default="murmur,kinship")
    ap.add_argument("--bound", type=float, default=45.0, help="seconds a run may take to converge")
    ap.add_argument("--poll", type=float, default=0.05)
    ap.add_argument("--budget", type=float, default=600.0, help="wall seconds; no new run after")
    ap.add_argument("--keep", action="store_true", help="keep each run's directory")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    print(f"seed_race: {args.peers} peers spawned together, lan profile, each joining through m0; "
          f"{args.runs} runs of each of {', '.join(kinds)}, interleaved; bound {args.bound:g} s, "
          f"poll {args.poll:g} s, budget {args.budget:g} s; {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="seed_race-"))
    try:
        for r in range(args.runs):
            if time.monotonic() - start > args.budget:
                print(f"budget of {args.budget:g} s used: stopped after {r} runs of each", flush=True)
                break
            for kind in kinds:
                base = root / f"{kind}-{r}"
                res = run_once(kind, base, args.peers, args.bound, args.poll)
                results[kind].append(res)
                took = "not converged" if res["converged_s"] is None else f"{res['converged_s']:.2f} s"
                up = "-" if res["seed_up_s"] is None else f"{res['seed_up_s']:.2f} s"
                print(f"run {r + 1:2d} {kind:8s} converged {took:>14s}   m0 answering HTTP at {up}", flush=True)
                if not args.keep:
                    shutil.rmtree(base, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for kind in kinds:
        print(f"{kind:8s} from the spawn:       {summary([x['converged_s'] for x in results[kind]], args.bound)}")
    for kind in kinds:
        after = [x["converged_s"] - x["seed_up_s"] if x["converged_s"] is not None and x["seed_up_s"] is not None
                 else None for x in results[kind]]
        print(f"{kind:8s} from m0 answering:    {summary(after, args.bound)}")
    print(f"wall time {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
