"""The exchange's event tape (`peer/exchange/tape/`): format, writers, reader, torn tails, corruption."""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from decimal import Decimal

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peer.exchange.tape as tape
import peer.exchange.tape.writer as tape_writer
from peer.exchange.tape import (
    FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_RECORD,
    CorruptTape,
    InvalidRecord,
    NotATape,
    TapeClosed,
    TapeLocked,
    TapeReader,
    TapeWriteFailed,
    TapeWriter,
    encode_record,
    open_for_append,
    scan,
)


def event(i: int) -> dict:
    return {
        "type": ("order.accepted", "quote.rejected", "fill")[i % 3],
        "symbol": ("BTC-USD", "ETH-USD")[i % 2],
        "price": Decimal("100.25") + i,
        "quantity": i % 7 + 1,
        "at": 1000.0 + i / 10,
    }


def write_tape(path, n: int) -> list[int]:
    """A tape of n events; returns the byte offset where each record starts."""
    offsets = []
    with open_for_append(path) as w:
        for i in range(n):
            offsets.append(os.path.getsize(path))
            w.append(event(i))
    return offsets


def read_all(path) -> list[dict]:
    return list(TapeReader(path).records())


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


# --- round trip and seqs ---------------------------------------------------------------------


def test_many_records_round_trip_in_order_with_seqs_from_1(tmp_path):
    path = tmp_path / "tape"
    with open_for_append(path) as w:
        assert w.recovery.created and w.recovery.last_seq == 0
        seqs = [w.append(event(i)) for i in range(300)]
        seqs += w.append_many(event(i) for i in range(300, 600))
        assert w.stats.records == 600 and w.stats.fsyncs == 301 and w.stats.batches == 301
    assert seqs == list(range(1, 601))
    records = read_all(path)
    assert [r["seq"] for r in records] == seqs
    assert records == [{"seq": i + 1, **event(i)} for i in range(600)]
    assert list(records[0])[:2] == ["seq", "type"]
    result = scan(path)
    assert (result.records, result.last_seq, result.torn_bytes, result.corrupt) == (600, 600, 0, [])
    assert result.valid_bytes == os.path.getsize(path)


def test_the_file_starts_with_magic_and_version_then_length_crc_payload(tmp_path):
    path = tmp_path / "tape"
    with open_for_append(path) as w:
        w.append({"type": "hello"})
    data = path.read_bytes()
    assert data[:HEADER_SIZE] == b"MURMTAPE\x00\x01"
    assert data[HEADER_SIZE:] == encode_record({"type": "hello"}, 1)


def test_reopening_continues_at_the_next_seq(tmp_path):
    path = tmp_path / "tape"
    write_tape(path, 5)
    with open_for_append(path) as w:
        assert (w.recovery.records, w.recovery.last_seq, w.recovery.cut_bytes) == (5, 5, 0)
        assert w.append({"type": "after.restart"}) == 6
    assert [r["seq"] for r in read_all(path)] == [1, 2, 3, 4, 5, 6]


def test_a_given_seq_must_be_the_next_one(tmp_path):
    with open_for_append(tmp_path / "tape") as w:
        assert w.append({"type": "a", "seq": 1}) == 1
        for wrong in (1, 3, "2", True):
            with pytest.raises(InvalidRecord, match="next seq is 2"):
                w.append({"type": "b", "seq": wrong})
        assert w.append({"type": "b"}) == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"symbol": "BTC-USD"}, "needs a non-empty str 'type'"),
        ({"type": ""}, "needs a non-empty str 'type'"),
        ({"type": 3}, "needs a non-empty str 'type'"),
        (["type", "x"], "is a dict"),
        ({"type": "x", "obj": object()}, "not CBOR-encodable"),
        ({"type": "x", "blob": b"\0" * MAX_RECORD}, "the limit is"),
    ],
)
def test_an_invalid_record_is_refused_and_uses_no_seq(tmp_path, record, message):
    path = tmp_path / "tape"
    with open_for_append(path) as w:
        with pytest.raises(InvalidRecord, match=message):
            w.append(record)
        with pytest.raises(InvalidRecord):
            w.append_many([{"type": "fine"}, record])
        assert w.append({"type": "ok"}) == 1
    assert read_all(path) == [{"seq": 1, "type": "ok"}]


def test_the_caller_dict_is_not_changed(tmp_path):
    record = {"type": "a", "x": 1}
    with open_for_append(tmp_path / "tape") as w:
        w.append(record)
    assert record == {"type": "a", "x": 1}


def test_a_second_writer_is_refused_while_the_first_holds_the_tape(tmp_path):
    path = tmp_path / "tape"
    with open_for_append(path):
        with pytest.raises(TapeLocked, match="another writer"):
            open_for_append(path)
    with open_for_append(path):
        pass


def test_open_without_create_wants_an_existing_tape(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_for_append(tmp_path / "missing", create=False)


# --- the trio writer: group commit ---------------------------------------------------------------


async def test_concurrent_appends_share_fsyncs_and_are_durable_and_ordered(tmp_path, monkeypatch):
    path = tmp_path / "tape"
    synced_up_to = [0]  # the last seq on disk at each fsync
    real_sync = tape_writer._sync_fd

    def sync_and_note(fd):
        real_sync(fd)
        synced_up_to.append(scan(path).last_seq)

    monkeypatch.setattr(tape_writer, "_sync_fd", sync_and_note)
    n = 1000
    writer = TapeWriter(path)
    seq_of = {}

    async def appender(i):
        seq = await writer.append({"type": "order.accepted", "i": i})
        assert seq <= max(synced_up_to), "acknowledged before its fsync"
        seq_of[i] = seq

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            recovery = await nursery.start(writer.run)
            assert (recovery.path, recovery.last_seq) == (path, 0)
            async with trio.open_nursery() as appenders:
                for i in range(n):
                    appenders.start_soon(appender, i)
            await writer.aclose()

    assert sorted(seq_of.values()) == list(range(1, n + 1))
    assert writer.stats.records == n
    assert writer.stats.fsyncs == writer.stats.batches < n
    assert writer.durable_seq == writer.last_seq == n
    records = read_all(path)
    assert [r["seq"] for r in records] == list(range(1, n + 1))
    assert all(seq_of[r["i"]] == r["seq"] for r in records)


async def test_seqs_follow_the_order_of_the_calls(tmp_path):
    path = tmp_path / "tape"
    writer = TapeWriter(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.append({"type": "a"}) == 1
            assert await writer.append_many([{"type": "b"}, {"type": "c"}]) == [2, 3]
            assert await writer.append_many([]) == []
            assert await writer.append({"type": "d"}) == 4
            writer.close()
    assert [r["type"] for r in read_all(path)] == ["a", "b", "c", "d"]


async def test_the_writer_resumes_a_tape_and_reports_what_it_recovered(tmp_path):
    path = tmp_path / "tape"
    offsets = write_tape(path, 4)
    os.truncate(path, offsets[-1] + 3)  # seq 4 torn
    writer = TapeWriter(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            recovery = await nursery.start(writer.run)
            assert (recovery.last_seq, recovery.cut_bytes, recovery.cut_offset) == (
                3,
                3,
                offsets[-1],
            )
            assert await writer.append({"type": "x"}) == 4
            writer.close()
    assert [r["seq"] for r in read_all(path)] == [1, 2, 3, 4]


async def test_append_before_run_or_after_close_is_refused(tmp_path):
    writer = TapeWriter(tmp_path / "tape")
    with pytest.raises(TapeClosed, match="nursery.start"):
        await writer.append({"type": "a"})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.close()
            with pytest.raises(TapeClosed, match="closed"):
                await writer.append({"type": "a"})


async def test_queued_appends_fail_when_the_writer_is_cancelled(tmp_path):
    writer = TapeWriter(tmp_path / "tape", max_delay=60)
    outcome = []

    async def appender():
        try:
            await writer.append({"type": "a"})
        except TapeClosed as exc:
            outcome.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                outer.start_soon(appender)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    assert len(outcome) == 1 and "stopped before" in str(outcome[0])
    assert read_all(tmp_path / "tape") == []


async def test_a_failed_fsync_fails_the_appends_and_stops_the_writer(tmp_path, monkeypatch):
    def broken_disk(fd):
        raise OSError(errno.EIO, "Input/output error")

    writer = TapeWriter(tmp_path / "tape")
    failures = []

    async def appender():
        try:
            await writer.append({"type": "a"})
        except TapeWriteFailed as exc:
            failures.append(exc)

    with trio.fail_after(10):
        with pytest.RaisesGroup(pytest.RaisesExc(TapeWriteFailed, match="Input/output")):
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                monkeypatch.setattr(tape_writer, "_sync_fd", broken_disk)
                nursery.start_soon(appender)
                nursery.start_soon(appender)
    assert len(failures) == 2
    with pytest.raises(TapeWriteFailed, match="reopen"):
        await writer.append({"type": "b"})


async def test_append_while_the_tape_is_being_opened_is_refused_and_close_then_stops_it(tmp_path):
    # No seq can be given before the tape is read: an append then would get seq 1 whatever the
    # tape holds.
    path = tmp_path / "tape"
    write_tape(path, 3)
    may_open = trio.Event()

    async def open_when_allowed(fn, *args):
        await may_open.wait()
        return fn(*args)

    writer = TapeWriter(path, run_sync=open_when_allowed)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(TapeClosed, match="nursery.start"):
                await writer.append({"type": "a"})
            writer.close()
            may_open.set()
    assert writer.recovery is not None and writer.recovery.last_seq == 3
    assert [r["seq"] for r in read_all(path)] == [1, 2, 3]


async def test_the_writer_runs_inline_under_the_virtual_clock(tmp_path, autojump_clock):
    # What a deterministic simulation does: no worker thread, batches held open in virtual time.
    from peer.groupcommit import run_inline

    path = tmp_path / "tape"
    writer = TapeWriter(path, max_delay=0.5, run_sync=run_inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        async with trio.open_nursery() as appenders:
            for i in range(10):
                appenders.start_soon(writer.append, {"type": "a", "i": i})
        assert trio.current_time() - start == pytest.approx(0.5)
        await writer.aclose()
    assert (writer.stats.records, writer.stats.fsyncs) == (10, 1)
    assert [r["seq"] for r in read_all(path)] == list(range(1, 11))


# --- torn tails -------------------------------------------------------------------------------


def test_a_torn_last_record_is_detected_and_cut_at_every_byte_offset(tmp_path):
    whole = tmp_path / "whole"
    offsets = write_tape(whole, 5)
    last_start, size = offsets[-1], os.path.getsize(whole)
    data = whole.read_bytes()
    path = tmp_path / "tape"
    for cut in range(last_start + 1, size):
        path.write_bytes(data[:cut])
        result = scan(path)
        assert (result.records, result.last_seq, result.valid_bytes) == (4, 4, last_start), cut
        assert result.torn_bytes == cut - last_start and result.corrupt == []
        reader = TapeReader(path)
        assert [r["seq"] for r in reader.records()] == [1, 2, 3, 4]
        assert reader.tail is not None and reader.tail.offset == last_start
        with open_for_append(path) as w:
            assert w.recovery.cut_bytes == cut - last_start
            assert w.recovery.cut_offset == last_start
            assert w.append({"type": "next"}) == 5
        assert [r["seq"] for r in read_all(path)] == [1, 2, 3, 4, 5]
        assert os.path.getsize(path) > last_start


@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_a_damaged_last_record_with_nothing_after_it_is_a_torn_tail(tmp_path, where):
    path = tmp_path / "tape"
    offsets = write_tape(path, 5)
    flip_byte(path, offsets[-1] + {"length": 3, "crc": 5, "payload": FRAME_SIZE + 2}[where])
    result = scan(path)
    assert result.corrupt == [] and result.valid_bytes == offsets[-1]
    with open_for_append(path) as w:
        assert w.recovery.last_seq == 4 and w.recovery.cut_offset == offsets[-1]


def test_a_zero_filled_tail_is_a_torn_tail(tmp_path):
    path = tmp_path / "tape"
    write_tape(path, 3)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 8192)
    result = scan(path)
    assert (result.last_seq, result.valid_bytes, result.torn_bytes) == (3, size, 8192)
    with open_for_append(path) as w:
        assert w.append({"type": "x"}) == 4


@pytest.mark.parametrize("length", [0, 1, 5, 9])
def test_an_empty_or_cut_header_is_rewritten(tmp_path, length):
    path = tmp_path / "tape"
    path.write_bytes(HEADER[:length])
    assert read_all(path) == []
    with open_for_append(path) as w:
        assert w.recovery.cut_bytes == length and w.recovery.last_seq == 0
        assert w.append({"type": "a"}) == 1
    assert read_all(path) == [{"seq": 1, "type": "a"}]


# --- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 3, 8])
@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_a_damaged_record_in_the_middle_is_reported_at_its_offset_and_refused(tmp_path, k, where):
    path = tmp_path / "tape"
    offsets = write_tape(path, 10)
    flip_byte(path, offsets[k] + {"length": 2, "crc": 6, "payload": FRAME_SIZE + 4}[where])
    before = path.read_bytes()

    result = scan(path)
    assert not result.ok
    assert result.corrupt[0].offset == offsets[k]
    assert (result.records, result.last_seq, result.valid_bytes) == (k, k, offsets[k])
    assert f"valid records follow at byte {offsets[k + 1]}" in result.corrupt[0].reason

    reader = TapeReader(path)
    got = []
    with pytest.raises(CorruptTape) as exc:
        for record in reader.records():
            got.append(record["seq"])
    assert got == list(range(1, k + 1))
    assert exc.value.offset == offsets[k] and exc.value.last_seq == k
    assert "see docs/runbook.md: corrupt tape" in str(exc.value)
    assert f"at byte {offsets[k]}" in str(exc.value)

    with pytest.raises(CorruptTape):
        open_for_append(path)
    assert path.read_bytes() == before, "a corrupt tape must not be cut or rewritten"


def test_scan_lists_every_corrupt_place(tmp_path):
    path = tmp_path / "tape"
    offsets = write_tape(path, 10)
    flip_byte(path, offsets[2] + FRAME_SIZE + 1)
    flip_byte(path, offsets[6] + FRAME_SIZE + 1)
    result = scan(path)
    assert [c.offset for c in result.corrupt] == [offsets[2], offsets[6]]
    assert result.torn_bytes == 0


def frames(*seqs: int) -> bytes:
    return HEADER + b"".join(encode_record({"type": "t"}, s) for s in seqs)


@pytest.mark.parametrize(
    ("seqs", "bad_index", "reason"),
    [
        ((1, 2, 4, 5), 2, "seq 4 where 3 was expected (a gap)"),
        ((1, 2, 2, 3), 2, "seq 2 where 3 was expected (not increasing)"),
        ((2, 3), 0, "seq 2 where 1 was expected"),
        ((1, 2, 3, 7), 3, "(a gap)"),  # even as the last record: complete, so never a torn tail
    ],
)
def test_a_seq_gap_or_repeat_is_corruption(tmp_path, seqs, bad_index, reason):
    path = tmp_path / "tape"
    path.write_bytes(frames(*seqs))
    offset = HEADER_SIZE + sum(len(encode_record({"type": "t"}, s)) for s in seqs[:bad_index])
    result = scan(path)
    assert result.corrupt[0].offset == offset and reason in result.corrupt[0].reason
    assert result.records == bad_index
    with pytest.raises(CorruptTape, match="corrupt tape"):
        open_for_append(path)


def test_a_payload_with_a_good_crc_that_is_no_record_is_corruption_not_a_torn_tail(tmp_path):
    path = tmp_path / "tape"
    payload = b"\x83\x01\x02\x03"  # a CBOR array, not a map
    frame = tape.FRAME.pack(len(payload), zlib.crc32(payload)) + payload
    path.write_bytes(frames(1) + frame)
    result = scan(path)
    assert result.torn_bytes == 0 and "not a map" in result.corrupt[0].reason
    with pytest.raises(CorruptTape):
        open_for_append(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"NOTATAPE\x00\x01", "not a murmur tape"),
        (b"MURMTAPE\x00\x02" + b"\0" * 20, "version 2"),
        (b"{}", "not a murmur tape"),
        (b"MURMTAPE\x07", "not a murmur tape"),
    ],
)
def test_a_wrong_magic_or_version_is_refused(tmp_path, content, message):
    path = tmp_path / "tape"
    path.write_bytes(content)
    with pytest.raises(NotATape, match=message):
        scan(path)
    with pytest.raises(NotATape, match=message):
        read_all(path)
    with pytest.raises(NotATape, match=message):
        open_for_append(path)
    assert path.read_bytes() == content


def test_a_record_appended_after_the_reader_started_is_not_seen(tmp_path):
    path = tmp_path / "tape"
    write_tape(path, 2)
    with open_for_append(path) as w:
        records = TapeReader(path).records()
        assert next(records)["seq"] == 1
        w.append({"type": "later"})
        assert [r["seq"] for r in records] == [2]


# --- arbitrary records ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
records = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.text(min_size=1, max_size=12),
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("seq", "type")), values, max_size=5
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(records, min_size=1, max_size=8))
def test_arbitrary_cbor_records_round_trip(tmp_path, batch):
    directory = tmp_path / "hyp"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    path = directory / "tape"
    with open_for_append(path) as w:
        assert w.append_many(batch) == list(range(1, len(batch) + 1))
    assert read_all(path) == [{"seq": i + 1, **r} for i, r in enumerate(batch)]
    assert scan(path).valid_bytes == os.path.getsize(path)


async def test_the_writer_refuses_to_start_on_a_corrupt_tape(tmp_path):
    path = tmp_path / "tape"
    offsets = write_tape(path, 5)
    flip_byte(path, offsets[1] + FRAME_SIZE + 1)
    with trio.fail_after(10):
        with pytest.RaisesGroup(pytest.RaisesExc(CorruptTape, match="docs/runbook.md")):
            async with trio.open_nursery() as nursery:
                await nursery.start(TapeWriter(path).run)


# --- hostile input: anything malformed is a TapeError, never another exception ------------------------

cbor_keys = st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.binary(max_size=6) | st.floats()
cbor_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and the infinities too
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.just(cbor2.undefined)
    | st.builds(cbor2.CBORSimpleValue, st.integers(0, 19) | st.integers(32, 255))
    | st.sampled_from(["seq", "type", "genesis", "submit_order"])
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(cbor_keys, inner, max_size=4)
        | st.dictionaries(st.sampled_from(["seq", "type", "args", "at", "symbol"]), inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2, 3, 4, 5, 25, 28, 29,
                                                                                  256, 258, 55799]), inner)
    ),
    max_leaves=16,
)
# Hand-made bytes no encoder writes: deep nesting, lengths far past the end, bad UTF-8, breaks.
odd_payloads = st.sampled_from([
    b"\x81" * 5000 + b"\x00", b"\xd8\x1c" * 2000 + b"\x00", b"\x5b" + b"\x7f" + b"\xff" * 7,
    b"\x9b" + b"\xff" * 8, b"\xbb" + b"\xff" * 8, b"\x62\xed\xa0", b"\x7f\x61a\x41b\xff", b"\xff", b"\x1c",
    b"\xa2\x63seq\x01\x64type\x62\xc3\x28", b"\xa2\x63seq\xc2\x41\x01\x64type\x61x", b"\xbf\x63seq\x01",
])


def _check_decoded(payload: bytes) -> None:
    try:
        record = tape.decode_payload(payload)
    except InvalidRecord as exc:
        assert len(str(exc)) < 2000
        return
    assert isinstance(record, dict) and type(record["seq"]) is int and record["seq"] >= 1
    assert isinstance(record["type"], str)


@settings(max_examples=400, deadline=None)
@given(value=cbor_values)
def test_any_cbor_value_as_a_payload_is_a_record_or_an_invalid_record(value):
    try:
        payload = cbor2.dumps(value)
    except Exception:  # noqa: BLE001 - a value the encoder itself refuses is no payload to test
        return
    _check_decoded(payload)
    for cut in {1, len(payload) // 2, len(payload) - 1}:  # truncated inside the CBOR item
        if 0 < cut < len(payload):
            _check_decoded(payload[:cut])


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=64) | odd_payloads)
def test_any_bytes_as_a_payload_are_a_record_or_an_invalid_record(payload):
    _check_decoded(payload)


def _frame(payload: bytes) -> bytes:
    return tape.FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(cbor_values, max_size=3),
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.integers(1, 255)), max_size=3),
    junk=st.binary(max_size=40) | odd_payloads,
)
def test_a_tape_with_any_frames_damage_or_truncation_raises_only_tape_errors(tmp_path, values, cut, flips, junk):
    """Valid records, then CRC-valid frames of arbitrary CBOR, raw junk, a cut and flipped bytes."""
    directory = tmp_path / "hyp"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    path = directory / "tape"
    write_tape(path, 3)
    with open(path, "ab") as f:
        for value in values:
            try:
                f.write(_frame(cbor2.dumps(value)))
            except Exception:  # noqa: BLE001 - not encodable: nothing written
                pass
        f.write(junk)
    data = bytearray(path.read_bytes())
    for offset, mask in flips:
        if HEADER_SIZE <= offset < len(data):
            data[offset] ^= mask
    path.write_bytes(bytes(data[: max(HEADER_SIZE, len(data) - cut)]))
    result = scan(path)
    assert result.records <= 3 + len(values)
    try:
        records = read_all(path)
    except CorruptTape:
        records = None
    if records is not None:
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    try:
        with open_for_append(path) as w:
            assert w.last_seq == (len(records) if records is not None else w.last_seq)
    except CorruptTape:
        assert records is None or not result.ok
