"""`murmur check` (`peer/commands/check.py`) with a fault journal: the timeline and the liveness figures."""

from __future__ import annotations

import json

from peer.cli import main
from peer.exchange.tape import open_for_append
from peer.faults.journal import FILE_NAME, append_fault
from tests.peer.tools.test_checker import History, T


def cluster_dir(tmp_path, *, extra_line: bytes = b""):
    """A data dir: a tape where AAPL goes unquoted during a partition and is quoted again 1.5 s
    after the heal, MSFT never quoted; the journal of that partition and its heal."""
    h = History()
    h.put(1, "q1")
    h.put(3, "q2", replaced="q1")  # no gap
    h.tick(13, "q2")  # expired at T+13
    h.put(14.5, "q3")
    h.tick(24.5, "q3")
    h.put(24.75, "q4")  # a short gap, counted but not listed
    h.quiet(30)
    (tmp_path / "exchange").mkdir(parents=True)
    with open_for_append(tmp_path / "exchange" / "exchange.tape") as w:
        w.append_many(h.records)
    append_fault(tmp_path, {"fault": "partition", "id": "p-1", "groups": [["mm-1"], ["exchange", "ledger"]],
                            "one_way": False, "cut": True, "for_s": None, "until": None,
                            "summary": "mm-1 | exchange,ledger"}, now=T + 12)
    append_fault(tmp_path, {"fault": "heal"}, now=T + 13)
    append_fault(tmp_path, {"fault": "kill", "peer": "mm-2"}, now=T + 28)
    if extra_line:
        with open(tmp_path / FILE_NAME, "ab") as f:
            f.write(extra_line)
    return tmp_path


def test_check_json_has_the_faults_and_the_liveness_figures(tmp_path, capsys):
    assert main(["check", str(cluster_dir(tmp_path)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "held"
    faults = report["faults"]
    assert faults["path"] == str(tmp_path / FILE_NAME) and faults["problems"] == []
    assert [r["fault"] for r in faults["records"]] == ["partition", "heal", "kill"]
    assert faults["intervals"] == [
        {"kind": "partition", "subject": "mm-1 | exchange,ledger", "summary": "partition mm-1 | exchange,ledger",
         "start": T + 12, "end": T + 13, "ended_by": "heal"},
        {"kind": "kill", "subject": "mm-2", "summary": "kill mm-2", "start": T + 28, "end": None, "ended_by": None},
    ]
    live = report["liveness"]
    assert live["started_at"] == T and live["end_at"] == T + 30
    aapl = live["symbols"]["AAPL"]
    assert aapl["first_quote_at"] == T + 1 and aapl["gap_count"] == 2
    assert aapl["longest_gap"] == {"symbol": "AAPL", "start": T + 13, "end": T + 14.5, "duration": 1.5,
                                   "open": False, "quote_ended": "ttl", "faults": []}  # healed at T+13
    assert live["longest_gap"] == aapl["longest_gap"]
    assert live["symbols"]["MSFT"] == {"first_quote_at": None, "gap_count": 0, "unquoted_s": 0, "longest_gap": None,
                                       "gaps": []}
    (after,) = live["after_faults"]
    assert after == {"fault": "partition mm-1 | exchange,ledger", "ended_at": T + 13, "ended_by": "heal",
                     "requoted_s": {"AAPL": 1.5, "MSFT": None}, "every_symbol_within_s": None}


def test_check_human_output_shows_the_timeline_and_the_gaps(tmp_path, capsys):
    assert main(["check", str(cluster_dir(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert f"faults  {tmp_path / FILE_NAME}" in out
    assert "22:13:32.000  partition mm-1 | exchange,ledger" in out
    assert "until 22:13:33.000 (heal, 1.00 s)" in out
    assert "22:13:48.000  kill mm-2" in out and "still active" in out
    assert "AAPL     first quoted 22:13:21.000  2 gap(s), 1.75 s unquoted, longest 1.50 s 22:13:33.000 -> 22:13:34.500 (last quote: ttl)" in out
    assert "1 more not listed (--list-gaps SECONDS lists shorter ones, --json all)" in out
    assert "MSFT     never quoted" in out
    assert "after partition mm-1 | exchange,ledger ended (heal) at 22:13:33.000: not every symbol quoted again" in out
    assert out.rstrip().endswith("HELD")
    # Every gap listed when asked.
    assert main(["check", str(tmp_path), "--list-gaps", "0"]) == 0
    out = capsys.readouterr().out
    assert "gap 0.25 s 22:13:44.500 -> 22:13:44.750 (last quote: ttl)" in out and "not listed" not in out


def test_an_open_gap_and_a_damaged_journal_never_change_the_exit_status(tmp_path, capsys):
    data = cluster_dir(tmp_path, extra_line=b"{torn")
    h = History()
    h.put(1, "q1")
    h.quiet(40)  # q1 expired at T+11: open until the end
    tape = data / "exchange" / "exchange.tape"
    tape.unlink()
    with open_for_append(tape) as w:
        w.append_many(h.records)
    assert main(["check", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "held" and report["problems"] == []
    assert report["faults"]["problems"] == [f"{data / FILE_NAME} line 4: an unfinished last line; skipped"]
    gap = report["liveness"]["symbols"]["AAPL"]["longest_gap"]
    assert gap["open"] and gap["end"] is None and gap["duration"] == 29
    assert gap["faults"] == ["partition mm-1 | exchange,ledger", "kill mm-2"]
    assert main(["check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "still open at the tape's end" in out and "~ " in out and "unfinished last line" in out


def test_check_without_a_journal_says_none_recorded(tmp_path, capsys):
    data = cluster_dir(tmp_path)
    (data / FILE_NAME).unlink()
    assert main(["check", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faults"] == {"path": None, "records": [], "intervals": [], "problems": []}
    assert report["liveness"]["after_faults"] == []
    assert main(["check", str(data)]) == 0
    assert "faults  - (none recorded)" in capsys.readouterr().out
