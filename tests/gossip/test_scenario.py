"""The `murmur sim` fault scenario: every membership check holds, for several seeds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gossip.config import LAN, LOCAL
from gossip.scenario import run_scenario


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_scenario_checks_hold_under_loss_freeze_crash_and_partition(seed, autojump_clock):
    report = await run_scenario(seed, 16, LOCAL, loss=0.03)
    assert report.checks and report.ok, [c for c in report.checks if not c.held]
    assert len(report.checks) == 4


async def test_scenario_holds_with_the_lan_profile(autojump_clock):
    report = await run_scenario(5, 12, LAN, loss=0.02)
    assert report.ok, [c for c in report.checks if not c.held]


@pytest.mark.early(seconds=12)
def test_murmur_sim_membership_prints_the_same_hash_for_the_same_seed():
    def run(seed: int) -> dict:
        out = subprocess.run([sys.executable, "-m", "peer.cli", "sim", "--membership", "--seed", str(seed), "--peers", "10",
                              "--json"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    a, b = run(4), run(4)
    assert a["ok"] and a["trace_hash"] == b["trace_hash"]
    assert run(5)["trace_hash"] != a["trace_hash"]


def test_murmur_sim_membership_rejects_too_few_peers():
    out = subprocess.run([sys.executable, "-m", "peer.cli", "sim", "--membership", "--seed", "1", "--peers", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--peers" in out.stderr
