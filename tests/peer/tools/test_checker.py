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


AUTHORIZED = "every accepted quote operation carried the symbol's held epoch and holder, its lease live"


async def test_a_quote_of_the_old_epoch_accepted_after_a_takeover_is_a_violation_even_with_no_overlap(tmp_path):
    """The exchange keeps one quote per symbol, so an old epoch's quote accepted after a takeover
    replaces the new holder's quote rather than living beside it: no overlap, and yet the fence
    failed. The checker rebuilds who held what from the claims alone and sees it."""
    records = await takeover_history(tmp_path)
    doctored = copy.deepcopy(records)
    late = next(r for r in doctored if r["type"] == "put_quote" and r["args"]["epoch"] == 2)
    late["args"].update(holder="mm-1", epoch=1)  # mm-1's stale quote, accepted after mm-2's claim
    verdicts = by_check(check_tape(doctored)[0])
    assert verdicts[AUTHORIZED].held is False
    assert "by mm-1 at epoch 1 accepted while mm-2 held epoch 2" in verdicts[AUTHORIZED].evidence[0]


async def test_a_quote_accepted_after_its_lease_ran_out_or_after_a_release_is_a_violation(tmp_path):
    records = await takeover_history(tmp_path)
    honest = by_check(check_tape(records)[0])[AUTHORIZED]
    assert honest.held is True and honest.counts == {"quote_operations": 2}
    late = copy.deepcopy(records)
    put = next(r for r in late if r["type"] == "put_quote" and r["args"]["epoch"] == 2)
    put["at"] += 60  # long past the 2 s lease of mm-2's claim, with no renewal in between
    verdict = by_check(check_tape(late)[0])[AUTHORIZED]
    assert verdict.held is False and "its lease over" in verdict.evidence[0]


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


# --- liveness: quote gaps from doctored histories --------------------------------------------------

T = 1_700_000_000.0
TTL = 10.0


class History:
    """A tape's records written by hand, in the exchange's shapes (peer/exchange/service.py)."""

    def __init__(self, symbols=("AAPL", "MSFT")):
        self.records: list[dict] = []
        self.fill_seq = 0
        self.claimed: dict[str, int] = {}
        # A lease that never runs out here: these histories are about quote gaps, not leases.
        self.add({"type": "genesis", "at": T, "symbols": list(symbols), "seed": 1, "quote_ttl": TTL,
                  "lease_duration": 1e9})

    def add(self, rec: dict) -> dict:
        rec["seq"] = len(self.records) + 1
        self.records.append(rec)
        return rec

    def put(self, at, qid, symbol="AAPL", *, refresh=False, replaced=None, epoch=1, qty=5, holder="mm-1"):
        if self.claimed.get(symbol) != (epoch, holder):  # a quote is only accepted for the held epoch
            self.claim(at, symbol, holder, epoch)
        args = {"symbol": symbol, "holder": holder, "epoch": epoch, "seq": 1, "quote_id": qid, **QUOTE,
                "bid_quantity": qty, "ask_quantity": qty}
        rec = {"type": "put_quote", "at": T + at, "args": args, "accepted": True,
               "reason": "refreshed" if refresh else "activated", "symbol": symbol, "quote_id": qid}
        if replaced:
            rec["replaced"] = {"quote_id": replaced, "epoch": epoch, "state": "replaced", "reason": f"replaced-by-{qid}"}
        return self.add(rec)

    def claim(self, at, symbol, holder, epoch, withdrawn=()):
        self.claimed[symbol] = (epoch, holder)
        return self.add({"type": "claim", "at": T + at, "args": {"symbol": symbol, "holder": holder, "epoch": epoch},
                         "accepted": True, "reason": "claimed", "symbol": symbol, "withdrawn": list(withdrawn)})

    def release(self, at, symbol, withdrawn=()):
        epoch, holder = self.claimed.pop(symbol)
        return self.add({"type": "release", "at": T + at, "args": {"symbol": symbol, "holder": holder, "epoch": epoch},
                         "accepted": True, "reason": "released", "symbol": symbol, "withdrawn": list(withdrawn)})

    def tick(self, at, *qids, reason="ttl"):
        return self.add({"type": "tick", "at": T + at, "args": {}, "accepted": True, "reason": "ticked",
                         "ended": [{"quote_id": q, "epoch": 1, "state": "expired", "reason": reason} for q in qids]})

    def fill(self, at, qid, side, qty, symbol="AAPL", epoch=1):
        self.fill_seq += 1
        f = {"fill_id": f"f{self.fill_seq}", "seq": self.fill_seq, "symbol": symbol, "quote_id": qid, "epoch": epoch,
             "side": side, "quantity": qty}
        return self.add({"type": "submit_order", "at": T + at, "args": {"order_id": f"o{self.fill_seq}"},
                         "accepted": True, "reason": "accepted", "symbol": symbol, "fills": [f]})

    def quiet(self, at):
        """A record that only moves the tape's end (an order that filled nothing)."""
        return self.add({"type": "submit_order", "at": T + at, "args": {}, "accepted": True, "reason": "rested",
                         "symbol": "MSFT"})

    def check(self, faults=()):
        from peer.tools.checker import quote_liveness

        verdicts, facts = check_tape(copy.deepcopy(self.records))
        assert all(v.held is True for v in verdicts), [v.to_json() for v in verdicts if not v.held]
        return quote_liveness(facts, faults)


def spans(gaps):
    return [(g.start - T, None if g.end is None else g.end - T) for g in gaps]


def test_a_gap_runs_from_a_quotes_ttl_expiry_to_the_next_quote_and_the_start_up_is_not_one():
    h = History()
    h.put(1, "q1")
    h.tick(11.5, "q1")  # the ticker ran late: the quote died at its expiry, T+11
    h.put(14, "q2")
    h.quiet(16)
    live = h.check()
    aapl = live.symbols["AAPL"]
    assert aapl.first_quote_at == T + 1
    assert spans(aapl.gaps) == [(11, 14)] and aapl.gaps[0].duration == 3
    assert live.longest is aapl.gaps[0]
    assert live.symbols["MSFT"].first_quote_at is None and live.symbols["MSFT"].gaps == []
    assert live.started_at == T and live.end_at == T + 16
    json = live.to_json()
    assert json["symbols"]["AAPL"]["gap_count"] == 1 and json["longest_gap"]["duration"] == 3
    assert json["symbols"]["AAPL"]["longest_gap"] == {"symbol": "AAPL", "start": T + 11, "end": T + 14,
                                                      "duration": 3, "open": False, "quote_ended": "ttl",
                                                      "faults": []}


def test_a_replacement_in_the_same_record_leaves_no_gap():
    h = History()
    h.put(1, "q1")
    h.put(3, "q2", replaced="q1")
    h.put(9, "q3", replaced="q2")
    h.quiet(15)
    assert h.check().symbols["AAPL"].gaps == []


def test_a_refresh_extends_the_quote_and_one_after_its_expiry_leaves_a_gap():
    h = History()
    h.put(1, "q1")
    h.put(9, "q1", refresh=True)  # live until T+19
    h.quiet(18)
    assert h.check().symbols["AAPL"].gaps == []
    h.put(21, "q1", refresh=True)  # it had lapsed at T+19, and no tick ended it
    h.quiet(25)
    assert spans(h.check().symbols["AAPL"].gaps) == [(19, 21)]


def test_fills_that_exhaust_a_quote_end_it_until_the_next_quote():
    h = History()
    h.put(1, "q1", qty=2)
    h.fill(2, "q1", "buy", 2)  # the bid is gone, the ask still live
    h.fill(3, "q1", "sell", 2)  # nothing of it left
    h.put(3.25, "q2", replaced=None)
    h.quiet(5)
    (gap,) = h.check().symbols["AAPL"].gaps
    assert spans([gap]) == [(3, 3.25)] and gap.quote_ended == "filled"


def test_a_quote_that_fills_in_full_on_arrival_is_never_live():
    h = History()
    h.put(1, "q1")
    h.tick(11, "q1")
    rec = h.put(12, "q2", qty=1)
    rec["fills"] = [{"fill_id": "f1", "seq": 1, "symbol": "AAPL", "quote_id": "q2", "epoch": 1, "side": s,
                     "quantity": 1} for s in ("buy", "sell")]
    rec["fills"][1] |= {"fill_id": "f2", "seq": 2}
    h.fill_seq = 2
    h.put(13, "q3")
    h.quiet(14)
    assert spans(h.check().symbols["AAPL"].gaps) == [(11, 13)]


def test_a_gap_still_open_at_the_end_of_the_tape_has_no_end():
    from peer.tools.checker import requoted_within

    h = History()
    h.put(1, "q1")
    h.put(2, "m1", "MSFT")
    h.tick(11, "q1")
    h.put(12, "m1", "MSFT", refresh=True)
    h.quiet(20)
    live = h.check()
    (gap,) = live.symbols["AAPL"].gaps
    assert (gap.start, gap.end, gap.duration) == (T + 11, None, 9)
    assert gap.to_json()["open"] is True
    assert live.symbols["MSFT"].gaps == []  # live until T+22, past the tape's end
    assert requoted_within(live, T + 5) == {"AAPL": 0.0, "MSFT": 0.0}
    assert requoted_within(live, T + 15) == {"AAPL": None, "MSFT": 0.0}
    assert requoted_within(live, T + 0.5) == {"AAPL": 0.5, "MSFT": 1.5}  # before the first quotes


def test_requoted_within_is_the_time_to_the_gaps_end():
    from peer.tools.checker import requoted_within

    h = History()
    h.put(1, "q1")
    h.tick(11, "q1")
    h.put(14, "q2")
    h.quiet(15)
    live = h.check()
    assert requoted_within(live, T + 12) == {"AAPL": 2.0, "MSFT": None}
    assert requoted_within(live, T + 11) == {"AAPL": 3.0, "MSFT": None}
    assert requoted_within(live, T + 14) == {"AAPL": 0.0, "MSFT": None}


def test_each_gap_names_the_faults_active_during_it():
    from peer.faults.journal import fault_intervals

    faults = fault_intervals([
        {"at": T + 9, "fault": "partition", "summary": "mm-1 | exchange", "until": T + 12},
        {"at": T + 12.5, "fault": "freeze", "peer": "mm-2"},
        {"at": T + 13, "fault": "thaw", "peer": "mm-2"},
        {"at": T + 14, "fault": "kill", "peer": "ledger"},  # from the gap's end on: not during it
        {"at": T + 16, "fault": "kill", "peer": "exchange"},
    ], None)
    h = History()
    h.put(1, "q1")
    h.tick(11, "q1")
    h.put(14, "q2")
    h.tick(24, "q2")
    h.quiet(30)
    first, second = h.check(faults).symbols["AAPL"].gaps
    assert first.quote_ended == second.quote_ended == "ttl"
    assert first.faults == ["partition mm-1 | exchange", "freeze mm-2"]
    assert second.end is None and second.faults == ["kill ledger", "kill exchange"]


async def test_an_honest_takeover_leaves_no_gap(tmp_path):
    from peer.tools.checker import quote_liveness

    _, facts = check_tape(await takeover_history(tmp_path))
    live = quote_liveness(facts)
    assert live.symbols["AAPL"].gaps == [] and live.symbols["AAPL"].first_quote_at is not None
    assert live.symbols["MSFT"].first_quote_at is None


def test_the_doctored_overlap_still_fails_with_liveness_measured():
    h = History()
    h.put(1, "q1")
    h.add({"type": "claim", "at": T + 2, "args": {"symbol": "AAPL", "holder": "mm-2", "epoch": 2},
           "accepted": True, "reason": "claimed", "symbol": "AAPL"})  # doctored: q1 not withdrawn
    h.put(2, "q2", epoch=2)
    verdicts = by_check(check_tape(h.records)[0])
    assert verdicts["quotes of at most one epoch are live per symbol at every point"].held is False


def test_a_gap_says_why_the_last_quote_ended_and_a_late_withdrawal_does_not_move_its_expiry():
    h = History()
    h.put(1, "q1")
    h.release(4, "AAPL", [{"quote_id": "q1", "epoch": 1, "state": "withdrawn", "reason": "released"}])
    h.put(5, "q2", epoch=2)  # claimed again, at epoch 2
    h.claim(20, "AAPL", "mm-2", 3, [{"quote_id": "q2", "epoch": 2, "state": "withdrawn",
                                     "reason": "superseded-by-epoch-3"}])
    h.put(21, "q3", epoch=3, holder="mm-2")
    h.quiet(22)
    first, second = h.check().symbols["AAPL"].gaps
    assert spans([first]) == [(4, 5)] and first.quote_ended == "released"
    assert spans([second]) == [(15, 21)] and second.quote_ended == "ttl"  # it had expired before the claim
