"""A trading cluster of real processes: quoting, takeover, hand-over, join, restart, `murmur check`.

Each scenario runs `murmur launch` (market makers, the exchange with its flow, the ledger) and
reads the exchange's `GET /authority` and `GET /quotes`, the fenced truth. Owners are computed
with `peer.market_maker.rendezvous` over the market makers that should be alive, so the test states who must
hold what, not merely that someone does.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from peer.exchange.tape import TapeReader, TapeWriterSync
from peer.market_maker.rendezvous import assignment
from peer.tools.processes import CLI, run_command

from .cluster_helpers import Cluster, eventually, launched, log_lines

pytestmark = pytest.mark.slow

SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]
ARGS = ["--flow-rate", "40"]


async def exchange_truth(client: httpx.AsyncClient, cluster: Cluster) -> tuple[dict, dict]:
    url = cluster.peer("exchange")["http"]
    authority = {a["symbol"]: a for a in (await client.get(f"{url}/authority")).json()["authority"]}
    quotes = {q["symbol"]: q for q in (await client.get(f"{url}/quotes")).json()["quotes"]}
    return authority, quotes


async def wait_quoted_by(client: httpx.AsyncClient, cluster: Cluster, owners: dict[str, str], bound: float,
                         what: str) -> tuple[dict, dict]:
    """Until every symbol is held by its owner and that owner's quote is live at the exchange."""

    async def check():
        authority, quotes = await exchange_truth(client, cluster)
        held = {s: (a["holder"], a["state"]) for s, a in authority.items()}
        ok = all(held.get(s) == (o, "held") and quotes.get(s, {}).get("holder") == o
                 and quotes[s]["epoch"] == authority[s]["epoch"] for s, o in owners.items())
        return ok, (authority, quotes) if ok else {"held": held, "quoted": {s: q["holder"] for s, q in quotes.items()}}

    return await eventually(check, bound, what, every=0.1)


async def murmur_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return await run_command([*CLI, "check", str(data_dir)])


async def test_takeover_after_sigkill_then_rejoin_then_graceful_leave_then_a_new_peer_joins(peers, tmp_path):
    async with launched(tmp_path / "c", peers=3, extra_args=ARGS) as cluster, httpx.AsyncClient(timeout=2) as client:
        mms = ["mm-1", "mm-2", "mm-3"]
        start, _ = await wait_quoted_by(client, cluster, assignment(SYMBOLS, mms), 20,
                                        "every symbol quoted by its rendezvous owner")

        # SIGKILL: the dead peer's symbols go to their new owners, at higher epochs; the others stay put.
        victim = "mm-2"
        cluster_pid = cluster.peer(victim)["pid"]
        signal_victim = [s for s, o in assignment(SYMBOLS, mms).items() if o == victim]
        assert signal_victim, "rendezvous gave mm-2 nothing: pick another victim"
        os.kill(cluster_pid, signal.SIGKILL)
        survivors = ["mm-1", "mm-3"]
        after_kill, _ = await wait_quoted_by(client, cluster, assignment(SYMBOLS, survivors), 15,
                                             "the killed holder's symbols quoted again by their new owners")
        for s in SYMBOLS:
            if s in signal_victim:
                assert after_kill[s]["epoch"] > start[s]["epoch"]
            else:
                assert after_kill[s]["epoch"] == start[s]["epoch"], f"{s} moved though its owner lived"

        # The killed peer comes back: it takes back exactly the symbols it wins, by hand-over.
        await cluster.restart(victim)
        back, _ = await wait_quoted_by(client, cluster, assignment(SYMBOLS, mms), 20,
                                       "the restarted peer quoting its own symbols again")
        for s in SYMBOLS:
            if s not in signal_victim:
                assert back[s]["epoch"] == after_kill[s]["epoch"], f"{s} moved on the rejoin but is not mm-2's"

        # Checked while it runs: the ledger is read as a snapshot first, the tape after it.
        running = await murmur_check(tmp_path / "c")
        assert running.returncode == 0, running.stdout + running.stderr

        # A graceful leave hands over (release, then claim), without waiting for a lease to run out.
        leaver = "mm-3"
        os.kill(cluster.peer(leaver)["pid"], signal.SIGTERM)
        await wait_quoted_by(client, cluster, assignment(SYMBOLS, ["mm-1", "mm-2"]), 10,
                             "the leaver's symbols handed over")
        lines = await log_lines(cluster, leaver)
        stopping = next(i for i, line in enumerate(lines) if line["event"] == "peer_stopping")
        handed = {line["symbol"] for line in lines[stopping:]
                  if line["event"] == "mm_authority" and line["reason"] == "released:hand-over"}
        held = {s for s, o in assignment(SYMBOLS, mms).items() if o == leaver}
        assert held, "rendezvous gave the leaver nothing: pick another leaver"
        # It gave its symbols back before leaving: a hand-over, not a lease running out.
        assert handed == held, (handed, held)
        assert any(line["event"] == "mm_left" for line in lines[stopping:])

        # A brand-new market maker joins: only the symbols it wins move, all to it.
        before_join, _ = await exchange_truth(client, cluster)
        newcomer, _ = await peers("mm", "--join", cluster.peer("mm-1")["gossip"], name="mm-9",
                                  data_dir=tmp_path / "c" / "mm-9")
        cluster.extra.append(newcomer)  # stopped with the cluster, before `murmur check`
        now_owners = assignment(SYMBOLS, ["mm-1", "mm-2", "mm-9"])
        won = {s for s, o in now_owners.items() if o == "mm-9"}
        assert won, "rendezvous gave the newcomer nothing: pick another name"
        joined, _ = await wait_quoted_by(client, cluster, now_owners, 15, "the newcomer quoting the symbols it wins")
        for s in SYMBOLS:
            if s in won:
                assert joined[s]["epoch"] > before_join[s]["epoch"]
            else:
                assert joined[s]["epoch"] == before_join[s]["epoch"], f"{s} moved though the newcomer did not win it"
    result = await murmur_check(tmp_path / "c")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HELD" in result.stdout


async def test_full_restart_recovers_authority_positions_and_quotes_and_check_catches_a_doctored_tape(tmp_path):
    data = tmp_path / "c"
    async with launched(data, peers=3, extra_args=ARGS) as cluster, httpx.AsyncClient(timeout=2) as client:
        mms = ["mm-1", "mm-2", "mm-3"]
        await wait_quoted_by(client, cluster, assignment(SYMBOLS, mms), 20, "every symbol quoted")
        ledger = cluster.peer("ledger")["http"]

        async def some_fills():
            positions = (await client.get(f"{ledger}/positions")).json()["positions"]
            return sum(p["position_version"] for p in positions) >= 10, positions

        await eventually(some_fills, 20, "the flow fills some quotes")
        before_epochs = {s: a["epoch"] for s, a in (await exchange_truth(client, cluster))[0].items()}
    # Stopped (every peer left gracefully); the positions as the ledger committed them.
    before = await murmur_check(data)
    assert before.returncode == 0, before.stdout

    async with launched(data, peers=3, extra_args=ARGS) as cluster, httpx.AsyncClient(timeout=2) as client:
        ledger = cluster.peer("ledger")["http"]
        positions_after = (await client.get(f"{ledger}/positions")).json()["positions"]
        assert positions_after and all(p["position_version"] >= 1 for p in positions_after)
        authority, _ = await wait_quoted_by(client, cluster, assignment(SYMBOLS, mms), 30,
                                            "every symbol quoted again after a full restart")
        for s in SYMBOLS:
            assert authority[s]["epoch"] > before_epochs[s], "epochs survive the restart and keep growing"
    after = await murmur_check(data)
    assert after.returncode == 0, after.stdout

    # A tape doctored so that no quote is ever withdrawn or expired by the exchange: the new
    # epochs' quotes then overlap the old ones (their 30 s TTL had not run out at the restart).
    doctored = tmp_path / "doctored"
    await trio.to_thread.run_sync(doctor, data, doctored)
    result = await murmur_check(doctored)
    assert result.returncode == 1, result.stdout
    assert "violated    quotes of at most one epoch" in result.stdout
    assert "live quotes of epochs" in result.stdout
    print(result.stdout, file=sys.stderr)


def doctor(data: Path, doctored: Path) -> None:
    """A copy of the cluster's exchange tape and ledger in which no quote is ever withdrawn or
    expired."""
    (doctored / "exchange").mkdir(parents=True)
    shutil.copytree(data / "ledger", doctored / "ledger")
    records = list(TapeReader(data / "exchange" / "exchange.tape").records())
    changed = 0
    for rec in records:
        for key in ("withdrawn", "ended"):
            if rec.get(key):
                rec[key] = []
                changed += 1
    assert changed, "no quote was withdrawn or expired: nothing to doctor"
    with TapeWriterSync(doctored / "exchange" / "exchange.tape") as writer:
        writer.append_many([{k: v for k, v in copy.deepcopy(r).items() if k != "seq"} for r in records])
