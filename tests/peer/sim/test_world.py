"""The whole trading cluster in one process (peer/sim/): real services and HTTP code on the
simulated network and clock, judged by the checker of `murmur check`, the same for the same seed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from gossip.config import LOCAL
from peer.commands import sim as sim_command
from peer.exchange.tape.reader import TapeReader
from peer.sim.world import PROFILES, SETTLE, WARM, plan_faults, run_world
from tests.peer.determinism import ROOT, run_simulated

NAMES = ["exchange", "ledger", "mm-1", "mm-2", "mm-3"]


def test_faults_are_a_function_of_the_seed_one_at_a_time_inside_the_window():
    for seed in range(30):
        faults = plan_faults(random.Random(seed), "chaos", NAMES, 120.0)
        assert faults == plan_faults(random.Random(seed), "chaos", NAMES, 120.0)
        for a, b in zip(faults, faults[1:], strict=False):
            assert a.at + a.lasts <= b.at  # one at a time: each is judged by what follows it
        assert all(WARM <= f.at and f.at + f.lasts <= 120.0 - SETTLE for f in faults)
        assert all(set(f.subjects) <= set(NAMES) for f in faults)
    kinds = {f.kind for seed in range(30) for f in plan_faults(random.Random(seed), "chaos", NAMES, 120.0)}
    assert kinds == {"partition", "isolate", "freeze", "crash", "loss", "delay", "oneway", "duplicate", "reorder",
                     "torn", "diskfail", "commitcrash"}
    assert plan_faults(random.Random(1), "none", NAMES, 120.0) == []
    assert {f.kind for f in plan_faults(random.Random(1), "calm", NAMES, 300.0)} <= {"loss", "delay"}
    assert PROFILES == sim_command.PROFILES == ("none", "calm", "network", "storage", "chaos")


@pytest.mark.early(seconds=10)
def test_a_run_without_faults_trades_holds_every_invariant_and_starts_no_thread(tmp_path):
    # run_simulated refuses every thread: the tape's and the ledger's commits ran inline.
    report = run_simulated(lambda: run_world(1, 2, LOCAL, tmp_path, duration=30.0, profile="none"), seed=1)
    assert report.ok, report.violations
    assert report.fills > 50 and report.requoted_s == 0.0
    assert [v.held for v in report.verdicts] == [True] * len(report.verdicts) and len(report.verdicts) == 10
    assert (tmp_path / "exchange" / "exchange.tape").exists() and (tmp_path / "ledger" / "ledger.db").exists()
    # The peers sign their calls and every quote went live on the ledger's verified grant.
    puts = [r for r in TapeReader(tmp_path / "exchange" / "exchange.tape").records()
            if r.get("type") == "put_quote" and r.get("accepted")]
    assert puts and all(isinstance(r["args"].get("grant"), dict) for r in puts)
    assert all(r["args"]["grant"]["quote_id"] == r["args"]["quote_id"] for r in puts)


def _sim(seed: int, hashseed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-m", "peer.cli", "sim", "--seed", str(seed), "--peers", "2",
                          "--duration", "30", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.early(seconds=20)
def test_the_same_seed_gives_the_same_trace_hash_in_processes_with_different_hash_seeds():
    a, b = _sim(3, "1"), _sim(3, "2")
    assert a["trace_hash"] == b["trace_hash"] and a["fills"] == b["fills"] and a["faults"] == b["faults"]
    assert a["fills"] > 0 and len(a["trace_hash"]) == 64


def _first_seed() -> int:
    """Where this run's sweep starts: from the commit under test, so each commit sweeps other
    seeds (and the same commit the same ones); a failure prints the seed that reproduces it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    digits = head.stdout.strip()[:6] if head.returncode == 0 else ""
    return int(digits, 16) % 1_000_000 + 1 if digits else 1


# What the suite sweeps, in wall seconds: one core's worth, beside the rest of the suite on the
# other (the test starts first, tests/conftest.py).
SWEEP_BUDGET = 90


@pytest.mark.early(seconds=90)
def test_ci_sweeps_as_many_seeds_as_fit_in_its_budget_and_none_fails():
    first = _first_seed()
    out = subprocess.run([sys.executable, "-m", "peer.cli", "sim", "--seeds", f"{first}..{first + 10_000}",
                          "--budget", str(SWEEP_BUDGET), "--jobs", "1", "--peers", "3", "--duration", "30", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=400, check=False)
    sweep = json.loads(out.stdout)
    assert sweep["failed"] == [], (f"seeds {sweep['first']}..{sweep['last']}: {sweep['failed']}; reproduce one "
                                   "with: murmur sim --seed SEED --peers 3 --duration 30 --keep /tmp/sim")
    assert out.returncode == 0 and sweep["seeds"] >= 2 and sweep["first"] == first
