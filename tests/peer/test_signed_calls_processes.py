"""Calls between peers from outside the cluster, against real processes under `murmur launch`.

The attacks of issue 13, sent from loopback with no cluster key (unsigned, or signed under a key
of the attacker's own): a claim in the current holder's name with epoch 2**53-1, a spoofed
release, a quote PUT of 1,000,000 a side with no reservation, and fills posted to the ledger.
Each is refused (401) and changes nothing: the holder keeps its symbol and its quote, no bogus
position appears, trading goes on, and `murmur check` holds afterwards. The market makers'
own quotes went live on the ledger's grants, verified by the exchange.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest

from gossip.keyring import Keyring, generate_key
from peer.http.signing import Signer
from peer.tools.processes import CLI, run_command

from .cluster_helpers import eventually, launched

pytestmark = pytest.mark.slow


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_claims_releases_quotes_and_fills_from_outside_are_refused_and_change_nothing(tmp_path):
    data = tmp_path / "c"
    async with launched(data, peers=2, extra_args=["--flow-rate", "40"]) as cluster, \
            httpx.AsyncClient(timeout=5) as client:
        ex, lg = cluster.peer("exchange")["http"], cluster.peer("ledger")["http"]

        async def held_and_quoted():
            authority = {a["symbol"]: a for a in (await client.get(f"{ex}/authority")).json()["authority"]}
            quotes = {q["symbol"]: q for q in (await client.get(f"{ex}/quotes")).json()["quotes"]}
            both = [s for s, a in authority.items() if a["state"] == "held" and s in quotes]
            return bool(both), (authority, quotes, both)

        authority, quotes, both = await eventually(held_and_quoted, 30, "a symbol held and quoted")
        symbol = both[0]
        holder, epoch = authority[symbol]["holder"], authority[symbol]["epoch"]
        positions_before = {p["symbol"] for p in (await client.get(f"{lg}/positions")).json()["positions"]}
        # An attacker with a key of its own: it signs, but under a key no member holds.
        forger = Signer(Keyring([generate_key()]), holder, clock=time.time,
                        nonces=lambda: random.getrandbits(64))
        attacks = [
            ("POST", f"/authority/{symbol}/claim", ex, {"holder": holder, "epoch": 2**53 - 1}),
            ("POST", f"/authority/{symbol}/release", ex, {"holder": holder, "epoch": epoch}),
            ("PUT", f"/quotes/{symbol}", ex, {"holder": holder, "epoch": epoch, "seq": 2**53 - 1,
                                             "quote_id": "intruder-1", "bid_price": 1, "bid_quantity": 1_000_000,
                                             "ask_price": 100_000_000, "ask_quantity": 1_000_000,
                                             "reservation_id": None}),
            ("POST", "/fills", lg, {"fills": [{"fill_id": f"Xbogus{i}", "order_id": "o", "symbol": "BOGUS",
                                               "side": "buy", "quantity": 1, "price": 10, "quote_id": "q",
                                               "created_at": time.time()} for i in range(22)]}),
        ]
        for method, path, base, body in attacks:
            raw = json.dumps(body).encode()
            for headers in ({"x-murmur-peer": holder}, forger.headers(method, path, raw)):
                r = await client.request(method, base + path, content=raw,
                                         headers={"content-type": "application/json", **headers})
                assert r.status_code == 401, (method, path, r.status_code, r.text[:300])
                assert r.json()["field"] == "x-murmur-signature"

        # Nothing changed: the holder keeps the symbol at its epoch, no intruder quote, no bogus fill.
        now = {a["symbol"]: a for a in (await client.get(f"{ex}/authority")).json()["authority"]}[symbol]
        assert (now["holder"], now["epoch"]) == (holder, epoch) and now["state"] == "held"
        quote = (await client.get(f"{ex}/quotes/{symbol}")).json()["quote"]
        assert quote is None or quote["quote_id"] != "intruder-1"
        positions = {p["symbol"] for p in (await client.get(f"{lg}/positions")).json()["positions"]}
        assert "BOGUS" not in positions and positions <= positions_before | set(authority)

        # Trading goes on: more fills reach the ledger after the attacks.
        fills_before = (await client.get(f"{ex}/exchange")).json()["fills"]

        async def trading_on():
            status = (await client.get(f"{ex}/exchange")).json()
            return status["fills"] > fills_before and status["outbox"]["pending"] == 0, status

        await eventually(trading_on, 30, "more fills, all delivered to the ledger")
        metrics = (await client.get(f"{ex}/metrics")).text
        assert _metric(metrics, "murmur_http_auth_grants_verified_total") > 0, "quotes went live on grants"
        assert _metric(metrics, "murmur_http_auth_refused_missing_total") >= 3
        assert _metric(metrics, "murmur_http_auth_refused_unknown_key_total") >= 3
    check = await run_command([*CLI, "check", str(data)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every quote was live only while a granted reservation covered it" in check.stdout
