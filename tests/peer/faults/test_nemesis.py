"""The operator's side of fault injection on processes and files (peer/faults/nemesis.py).

Links on a real cluster are exercised by the scenarios (test_scenarios.py); here the parts that
need no cluster: signals reach only the peer's own process, every action is journaled, a
restart needs the launcher, a peer that is not running is reported, not hidden.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peer.faults.journal import read_faults
from peer.faults.nemesis import Nemesis, NemesisError
from peer.faults.plan import Partition
from peer.tools.processes import pid_alive, stop_group


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def cluster(tmp_path: Path):
    """A cluster.json whose `mm-1` is a sleeping process carrying mm-1's data dir on its command
    line (as a launched peer does), and whose `mm-2` is not running."""
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--data-dir", str(data / "mm-1")])
    peers = [
        {"name": "mm-1", "role": "mm", "pid": proc.pid, "gossip": "127.0.0.1:1", "http": "http://127.0.0.1:9",
         "data_dir": str(data / "mm-1")},
        {"name": "mm-2", "role": "mm", "pid": 2**22 + 7, "gossip": "127.0.0.1:2", "http": "http://127.0.0.1:9",
         "data_dir": str(data / "mm-2")},
    ]
    (data / "cluster.json").write_text(json.dumps({"status": "running", "peers": peers}))
    (data / "admin.token").write_text("secret\n")
    try:
        yield data, proc
    finally:
        stop_group([proc], grace=0)


def test_freeze_and_thaw_stop_and_continue_the_peers_process_and_are_journaled(cluster):
    data, proc = cluster
    nemesis = Nemesis(data / "cluster.json")
    out = nemesis.freeze("mm-1")
    assert out.ok and "frozen" in out.lines[0]
    assert _state(proc.pid) == "T"
    assert nemesis.frozen() == ["mm-1"]
    out = nemesis.thaw("mm-1")
    assert out.ok and _state(proc.pid) in "SR"
    assert nemesis.frozen() == []
    records, problems = read_faults(data)
    assert [(r["fault"], r["peer"]) for r in records] == [("freeze", "mm-1"), ("thaw", "mm-1")]
    assert not problems and all(r["at"] <= time.time() for r in records)


def test_kill_ends_the_peers_process(cluster):
    data, proc = cluster
    out = Nemesis(data / "cluster.json").kill("mm-1")
    assert out.ok
    proc.wait(timeout=5)
    assert not pid_alive(proc.pid)
    assert read_faults(data)[0][-1]["fault"] == "kill"


def test_a_pid_that_is_not_the_peers_process_is_never_signalled(cluster, tmp_path):
    data, _proc = cluster
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = json.loads((data / "cluster.json").read_text())
        info["peers"][0]["pid"] = other.pid  # a recycled pid: alive, but another program
        (data / "cluster.json").write_text(json.dumps(info))
        out = Nemesis(data / "cluster.json").kill("mm-1")
        assert not out.ok and "not running" in out.lines[0]
        assert other.poll() is None
        assert read_faults(data)[0] == []  # nothing happened, so nothing is journaled
    finally:
        stop_group([other], grace=0)


def test_a_peer_that_is_not_running_is_reported_and_the_partition_still_journaled(cluster):
    data, _proc = cluster
    nemesis = Nemesis(data / "cluster.json")
    # mm-1 runs but answers no HTTP (nothing listens on :9): it is reported, not hidden.
    out = nemesis.partition(Partition([["mm-1"], ["mm-2"]]), for_s=3.0, now=1000.0)
    assert not out.ok
    assert out.lines[0] == "cut mm-1 | mm-2 for 3 s"
    assert any(line.startswith("mm-1: did not take its rule") for line in out.lines)
    assert any(line.startswith("mm-2: not running") for line in out.lines)
    (record,), _ = read_faults(data)
    assert record["fault"] == "partition" and record["until"] == 1003.0 and record["groups"] == [["mm-1"], ["mm-2"]]
    assert nemesis.active_partitions(now=1001.0)[0]["id"] == record["id"]
    assert nemesis.active_partitions(now=1004.0) == []  # it healed by itself at `until`


def test_unknown_peers_a_missing_cluster_file_and_a_restart_without_a_launcher_are_errors(cluster, tmp_path):
    data, _proc = cluster
    nemesis = Nemesis(data / "cluster.json")
    with pytest.raises(NemesisError, match="no peer named 'mm-9'"):
        nemesis.freeze("mm-9")
    with pytest.raises(NemesisError, match="no running launcher"):
        nemesis.restart("mm-1")
    with pytest.raises(NemesisError, match="does not exist"):
        Nemesis(tmp_path / "nowhere" / "cluster.json")
    (data / "admin.token").unlink()
    with pytest.raises(NemesisError, match="admin token"):
        nemesis.token()
