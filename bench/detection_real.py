"""Failure detection on real processes: SIGSTOP one peer, time until every other sees it dead.

Method (murmur and kinship measured the same way, in the same run, one cluster at a time):
- murmur: `murmur launch --peers N-2 --profile local` (N-2 market makers + exchange + ledger = N
  OS processes on 127.0.0.1, probe 200 ms). kinship: N processes of `bench/kinship_node.py`, each
  one kinship node with `kinship.Config.local()` (probe 200 ms, probe timeout 100 ms), joined
  through the first, each serving a murmur-like `GET /members`.
- Wait until every peer's /members shows all N alive. Then, per trial: pick a random market
  maker (same seeded choice for both libraries), wait `--settle` s, SIGSTOP it, and poll the
  /members of every OTHER peer concurrently, each on its own ~`--poll-interval` loop (httpx,
  keep-alive). Detection time = from the SIGSTOP to the moment the LAST other peer answers with
  the victim `dead` (the max over viewers of the first `dead` answer). Cross-check from the
  peers' own logs (transition wall time; no polling resolution): max over viewers of the logged
  `dead` transition minus the SIGSTOP wall time.
- False positives: any other peer seen (polled) or logged `suspect`/`dead` between the SIGSTOP
  and the end of detection.
- Then SIGCONT the victim and wait until every peer (victim included) shows everyone alive
  again; if that does not happen within `--recover-bound` s, the cluster is restarted.

Run: .venv/bin/python bench/detection_real.py [--sizes 10,40] [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _realcluster import (
    KinshipCluster,
    MurmurCluster,
    RealCluster,
    add_murmur_set,
    finish_machine,
    fmt,
    header,
    http_client,
    json_line,
    keep_or_remove,
    launch_set_args,
    member_events,
    murmur_profile_line,
    summary,
    table,
    view,
    wait_all_alive,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,40", help="total processes per cluster (default 10,40)")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--impls", default="murmur,kinship",
                    help="comma-separated: murmur (sealed), murmur-insecure, kinship (plaintext), kinship-sealed")
    ap.add_argument("--poll-interval", type=float, default=0.05)
    ap.add_argument("--settle", type=float, default=2.0, help="quiet seconds before each freeze")
    ap.add_argument("--detect-bound", type=float, default=30.0)
    ap.add_argument("--recover-bound", type=float, default=30.0)
    ap.add_argument("--converge-bound", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1, help="seed of the victim choice")
    ap.add_argument("--profile", default="local", help="murmur profile (default local)")
    ap.add_argument(
        "--kinship-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a kinship Config field (e.g. suspicion_mult=4)",
    )
    add_murmur_set(ap, "--murmur-set")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the data dir (logs) afterwards")
    return ap.parse_args()


# What each name in --impls runs: murmur seals its gossip (the launcher's cluster.key) unless
# "murmur-insecure"; kinship runs plaintext on loopback unless "kinship-sealed" (its own AEAD,
# under a key of the same kind).
IMPLS = ("murmur", "murmur-insecure", "kinship", "kinship-sealed")


def make_cluster(impl: str, n: int, base: Path, attempt: int, args) -> RealCluster:
    d = base / f"{impl}-{n}-{attempt}"
    if impl.startswith("murmur"):
        extra = launch_set_args(args) + (["--insecure"] if impl == "murmur-insecure" else [])
        return MurmurCluster(n, d, profile=args.profile, startup_timeout=60.0, extra=extra)
    overrides = dict(kv.split("=", 1) for kv in args.kinship_set)
    key_file = None
    if impl == "kinship-sealed":
        from gossip.keyring import new_key_file

        d.mkdir(parents=True, exist_ok=True)
        key_file = d / "cluster.key"
        new_key_file(key_file)
    return KinshipCluster(n, d, overrides=overrides, key_file=key_file)


async def start_converged(impl: str, n: int, base: Path, attempt: int, args):
    cluster = make_cluster(impl, n, base, attempt, args)
    try:
        cluster.start()  # on the main thread: PR_SET_PDEATHSIG follows the forking thread
        ok, waited, last = await wait_all_alive(cluster, args.converge_bound)
    except BaseException:
        cluster.stop()
        raise
    if not ok:
        cluster.stop()
        raise RuntimeError(f"{impl} N={n} did not converge in {args.converge_bound}s: {last}")
    print(
        f"  [{impl} N={n}] started; converged {waited:.2f}s after the starter finished", flush=True
    )
    return cluster, waited


async def one_trial(cluster: RealCluster, victim, args) -> dict[str, Any]:
    others = [p for p in cluster.peers if p.name != victim.name]
    other_names = {p.name for p in others}
    first_dead: dict[str, float] = {}
    first_suspect: dict[str, float] = {}
    polls: dict[str, int] = {p.name: 0 for p in others}
    no_answer: dict[str, int] = {p.name: 0 for p in others}
    false_pos: list[tuple[float, str, str, str]] = []
    done = trio.Event()

    async with http_client(len(others)) as client:
        # Warm the keep-alive connections so the first poll after the freeze is not a connect.
        for p in others:
            await view(client, p)
        await trio.sleep(args.settle)
        t0 = time.monotonic()
        w0 = time.time()
        os.kill(victim.pid, signal.SIGSTOP)

        async def poll(p) -> None:
            nxt = time.monotonic()
            while not done.is_set():
                v = await view(client, p)
                t = time.monotonic() - t0
                polls[p.name] += 1
                if v is None:
                    no_answer[p.name] += 1
                else:
                    row = v.get(victim.name)
                    state = row["state"] if row else "unknown"
                    if state == "suspect":
                        first_suspect.setdefault(p.name, t)
                    if state == "dead":
                        first_suspect.setdefault(p.name, t)
                        if p.name not in first_dead:
                            first_dead[p.name] = t
                            if len(first_dead) == len(others):
                                done.set()
                    for name, r in v.items():
                        if name in other_names and r["state"] in ("suspect", "dead"):
                            false_pos.append((round(t, 3), p.name, name, r["state"]))
                nxt += args.poll_interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    await trio.sleep(delay)
                else:
                    nxt = time.monotonic()
                    await trio.lowlevel.checkpoint()

        with trio.move_on_after(args.detect_bound):
            async with trio.open_nursery() as nursery:
                for p in others:
                    nursery.start_soon(poll, p)
        done.set()
        t_end = time.monotonic() - t0
    detected = len(first_dead) == len(others)
    detect = max(first_dead.values()) if detected else None

    # Cross-check from the peers' own transition logs.
    events = member_events(cluster, since=w0 - 0.5)
    log_dead: dict[str, float] = {}
    log_suspect: list[float] = []
    log_fp = []
    horizon = w0 + t_end + 0.5
    for e in events:
        if e["viewer"] == victim.name or e["t_wall"] is None:
            continue
        if e["node"] == victim.name and e["t_wall"] >= w0:
            if e.get("new") == "dead":
                log_dead.setdefault(e["viewer"], e["t_wall"] - w0)
            if e.get("new") == "suspect":
                log_suspect.append(e["t_wall"] - w0)
        elif e["node"] != victim.name and e.get("new") in ("suspect", "dead"):
            if w0 <= e["t_wall"] <= horizon:
                log_fp.append(
                    (round(e["t_wall"] - w0, 3), e["viewer"], e["node"], e["new"], e.get("reason"))
                )
    log_detect = max(log_dead.values()) if len(log_dead) == len(others) else None
    period = [t_end / polls[n] for n in polls if polls[n]]
    return {
        "victim": victim.name,
        "detect_s": round(detect, 3) if detect is not None else None,
        "detected_by": len(first_dead),
        "viewers": len(others),
        "first_dead_s": round(min(first_dead.values()), 3) if first_dead else None,
        "first_suspect_s": round(min(first_suspect.values()), 3) if first_suspect else None,
        "log_detect_s": round(log_detect, 3) if log_detect is not None else None,
        "log_first_suspect_s": round(min(log_suspect), 3) if log_suspect else None,
        "log_first_dead_s": round(min(log_dead.values()), 3) if log_dead else None,
        "poll_period_mean_s": round(sum(period) / len(period), 4) if period else None,
        "no_answer_polls": sum(no_answer.values()),
        "false_positives_polled": sorted(set(false_pos))[:20],
        "false_positives_polled_count": len({(v, n, s) for _, v, n, s in false_pos}),
        "false_positives_logged": log_fp[:20],
        "false_positives_logged_count": len(log_fp),
    }


async def run_impl(impl: str, n: int, base: Path, args) -> dict[str, Any]:
    rng = random.Random(args.seed * 1000 + n)  # the same victims for both libraries
    attempt = 0
    cluster, conv = await start_converged(impl, n, base, attempt, args)
    converge = [conv]
    trials: list[dict[str, Any]] = []
    restarts = 0
    try:
        for i in range(args.trials):
            victim = rng.choice(cluster.victims())
            # Draw by name so that a restarted cluster gets the same sequence.
            victim = cluster.by_name(victim.name)
            r = await one_trial(cluster, victim, args)
            os.kill(victim.pid, signal.SIGCONT)
            ok, waited, last = await wait_all_alive(cluster, args.recover_bound)
            r["recovered_s"] = round(waited, 2) if ok else None
            fp = r["false_positives_polled_count"] + r["false_positives_logged_count"]
            print(
                f"  [{impl} N={n}] trial {i + 1}: victim {r['victim']:9s} "
                f"detect {fmt(r['detect_s'])}s (log {fmt(r['log_detect_s'])}s, "
                f"first suspect {fmt(r['first_suspect_s'])}s, first dead {fmt(r['first_dead_s'])}s) "
                f"seen dead by {r['detected_by']}/{r['viewers']}, "
                f"poll period {fmt(r['poll_period_mean_s'], 3)}s, false positives {fp}, "
                f"back alive everywhere {fmt(r['recovered_s'])}s",
                flush=True,
            )
            if r["false_positives_polled"] or r["false_positives_logged"]:
                print(f"      polled: {r['false_positives_polled'][:5]}")
                print(f"      logged: {r['false_positives_logged'][:5]}", flush=True)
            trials.append(r)
            if not ok:
                print(
                    f"  [{impl} N={n}] victim did not come back within {args.recover_bound}s "
                    f"({last}); restarting the cluster",
                    flush=True,
                )
                cluster.stop()
                attempt += 1
                restarts += 1
                cluster, conv = await start_converged(impl, n, base, attempt, args)
                converge.append(conv)
    finally:
        left = cluster.stop()
        if left:
            print(f"  [{impl} N={n}] had to SIGKILL {len(left)} leftover process(es)")
    detects = [t["detect_s"] for t in trials if t["detect_s"] is not None]
    logs = [t["log_detect_s"] for t in trials if t["log_detect_s"] is not None]
    return {
        "impl": impl,
        "n": n,
        "trials": len(trials),
        "undetected": sum(1 for t in trials if t["detect_s"] is None),
        "detect": summary(detects),
        "log_detect": summary(logs),
        "first_suspect": summary([t["first_suspect_s"] for t in trials if t["first_suspect_s"]]),
        "log_first_suspect": summary(
            [t["log_first_suspect_s"] for t in trials if t["log_first_suspect_s"] is not None]
        ),
        "log_first_dead": summary(
            [t["log_first_dead_s"] for t in trials if t["log_first_dead_s"] is not None]
        ),
        "false_positives": sum(
            t["false_positives_polled_count"] + t["false_positives_logged_count"] for t in trials
        ),
        "recover": summary([t["recovered_s"] for t in trials if t["recovered_s"] is not None]),
        "not_recovered": sum(1 for t in trials if t["recovered_s"] is None),
        "cluster_restarts": restarts,
        "converge_s": [round(c, 2) for c in converge],
        "poll_period_mean_s": summary(
            [t["poll_period_mean_s"] for t in trials if t["poll_period_mean_s"]]
        )["mean"],
        "per_trial": trials,
    }


def kinship_status() -> tuple[bool, str]:
    try:
        import kinship
        from kinship.blocking import Cluster  # noqa: F401
    except ImportError as exc:
        return False, (
            f"kinship is not installed ({exc}); install it with "
            "`.venv/bin/pip install kinship` (pyproject extra `bench`)"
        )
    cfg = kinship.Config.local()
    return True, (
        f"kinship {getattr(kinship, '__version__', '?')} Config.local(): probe_interval "
        f"{cfg.probe_interval}s, probe_timeout {cfg.probe_timeout}s, suspicion_mult "
        f"{cfg.suspicion_mult}, suspicion_max_mult {cfg.suspicion_max_mult}, indirect_checks "
        f"{cfg.indirect_checks}, gossip_interval {cfg.gossip_interval}s, awareness_max "
        f"{cfg.awareness_max}"
    )


async def main_async(args) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    impls = [s for s in args.impls.split(",") if s]
    method = [line.strip() for line in __doc__.split("\n\n")[1].splitlines()]
    method += [
        f"poll interval {args.poll_interval}s per viewer, settle {args.settle}s before each "
        f"freeze, detection bound {args.detect_bound}s, victim seed {args.seed}",
    ]
    method.append(murmur_profile_line(args.profile, args.murmur_set))
    kin_ok, kin_note = kinship_status()
    if any(i.startswith("kinship") for i in impls):
        method.append(kin_note + (f"; overrides {args.kinship_set}" if args.kinship_set else ""))
    machine = header(
        "detection_real: SIGSTOP one peer, time until all others see it dead", method, args
    )
    if any(i.startswith("kinship") for i in impls) and not kin_ok:
        print(f"KINSHIP NOT MEASURED: {kin_note}\n", flush=True)
        impls = [i for i in impls if not i.startswith("kinship")]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}")

    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-detect-"))
    results = []
    try:
        for n in sizes:
            for impl in impls:
                print(f"== {impl}, N={n} ==", flush=True)
                try:
                    results.append(await run_impl(impl, n, base, args))
                except Exception as exc:  # report and go on with the next one
                    print(f"  [{impl} N={n}] FAILED: {exc}", flush=True)
                    results.append({"impl": impl, "n": n, "error": str(exc)})
    finally:
        keep_or_remove(base, args)

    finish_machine(machine)
    print(
        "\nDetection time, seconds from the SIGSTOP: median/max = every other peer's /members says"
        " dead (polled);\nlog = same from the peers' logs; log 1st suspect / 1st dead = earliest"
        " suspicion / death declaration (medians)"
    )
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["impl"], str(r["n"]), "FAILED", "", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["impl"],
                str(r["n"]),
                str(r["trials"]),
                fmt(r["detect"]["median"]),
                fmt(r["detect"]["max"]),
                fmt(r["log_detect"]["median"]),
                fmt(r["log_detect"]["max"]),
                fmt(r["log_first_suspect"]["median"]),
                fmt(r["log_first_dead"]["median"]),
                str(r["false_positives"]),
                str(r["undetected"] + r["not_recovered"]),
            ]
        )
    print(
        table(
            rows,
            [
                "impl",
                "N",
                "trials",
                "median",
                "max",
                "log median",
                "log max",
                "log 1st suspect",
                "log 1st dead",
                "false pos",
                "undetected+unrecovered",
            ],
        )
    )
    json_line("detection_real", machine, args, kinship=kin_note, results=results)
    return 0


def main() -> int:
    args = parse_args()
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
