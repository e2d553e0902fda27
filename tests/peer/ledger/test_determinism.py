"""The ledger service under the simulation's conditions (issue 12): with `run_sync=run_inline`, a
fixed `instance` and a clock derived from trio's virtual time, the same requests give the same
database contents, answers and log lines, and no thread is started (tests/peer/determinism.py).
Only the WAL's salts (SQLite draws them itself) may differ, so contents are compared by dump."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger.exposure import ReservationRequest
from ledger.store import DB_FILE, RecordFills, Release, Renew, Reserve, validate_fill
from peer.groupcommit import run_inline
from peer.ledger.service import LedgerService
from peer.logs import JsonLog
from tests.peer.determinism import T0, in_fresh_interpreter, run_simulated, virtual_wall

INSTANCE = "5eed0002"
SYMBOLS = ["AAPL", "MSFT", "TSLA"]


def make(data_dir: Path, log: JsonLog) -> LedgerService:
    return LedgerService(data_dir, exposure_limit=24, sweep_interval=0.5, log=log, clock=virtual_wall,
                         run_sync=run_inline, instance=INSTANCE)


def answer_of(exc_or_answer: Any) -> Any:
    if isinstance(exc_or_answer, Exception):
        return [type(exc_or_answer).__name__, str(exc_or_answer)]
    return exc_or_answer


async def scenario(data_dir: Path) -> dict[str, Any]:
    """Three market makers reserving, renewing and releasing against a small limit, an exchange
    sending fills against their reservations (and some again), the sweeper expiring the rest;
    reads of the stream from the database; then a restart."""
    out = io.StringIO()
    log = JsonLog("ledger", stream=out, clock=virtual_wall)
    answers: list[Any] = []
    granted: list[tuple[str, str]] = []  # (reservation_id, symbol), in the order granted
    async with trio.open_nursery() as nursery:
        service = make(data_dir, log)
        await nursery.start(service.run)

        async def submit(who: str, op: Any) -> Any:
            try:
                answer = await service.submit(op)
            except Exception as exc:  # a refusal is an answer too
                answer = exc
            answers.append([who, trio.current_time(), answer_of(answer)])
            return answer

        async def market_maker(holder: str) -> None:
            for i in range(12):
                symbol = SYMBOLS[i % len(SYMBOLS)]
                request = ReservationRequest(f"{holder}-q{i}", holder, symbol, 4, 4, ttl=1.5)
                answer = await submit(holder, Reserve(request))
                rid = answer.get("reservation", {}).get("reservation_id") if isinstance(answer, dict) else None
                if rid is not None:
                    granted.append((rid, symbol))
                    if i % 3 == 1:
                        await submit(holder, Renew(rid, ttl=2.0))
                    elif i % 3 == 2:
                        await trio.sleep(0.1)
                        await submit(holder, Release(rid))
                await trio.sleep(0.25)

        async def exchange() -> None:
            sent: list[dict[str, Any]] = []
            for n in range(1, 40):
                await trio.sleep(0.15)
                rid, symbol = granted[n % len(granted)] if granted else (None, "AAPL")
                f = validate_fill({"fill_id": f"F-{n}", "seq": n, "order_id": f"o{n}", "symbol": symbol,
                                   "side": "buy" if n % 2 else "sell", "quantity": 1, "price": 100,
                                   "quote_id": "q", "reservation_id": rid, "created_at": T0 + n})
                sent.append(f)
                await submit("exchange", RecordFills(tuple(sent[-3:])))  # two of them again

        for holder in ("mm-1", "mm-2", "mm-3"):
            nursery.start_soon(market_maker, holder)
        nursery.start_soon(exchange)
        await trio.sleep(7.0)
        reads = {"updates": await service.updates_after(0, 1000),
                 "msft": await service.symbol_updates("MSFT", 0, 1000),
                 "fills": await service.fills_after(0, 1000),
                 "first": (await service.reservation(granted[0][0])).to_json(),
                 "usage": service.usage().to_json()}
        nursery.cancel_scope.cancel()
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    async with trio.open_nursery() as nursery:
        again = make(data_dir, JsonLog("ledger", stream=None))
        opened = await nursery.start(again.run)
        positions = {s: p.to_json() for s, p in again.positions.items()}
        nursery.cancel_scope.cancel()
    return {"dump": dump, "answers": json.dumps(answers, sort_keys=True, default=repr),
            "reads": json.dumps(reads, sort_keys=True, default=repr), "opened": opened,
            "positions": positions, "log": out.getvalue().replace(str(data_dir), "<dir>")}


def digest(data_dir: str) -> None:
    """Print a digest of the scenario's outcome (run in a fresh interpreter by the test below)."""
    got = run_simulated(lambda: scenario(Path(data_dir)), seed=12)
    print(hashlib.sha256("\n".join([got["dump"], got["answers"], got["reads"], got["log"]]).encode()).hexdigest())


def test_the_same_requests_leave_the_same_database_and_answers_without_a_thread(tmp_path):
    a = run_simulated(lambda: scenario(tmp_path / "a"), seed=12)
    b = run_simulated(lambda: scenario(tmp_path / "b"), seed=12)
    assert a["dump"] == b["dump"]
    assert a["answers"] == b["answers"]
    assert a["reads"] == b["reads"]
    assert a["log"] == b["log"]
    assert a["opened"] == b["opened"] and a["opened"]["instance"] == INSTANCE and a["opened"]["open_s"] == 0
    assert a["positions"] == b["positions"] and a["opened"]["fills"] == 39
    assert f"'R{INSTANCE}-1'" in a["dump"]
    # The scenario reaches what it means to: refusals at the limit, releases, expiries, duplicates.
    text = a["answers"]
    assert "no-capacity" in text or "rejected" in text
    assert '"duplicate"' in text and "ledger_reservation" in a["log"]


def test_the_database_does_not_depend_on_the_hash_seed(tmp_path):
    first = in_fresh_interpreter(__name__, "digest", tmp_path / "a", "1")
    second = in_fresh_interpreter(__name__, "digest", tmp_path / "b", "2")
    assert first == second and len(first) == 64


def test_the_check_has_teeth_by_default_the_store_opens_in_a_thread(tmp_path):
    async def main() -> None:
        await LedgerService(tmp_path, clock=virtual_wall).run()

    with pytest.raises(AssertionError, match="a thread was started"):
        run_simulated(main, seed=12)
