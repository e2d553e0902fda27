"""A running peer obeys the link rules set through its /admin/links (peer/runner.py wires the
filter to its transports): two peers in-process, real UDP and HTTP on 127.0.0.1."""

from __future__ import annotations

import os

import httpx
import pytest
import trio

from peer.faults.admin import AdminTokenError
from peer.runner import run_peer
from peer.tools.processes import poll_until
from tests.peer.test_runner import joining, options, start

TOKEN = "test-token-" + "k" * 32
AUTH = {"authorization": f"Bearer {TOKEN}"}


def token_file(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    return path


async def state_of(client: httpx.AsyncClient, info: dict, name: str) -> str | None:
    rows = (await client.get(f"{info['http']}/members")).json()
    return next((r["state"] for r in rows if r["name"] == name), None)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_cut_set_through_admin_isolates_the_peer_and_a_heal_brings_it_back(tmp_path):
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            a, stop_a, done_a = await start(nursery, options(tmp_path, "mm-1", admin_token_file=token_file(tmp_path)))
            b, stop_b, done_b = await start(nursery, joining(tmp_path, "mm-2", a))
            await poll_until(lambda: state_of(client, b, "mm-1"), 10, "mm-2 sees mm-1", every=0.1)
            assert (await client.get(f"{a['http']}/admin/links")).status_code == 401
            rule = {"id": "p-1", "cut": True,
                    "peers": [{"name": "mm-2", "gossip": b["gossip"], "http": b["http"]}]}
            r = await client.post(f"{a['http']}/admin/links", json={"rule": rule, "reason": "test"}, headers=AUTH)
            assert r.status_code == 200, r.text
            # mm-1 neither hears nor is heard: each sees the other dead.
            for viewer, other in ((b, "mm-1"), (a, "mm-2")):
                await poll_until(lambda v=viewer, o=other: _gone(client, v, o), 15, f"{other} dead in a view")
            text = (await client.get(f"{a['http']}/metrics")).text
            assert metric(text, "murmur_transport_filtered_out_total") > 0
            assert metric(text, "murmur_transport_filtered_in_total") > 0
            r = await client.request("DELETE", f"{a['http']}/admin/links", headers=AUTH)
            assert r.json() == {"removed": 1, "rules": []}
            for viewer, other in ((b, "mm-1"), (a, "mm-2")):
                await poll_until(lambda v=viewer, o=other: _alive(client, v, o), 15, f"{other} back in a view")
            stop_a.set()
            stop_b.set()
            await done_a.wait()
            await done_b.wait()


async def _gone(client, viewer, name) -> bool:
    return await state_of(client, viewer, name) in ("dead", None)


async def _alive(client, viewer, name) -> bool:
    return await state_of(client, viewer, name) == "alive"


async def test_a_peer_whose_token_file_cannot_be_read_does_not_start(tmp_path):
    with trio.fail_after(10), pytest.raises(AdminTokenError, match="cannot read the admin token file"):
        await run_peer(options(tmp_path, "mm-1", admin_token_file=tmp_path / "missing.token"))
