"""Structured logs (`peer/logs.py`): one JSON object a line, each transition with its reason."""

from __future__ import annotations

import io
import json
from datetime import datetime

from gossip.types import MemberEvent, MemberState
from peer.logs import JsonLog


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_each_line_is_one_json_object_with_time_peer_and_event(tmp_path):
    stream = io.StringIO()
    with JsonLog("mm-1", stream=stream, path=tmp_path / "mm-1.log") as log:
        log("peer_started", gossip="127.0.0.1:7946", seeds=("a", "b"))
        log("signal", signal="SIGTERM")
    on_stderr = lines(stream.getvalue())
    in_file = lines((tmp_path / "mm-1.log").read_text())
    assert on_stderr == in_file
    assert [r["event"] for r in in_file] == ["peer_started", "signal"]
    first = in_file[0]
    assert first["peer"] == "mm-1"
    assert first["gossip"] == "127.0.0.1:7946"
    assert first["seeds"] == ["a", "b"]
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None


def test_membership_transition_carries_node_states_incarnation_reason_and_detail():
    stream = io.StringIO()
    log = JsonLog("mm-1", stream=stream)
    log.member_event(
        MemberEvent(
            12.5,
            "mm-3",
            MemberState.SUSPECT,
            MemberState.DEAD,
            4,
            "suspicion-timeout",
            {"suspected_by": "mm-2", "confirmations": 2},
        )
    )
    (record,) = lines(stream.getvalue())
    assert record["event"] == "member"
    assert record["node"] == "mm-3"
    assert record["old"] == "suspect"
    assert record["new"] == "dead"
    assert record["incarnation"] == 4
    assert record["reason"] == "suspicion-timeout"
    assert record["detail"] == {"suspected_by": "mm-2", "confirmations": 2}
    assert record["core_at"] == 12.5


def test_a_restarted_peer_appends_to_its_log_file(tmp_path):
    for run in (1, 2):
        with JsonLog("mm-1", stream=None, path=tmp_path / "mm-1.log") as log:
            log("peer_started", run=run)
    assert [r["run"] for r in lines((tmp_path / "mm-1.log").read_text())] == [1, 2]


def test_unserialisable_fields_are_logged_not_raised():
    stream = io.StringIO()
    log = JsonLog("mm-1", stream=stream)
    log("odd", value=object(), states={MemberState.ALIVE})
    (record,) = lines(stream.getvalue())
    assert record["event"] == "odd"
    assert record["states"] == ["alive"]


def test_a_set_is_logged_sorted_and_ts_comes_from_the_clock_given():
    """What a simulation needs to log the same line twice: no order salted per process
    (PYTHONHASHSEED) and no wall clock."""
    stream = io.StringIO()
    log = JsonLog("ledger", stream=stream, clock=lambda: 1_700_000_000.25)
    log("released", ids={"R-b", "R-c", "R-a"}, frozen=frozenset({3, 1, 2}), mixed={1, "a"})
    (line,) = lines(stream.getvalue())
    assert line["ts"] == "2023-11-14T22:13:20.250+00:00"
    assert line["ids"] == ["R-a", "R-b", "R-c"] and line["frozen"] == [1, 2, 3]
    assert sorted(line["mixed"], key=str) == [1, "a"]  # unsortable: still logged
