"""The durable store (ledger/store.py): exactly-once fills, derived positions, refusal of damage."""

from __future__ import annotations

import random
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from ledger.exposure import ReservationRequest
from ledger.store import (
    DB_FILE,
    ApplyFill,
    LedgerDamaged,
    LedgerStore,
    LedgerWriteFailed,
    RecordFills,
    Refusal,
    Release,
    Reserve,
    Sweep,
    validate_fill,
)

T0 = 1_700_000_000.0


def fill(n: int, symbol="AAPL", side="buy", quantity=2, reservation_id=None, **kw) -> dict:
    return validate_fill({"fill_id": f"F-{n}", "seq": n, "order_id": f"o{n}", "symbol": symbol, "side": side,
                          "quantity": quantity, "price": 10_000 + n, "quote_id": "q1", "epoch": 3,
                          "holder": "mm-1", "reservation_id": reservation_id, "created_at": T0 + n / 10, **kw})


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / DB_FILE


def opened(path, **kw) -> LedgerStore:
    return LedgerStore.open(path, now=T0, **kw)


def test_a_fill_is_applied_once_and_a_retry_gets_the_original_result(db):
    store = opened(db)
    first = store.apply([RecordFills((fill(1, quantity=3),))], T0).results[0]["results"][0]
    assert first == {"fill_id": "F-1", "status": "applied", "position_version": 1, "net_quantity": 3, "update_seq": 1}
    store.apply([RecordFills((fill(2, side="sell", quantity=5),))], T0)
    again = store.apply([RecordFills((fill(1, quantity=3),))], T0).results[0]["results"][0]
    assert again == {**first, "status": "duplicate"}
    assert store.positions["AAPL"].net_quantity == -2 and store.positions["AAPL"].position_version == 2
    store.close()
    store = opened(db)  # and after a restart, too
    assert store.apply([RecordFills((fill(1, quantity=3),))], T0).results[0]["results"][0]["status"] == "duplicate"
    assert store.last_seq == 2


def test_the_same_fill_id_with_other_content_refuses_the_whole_batch_naming_the_fields(db):
    store = opened(db)
    store.apply([RecordFills((fill(1),))], T0)
    result = store.apply([RecordFills((fill(2), fill(1, quantity=9, price=1)))], T0).results[0]
    assert isinstance(result, Refusal) and result.reason == "fill-conflict"
    (conflict,) = result.details["conflicts"]
    assert conflict["fill_id"] == "F-1"
    assert conflict["differences"]["quantity"] == {"recorded": 2, "received": 9}
    assert conflict["differences"]["price"] == {"recorded": 10_001, "received": 1}
    # F-2, valid on its own, was not applied either.
    assert store.last_seq == 1 and store.positions["AAPL"].position_version == 1


def test_one_refused_request_in_a_group_leaves_the_others_committed(db):
    store = opened(db)
    store.apply([RecordFills((fill(1),))], T0)
    group = store.apply([RecordFills((fill(2),)), RecordFills((fill(1, side="sell"),)), RecordFills((fill(3),))], T0)
    assert [type(r).__name__ for r in group.results] == ["dict", "Refusal", "dict"]
    assert [u["seq"] for u in group.updates] == [2, 3] and store.last_seq == 3


def test_the_same_fill_twice_in_a_batch_counts_once(db):
    store = opened(db)
    results = store.apply([RecordFills((fill(1), fill(1)))], T0).results[0]["results"]
    assert [r["status"] for r in results] == ["applied", "duplicate"]
    assert results[0]["position_version"] == results[1]["position_version"] == 1


def test_positions_are_the_signed_sums_and_versions_have_no_gaps_across_restarts(db):
    rng = random.Random(4)
    store = opened(db)
    sent = []
    for round_ in range(6):
        for _ in range(5):
            batch = []
            for _ in range(rng.randint(1, 20)):
                n = len(sent) + 1
                f = fill(n, symbol=rng.choice(["AAPL", "MSFT", "TSLA"]), side=rng.choice(["buy", "sell"]),
                         quantity=rng.randint(1, 9))
                sent.append(f)
                batch.append(f)
            # Some retries of earlier fills ride along.
            batch += rng.sample(sent, min(3, len(sent)))
            store.apply([RecordFills(tuple(batch))], T0 + round_)
        store.close()
        store = opened(db)
    expected: dict[str, int] = {}
    for f in sent:
        expected[f["symbol"]] = expected.get(f["symbol"], 0) + (f["quantity"] if f["side"] == "buy" else -f["quantity"])
    assert {s: p.net_quantity for s, p in store.positions.items()} == expected
    reader = store.reader()
    rows = reader.fills_after(0, 100_000, store.last_seq)
    assert [r["update_seq"] for r in rows] == list(range(1, len(sent) + 1))
    for symbol in expected:
        versions = [r["position_version"] for r in rows if r["symbol"] == symbol]
        assert versions == list(range(1, len(versions) + 1))
        assert store.positions[symbol].position_version == len(versions)
    assert reader.signed_sums() == {s: (v, sum(1 for f in sent if f["symbol"] == s)) for s, v in expected.items()}


def test_reads_never_go_past_the_published_sequence(db):
    store = opened(db)
    store.apply([RecordFills((fill(1), fill(2), fill(3)))], T0)
    reader = store.reader()
    assert [f["fill_id"] for f in reader.fills_after(0, 10, up_to=2)] == ["F-1", "F-2"]
    assert [u["seq"] for u in reader.updates_after(0, 10, up_to=2)] == [1, 2]
    assert [u["position_version"] for u in reader.symbol_updates("AAPL", 1, 10, up_to=2)] == [2]


def test_a_fill_naming_a_reservation_reduces_it_once(db):
    store = opened(db)
    answer = store.apply([Reserve(ReservationRequest("q1", "mm-1", "AAPL", 10, 10, ttl=30.0))], T0).results[0]
    rid = answer["reservation"]["reservation_id"]
    store.apply([RecordFills((fill(1, quantity=4, reservation_id=rid),))], T0)
    assert store.exposure.usage(T0).used_bid == 6
    # The market maker reports the same fill: nothing more is taken off.
    again = store.apply([ApplyFill(rid, "F-1", "bid", 4)], T0).results[0]
    assert again["duplicate"] and store.exposure.usage(T0).used_bid == 6
    store.close()
    store = opened(db)
    assert store.apply([ApplyFill(rid, "F-1", "bid", 4)], T0).results[0]["duplicate"], "also after a restart"
    raw = sqlite3.connect(db).execute("SELECT reservation_id, side, quantity FROM reservation_fills").fetchall()
    assert raw == [(rid, "buy", 4)], "stored with the fill's own side"
    # A fill naming an unknown reservation is still recorded.
    group = store.apply([RecordFills((fill(2, reservation_id="R-unknown"),))], T0)
    assert group.results[0]["results"][0]["status"] == "applied"
    assert any(e[0] == "ledger_fill_reservation_skipped" for e in group.events)


def test_reservations_survive_a_restart_and_expire_on_their_ttl(db):
    store = opened(db)
    rid = store.apply([Reserve(ReservationRequest("q1", "mm-1", "AAPL", 70, 70, ttl=10.0))], T0).results[0][
        "reservation"]["reservation_id"]
    store.close()
    store = opened(db)
    assert store.exposure.usage(T0 + 1).used_bid == 70, "capacity held across the restart"
    retry = store.apply([Reserve(ReservationRequest("q1", "mm-1", "AAPL", 70, 70, ttl=10.0))], T0 + 2).results[0]
    assert retry["duplicate"] and retry["reservation"]["reservation_id"] == rid
    assert store.exposure.usage(T0 + 11).used_bid == 0, "an expired reservation counts for nothing at once"
    swept = store.apply([Sweep()], T0 + 11).results[0]
    assert swept == {"expired": [rid]}
    store.close()
    store = opened(db)
    assert store.exposure.active == {}
    assert store.reader().reservation(rid).state == "expired"


def test_release_is_durable_and_idempotent(db):
    store = opened(db)
    rid = store.apply([Reserve(ReservationRequest("q1", "mm-1", "AAPL", 5, 5, ttl=10.0))], T0).results[0][
        "reservation"]["reservation_id"]
    first, again = store.apply([Release(rid), Release(rid)], T0).results
    assert first["released"] and not again["released"]
    unknown = store.apply([Release("R-nope")], T0).results[0]
    assert isinstance(unknown, Refusal) and unknown.reason == "unknown-reservation"


def test_a_failed_commit_stops_the_store_and_moves_nothing(db):
    store = opened(db)
    store.apply([RecordFills((fill(1),))], T0)

    class FailingCommit:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return self.conn.execute(sql, *args)

    real = store._conn
    store._conn = FailingCommit(real)
    with pytest.raises(LedgerWriteFailed):
        store.apply([RecordFills((fill(2),))], T0)
    assert store.last_seq == 1 and store.positions["AAPL"].position_version == 1
    store._conn = real
    with pytest.raises(LedgerWriteFailed, match="restart"):
        store.apply([RecordFills((fill(3),))], T0)


# --- damage: refused with a clear message, never rebuilt --------------------------------------------


def _filled(db: Path, n: int = 3000) -> None:
    store = opened(db)
    for i in range(0, n, 500):
        store.apply([RecordFills(tuple(fill(k, symbol=["AAPL", "MSFT"][k % 2]) for k in range(i + 1, i + 501)))], T0)
    store.close()


def _refused(db: Path, *words: str) -> LedgerDamaged:
    before = db.read_bytes() if db.exists() else None
    with pytest.raises(LedgerDamaged) as err:
        opened(db)
    message = str(err.value)
    assert str(db) in message and 'docs/runbook.md, section "Damaged ledger database"' in message
    for w in words:
        assert w in message
    if before is not None:
        assert db.read_bytes() == before, "a refused file is left exactly as it was"
    return err.value


def test_a_truncated_database_is_refused(db):
    _filled(db)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    _refused(db, "truncated")


def test_a_database_cut_to_a_partial_page_or_to_nothing_is_refused(db):
    _filled(db)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size - 100)
    _refused(db, "truncated")
    db.write_bytes(b"")
    _refused(db, "0 bytes")


def test_a_corrupted_page_in_the_middle_is_refused(db):
    _filled(db)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2 + 1000)
        f.write(bytes(random.Random(1).randrange(256) for _ in range(300)))
    _refused(db)


def test_a_file_that_is_not_a_ledger_is_refused(db):
    db.write_text("these are not the fills you are looking for\n" * 50)
    _refused(db, "not an SQLite database")
    db.unlink()
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    _refused(db, "not a murmur ledger")


def test_positions_that_disagree_with_their_fills_are_refused(db):
    _filled(db, 1000)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE positions SET net_quantity = net_quantity + 1 WHERE symbol = 'AAPL'")
    conn.commit()
    conn.close()
    _refused(db, "position AAPL")


def test_a_missing_database_with_its_log_still_there_is_refused(db):
    db.with_name(db.name + "-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 100)
    with pytest.raises(LedgerDamaged, match="missing"):
        opened(db)


def _crash_image(db: Path, dest: Path, groups: int = 6) -> Path:
    """Commit `groups` groups, then copy the files as a crash would leave them (log not
    checkpointed), while the store is still open."""
    store = opened(db)
    for g in range(groups):
        store.apply([RecordFills(tuple(fill(g * 20 + k) for k in range(1, 21)))], T0)
    dest.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(str(db) + suffix, dest / (DB_FILE + suffix))
    store.close()
    return dest / DB_FILE


def test_a_crash_image_recovers_every_committed_group_from_the_log(db, tmp_path):
    image = _crash_image(db, tmp_path / "crash")
    assert image.with_name(DB_FILE + "-wal").stat().st_size > 0
    store = opened(image)
    assert store.last_seq == 120 and store.positions["AAPL"].position_version == 120
    assert store.opened["wal_frames"] > 0


def test_a_torn_last_frame_of_the_log_is_a_lost_unacknowledged_tail(db, tmp_path):
    image = _crash_image(db, tmp_path / "crash")
    wal = image.with_name(DB_FILE + "-wal")
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 1000)
    store = opened(image)
    assert store.last_seq == 100, "the last group's commit frame was torn: that group is gone, the rest is there"


def test_a_damaged_frame_in_the_middle_of_the_log_is_refused(db, tmp_path):
    image = _crash_image(db, tmp_path / "crash")
    wal = image.with_name(DB_FILE + "-wal")
    page_size = struct.unpack(">I", wal.read_bytes()[8:12])[0]
    with open(wal, "r+b") as f:
        f.seek(32 + (24 + page_size) * 2 + 24 + 100)  # inside the third frame's page
        f.write(b"\xff" * 16)
    with pytest.raises(LedgerDamaged, match="write-ahead log") as err:
        opened(image)
    assert "committed transactions follow it" in str(err.value)


def test_an_op_that_fails_for_another_reason_is_undone_alone(db):
    store = opened(db)
    group = store.apply([RecordFills((fill(1),)), "not an operation", RecordFills((fill(2),))], T0)
    assert isinstance(group.results[1], TypeError)
    assert [u["seq"] for u in group.updates] == [1, 2] and store.last_seq == 2
    assert any(e[0] == "ledger_op_failed" for e in group.events)
