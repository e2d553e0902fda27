"""The admin endpoint (peer/faults/admin.py): the token, the refusals, and the rules it sets."""

from __future__ import annotations

import json
import os
import random
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from peer.faults.admin import MAX_BODY, Admin, AdminTokenError, admin_routes, read_token
from peer.faults.links import LinkFilter
from peer.http.endpoints import PeerHandle, create_app

TOKEN = "tok-" + "x" * 40
AUTH = {"authorization": f"Bearer {TOKEN}"}
MM3 = {"name": "mm-3", "gossip": "127.0.0.1:7001", "http": "http://127.0.0.1:7002"}
RULE = {"id": "p-1", "peers": [MM3], "cut": True}
T0 = 1_764_160_000.0


class Log(list):
    def __call__(self, event: str, **fields) -> None:
        self.append({"event": event, **fields})


@asynccontextmanager
async def admin_app(token: str | None = TOKEN, clock=lambda: T0):
    links = LinkFilter(random.Random(1))
    log = Log()
    app = create_app(PeerHandle(role="mm", profile="local"), admin_routes())
    app.state.admin = Admin(links, token, log=log, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
        client.links, client.log, client.admin = links, log, app.state.admin
        yield client


async def test_add_list_replace_and_clear():
    async with admin_app() as client:
        assert (await client.get("/admin/links", headers=AUTH)).json() == {"rules": []}
        r = await client.post("/admin/links", json={"rule": RULE, "reason": "murmur partition"}, headers=AUTH)
        assert r.status_code == 200
        [rule] = r.json()["rules"]
        assert rule["id"] == "p-1" and rule["cut"] is True and rule["peers"] == [MM3]
        assert client.links.stream(("127.0.0.1", 7001), T0).blocked  # applies at once
        second = {"id": "p-2", "peers": [{"name": "mm-4"}], "delay_ms": 5}
        await client.post("/admin/links", json={"rule": second}, headers=AUTH)
        replaced = {**RULE, "cut": False, "loss": 0.5}
        r = await client.post("/admin/links", json={"rule": replaced}, headers=AUTH)
        assert [(x["id"], x["cut"], x["loss"]) for x in r.json()["rules"]] == [("p-1", False, 0.5), ("p-2", False, 0.0)]
        assert (await client.get("/admin/links", headers=AUTH)).json() == r.json()
        r = await client.request("DELETE", "/admin/links", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"removed": 2, "rules": []}
        assert not client.links
        assert [(e["action"], e.get("rule_id"), e["rules"], e["reason"]) for e in client.log] == [
            ("add", "p-1", 1, "murmur partition"), ("add", "p-2", 2, "admin request"),
            ("replace", "p-1", 2, "admin request"), ("clear", None, 0, "heal")]
        assert all(e["event"] == "links_changed" for e in client.log)
        r = await client.request("DELETE", "/admin/links", json={"reason": "murmur heal"}, headers=AUTH)
        assert r.json() == {"removed": 0, "rules": []} and client.log[-1]["reason"] == "murmur heal"


@pytest.mark.parametrize("headers, words", [
    ({}, "required"),
    ({"authorization": TOKEN}, "required"),
    ({"authorization": "Basic " + TOKEN}, "required"),
    ({"authorization": "Bearer "}, "required"),
    ({"authorization": "Bearer wrong"}, "wrong admin token"),
    ({"authorization": f"Bearer {TOKEN}x"}, "wrong admin token"),
    ({"authorization": "Bearer " + TOKEN[:-1]}, "wrong admin token"),
    ({"authorization": "Bearer t\u00f6k".encode("latin-1")}, "wrong admin token"),
])
async def test_without_the_token_every_request_is_401_and_nothing_changes(headers, words):
    async with admin_app() as client:
        client.links.set({"id": "keep", "peers": [MM3], "cut": True})
        for method, body in (("GET", None), ("POST", {"rule": RULE | {"id": "new"}}), ("DELETE", None)):
            r = await client.request(method, "/admin/links", json=body, headers=headers)
            assert r.status_code == 401, (method, r.text)
            assert r.json()["field"] == "authorization" and words in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
        assert [x["id"] for x in client.links.to_json()] == ["keep"] and client.log == []


async def test_a_peer_started_without_a_token_file_answers_401_to_everything():
    async with admin_app(token=None) as client:
        for method in ("GET", "POST", "DELETE"):
            r = await client.request(method, "/admin/links", json={"rule": RULE}, headers=AUTH)
            assert r.status_code == 401 and "without --admin-token-file" in r.json()["error"]
        assert not client.links


async def test_an_app_without_the_admin_state_answers_401():
    app = create_app(PeerHandle(role="mm", profile="local"), admin_routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
        r = await client.get("/admin/links", headers=AUTH)
        assert r.status_code == 401 and r.json()["field"] == "authorization"


def _raw(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.mark.parametrize("body, field, words", [
    (b"", "body", "required"),
    (b"{", "body", "not valid JSON"),
    (b"[]", "body", "JSON object"),
    (b'{"rule": {"id": "p", "peers": [], "loss": NaN}}', "rule.loss", "not a number this API accepts"),
    (b" " * (MAX_BODY + 1), "body", "larger than"),
    ({}, "rule", "required"),
    ({"rule": RULE, "why": "x"}, "why", "unknown field"),
    ({"rule": "cut"}, "rule", "JSON object"),
    ({"rule": {**RULE, "loss": 2}}, "rule.loss", "probability"),
    ({"rule": {**RULE, "direction": "up"}}, "rule.direction", "both, out, in"),
    ({"rule": {**RULE, "peers": [{"name": "x", "gossip": "nowhere"}]}}, "rule.peers[0].gossip", "HOST:PORT"),
    ({"rule": RULE, "reason": ""}, "reason", "printable"),
    ({"rule": RULE, "reason": 5}, "reason", "printable"),
])
async def test_a_bad_body_is_400_naming_the_field_and_nothing_changes(body, field, words):
    async with admin_app() as client:
        client.links.set({"id": "keep", "peers": [MM3], "cut": True})
        r = await client.post("/admin/links", content=_raw(body), headers=AUTH | {"content-type": "application/json"})
        assert r.status_code == 400, r.text
        answer = r.json()
        assert set(answer) == {"error", "field"} and answer["field"] == field, answer
        assert answer["error"].startswith(f"{field}: ") and words in answer["error"], answer
        assert [x["id"] for x in client.links.to_json()] == ["keep"] and client.log == []


async def test_a_bad_delete_body_is_400_and_nothing_is_removed():
    async with admin_app() as client:
        client.links.set(RULE)
        r = await client.request("DELETE", "/admin/links", json={"everything": True}, headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == "everything"
        assert len(client.links) == 1


async def test_too_many_rules_is_400():
    async with admin_app() as client:
        for i in range(64):
            client.links.set({**RULE, "id": f"r{i}"})
        r = await client.post("/admin/links", json={"rule": RULE | {"id": "one-more"}}, headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == "rule.id"


async def test_rules_run_out_at_until_and_are_logged(nursery, autojump_clock):
    async with admin_app(clock=lambda: T0 + trio.current_time()) as client:
        admin: Admin = client.admin
        await nursery.start(admin.run)
        now = T0 + trio.current_time()
        for rule_id, for_s in (("short", 2), ("long", 5)):
            r = await client.post("/admin/links", json={"rule": {**RULE, "id": rule_id, "until": now + for_s}},
                                  headers=AUTH)
            assert r.status_code == 200
        await trio.sleep(2.5)
        assert [x["id"] for x in client.links.to_json()] == ["long"]
        await trio.sleep(3)
        assert not client.links
        assert [(e["action"], e.get("rule_id"), e["rules"]) for e in client.log] == [
            ("add", "short", 1), ("add", "long", 2), ("expire", "short", 1), ("expire", "long", 0)]


async def test_read_token(tmp_path):
    assert await read_token(None) == (None, None)
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    assert await read_token(path) == (TOKEN, None)
    os.chmod(path, 0o644)
    token, warning = await read_token(path)
    assert token == TOKEN and "readable by others" in warning
    for bad in ("", "  \n", "two words", "x" * 5000):
        path.write_text(bad)
        with pytest.raises(AdminTokenError, match="holds no token"):
            await read_token(path)
    with pytest.raises(AdminTokenError, match="cannot read"):
        await read_token(tmp_path / "missing")


def test_the_token_file_is_a_peer_flag_that_a_launched_peers_command_line_carries(tmp_path):
    from pathlib import Path

    from peer.cli import build_parser
    from peer.options import PeerOptions, command_line, from_args

    path = tmp_path / "admin.token"
    opts = from_args(PeerOptions, build_parser().parse_args(["peer", "--role", "mm", "--admin-token-file", str(path)]))
    assert opts.admin_token_file == path
    argv = command_line(opts)
    assert argv[argv.index("--admin-token-file") + 1] == str(path)
    assert from_args(PeerOptions, build_parser().parse_args(["peer", "--role", "mm"])).admin_token_file is None
    assert "--admin-token-file" not in command_line(PeerOptions(role="mm"))
    assert isinstance(opts.admin_token_file, Path)
