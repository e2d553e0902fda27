"""A real exchange process: SIGKILL in the middle of trading, restart, nothing acknowledged lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.peer.cluster_helpers import start_peer

pytestmark = pytest.mark.slow


def start(data_dir: Path) -> tuple[subprocess.Popen, str]:
    return start_peer("exchange", data_dir, "--flow-rate", "50", "--lease", "30")


def test_sigkill_and_restart_keeps_epochs_quotes_and_every_acknowledged_fill(tmp_path):
    data = tmp_path / "exchange"
    data.mkdir()
    proc, url = start(data)
    try:
        assert httpx.post(f"{url}/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 5}).json()["accepted"]
        price = httpx.get(f"{url}/prices/AAPL").json()["price"]
        seq = 0
        for i in range(5):
            seq += 1
            r = httpx.put(f"{url}/quotes/AAPL", json={"holder": "mm-1", "epoch": 5, "seq": seq, "quote_id": f"q{i}",
                                                       "bid_price": price - 1, "bid_quantity": 3,
                                                       "ask_price": price + 1, "ask_quantity": 3})
            assert r.status_code == 200, r.text
            time.sleep(0.2)
        acked = httpx.get(f"{url}/fills", params={"after": 0, "limit": 10000}).json()["fills"]
        authority = {a["symbol"]: a for a in httpx.get(f"{url}/authority").json()["authority"]}
        assert acked, "the built-in flow crossed the quotes"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    proc, url = start(data)
    try:
        after = httpx.get(f"{url}/fills", params={"after": 0, "limit": 10000}).json()["fills"]
        assert after[: len(acked)] == acked, "every fill acknowledged before the kill is there, unchanged"
        again = {a["symbol"]: a for a in httpx.get(f"{url}/authority").json()["authority"]}
        assert again["AAPL"]["epoch"] == authority["AAPL"]["epoch"] == 5
        r = httpx.post(f"{url}/authority/AAPL/claim", json={"holder": "mm-2", "epoch": 5})
        assert r.status_code == 409 and r.json()["reason"] == "stale-epoch"
        quote = httpx.get(f"{url}/quotes/AAPL").json()["quote"]
        assert quote is None or quote["quote_id"] == "q4"
        r = httpx.put(f"{url}/quotes/AAPL", json={"holder": "mm-1", "epoch": 5, "seq": seq, "quote_id": "q-old",
                                                   "bid_price": 1, "bid_quantity": 1, "ask_price": 2, "ask_quantity": 1})
        assert r.status_code == 409 and r.json()["reason"] == "stale-seq", "the seq fence survived the restart"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
