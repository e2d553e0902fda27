"""The fault journal: append and read back, damaged lines, and when each fault was active."""

from __future__ import annotations

import json

import pytest

from peer.faults.journal import (
    FILE_NAME,
    JournalError,
    active_at,
    append_fault,
    fault_intervals,
    iso_time,
    read_faults,
)

T = 1764160000.0


def rec(fault: str, at: float, **kw) -> dict:
    return {"at": at, "time": iso_time(at), "fault": fault, **kw}


def partition(at: float, until: float | None = None, summary: str = "mm-1 | mm-2") -> dict:
    return rec("partition", at, id=f"p-{at}", groups=[["mm-1"], ["mm-2"]], until=until, summary=summary)


def test_append_then_read_gives_the_records_back_with_their_time(tmp_path):
    first = append_fault(tmp_path, {"fault": "partition", "groups": [["mm-1"], ["mm-2"]], "until": None,
                                    "at": 1.0}, now=T + 0.1234)
    second = append_fault(tmp_path, {"fault": "heal"}, now=T + 5)
    assert first["at"] == T + 0.1234 and first["time"] == "2025-11-26T12:26:40.123Z"
    assert list(first)[:3] == ["at", "time", "fault"]
    records, problems = read_faults(tmp_path)
    assert problems == []
    assert records == [first, second]
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_a_record_without_a_fault_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError):
        append_fault(tmp_path, {"peer": "mm-1"}, now=T)
    assert not (tmp_path / FILE_NAME).exists()


def test_no_journal_is_no_records_and_no_problems(tmp_path):
    assert read_faults(tmp_path) == ([], [])


def test_malformed_lines_are_skipped_and_reported_never_a_crash(tmp_path):
    good = rec("heal", T)
    (tmp_path / FILE_NAME).write_bytes(b"\n".join([
        json.dumps(good).encode(),
        b"{not json",
        b"[1, 2]",
        json.dumps({"fault": "heal"}).encode(),  # no time
        json.dumps({"at": T, "fault": 3}).encode(),
        b"\xff\xfe",
        b"",
        json.dumps(good).encode(),
        b'{"at": 1764160000, "fau',  # torn last line, no newline
    ]))
    records, problems = read_faults(tmp_path)
    assert records == [good, good]
    assert len(problems) == 6
    assert "line 2: not JSON" in problems[0]
    assert "line 3: not a JSON object" in problems[1]
    assert "line 4: no numeric 'at'" in problems[2]
    assert "line 5: no string 'fault'" in problems[3]
    assert "line 9: an unfinished last line" in problems[5]


def test_a_journal_that_is_a_directory_raises_journal_error(tmp_path):
    (tmp_path / FILE_NAME).mkdir()
    with pytest.raises(JournalError):
        read_faults(tmp_path)


def test_a_partition_ends_at_the_first_heal_after_it():
    intervals = fault_intervals([partition(T), rec("heal", T + 3), rec("heal", T + 7)], T + 10)
    assert len(intervals) == 1
    (p,) = intervals
    assert (p.kind, p.subject, p.start, p.end, p.ended_by) == ("partition", "mm-1 | mm-2", T, T + 3, "heal")
    assert p.summary == "partition mm-1 | mm-2"


def test_a_partition_ends_at_its_until_and_a_later_heal_changes_nothing():
    (p,) = fault_intervals([partition(T, until=T + 5), rec("heal", T + 8)], T + 10)
    assert (p.end, p.ended_by) == (T + 5, "until")
    # A heal before the until ends it first.
    (p,) = fault_intervals([partition(T, until=T + 5), rec("heal", T + 2)], T + 10)
    assert (p.end, p.ended_by) == (T + 2, "heal")
    # No heal at all: the until, even after a later partition began.
    first, second = fault_intervals([partition(T, until=T + 5), partition(T + 6, summary="b")], T + 10)
    assert (first.end, first.ended_by) == (T + 5, "until")
    assert second.end is None


def test_a_heal_ends_every_partition_and_no_freeze():
    records = [partition(T), partition(T + 1, summary="mm-3 | mm-4"), rec("freeze", T + 2, peer="mm-5"),
               rec("heal", T + 4)]
    a, b, frozen = fault_intervals(records, T + 10)
    assert a.end == b.end == T + 4
    assert frozen.kind == "freeze" and frozen.end is None


def test_freeze_ends_at_the_thaw_of_that_peer_only():
    records = [rec("freeze", T, peer="mm-1"), rec("freeze", T + 1, peer="mm-2"), rec("thaw", T + 2, peer="mm-2"),
               rec("thaw", T + 3, peer="mm-1")]
    one, two = fault_intervals(records, T + 10)
    assert (one.subject, one.end, one.ended_by) == ("mm-1", T + 3, "thaw")
    assert (two.subject, two.end) == ("mm-2", T + 2)
    assert one.summary == "freeze mm-1"


def test_kill_ends_at_the_restart_of_that_peer_and_a_restart_also_ends_its_freeze():
    records = [rec("kill", T, peer="exchange"), rec("restart", T + 1, peer="ledger"),
               rec("restart", T + 4, peer="exchange")]
    (kill,) = fault_intervals(records, T + 10)
    assert (kill.kind, kill.subject, kill.end, kill.ended_by) == ("kill", "exchange", T + 4, "restart")
    # Frozen, then killed, then restarted: the new process is neither frozen nor dead.
    records = [rec("freeze", T, peer="mm-1"), rec("kill", T + 1, peer="mm-1"), rec("restart", T + 2, peer="mm-1")]
    assert [(iv.kind, iv.end) for iv in fault_intervals(records, T + 10)] == [("freeze", T + 2), ("kill", T + 2)]


def test_an_ending_record_before_the_fault_ends_nothing():
    records = [rec("heal", T), rec("thaw", T + 1, peer="mm-1"), partition(T + 2), rec("freeze", T + 3, peer="mm-1")]
    assert [iv.end for iv in fault_intervals(records, T + 10)] == [None, None]


def test_intervals_are_judged_as_of_the_end_time():
    records = [partition(T, until=T + 5), rec("kill", T + 1, peer="mm-1"), rec("restart", T + 8, peer="mm-1")]
    p, kill = fault_intervals(records, T + 6)
    assert p.end == T + 5 and kill.end is None  # the restart came after the end time
    p, kill = fault_intervals(records, T + 4)
    assert p.end is None and kill.end is None
    p, kill = fault_intervals(records, None)
    assert p.end == T + 5 and kill.end == T + 8


def test_heal_thaw_and_restart_are_not_intervals_and_unknown_kinds_are_ignored():
    records = [rec("heal", T), rec("thaw", T, peer="a"), rec("restart", T, peer="a"), rec("reboot", T)]
    assert fault_intervals(records, T + 1) == []


def test_a_partition_named_by_its_groups_when_it_has_no_summary():
    record = rec("partition", T, groups=[["mm-1", "mm-2"], ["exchange"]])
    (p,) = fault_intervals([record], None)
    assert p.subject == "mm-1,mm-2 | exchange" and p.record is record


def test_active_at_is_start_inclusive_end_exclusive():
    records = [partition(T, until=T + 5), rec("freeze", T + 2, peer="mm-1"), rec("thaw", T + 6, peer="mm-1"),
               rec("kill", T + 7, peer="ledger")]
    intervals = fault_intervals(records, T + 10)

    def names(t: float) -> list[str]:
        return [iv.summary for iv in active_at(intervals, t)]

    assert names(T - 1) == []
    assert names(T) == ["partition mm-1 | mm-2"]
    assert names(T + 3) == ["partition mm-1 | mm-2", "freeze mm-1"]
    assert names(T + 5) == ["freeze mm-1"]
    assert names(T + 6) == []
    assert names(T + 100) == ["kill ledger"]
    assert intervals[0].overlaps(T + 4, T + 9) and not intervals[0].overlaps(T + 5, None)
    assert intervals[0].to_json()["summary"] == "partition mm-1 | mm-2"


def test_a_deeply_nested_line_is_skipped_and_reported_never_a_crash(tmp_path):
    good = rec("heal", T)
    (tmp_path / FILE_NAME).write_bytes(b"[" * 5000 + b"]" * 5000 + b"\n" + json.dumps(good).encode() + b"\n")
    records, problems = read_faults(tmp_path)
    assert records == [good]
    assert len(problems) == 1 and "line 1: not JSON" in problems[0]
