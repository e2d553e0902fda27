"""A real ledger process: SIGKILL in the middle of a stream of fills, restart, nothing lost or doubled.

Also: a truncated or corrupted database makes the real process refuse to start, exit non-zero and
say which file and which runbook section.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import httpx
import pytest
import trio

from peer.tools.processes import peer_argv, run_command, stop_process

pytestmark = pytest.mark.slow

SYMBOLS = ["AAPL", "MSFT", "TSLA"]

# The test posts fills itself, unsigned: durability, not security, is under test here (signed
# calls: tests/peer/test_signed_calls_processes.py).
INSECURE = ("--insecure",)


def make_fills(n: int, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    return [{"fill_id": f"Fk-{i:06d}", "seq": i, "order_id": f"o{i}", "symbol": rng.choice(SYMBOLS),
             "side": rng.choice(["buy", "sell"]), "quantity": rng.randint(1, 9), "price": rng.randint(9_000, 11_000),
             "quote_id": f"q{i // 10}", "epoch": 1, "holder": "mm-1", "reservation_id": None,
             "created_at": 1_700_000_000.0 + i / 100} for i in range(1, n + 1)]


async def all_fills(client: httpx.AsyncClient) -> list[dict]:
    out, after = [], 0
    while True:
        page = (await client.get("/fills", params={"after": after, "limit": 10_000})).json()
        out += page["fills"]
        if not page["fills"]:
            return out
        after = page["next_after"]


async def test_sigkill_mid_stream_then_restart_keeps_every_acknowledged_fill_exactly_once(peers, tmp_path):
    data = tmp_path / "ledger"
    fills = make_fills(4000)
    batches = [fills[i:i + 40] for i in range(0, len(fills), 40)]
    acked: set[str] = set()
    proc, url = await peers("ledger", *INSECURE, data_dir=data)
    with trio.fail_after(60):
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            queue = list(batches)
            enough, killed = trio.Event(), trio.Event()

            async def sender() -> None:
                while queue and not killed.is_set():
                    batch = queue.pop(0)
                    try:
                        r = await client.post("/fills", json={"fills": batch})
                    except httpx.HTTPError:
                        return  # the ledger is gone: this batch was never acknowledged
                    if r.status_code == 200:
                        acked.update(f["fill_id"] for f in batch)
                        if len(acked) >= 1200:
                            enough.set()

            async def killer() -> None:
                await enough.wait()
                os.kill(proc.pid, signal.SIGKILL)  # requests are in flight right now
                killed.set()

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(sender)
                nursery.start_soon(killer)
    await stop_process(proc, signum=signal.SIGKILL)
    assert 1200 <= len(acked) < len(fills), "the kill came in the middle of the stream"

    proc, url = await peers("ledger", *INSECURE, data_dir=data)
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                recorded = await all_fills(client)
                ids = [f["fill_id"] for f in recorded]
                assert len(ids) == len(set(ids)), "no fill recorded twice"
                assert acked <= set(ids), "every acknowledged fill survived the SIGKILL"
                print(f"acknowledged {len(acked)}, recorded {len(ids)} before the re-send")
                # Everything again, acknowledged or not: nothing is applied twice.
                for batch in batches:
                    r = await client.post("/fills", json={"fills": batch})
                    assert r.status_code == 200, r.text
                    for res in r.json()["results"]:
                        if res["fill_id"] in acked:
                            assert res["status"] == "duplicate"
                recorded = await all_fills(client)
                assert sorted(f["fill_id"] for f in recorded) == sorted(f["fill_id"] for f in fills)
                assert [f["update_seq"] for f in recorded] == list(range(1, len(fills) + 1))
                positions = {p["symbol"]: p for p in (await client.get("/positions")).json()["positions"]}
                for symbol in SYMBOLS:
                    mine = [f for f in recorded if f["symbol"] == symbol]
                    signed = sum(f["quantity"] if f["side"] == "buy" else -f["quantity"] for f in mine)
                    assert positions[symbol]["net_quantity"] == signed
                    assert [f["position_version"] for f in mine] == list(range(1, len(mine) + 1)), "no gaps"
                    assert positions[symbol]["position_version"] == len(mine)
                    stream = (await client.get(f"/positions/{symbol}/updates",
                                               params={"after_version": 0, "limit": 10_000})).json()["updates"]
                    assert [u["fill_id"] for u in stream] == [f["fill_id"] for f in mine]
    finally:
        await stop_process(proc)


async def _refused_start(data: Path) -> str:
    await trio.Path(data / "peer.json").unlink(missing_ok=True)
    done = await run_command(peer_argv("ledger", data, *INSECURE), bound=30)
    assert done.returncode != 0, "a damaged ledger must not start"
    assert not await trio.Path(data / "peer.json").exists(), "it never came up"
    return done.stderr


def _damage(db: Path, damage: str) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 2 + 1234)
            f.write(bytes(random.Random(3).randrange(256) for _ in range(400)))


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
async def test_a_damaged_database_makes_the_process_refuse_to_start(peers, tmp_path, damage):
    data = tmp_path / "ledger"
    proc, url = await peers("ledger", *INSECURE, data_dir=data)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for batch in range(20):
                r = await client.post("/fills", json={"fills": make_fills(2000)[batch * 100:(batch + 1) * 100]})
                assert r.status_code == 200
    finally:
        await stop_process(proc)
    assert proc.returncode == 0, "a clean stop"
    db = data / "ledger.db"
    await trio.to_thread.run_sync(_damage, db, damage)
    before = await trio.Path(db).read_bytes()
    stderr = await _refused_start(data)
    # One clear line naming the file and the runbook step, not a traceback.
    assert stderr.startswith(f"murmur peer: cannot start: {db}: damaged"), stderr
    assert "Traceback" not in stderr
    assert 'docs/runbook.md, section "Damaged ledger database"' in stderr
    assert await trio.Path(db).read_bytes() == before, "nothing was rebuilt or cut"
    text = await trio.Path(data / "ledger.log").read_text()
    assert any(json.loads(line)["event"] == "ledger_refused" for line in text.splitlines())
