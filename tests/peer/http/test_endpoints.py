"""The peer HTTP API (`peer/http/endpoints.py`) over a fake node: every endpoint and every error shape."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gossip.config import PROTOCOL_VERSION
from gossip.types import MemberEvent, MemberState
from peer.http.endpoints import PeerHandle, create_app, serve_http
from tests.peer.fakes import FakeNode, FakeTransport

# Core time 100.0 is wall time 1_700_000_100.0 for these handles.
OFFSET = 1_700_000_000.0


def make_handle(node=None) -> PeerHandle:
    handle = PeerHandle(
        role="mm",
        profile="local",
        node=node,
        transport=FakeTransport(),
        http_url="http://127.0.0.1:8003",
        clock_offset=OFFSET,
    )
    return handle


@pytest.fixture
async def client():
    app = create_app(make_handle(FakeNode()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://peer"
    ) as c:
        yield c


async def test_health_reports_ok_and_the_peer_name(client):
    with trio.fail_after(5):
        r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "name": "mm-1"}


async def test_health_is_503_until_gossip_is_up():
    app = create_app(make_handle(node=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        with trio.fail_after(5):
            health = await c.get("/health")
            members = await c.get("/members")
    assert health.status_code == 503
    assert health.json() == {"status": "starting"}
    assert members.status_code == 503
    assert "starting" in members.json()["error"]


async def test_status_reports_identity_addresses_profile_and_view_counts(client):
    with trio.fail_after(5):
        body = (await client.get("/status")).json()
    assert body["name"] == "mm-1"
    assert body["role"] == "mm"
    assert body["incarnation"] == 3
    assert body["gossip"] == "127.0.0.1:7003"
    assert body["http"] == "http://127.0.0.1:8003"
    assert body["profile"] == "local"
    assert body["uptime_s"] >= 0
    assert body["members"] == {"alive": 3, "suspect": 1, "dead": 1, "left": 1}
    assert body["health"] == 2
    assert body["protocol_version"] == PROTOCOL_VERSION


async def test_members_lists_every_member_with_state_role_and_wall_clock_change_time(client):
    with trio.fail_after(5):
        rows = (await client.get("/members")).json()
    assert [r["name"] for r in rows] == ["exchange", "ledger", "mm-1", "mm-2", "mm-3", "mm-4"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["mm-2"]["state"] == "suspect"
    assert by_name["mm-3"]["state"] == "dead"
    assert by_name["mm-4"]["state"] == "left"
    assert by_name["exchange"]["role"] == "exchange"
    assert by_name["mm-1"] == {
        "name": "mm-1",
        "role": "mm",
        "addr": "127.0.0.1:7003",
        "state": "alive",
        "incarnation": 3,
        "http": "http://127.0.0.1:8003",
        "changed_at": by_name["mm-1"]["changed_at"],
        "meta": {"role": "mm", "version": 1, "http": "http://127.0.0.1:8003"},
    }
    # Core time 110.5 -> wall time OFFSET + 110.5, as ISO 8601.
    changed = datetime.fromisoformat(by_name["mm-2"]["changed_at"]).timestamp()
    assert changed == pytest.approx(OFFSET + 110.5, abs=0.001)


async def test_unknown_path_is_a_404_with_a_json_error(client):
    with trio.fail_after(5):
        r = await client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert "/nope" in r.json()["error"]


async def test_wrong_method_is_a_405_with_a_json_error_and_allow_header(client):
    with trio.fail_after(5):
        r = await client.post("/members", json={})
    assert r.status_code == 405
    assert r.json() == {"error": "method POST not allowed on /members"}
    assert "GET" in r.headers["allow"]


async def test_metrics_parse_as_prometheus_text_with_view_and_counters(client):
    with trio.fail_after(5):
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("murmur_members", (("state", "alive"),))] == 3
    assert samples[("murmur_members", (("state", "suspect"),))] == 1
    assert samples[("murmur_members", (("state", "dead"),))] == 1
    assert samples[("murmur_members", (("state", "left"),))] == 1
    assert samples[("murmur_local_health", ())] == 2
    assert samples[("murmur_incarnation", ())] == 3
    assert samples[("murmur_gossip_packets_in_total", ())] == 120
    assert samples[("murmur_gossip_dropped_malformed_total", ())] == 1
    assert samples[("murmur_transport_bytes_in_total", ())] == 9000
    # local_health is a level, not a count: exported once, as a gauge.
    assert ("murmur_gossip_local_health_total", ()) not in samples


async def test_metrics_count_membership_transitions_by_state_and_reason():
    handle = make_handle(FakeNode())
    handle.record_event(
        MemberEvent(1.0, "mm-2", MemberState.ALIVE, MemberState.SUSPECT, 2, "suspected")
    )
    handle.record_event(
        MemberEvent(2.0, "mm-3", MemberState.SUSPECT, MemberState.DEAD, 1, "suspicion-timeout")
    )
    app = create_app(handle)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        with trio.fail_after(5):
            text = (await c.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[
            ("murmur_member_transitions_total", (("reason", "suspected"), ("state", "suspect")))
        ]
        == 1
    )
    assert (
        samples[
            (
                "murmur_member_transitions_total",
                (("reason", "suspicion-timeout"), ("state", "dead")),
            )
        ]
        == 1
    )


async def test_each_app_has_its_own_metrics_registry():
    a = create_app(make_handle(FakeNode("a")))
    b = create_app(make_handle(FakeNode("b")))
    assert a.state.registry is not b.state.registry


async def test_serve_http_binds_port_0_reports_its_url_and_stops_on_shutdown():
    app = create_app(make_handle(FakeNode()))
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), shutdown)
            assert url.startswith("http://127.0.0.1:")
            assert not url.endswith(":0")
            async with httpx.AsyncClient() as c:
                r = await c.get(f"{url}/health")
            assert r.json() == {"status": "ok", "name": "mm-1"}
            shutdown.set()


async def test_metrics_of_a_served_peer_count_its_http_requests_and_refusals():
    app = create_app(make_handle(FakeNode()))
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), shutdown)
            async with httpx.AsyncClient() as c:
                await c.get(f"{url}/health")
                bad = await c.post(f"{url}/health", headers={"transfer-encoding": "chunked"}, content=b"x")
                text = (await c.get(f"{url}/metrics")).text
            shutdown.set()
    assert bad.status_code == 411 and "Content-Length" in bad.json()["error"]
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["murmur_http_requests_total"] == 2  # /health and /metrics; the refused one is not a request
    assert samples["murmur_http_bad_requests_total"] == 1


async def test_a_second_member_claiming_the_ledger_is_an_alarm_in_status_and_metrics():
    from tests.peer.fakes import member, sample_members

    node = FakeNode(members=[*sample_members(), member("aaa-ledger", MemberState.ALIVE, port=7009, role="ledger")])
    handle = make_handle(node)
    handle.roles.choose("ledger", [m for m in sample_members()])  # bound to "ledger" before the impostor came
    handle.alarm_sources.append(lambda: {"outbox-refused": {"status": 400}})
    app = create_app(handle)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        with trio.fail_after(5):
            body = (await c.get("/status")).json()
            text = (await c.get("/metrics")).text
    assert body["roles"]["ledger"] == {"holder": "ledger", "url": "http://127.0.0.1:8002", "conflict": ["aaa-ledger"]}
    assert body["roles"]["exchange"]["conflict"] == []
    assert body["alarms"] == {"role-conflict:ledger": {"holder": "ledger", "claimants": ["aaa-ledger"]},
                              "outbox-refused": {"status": 400}}
    alarms = {s.labels["alarm"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if f.name == "murmur_alarm"}
    assert alarms == {"role-conflict:ledger": 1.0, "outbox-refused": 1.0}
