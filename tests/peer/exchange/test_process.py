"""A real exchange process: SIGKILL in the middle of trading, restart, nothing acknowledged lost."""

from __future__ import annotations

import signal

import httpx
import pytest
import trio

from peer.tools.processes import stop_process

pytestmark = pytest.mark.slow

# Plain calls from the test, as a member would make them unsigned: durability, not security, is
# under test here (signed calls: tests/peer/test_signed_calls_processes.py).
ARGS = ("--flow-rate", "50", "--lease", "30", "--insecure")


async def test_sigkill_and_restart_keeps_epochs_quotes_and_every_acknowledged_fill(peers, tmp_path):
    data = tmp_path / "exchange"
    proc, url = await peers("exchange", *ARGS, data_dir=data)
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 5})).json()["accepted"]
        price = (await c.get("/prices/AAPL")).json()["price"]
        seq = 0
        for i in range(5):
            seq += 1
            r = await c.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": 5, "seq": seq, "quote_id": f"q{i}",
                                                  "bid_price": price - 1, "bid_quantity": 3,
                                                  "ask_price": price + 1, "ask_quantity": 3})
            assert r.status_code == 200, r.text
            await trio.sleep(0.2)  # the process's own order flow trades against the quote meanwhile
        acked = (await c.get("/fills", params={"after": 0, "limit": 10000})).json()["fills"]
        authority = {a["symbol"]: a for a in (await c.get("/authority")).json()["authority"]}
        assert acked, "the built-in flow crossed the quotes"
    await stop_process(proc, signum=signal.SIGKILL)

    proc, url = await peers("exchange", *ARGS, data_dir=data)
    async with httpx.AsyncClient(base_url=url) as c:
        after = (await c.get("/fills", params={"after": 0, "limit": 10000})).json()["fills"]
        assert after[: len(acked)] == acked, "every fill acknowledged before the kill is there, unchanged"
        again = {a["symbol"]: a for a in (await c.get("/authority")).json()["authority"]}
        assert again["AAPL"]["epoch"] == authority["AAPL"]["epoch"] == 5
        r = await c.post("/authority/AAPL/claim", json={"holder": "mm-2", "epoch": 5})
        assert r.status_code == 409 and r.json()["reason"] == "stale-epoch"
        quote = (await c.get("/quotes/AAPL")).json()["quote"]
        assert quote is None or quote["quote_id"] == "q4"
        r = await c.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": 5, "seq": seq, "quote_id": "q-old",
                                              "bid_price": 1, "bid_quantity": 1, "ask_price": 2, "ask_quantity": 1})
        assert r.status_code == 409 and r.json()["reason"] == "stale-seq", "the seq fence survived the restart"
