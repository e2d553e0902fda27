"""`/admin/keys` (peer/http/keys.py): rotation steps change the running keyring and its file,
behind the admin token, with ids only in answers and logs."""

from __future__ import annotations

import json
import random
from contextlib import asynccontextmanager

import httpx
import pytest

from gossip.keyring import Keyring, encode_key, key_id
from peer.faults.admin import Admin
from peer.faults.links import LinkFilter
from peer.http.endpoints import PeerHandle, create_app
from peer.http.keys import key_routes

TOKEN = "tok-" + "x" * 40
AUTH = {"authorization": f"Bearer {TOKEN}"}
OLD, NEW = b"o" * 32, b"n" * 32


class Log(list):
    def __call__(self, event: str, **fields) -> None:
        self.append({"event": event, **fields})


@asynccontextmanager
async def keys_app(tmp_path, *, insecure: bool = False):
    ring = None if insecure else Keyring([OLD])
    key_file = None if insecure else tmp_path / "cluster.key"
    if ring is not None:
        ring.save(key_file)
    handle = PeerHandle(role="mm", profile="local", keyring=ring, key_file=key_file)
    app = create_app(handle, key_routes())
    log = Log()
    app.state.admin = Admin(LinkFilter(random.Random(1)), TOKEN, log=log)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
        client.ring, client.key_file, client.log = ring, key_file, log
        yield client


async def test_install_use_remove_changes_the_running_keyring_and_its_file(tmp_path):
    async with keys_app(tmp_path) as client:
        old_id, new_id = key_id(OLD), key_id(NEW)
        r = await client.post("/admin/keys", json={"key": encode_key(NEW)}, headers=AUTH)
        assert r.status_code == 200 and r.json()["installed"] == new_id
        assert client.ring.ids() == sorted([old_id, new_id]) and client.ring.primary_id == old_id
        r = await client.put("/admin/keys", json={"primary": new_id}, headers=AUTH)
        assert r.status_code == 200 and client.ring.primary_id == new_id
        assert Keyring.load(client.key_file).primary_id == new_id  # a restart keeps it
        r = await client.request("DELETE", "/admin/keys", json={"id": old_id}, headers=AUTH)
        assert r.status_code == 200 and r.json()["ids"] == [new_id]
        assert client.ring.ids() == Keyring.load(client.key_file).ids() == [new_id]
        got = (await client.get("/admin/keys", headers=AUTH)).json()
        assert got == {"sealed": True, "primary": new_id, "ids": [new_id], "key_file": str(client.key_file)}
        assert [e["action"] for e in client.log] == ["install", "use", "remove"]
        # Neither answers nor logs ever carry a key.
        assert encode_key(NEW) not in json.dumps(client.log) + r.text + json.dumps(got)


@pytest.mark.parametrize(("method", "body", "field"), [
    ("PUT", {"primary": "0000abcd"}, "primary"),  # not installed
    ("DELETE", {"id": None}, "id"),
    ("POST", {"key": "not base64!"}, "key"),
    ("POST", {"key": encode_key(b"short")}, "key"),
    ("POST", {"key": encode_key(NEW), "extra": 1}, "extra"),
    ("PUT", {}, "primary"),
])
async def test_a_refused_change_is_400_and_changes_nothing(tmp_path, method, body, field):
    async with keys_app(tmp_path) as client:
        before = client.key_file.read_bytes()
        r = await client.request(method, "/admin/keys", json=body, headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == field
        assert client.ring.ids() == [key_id(OLD)] and client.key_file.read_bytes() == before


async def test_removing_the_primary_is_refused(tmp_path):
    async with keys_app(tmp_path) as client:
        r = await client.request("DELETE", "/admin/keys", json={"id": key_id(OLD)}, headers=AUTH)
        assert r.status_code == 400 and "primary" in r.json()["error"]
        assert client.ring.ids() == [key_id(OLD)]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
async def test_without_the_admin_token_nothing_is_read_or_changed(tmp_path, headers):
    async with keys_app(tmp_path) as client:
        assert (await client.get("/admin/keys", headers=headers)).status_code == 401
        r = await client.post("/admin/keys", json={"key": encode_key(NEW)}, headers=headers)
        assert r.status_code == 401 and client.ring.ids() == [key_id(OLD)]


async def test_a_key_file_that_cannot_be_written_leaves_the_keyring_unchanged(tmp_path):
    async with keys_app(tmp_path) as client:
        client.key_file.unlink()
        client.key_file.mkdir()  # os.replace onto a directory fails
        r = await client.post("/admin/keys", json={"key": encode_key(NEW)}, headers=AUTH)
        assert r.status_code == 500 and r.json()["field"] == "key_file"
        assert client.ring.ids() == [key_id(OLD)]


async def test_an_insecure_peer_has_no_keyring_to_change(tmp_path):
    async with keys_app(tmp_path, insecure=True) as client:
        assert (await client.get("/admin/keys", headers=AUTH)).json()["sealed"] is False
        r = await client.post("/admin/keys", json={"key": encode_key(NEW)}, headers=AUTH)
        assert r.status_code == 409
