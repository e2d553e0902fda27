"""The invariant checker over a real exchange's tape: held on honest runs, violated on doctored ones."""

from __future__ import annotations

import copy

import trio

from peer.exchange.tape import TapeReader
from peer.tools.checker import check_tape
from tests.conftest import FakeClock
from tests.peer.exchange.test_service import started

QUOTE = {"bid_price": 99, "bid_quantity": 5, "ask_price": 101, "ask_quantity": 5}


async def takeover_history(tmp_path) -> list[dict]:
    """mm-1 quotes AAPL, gets filled, dies; mm-2 claims a higher epoch and quotes; more fills."""
    clock = FakeClock()
    alive = {"mm-1": True, "mm-2": True}
    async with trio.open_nursery() as nursery:
        service = await started(nursery, tmp_path, clock, is_alive=lambda name: alive.get(name, False))
        run = service.command
        assert (await run("claim", {"symbol": "AAPL", "holder": "mm-1", "epoch": 1}))["accepted"]
        assert (await run("put_quote", {"symbol": "AAPL", "holder": "mm-1", "epoch": 1, "seq": 1, "quote_id": "q1",
                                        **QUOTE}))["accepted"]
        clock.t += 1
        buy = {"symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 2, "limit_price": 101}
        assert (await run("submit_order", {"order_id": "o1", **buy}))["fills"]
        clock.t += 1
        alive["mm-1"] = False
        took = await run("claim", {"symbol": "AAPL", "holder": "mm-2", "epoch": 2})
        assert took["accepted"] and took["withdrawn"]  # the old epoch's quote died in the same step
        assert (await run("put_quote", {"symbol": "AAPL", "holder": "mm-2", "epoch": 2, "seq": 1, "quote_id": "q2",
                                        **QUOTE}))["accepted"]
        clock.t += 1
        assert (await run("submit_order", {"order_id": "o2", **buy}))["fills"]
        nursery.cancel_scope.cancel()
    return await trio.to_thread.run_sync(lambda: list(TapeReader(tmp_path / "exchange.tape").records()))


def by_check(verdicts):
    return {v.check: v for v in verdicts}


async def test_an_honest_takeover_history_holds_every_tape_invariant(tmp_path):
    verdicts, facts = check_tape(await takeover_history(tmp_path))
    assert all(v.held is True for v in verdicts), [v.to_json() for v in verdicts if not v.held]
    assert len(facts.fills) == 2
    assert set(facts.quotes) == {"q1", "q2"}


async def test_a_tape_doctored_so_the_old_quote_is_not_withdrawn_shows_an_overlap(tmp_path):
    records = await takeover_history(tmp_path)
    doctored = copy.deepcopy(records)
    for rec in doctored:
        if rec["type"] == "claim" and rec.get("withdrawn"):
            rec["withdrawn"] = []
    verdicts = by_check(check_tape(doctored)[0])
    overlap = verdicts["quotes of at most one epoch are live per symbol at every point"]
    assert overlap.held is False
    assert "epochs 1 (q1), 2 (q2)" in overlap.evidence[0]


async def test_a_fill_against_a_withdrawn_quote_is_a_violation(tmp_path):
    records = await takeover_history(tmp_path)
    doctored = copy.deepcopy(records)
    last = next(r for r in reversed(doctored) if r.get("fills"))
    last["fills"][0]["quote_id"] = "q1"  # executed the superseded quote
    last["fills"][0]["epoch"] = 1
    fenced = by_check(check_tape(doctored)[0])["every fill executed a quote that was live, of the symbol's live epoch"]
    assert fenced.held is False and "q1" in fenced.evidence[0]


async def test_a_fill_after_its_quote_expired_is_a_violation(tmp_path):
    records = await takeover_history(tmp_path)
    doctored = copy.deepcopy(records)
    last = next(r for r in reversed(doctored) if r.get("fills"))
    last["at"] += 3600  # long past the 30 s TTL
    fenced = by_check(check_tape(doctored)[0])["every fill executed a quote that was live, of the symbol's live epoch"]
    assert fenced.held is False


async def test_a_shrinking_epoch_and_a_duplicated_fill_are_violations(tmp_path):
    records = await takeover_history(tmp_path)
    doctored = copy.deepcopy(records)
    claims = [r for r in doctored if r["type"] == "claim" and r["accepted"]]
    claims[1]["args"]["epoch"] = 0
    fill_records = [r for r in doctored if r.get("fills")]
    fill_records[1]["fills"].append(dict(fill_records[0]["fills"][0]))
    verdicts = by_check(check_tape(doctored)[0])
    assert verdicts["accepted claims carry epochs that only grow, per symbol"].held is False
    unique = verdicts["every fill on the tape has a unique fill_id and the fill seqs run 1, 2, 3..."]
    assert unique.held is False and "already recorded" in unique.evidence[0]


def test_murmur_check_on_a_directory_with_no_tape_and_no_ledger_exits_2(tmp_path, capsys):
    from peer.cli import main

    assert main(["check", str(tmp_path)]) == 2
    assert "no exchange.tape and no ledger.db" in capsys.readouterr().err


async def test_murmur_check_on_an_honest_tape_alone_holds_and_says_what_it_could_not_check(tmp_path, capsys):
    from peer.cli import main

    await takeover_history(tmp_path / "exchange")
    assert main(["check", str(tmp_path), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["ledger"] is None and report["result"] == "held"
    assert {v["invariant"] for v in report["verdicts"]} == {"1", "2"}


def _ledger_with(tmp_path, fills, reservations_at=()):
    """A real ledger database holding `fills` (tape fill dicts) and reservations made at the given times."""
    import sqlite3

    from ledger.exposure import ReservationRequest
    from ledger.store import LedgerStore, RecordFills, Reserve, validate_fill

    path = tmp_path / "ledger" / "ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = LedgerStore.open(path, now=0.0)
    if fills:
        store.apply([RecordFills(tuple(validate_fill(dict(f)) for f in fills))], fills[-1]["created_at"])
    for i, at in enumerate(reservations_at):
        store.apply([Reserve(ReservationRequest(f"q-{i}", "mm-1", "AAPL", 1, 1, ttl=5.0))], at)
    store.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


async def test_fills_stuck_before_a_reachable_ledger_are_a_violation_of_invariant_2(tmp_path):
    # The outbox once retried a refused fill forever while `murmur check` said HELD.
    from peer.tools.checker import check_ledger

    _, facts = check_tape(await takeover_history(tmp_path / "exchange"))
    first, second = (facts.fills[fid] for fid in facts.fill_order)
    delivered = "every fill reached the ledger within 10 s while the ledger was reachable"
    # The ledger has the first fill only, and answered a reservation 60 s after the second fill.
    conn = _ledger_with(tmp_path / "a", [first], reservations_at=[second["created_at"] + 60])
    verdict = by_check(check_ledger(conn, facts, 100))[delivered]
    assert verdict.held is False and second["fill_id"] in verdict.evidence[0]
    assert verdict.counts["not_delivered_past_bound"] == 1
    # The same, but the ledger was last seen before the bound ran out: not yet delivered, held.
    conn = _ledger_with(tmp_path / "b", [first], reservations_at=[second["created_at"] + 5])
    assert by_check(check_ledger(conn, facts, 100))[delivered].held is True
    # A wider bound says the same of the first database.
    conn = _ledger_with(tmp_path / "c", [first], reservations_at=[second["created_at"] + 60])
    assert by_check(check_ledger(conn, facts, 100, delivery_bound=120))[
        "every fill reached the ledger within 120 s while the ledger was reachable"].held is True
