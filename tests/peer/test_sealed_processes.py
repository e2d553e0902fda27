"""A sealed cluster of real processes (`murmur launch`) against intruders from loopback, and a key
rotated while it runs. What issue 13 found in plaintext: a forged Dead made the cluster drop a live
market maker; a push-pull of fake members left symbols unquoted."""

from __future__ import annotations

import re

import cbor2
import httpx
import pytest
import trio

from gossip import wire
from gossip.config import PROTOCOL_VERSION
from gossip.keyring import Keyring, new_key_file
from gossip.transport import TransportError
from gossip.udp import UdpTransport
from peer.addresses import parse_address
from peer.tools.processes import CLI, run_command, start_peer, stop_process

from .cluster_helpers import eventually, launched, log_lines, views

pytestmark = pytest.mark.slow

NAMES = {"mm-1", "mm-2", "exchange", "ledger"}


async def counter(client: httpx.AsyncClient, peer: dict, name: str) -> float:
    text = (await client.get(f"{peer['http']}/metrics")).text
    m = re.search(rf"^murmur_{name}_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def all_alive(client, cluster) -> tuple[bool, dict]:
    seen = await views(client, cluster.peers)
    rows = {v: sorted(n for n, r in (view or {}).items() if r["state"] == "alive") for v, view in seen.items()}
    return all(set(r) == NAMES for r in rows.values()), rows


async def test_intruders_without_the_key_change_nothing_and_are_counted(tmp_path):
    async with launched(tmp_path / "c", peers=2) as cluster, httpx.AsyncClient(timeout=2) as client:
        await eventually(lambda: all_alive(client, cluster), 20, "every peer sees the 4 alive")
        mm1, mm2 = cluster.peer("mm-1"), cluster.peer("mm-2")
        # A peer with a key of its own joins through mm-1: it is never admitted.
        other = tmp_path / "other" / "cluster.key"
        other.parent.mkdir()
        new_key_file(other)
        proc, url = await start_peer("mm", tmp_path / "other" / "mm-9", "--key-file", str(other),
                                     "--join", mm1["gossip"], name="mm-9")
        try:
            # A forged Dead of mm-2 and a fake member, in plaintext, straight at every member's
            # gossip port, and a push-pull stream carrying 50 fake market makers.
            udp = UdpTransport(("127.0.0.1", 0))
            async with trio.open_nursery() as nursery:
                await nursery.start(udp.run)
                dead = wire.encode_packet([wire.encode_message(wire.Dead("mm-2", 1_000, "mm-1")),
                                           wire.encode_message(wire.Alive("zz-fake", 1, udp.local_addr, {}))],
                                          cluster=cluster.info["cluster"])
                fake = cbor2.dumps([PROTOCOL_VERSION, "pp", cluster.info["cluster"],
                                    [[f"zz-{i}", 1, "127.0.0.1", 9, [0], {"role": "mm"}] for i in range(50)]])
                for _ in range(10):
                    for p in cluster.peers:
                        await udp.send_packet(dead, parse_address(p["gossip"]))
                    try:
                        with trio.fail_after(2):
                            await udp.exchange(parse_address(mm1["gossip"]), fake)
                    except (TransportError, trio.TooSlowError):
                        pass  # refused: no answer
                    await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
            await trio.sleep(3)  # many probe periods of the local profile
            ok, rows = await all_alive(client, cluster)
            assert ok, rows
            seen = await views(client, cluster.peers)
            assert all(set(v) == NAMES for v in seen.values()), {k: sorted(v) for k, v in seen.items()}
            mine = (await client.get(f"{url}/members")).json()
            assert [r["name"] for r in mine] == ["mm-9"]
            # Counted: the outsider's packets under an unknown key; the plaintext ones.
            assert await counter(client, mm1, "sealed_dropped_unknown_key") > 0
            plain = sum([await counter(client, p, f"sealed_dropped_{r}")
                         for p in cluster.peers for r in ("short", "bad_version")])
            assert plain >= 10 * len(cluster.peers) + 10
            for p in cluster.peers:  # nobody ever took mm-2 for anything but alive
                lines = await log_lines(cluster, p["name"])
                assert not [x for x in lines if x.get("event") == "member" and x.get("node") == mm2["name"]
                            and x.get("new") != "alive"], p["name"]
        finally:
            await stop_process(proc)


async def test_a_key_rotated_on_a_running_cluster_raises_no_suspicion(tmp_path):
    async with launched(tmp_path / "c", peers=2) as cluster, httpx.AsyncClient(timeout=2) as client:
        await eventually(lambda: all_alive(client, cluster), 20, "every peer sees the 4 alive")
        key_file = cluster.info["key_file"]
        old = Keyring.load(key_file).primary_id
        new_file = tmp_path / "new.key"
        done = await run_command([*CLI, "keygen"])
        await trio.Path(new_file).write_text(done.stdout)
        new = done.stderr.split()[-1]
        where = ["--data-dir", str(tmp_path / "c")]
        for step in (["install", str(new_file)], ["use", new], ["remove", old]):
            done = await run_command([*CLI, "keys", *step, *where])
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.count("\n") == len(cluster.peers), done.stdout
            await trio.sleep(1.0)  # gossip under the new state for several probe periods
        listing = await run_command([*CLI, "keys", "list", *where])
        assert listing.stdout.count(f"keys {new}* (* primary)") == len(cluster.peers), listing.stdout
        assert Keyring.load(key_file).ids() == [new]
        for p in cluster.peers:
            status = (await client.get(f"{p['http']}/status")).json()
            assert status["security"] == {"sealed": True, "key_ids": [new], "primary": new}
        ok, rows = await all_alive(client, cluster)
        assert ok, rows
        for p in cluster.peers:
            lines = await log_lines(cluster, p["name"])
            suspected = [x for x in lines if x.get("event") == "member" and x.get("new") in ("suspect", "dead")]
            assert suspected == [], (p["name"], suspected)
            assert await counter(client, p, "sealed_dropped_unknown_key") == 0
            assert not any(new_file.read_text().strip() in str(x) for x in lines)
