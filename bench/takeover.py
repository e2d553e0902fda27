"""Symbol authority on real processes: takeover after SIGKILL, hand-over on leave, moves on join.

Method (real processes on 127.0.0.1, `murmur launch --profile local --lease L`, the exchange's
own external flow on at `--flow-rate`; every time below is wall clock of this one machine: the
tape's `at` is the exchange's `time.time()`, log `ts` is ISO 8601 with milliseconds):

- **kill** (`--peers` market makers, default 5, 8 symbols): wait until the exchange's
  `GET /quotes` shows every symbol quoted by its rendezvous owner (`peer.market_maker.rendezvous.assignment`
  over the market makers alive), wait `--settle` s, pick a market maker that holds at least one
  symbol (rotating over the holders), and SIGKILL it. For each of its symbols, from the tape
  afterwards: the first accepted `put_quote` with reason `activated` by the symbol's new owner
  (the assignment without the victim). Reported: from the SIGKILL to that quote, and from
  **failure detection** (the first `member` event of the exchange's own log,
  `<data-dir>/exchange/exchange.log`, with the victim `dead`: the exchange's view decides whether
  a claim may take the symbol from a holder whose lease has not run out) to that quote. Also:
  SIGKILL to the exchange's `dead`, to the new owner's own `dead`, claims the exchange refused
  before the granted one, and claim granted to quote. Then the victim is restarted (its
  `restart` argv from cluster.json, same addresses, same data directory) and the next trial
  waits until every symbol is back with its owner. Goal: quote within 0.5 s of failure detection.
- **leave**: the same, with SIGTERM (the peer leaves the cluster gracefully and stops): from the
  SIGTERM to the first accepted quote of each of its symbols by its new owner; also the
  exchange's `left` event and the victim's own releases (tape `release` records), if any.
  Goal: under 0.5 s.
- **join** (`--join-peers` market makers, default 4, `--join-symbols` symbols, default 40, and a
  ledger exposure limit high enough to quote them all): wait until every symbol is quoted by its
  owner among the four, then start a fifth market maker by hand (`murmur peer --role mm --name
  mm-5 --join <mm-1's gossip address> ...`), wait until every symbol is quoted by its owner among
  the five, and count symbols whose holder at the exchange changed (goal: about 1/5, exactly the
  ones mm-5 wins; the rendezvous prediction is printed beside it). Also per moved symbol: the old
  holder's release, mm-5's claim and first quote (tape), and the quote gap (no live quote from
  the release to mm-5's quote). mm-5 then leaves (SIGTERM) and the join is repeated
  `--join-trials` times.

The waits poll the exchange's `GET /quotes` every 50 ms (a light load); the figures come from
the tape and the logs afterwards, not from the polling.

Run: .venv/bin/python bench/takeover.py [--trials 5] [--parts kill,leave,join] [--peers 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _realcluster import (
    ROOT,
    MurmurCluster,
    _die_with_parent,
    finish_machine,
    fmt,
    header,
    json_line,
    keep_or_remove,
    murmur_profile_line,
    read_json_lines,
    table,
    ts_of,
)

from peer.exchange.tape import TapeReader
from peer.market_maker.rendezvous import assignment
from peer.tools.processes import kill_hard, pid_alive

POLL = 0.05


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="kill,leave,join", help="any of kill, leave, join")
    ap.add_argument("--peers", type=int, default=5, help="market makers for kill and leave (default 5)")
    ap.add_argument("--trials", type=int, default=5, help="kills and leaves, each (default 5)")
    ap.add_argument("--join-peers", type=int, default=4, help="market makers before the join (default 4)")
    ap.add_argument("--join-symbols", type=int, default=40, help="symbols in the join part (default 40)")
    ap.add_argument("--join-trials", type=int, default=3, help="joins of the extra peer (default 3)")
    ap.add_argument("--lease", type=float, default=2.0, help="authority lease, s (launch default 2)")
    ap.add_argument("--flow-rate", type=float, default=20.0, help="external orders/s (launch default 20)")
    ap.add_argument("--profile", default="local")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds quiet before each signal")
    ap.add_argument("--bound", type=float, default=30.0, help="give up waiting for quotes after this")
    ap.add_argument("--seed", type=int, default=1, help="which holder is the first victim")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the data dir (tapes, logs) afterwards")
    return ap.parse_args()


# -- the cluster, from outside -----------------------------------------------------------------


class Cluster:
    """A launched cluster plus the market makers this script (re)started itself."""

    def __init__(self, data_dir: Path, n_mm: int, args, symbols: list[str] | None = None,
                 exposure_limit: int | None = None) -> None:
        extra = ["--lease", str(args.lease), "--flow-rate", str(args.flow_rate)]
        if symbols:
            extra += ["--symbols", ",".join(symbols)]
        if exposure_limit:
            extra += ["--exposure-limit", str(exposure_limit)]
        self.data_dir = data_dir
        self.args = args
        self.launched = MurmurCluster(n_mm + 2, data_dir, profile=args.profile, extra=extra)
        self.own: dict[str, subprocess.Popen] = {}  # name -> a process started by this script
        self.pids: dict[str, int] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.http = httpx.Client(timeout=1.0)

    def start(self) -> None:
        self.launched.start()
        for p in self.launched.info["peers"]:
            self.info[p["name"]] = p
            self.pids[p["name"]] = p["pid"]
        self.exchange = self.info["exchange"]["http"]
        self.symbols = list(self.http.get(f"{self.exchange}/prices").json()["prices"])

    def mm_names(self) -> list[str]:
        return sorted(n for n, p in self.info.items() if p["role"] == "mm")

    def holders(self) -> dict[str, str | None]:
        """symbol -> holder of its active quote at the exchange (None: no active quote)."""
        try:
            quotes = self.http.get(f"{self.exchange}/quotes").json()["quotes"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        got = {q["symbol"]: q["holder"] for q in quotes}
        return {s: got.get(s) for s in self.symbols}

    def wait_quoted_by(self, owners: dict[str, str | None], bound: float,
                       only: list[str] | None = None) -> tuple[bool, float, dict[str, str | None]]:
        """Until every symbol (of `only`) is quoted by the given owner."""
        t0 = time.monotonic()
        want = only if only is not None else self.symbols
        held: dict[str, str | None] = {}
        while time.monotonic() - t0 < bound:
            held = self.holders()
            if held and all(held.get(s) == owners[s] for s in want):
                return True, time.monotonic() - t0, held
            time.sleep(POLL)
        return False, time.monotonic() - t0, held

    def signal(self, name: str, sig: int) -> float:
        t = time.time()
        os.kill(self.pids[name], sig)
        return t

    def wait_gone(self, name: str, bound: float = 15.0) -> float | None:
        proc = self.own.get(name)
        pid = self.pids[name]
        t0 = time.monotonic()
        while time.monotonic() - t0 < bound:
            if proc is not None:
                if proc.poll() is not None:
                    return time.time()
            elif not pid_alive(pid):
                return time.time()
            time.sleep(0.01)
        return None

    def spawn(self, name: str, argv: list[str]) -> None:
        d = Path(self.info[name]["data_dir"]) if name in self.info else self.data_dir / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "stderr.log", "ab") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    preexec_fn=_die_with_parent)
        self.own[name] = proc
        self.pids[name] = proc.pid

    def restart(self, name: str) -> None:
        self.spawn(name, self.info[name]["restart"])

    def stop(self) -> list[int]:
        for proc in self.own.values():  # ours first: the launcher does not know them
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.own.values():
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                kill_hard(proc.pid)
                proc.wait()
        left = self.launched.stop()
        self.http.close()
        return left


def owners_over(symbols: list[str], names: list[str]) -> dict[str, str | None]:
    return assignment(symbols, names)


# -- reading what happened ---------------------------------------------------------------------


def member_lines(log: Path) -> list[tuple[float, str, str, str]]:
    """(wall time, node, new state, reason) of every membership transition in a peer's log."""
    out = []
    for rec in read_json_lines(log):
        if rec.get("event") == "member":
            t = ts_of(rec)
            if t is not None:
                out.append((t, rec.get("node"), rec.get("new"), rec.get("reason")))
    return out


def first_member(lines, node: str, states: tuple[str, ...], after: float) -> float | None:
    # ts is truncated to the millisecond: an event in the same millisecond as `after` counts.
    for t, n, new, _ in lines:
        if n == node and new in states and t >= after - 0.001:
            return t
    return None


def analyse_trial(trial: dict[str, Any], tape: list[dict[str, Any]], data_dir: Path) -> list[dict[str, Any]]:
    """Per moved symbol of one kill/leave trial: the times that matter, seconds from the signal."""
    t0, victim = trial["t_signal"], trial["victim"]
    states = ("dead",) if trial["kind"] == "kill" else ("left", "dead")
    ex_lines = member_lines(data_dir / "exchange" / "exchange.log")
    t_det = first_member(ex_lines, victim, states, t0)
    rows = []
    for symbol, owner in trial["moves"].items():
        own_lines = member_lines(data_dir / owner / f"{owner}.log")
        t_own = first_member(own_lines, victim, states, t0)
        t_quote = t_claim_ok = t_first_claim = t_victim_release = t_old_ended = None
        refused: list[str] = []
        for r in tape:
            at = r.get("at")
            if at is None or at < t0 or r.get("symbol") != symbol:
                continue
            holder = (r.get("args") or {}).get("holder")
            if r["type"] == "claim" and holder == owner and t_claim_ok is None:
                t_first_claim = t_first_claim or at
                if r["accepted"]:
                    t_claim_ok = at
                else:
                    refused.append(r["reason"])
            if r["type"] == "release" and holder == victim and r["accepted"] and t_victim_release is None:
                t_victim_release = at
            if t_old_ended is None and any(
                    w.get("quote_id", "").startswith(f"{victim}.") for w in (r.get("withdrawn") or [])
                    + (r.get("ended") or [])):
                t_old_ended = at
            if (r["type"] == "put_quote" and r["accepted"] and r["reason"] == "activated" and holder == owner):
                t_quote = at
                break

        def rel(t: float | None, base: float | None = t0) -> float | None:
            return None if t is None or base is None else round(t - base, 3)

        rows.append({
            "trial": trial["n"], "kind": trial["kind"], "victim": victim, "symbol": symbol, "new_owner": owner,
            "signal_to_quote": rel(t_quote),
            "detection_to_quote": rel(t_quote, t_det),
            "signal_to_exchange_detection": rel(t_det),
            "signal_to_owner_detection": rel(t_own),
            "signal_to_first_claim": rel(t_first_claim),
            "signal_to_claim_granted": rel(t_claim_ok),
            "claim_granted_to_quote": rel(t_quote, t_claim_ok),
            "claims_refused": len(refused), "refused_reasons": sorted(set(refused)),
            "signal_to_victim_release": rel(t_victim_release),
            "signal_to_old_quote_ended": rel(t_old_ended),
        })
    return rows


def summ(values: list[float | None]) -> dict[str, Any]:
    v = [x for x in values if x is not None]
    if not v:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(v), "median": round(statistics.median(v), 3), "max": round(max(v), 3),
            "min": round(min(v), 3)}


# -- the parts ---------------------------------------------------------------------------------


def run_kill_leave(base: Path, args, kinds: list[str]) -> dict[str, Any]:
    c = Cluster(base / "kill-leave", args.peers, args)
    trials: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        c.start()
        names = c.mm_names()
        print(f"[kill/leave] cluster up: {names}, symbols {c.symbols}", flush=True)
        n = 0
        for kind in kinds:
            for i in range(args.trials):
                n += 1
                full = owners_over(c.symbols, names)
                ok, waited, held = c.wait_quoted_by(full, args.bound)
                if not ok:
                    notes.append(f"{kind} trial {i + 1}: symbols never all quoted by their owners: {held}")
                    print(f"  {notes[-1]}", flush=True)
                    break
                time.sleep(args.settle)
                holding = sorted({o for o in full.values() if o})
                victim = holding[(args.seed + n) % len(holding)]
                rest = [x for x in names if x != victim]
                after = owners_over(c.symbols, rest)
                moves = {s: after[s] for s in c.symbols if full[s] == victim}
                sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
                t_sig = c.signal(victim, sig)
                ok, waited, held = c.wait_quoted_by(after, args.bound, only=list(moves))
                t_gone = c.wait_gone(victim)
                trials.append({"n": n, "kind": kind, "victim": victim, "t_signal": t_sig, "moves": moves,
                               "quoted_again": ok,
                               "process_gone_after": None if t_gone is None else round(t_gone - t_sig, 3)})
                print(f"  {kind} {i + 1}/{args.trials}: {victim} ({len(moves)} symbols: "
                      f"{', '.join(f'{s}->{o}' for s, o in moves.items())}) quoted again: {ok}, "
                      f"poll saw it {waited:.2f}s after the signal", flush=True)
                if not ok:
                    notes.append(f"{kind} trial {i + 1}: not all of {victim}'s symbols quoted by their new "
                                 f"owners within {args.bound}s: {held}")
                if t_gone is None:
                    notes.append(f"{kind} trial {i + 1}: {victim} still running 15 s after the signal")
                    kill_hard(c.pids[victim])
                c.restart(victim)
    finally:
        left = c.stop()
        if left:
            print(f"  killed leftover pids {left}", flush=True)
    tape = list(TapeReader(c.data_dir / "exchange" / "exchange.tape").records())
    rows = [row for t in trials for row in analyse_trial(t, tape, c.data_dir)]
    return {"trials": trials, "rows": rows, "notes": notes}


def run_join(base: Path, args) -> dict[str, Any]:
    symbols = [f"S{i:03d}" for i in range(args.join_symbols)]
    # Each quote reserves up to 5 a side; the default limit (100) would starve most symbols.
    c = Cluster(base / "join", args.join_peers, args, symbols=symbols,
                exposure_limit=max(100, 10 * len(symbols)))
    trials: list[dict[str, Any]] = []
    notes: list[str] = []
    newcomer = f"mm-{args.join_peers + 1}"
    try:
        c.start()
        names = c.mm_names()
        seed_gossip = c.info["mm-1"]["gossip"]
        before = owners_over(c.symbols, names)
        after = owners_over(c.symbols, [*names, newcomer])
        predicted = sorted(s for s in c.symbols if before[s] != after[s])
        print(f"[join] cluster up: {names}, {len(symbols)} symbols; rendezvous predicts {len(predicted)} move "
              f"to {newcomer}", flush=True)
        d = c.data_dir / newcomer
        argv = [sys.executable, "-m", "peer.cli", "peer", "--role", "mm", "--name", newcomer, "--join", seed_gossip,
                "--data-dir", str(d), "--profile", args.profile, "--lease", str(args.lease), "--quiet",
                "--http", "127.0.0.1:0", "--bind", "127.0.0.1:0", "--key-file", str(c.data_dir / "cluster.key")]
        for i in range(args.join_trials):
            ok, waited, held_before = c.wait_quoted_by(before, args.bound)
            if not ok:
                notes.append(f"join trial {i + 1}: not quoted by the {len(names)} owners: {held_before}")
                print(f"  {notes[-1]}", flush=True)
                break
            time.sleep(args.settle)
            held_before = c.holders()
            t_start = time.time()
            c.spawn(newcomer, argv)
            ok, waited, held_after = c.wait_quoted_by(after, args.bound)
            moved = sorted(s for s in c.symbols if held_before.get(s) != held_after.get(s))
            to_new = [s for s in moved if held_after.get(s) == newcomer]
            trials.append({"n": i + 1, "t_start": t_start, "quoted_by_owners": ok, "moved": moved,
                           "moved_to_newcomer": to_new, "moved_elsewhere": sorted(set(moved) - set(to_new)),
                           "from": {s: held_before.get(s) for s in moved}})
            print(f"  join {i + 1}/{args.join_trials}: {len(moved)} of {len(symbols)} symbols changed holder "
                  f"({len(to_new)} to {newcomer}); all quoted by the 5 owners: {ok} ({waited:.2f}s after the "
                  f"start)", flush=True)
            if not ok:
                notes.append(f"join trial {i + 1}: not quoted by the five owners within {args.bound}s: "
                             f"{ {s: h for s, h in held_after.items() if h != after[s]} }")
            t_sig = c.signal(newcomer, signal.SIGTERM)
            if c.wait_gone(newcomer) is None:
                notes.append(f"join trial {i + 1}: {newcomer} still running 15 s after SIGTERM")
                kill_hard(c.pids[newcomer])
            trials[-1]["t_leave"] = t_sig
    finally:
        left = c.stop()
        if left:
            print(f"  killed leftover pids {left}", flush=True)
    tape = list(TapeReader(c.data_dir / "exchange" / "exchange.tape").records())
    started = [ts_of(r) for r in read_json_lines(c.data_dir / newcomer / f"{newcomer}.log")
               if r.get("event") == "peer_started"]
    rows = []
    for t in trials:
        t0 = t["t_start"]
        up = next((s for s in started if s is not None and s >= t0), None)
        for s in t["moved_to_newcomer"]:
            old = t["from"][s]
            t_rel = t_claim = t_quote = None
            for r in tape:
                at = r.get("at")
                if at is None or at < t0 or r.get("symbol") != s:
                    continue
                h = (r.get("args") or {}).get("holder")
                if r["type"] == "release" and h == old and r["accepted"] and t_rel is None:
                    t_rel = at
                if r["type"] == "claim" and h == newcomer and r["accepted"] and t_claim is None:
                    t_claim = at
                if r["type"] == "put_quote" and h == newcomer and r["accepted"] and r["reason"] == "activated":
                    t_quote = at
                    break
            rows.append({
                "trial": t["n"], "symbol": s, "from": old,
                "start_to_peer_started": None if up is None else round(up - t0, 3),
                "start_to_release": None if t_rel is None else round(t_rel - t0, 3),
                "start_to_quote": None if t_quote is None else round(t_quote - t0, 3),
                "peer_started_to_quote": None if (t_quote is None or up is None) else round(t_quote - up, 3),
                "release_to_claim": None if (t_claim is None or t_rel is None) else round(t_claim - t_rel, 3),
                "quote_gap": None if (t_quote is None or t_rel is None) else round(t_quote - t_rel, 3),
            })
    return {"symbols": len(symbols), "peers_before": names, "newcomer": newcomer, "predicted": predicted,
            "predicted_fraction": round(len(predicted) / len(symbols), 3), "trials": trials, "rows": rows,
            "notes": notes}


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    parts = [p for p in args.parts.split(",") if p]
    method = [line.strip() for part in __doc__.split("\n\n")[1:4] for line in part.splitlines()]
    method.append(murmur_profile_line(args.profile))
    machine = header("takeover: authority after SIGKILL, graceful leave and join, real processes", method, args)
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="murmur-bench-takeover-"))
    out: dict[str, Any] = {}
    try:
        kinds = [k for k in ("kill", "leave") if k in parts]
        if kinds:
            out["kill_leave"] = run_kill_leave(base, args, kinds)
        if "join" in parts:
            out["join"] = run_join(base, args)
    finally:
        keep_or_remove(base, args, "tapes, logs")
    finish_machine(machine)

    summary: dict[str, Any] = {}
    kl = out.get("kill_leave")
    if kl:
        for kind in ("kill", "leave"):
            rows = [r for r in kl["rows"] if r["kind"] == kind]
            if not rows:
                continue
            s = {k: summ([r[k] for r in rows]) for k in (
                "signal_to_quote", "detection_to_quote", "signal_to_exchange_detection", "signal_to_owner_detection",
                "signal_to_claim_granted", "claim_granted_to_quote", "signal_to_victim_release",
                "signal_to_old_quote_ended")}
            s["symbols"] = len(rows)
            s["without_new_quote"] = sum(1 for r in rows if r["signal_to_quote"] is None)
            s["claims_refused_total"] = sum(r["claims_refused"] for r in rows)
            summary[kind] = s
            what = "SIGKILL" if kind == "kill" else "SIGTERM"
            print(f"\n{kind}: {len(rows)} symbols over {args.trials} trials; seconds from the {what} unless said")
            print(table([[r["trial"], r["victim"], r["symbol"], r["new_owner"], fmt(r["signal_to_exchange_detection"]),
                          fmt(r["signal_to_owner_detection"]), fmt(r["signal_to_claim_granted"]),
                          str(r["claims_refused"]), fmt(r["signal_to_quote"]), fmt(r["detection_to_quote"])]
                         for r in rows],
                        ["trial", "victim", "symbol", "new owner", "exch. detects", "owner detects",
                         "claim granted", "refused", "quote", "detect->quote"]))
            print(table([[k, str(v["n"]), fmt(v["median"], 3), fmt(v["max"], 3)]
                         for k, v in s.items() if isinstance(v, dict)], ["figure (s)", "n", "median", "max"]))
            if kind == "kill":
                m = s["detection_to_quote"]["max"]
                print(f"goal: quote within 0.5 s of failure detection: "
                      f"{'met' if m is not None and m <= 0.5 and not s['without_new_quote'] else 'NOT met'} (max {m})")
            else:
                m = s["signal_to_quote"]["max"]
                print(f"goal: hand-over under 0.5 s: "
                      f"{'met' if m is not None and m < 0.5 and not s['without_new_quote'] else 'NOT met'} (max {m})")
        for note in kl["notes"]:
            print(f"NOTE: {note}")
    j = out.get("join")
    if j:
        moved = [len(t["moved"]) for t in j["trials"]]
        to_new = [len(t["moved_to_newcomer"]) for t in j["trials"]]
        summary["join"] = {
            "symbols": j["symbols"], "predicted_moves": len(j["predicted"]),
            "predicted_fraction": j["predicted_fraction"], "moved_per_trial": moved,
            "moved_to_newcomer_per_trial": to_new,
            "moved_fraction_median": round(statistics.median(moved) / j["symbols"], 3) if moved else None,
            "moved_elsewhere_total": sum(len(t["moved_elsewhere"]) for t in j["trials"]),
            "exact_prediction_every_trial": all(sorted(t["moved"]) == j["predicted"] for t in j["trials"]),
            **{k: summ([r[k] for r in j["rows"]]) for k in (
                "start_to_peer_started", "peer_started_to_quote", "start_to_quote", "release_to_claim", "quote_gap")},
        }
        sj = summary["join"]
        print(f"\njoin: {j['newcomer']} joins {len(j['peers_before'])} market makers, {j['symbols']} symbols")
        print(f"  rendezvous predicts {sj['predicted_moves']} moves ({sj['predicted_fraction']:.0%}): "
              f"{', '.join(j['predicted'])}")
        print(f"  measured moves per trial: {moved} (to {j['newcomer']}: {to_new}; elsewhere: "
              f"{sj['moved_elsewhere_total']}); exactly the predicted ones every trial: "
              f"{sj['exact_prediction_every_trial']}")
        print(table([[k, str(sj[k]["n"]), fmt(sj[k]["median"], 3), fmt(sj[k]["max"], 3)]
                     for k in ("start_to_peer_started", "peer_started_to_quote", "start_to_quote",
                               "release_to_claim", "quote_gap")],
                    ["figure (s), per moved symbol", "n", "median", "max"]))
        for note in j["notes"]:
            print(f"NOTE: {note}")
    json_line("takeover", machine, args, summary=summary, detail=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
