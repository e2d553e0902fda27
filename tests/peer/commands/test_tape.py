"""`murmur tape` (`peer/commands/tape.py`): replay, filters, summary, JSON, damaged tapes."""

from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from peer.cli import main
from peer.exchange.tape import FRAME_SIZE, open_for_append

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
TYPES = ("order.accepted", "order.rejected", "quote.accepted", "fill")


def event(i: int) -> dict:
    record = {"type": TYPES[i % 4], "symbol": SYMBOLS[i % 3], "at": 100.0 + i * 0.5}
    if record["type"] == "fill":
        record |= {
            "fill_id": f"f-{i}",
            "price": Decimal("101.50"),
            "quantity": 2,
            "tag": b"\x01\xff",
        }
    if record["type"] == "order.rejected":
        record["reason"] = "stale epoch 3"
    return record


@pytest.fixture
def tape_file(tmp_path):
    """24 events: 6 of each type, 8 of each symbol, `at` from 100.0 to 111.5."""
    path = tmp_path / "tape.cbor"
    with open_for_append(path) as w:
        w.append_many(event(i) for i in range(24))
        w.append({"type": "clock.tick"})  # seq 25: no symbol, no `at`
    return path


def record_offsets(path) -> list[int]:
    """Where each record starts, from the length fields."""
    data = path.read_bytes()
    offsets, p = [], 10
    while p < len(data):
        offsets.append(p)
        p += FRAME_SIZE + int.from_bytes(data[p : p + 4], "big")
    return offsets


def tape(capsys, *argv) -> tuple[int, str, str]:
    code = main(["tape", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_record_is_printed_one_a_line_in_seq_order(tape_file, capsys):
    code, out, err = tape(capsys, tape_file)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 25
    assert [int(line.split()[0]) for line in lines] == list(range(1, 26))
    assert lines[0].split()[:3] == ["1", "order.accepted", "BTC-USD"]
    assert "at=100.0" in lines[0]
    fill = lines[3]
    assert fill.split()[:3] == ["4", "fill", "BTC-USD"]
    assert "fill_id=f-3" in fill and "price=101.50" in fill and "tag=01ff" in fill
    assert 'reason="stale epoch 3"' in lines[1]
    assert lines[24].split() == ["25", "clock.tick", "-"]


def test_type_symbol_after_and_limit_filter_the_records(tape_file, capsys):
    def seqs(*flags):
        code, out, _ = tape(capsys, tape_file, *flags)
        assert code == 0
        return [int(line.split()[0]) for line in out.splitlines()]

    assert seqs("--type", "fill") == [4, 8, 12, 16, 20, 24]
    assert seqs("--type", "fill", "--type", "order.rejected") == [
        2,
        4,
        6,
        8,
        10,
        12,
        14,
        16,
        18,
        20,
        22,
        24,
    ]
    assert seqs("--type", "order.*") == [i + 1 for i in range(24) if i % 4 in (0, 1)]
    assert seqs("--symbol", "ETH-USD") == [2, 5, 8, 11, 14, 17, 20, 23]
    assert seqs("--type", "fill", "--symbol", "ETH-USD") == [8, 20]
    assert seqs("--after", "20") == [21, 22, 23, 24, 25]
    assert seqs("--type", "fill", "--limit", "2") == [4, 8]
    assert seqs("--type", "no-such-type") == []


def test_json_prints_one_object_a_line(tape_file, capsys):
    code, out, _ = tape(capsys, tape_file, "--json", "--type", "fill", "--limit", "1")
    assert code == 0
    (line,) = out.splitlines()
    assert json.loads(line) == {
        "seq": 4,
        "type": "fill",
        "symbol": "BTC-USD",
        "at": 101.5,
        "fill_id": "f-3",
        "price": "101.50",
        "quantity": 2,
        "tag": "01ff",
    }


def test_summary_counts_by_type_and_symbol_with_seq_and_time_span(tape_file, capsys):
    code, out, err = tape(capsys, tape_file, "--summary")
    assert code == 0 and err == ""
    assert "25 selected of 25 read" in out
    assert "1 .. 25" in out
    assert "at 100.000 .. 111.500  (span 11.500 s)" in out
    for name, n in [
        ("order.accepted", 6),
        ("fill", 6),
        ("clock.tick", 1),
        ("BTC-USD", 8),
        ("-", 1),
    ]:
        assert any(line.split() == [name, str(n)] for line in out.splitlines()), name
    assert "tail        clean" in out and "corruption  none" in out


def test_summary_as_json_covers_the_selected_records(tape_file, capsys):
    code, out, _ = tape(capsys, tape_file, "--summary", "--json", "--symbol", "SOL-USD")
    assert code == 0
    doc = json.loads(out)
    assert doc["selected"] == 8 and doc["records_read"] == 25
    assert (doc["first_seq"], doc["last_seq"]) == (3, 24)
    assert doc["by_symbol"] == {"SOL-USD": 8}
    assert doc["by_type"] == {
        "fill": 2,
        "order.accepted": 2,
        "order.rejected": 2,
        "quote.accepted": 2,
    }
    assert (doc["first_at"], doc["last_at"], doc["span_seconds"]) == (101.0, 111.5, 10.5)
    assert doc["torn_tail"] is None and doc["corrupt"] is None and doc["read_to_end"] is True


def test_summary_without_at_fields_says_so(tmp_path, capsys):
    path = tmp_path / "tape"
    with open_for_append(path) as w:
        w.append({"type": "a"})
    code, out, _ = tape(capsys, path, "--summary")
    assert code == 0 and "no record carries an `at` field" in out
    code, out, _ = tape(capsys, path, "--summary", "--json")
    assert json.loads(out)["span_seconds"] is None


def test_a_torn_tail_is_a_note_not_an_error(tape_file, capsys):
    last = record_offsets(tape_file)[-1]
    os.truncate(tape_file, last + 5)
    code, out, err = tape(capsys, tape_file)
    assert code == 0
    assert len(out.splitlines()) == 24
    assert f"incomplete last record at byte {last}" in err and err.count("\n") == 1
    code, out, _ = tape(capsys, tape_file, "--summary")
    assert code == 0 and f"torn: 5 bytes at byte {last}" in out
    assert tape_file.stat().st_size == last + 5, "reading must never cut the tape"


def test_a_corrupt_tape_prints_the_records_before_it_then_the_error_and_exits_1(tape_file, capsys):
    offset = record_offsets(tape_file)[10]  # seq 11
    with open(tape_file, "r+b") as f:
        f.seek(offset + FRAME_SIZE + 3)
        f.write(b"\xee")
    code, out, err = tape(capsys, tape_file)
    assert code == 1
    assert [int(line.split()[0]) for line in out.splitlines()] == list(range(1, 11))
    assert f"corrupt tape at byte {offset}" in err
    assert "see docs/runbook.md: corrupt tape" in err

    code, out, err = tape(capsys, tape_file, "--summary", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["records_read"] == 10 and doc["corrupt"]["offset"] == offset
    assert "corrupt tape" in err


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tape", str(tmp_path / "nope.cbor")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_a_file_that_is_not_a_tape_is_exit_2(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a tape")
    with pytest.raises(SystemExit) as exc:
        main(["tape", str(path)])
    assert exc.value.code == 2
    assert "not a murmur tape" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tape", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "murmur tape" in out and "examples:" in out and "--summary" in out


def test_records_of_any_shape_are_printed_and_summarised_not_a_crash(tmp_path, capsys):
    """CRC-valid records the exchange never writes: a huge `at`, NaN, tags, odd keys, bytes."""
    import cbor2

    path = tmp_path / "odd.tape"
    with open_for_append(path) as w:
        w.append_many([
            {"type": "x", "at": 10**400, "symbol": ["A"]},
            {"type": "y", "at": float("nan"), "v": cbor2.CBORTag(999, [b"\x00", None])},
            {"type": "z", "at": -(10**30), 1: {2: 3}, "u": cbor2.undefined},
            {"type": "w", "at": 5.0},
        ])
    for argv in ((path,), (path, "--json"), (path, "--summary"), (path, "--summary", "--json"), (path, "--symbol", "A*")):
        code, out, err = tape(capsys, *argv)
        assert code == 0, err
        assert out or "--symbol" in argv
