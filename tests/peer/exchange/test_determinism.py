"""The exchange service under the simulation's conditions (issue 12): with `run_sync=run_inline`,
a fixed `instance` and a clock derived from trio's virtual time, the same commands give the same
tape byte for byte and the same answers, and no thread is started (tests/peer/determinism.py)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from peer.exchange.service import TAPE_FILE, ExchangeService
from peer.groupcommit import run_inline
from peer.logs import JsonLog
from tests.peer.determinism import in_fresh_interpreter, run_simulated, virtual_wall

INSTANCE = "5eed0001"


def make(data_dir: Path, log: JsonLog) -> ExchangeService:
    return ExchangeService(data_dir, symbols=["AAPL", "MSFT"], seed=3, flow_rate=40.0, quote_ttl=1.5,
                           lease_duration=2.0, log=log, clock=virtual_wall, run_sync=run_inline,
                           instance=INSTANCE)


async def scenario(data_dir: Path) -> dict[str, Any]:
    """Three market makers that contend for two symbols and quote around the reference price,
    the built-in order flow trading against them, then a restart that replays the tape."""
    out = io.StringIO()
    log = JsonLog("exchange", stream=out, clock=virtual_wall)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        service = make(data_dir, log)
        await nursery.start(service.run)

        async def market_maker(holder: str, symbol: str, epoch: int, start: float) -> None:
            await trio.sleep(start)
            claim = await service.command("claim", {"symbol": symbol, "holder": holder, "epoch": epoch})
            answers.append([holder, trio.current_time(), claim])
            for seq in range(1, 30):
                price = service.price(symbol)
                quote = {"symbol": symbol, "holder": holder, "epoch": epoch, "seq": seq,
                         "quote_id": f"{holder}-{epoch}-{seq}", "bid_price": price - 1, "bid_quantity": 3,
                         "ask_price": price + 1, "ask_quantity": 3, "reservation_id": f"r-{holder}-{seq}"}
                answers.append([holder, trio.current_time(), await service.command("put_quote", quote)])
                if seq % 4 == 0:
                    renew = {"symbol": symbol, "holder": holder, "epoch": epoch}
                    answers.append([holder, trio.current_time(), await service.command("renew", renew)])
                await trio.sleep(0.2)

        nursery.start_soon(market_maker, "mm-1", "AAPL", 1, 0.0)
        nursery.start_soon(market_maker, "mm-2", "AAPL", 2, 0.0)  # at the same instant: scheduling decides
        nursery.start_soon(market_maker, "mm-3", "MSFT", 1, 0.5)
        nursery.start_soon(market_maker, "mm-2", "MSFT", 2, 3.0)  # the lease ran out meanwhile
        await trio.sleep(8.0)
        fills = [f.to_json() for f in service.core.fills]
        nursery.cancel_scope.cancel()
    tape = (data_dir / TAPE_FILE).read_bytes()
    async with trio.open_nursery() as nursery:
        again = make(data_dir, JsonLog("exchange", stream=None))
        replay = await nursery.start(again.run)
        replayed_fills = [f.to_json() for f in again.core.fills]
        nursery.cancel_scope.cancel()
    return {"tape": tape, "answers": json.dumps(answers, sort_keys=True, default=repr), "fills": fills,
            "replayed_fills": replayed_fills, "replay": replay, "log": out.getvalue()}


def digest(data_dir: str) -> None:
    """Print a digest of the scenario's outcome (run in a fresh interpreter by the test below)."""
    got = run_simulated(lambda: scenario(Path(data_dir)), seed=12)
    print(hashlib.sha256(got["tape"] + got["answers"].encode() + got["log"].encode()).hexdigest())


def test_the_same_commands_write_the_same_tape_and_answers_without_a_thread(tmp_path):
    a = run_simulated(lambda: scenario(tmp_path / "a"), seed=12)
    b = run_simulated(lambda: scenario(tmp_path / "b"), seed=12)
    assert a["tape"] == b["tape"]
    assert a["answers"] == b["answers"]
    assert a["log"] == b["log"]
    assert a["fills"] and a["fills"] == b["fills"] == a["replayed_fills"]
    assert all(f["fill_id"].startswith(f"F{INSTANCE}-") for f in a["fills"])
    assert a["replay"] == b["replay"] and a["replay"]["replayed"] > 100
    accepted = json.loads(a["answers"])
    assert {r for _, _, answer in accepted for r in [answer["reason"]]} >= {"claimed", "activated"}


def test_the_tape_does_not_depend_on_the_hash_seed(tmp_path):
    first = in_fresh_interpreter(__name__, "digest", tmp_path / "a", "1")
    second = in_fresh_interpreter(__name__, "digest", tmp_path / "b", "2")
    assert first == second and len(first) == 64


def test_the_check_has_teeth_by_default_the_replay_runs_in_a_thread(tmp_path):
    async def main() -> None:
        await ExchangeService(tmp_path, clock=virtual_wall).run()

    with pytest.raises(AssertionError, match="a thread was started"):
        run_simulated(main, seed=12)

