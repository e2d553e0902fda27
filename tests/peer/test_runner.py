"""One peer in-process (`peer/runner.py`): real UDP and HTTP on 127.0.0.1 port 0."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
import trio

from gossip.config import PROTOCOL_VERSION
from gossip.keyring import Keyring
from peer.dirlock import DirectoryInUse
from peer.runner import PEER_FILE, NoKey, PeerOptions, key_file_of, run_peer
from peer.tools.processes import shared_key_file


def options(tmp_path, name: str | None, **kw) -> PeerOptions:
    # Sealed with one key for every peer of the test, as `murmur launch` runs them.
    if not kw.get("insecure"):
        kw.setdefault("key_file", shared_key_file(tmp_path))
    return PeerOptions(
        role=kw.pop("role", "mm"),
        name=name,
        bind=("127.0.0.1", 0),
        http=("127.0.0.1", 0),
        data_dir=tmp_path / (name or "anon"),
        profile="local",
        log_stderr=False,
        stop_watchdog=None,
        **kw,
    )


def joining(tmp_path, name: str, seed: dict, **kw) -> PeerOptions:
    """Options of a peer that joins through `seed` (a started peer's info)."""
    host, port = seed["gossip"].rsplit(":", 1)
    return options(tmp_path, name, join=[(host, int(port))], **kw)


async def start(nursery, opts: PeerOptions) -> tuple[dict, trio.Event, trio.Event]:
    """Start a peer; returns (its peer.json info, its stop event, an event set once it returned)."""
    stop, done = trio.Event(), trio.Event()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            await run_peer(opts, stop=stop, task_status=task_status)
        finally:
            done.set()

    info = await nursery.start(run)
    return info, stop, done


async def members_of(client: httpx.AsyncClient, info: dict) -> dict[str, dict]:
    rows = (await client.get(f"{info['http']}/members")).json()
    return {r["name"]: r for r in rows}


async def wait_for(predicate, *, every: float = 0.05):
    while True:
        value = await predicate()
        if value:
            return value
        await trio.sleep(every)


def log_events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_peer_serves_its_view_and_reports_where_it_listens(tmp_path):
    opts = options(tmp_path, "mm-1")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            info, stop, done = await start(nursery, opts)
            assert json.loads((opts.data_dir / PEER_FILE).read_text()) == info
            assert info["name"] == "mm-1" and info["role"] == "mm" and info["incarnation"] == 1
            health = (await client.get(f"{info['http']}/health")).json()
            status = (await client.get(f"{info['http']}/status")).json()
            members = await members_of(client, info)
            stop.set()
            await done.wait()
    assert health == {"status": "ok", "name": "mm-1"}
    assert status["gossip"] == info["gossip"]
    assert status["http"] == info["http"]
    assert status["profile"] == "local"
    assert status["members"]["alive"] == 1
    ring = Keyring.load(opts.key_file)
    assert status["security"] == {"sealed": True, "key_ids": ring.ids(), "primary": ring.primary_id}
    me = members["mm-1"]
    assert me["state"] == "alive"
    assert me["addr"] == info["gossip"]
    assert me["meta"] == {"role": "mm", "http": info["http"], "version": PROTOCOL_VERSION}
    # A clean stop removes peer.json and says so in the log.
    assert not (opts.data_dir / PEER_FILE).exists()
    events = [e["event"] for e in log_events(opts.data_dir / "mm-1.log")]
    # It says first that it seals (with which key id, never the key), then its own row.
    assert events[:2] == ["sealed", "member"]  # self, alive
    assert "peer_started" in events
    assert events[-4:] == ["peer_stopping", "member", "peer_left", "peer_stopped"]


async def test_a_peer_that_joins_is_seen_alive_and_a_stopped_one_is_recorded_as_left(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            a, stop_a, _ = await start(nursery, options(tmp_path, "mm-1"))
            opts_b = joining(tmp_path, "mm-2", a)
            b, stop_b, done_b = await start(nursery, opts_b)

            async def both_alive():
                views = [await members_of(client, p) for p in (a, b)]
                return all(
                    set(v) == {"mm-1", "mm-2"} and all(r["state"] == "alive" for r in v.values())
                    for v in views
                )

            await wait_for(both_alive)
            stop_b.set()
            await done_b.wait()

            async def b_left():
                return (await members_of(client, a))["mm-2"]["state"] == "left"

            await wait_for(b_left)
            stop_a.set()
    log_a = log_events(tmp_path / "mm-1" / "mm-1.log")
    transitions = [(e["node"], e["old"], e["new"]) for e in log_a if e["event"] == "member"]
    assert ("mm-2", None, "alive") in transitions
    assert ("mm-2", "alive", "left") in transitions
    assert ("mm-2", "alive", "dead") not in transitions


async def test_a_restarted_peer_keeps_its_generated_name_and_raises_its_incarnation(tmp_path):
    opts = options(tmp_path, None, role="ledger")
    seen = []
    with trio.fail_after(20):
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                info, stop, done = await start(nursery, opts)
                seen.append((info["name"], info["incarnation"]))
                stop.set()
    (name1, inc1), (name2, inc2) = seen
    assert name1 == name2 and name1.startswith("ledger-")
    assert inc2 > inc1


async def test_a_peer_started_with_nursery_start_reports_before_serving(tmp_path):
    # run_peer is a normal trio server: cancelling its nursery stops it, no signal needed.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(partial(run_peer, options(tmp_path, "x")))
            assert info["gossip"].startswith("127.0.0.1:")
            nursery.cancel_scope.cancel()


async def test_a_second_peer_on_the_same_data_dir_is_refused_while_the_first_runs(tmp_path):
    opts = options(tmp_path, "mm-1")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            info, stop, done = await start(nursery, opts)
            with pytest.raises(DirectoryInUse):
                await run_peer(options(tmp_path, "mm-1"))
            stop.set()
            await done.wait()
        # The refused start did not bump the incarnation; the next real start does.
        async with trio.open_nursery() as nursery:
            again, stop, _ = await start(nursery, opts)
            stop.set()
    assert again["incarnation"] == info["incarnation"] + 1


@pytest.mark.parametrize(("insecure", "counter"), [
    (True, "murmur_gossip_dropped_foreign_cluster_total"),
    # Sealed, the cluster's name is bound into every seal: another cluster's frames do not open.
    (False, "murmur_sealed_dropped_auth_failed_total"),
])
async def test_a_peer_of_another_cluster_joining_through_a_member_is_never_listed(tmp_path, insecure, counter):
    # Found on real processes: `--cluster other-cluster --join <a member of murmur>` merged at once.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            a, stop_a, done_a = await start(nursery, options(tmp_path, "mm-1", insecure=insecure))
            b, stop_b, done_b = await start(nursery, joining(tmp_path, "mm-2", a, insecure=insecure))
            c, stop_c, done_c = await start(nursery, joining(tmp_path, "zz-1", a, cluster="other-cluster",
                                                             insecure=insecure))

            async def dropped():
                text = (await client.get(f"{a['http']}/metrics")).text
                return counter in text and f"{counter} 0.0" not in text

            await wait_for(dropped)
            await wait_for(lambda: _both_see(client, a, b))
            await trio.sleep(1.0)  # several probe periods and reconnects of the local profile
            assert set(await members_of(client, a)) == set(await members_of(client, b)) == {"mm-1", "mm-2"}
            assert set(await members_of(client, c)) == {"zz-1"}
            for stop in (stop_c, stop_b, stop_a):
                stop.set()
            for done in (done_c, done_b, done_a):
                await done.wait()


async def _both_see(client, a, b) -> bool:
    return set(await members_of(client, a)) == set(await members_of(client, b)) == {"mm-1", "mm-2"}


async def test_a_peer_whose_identity_holds_an_incarnation_past_the_wire_bound_starts_and_rejoins(tmp_path):
    # Found on real processes: after a forged Dead at 2**63 - 1, identity.json held 2**63 + 1 and
    # the restarted peer stayed dead in every view.
    from gossip.config import HEADROOM_FLOOR

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            a, stop_a, done_a = await start(nursery, options(tmp_path, "mm-1"))
            b_opts = joining(tmp_path, "mm-3", a)
            b_opts.data_dir.mkdir(parents=True)
            (b_opts.data_dir / "identity.json").write_text(json.dumps({"name": "mm-3", "incarnation": 2**63 + 1}))
            b, stop_b, done_b = await start(nursery, b_opts)
            assert b["incarnation"] == HEADROOM_FLOOR

            async def a_sees_b():
                row = (await members_of(client, a)).get("mm-3")
                return row is not None and row["state"] == "alive"

            await wait_for(a_sees_b)
            stop_b.set()
            await done_b.wait()
            stop_a.set()
            await done_a.wait()
    events = log_events(b_opts.data_dir / "mm-3.log")
    assert any(e["event"] == "identity_incarnation_clamped" for e in events)
    assert json.loads((b_opts.data_dir / "identity.json").read_text())["incarnation"] == HEADROOM_FLOOR


async def test_a_peer_with_neither_key_nor_insecure_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("MURMUR_KEY_FILE", raising=False)
    with pytest.raises(NoKey, match="--insecure"):
        await run_peer(options(tmp_path, "mm-1", key_file=None))
    with pytest.raises(NoKey, match="together"):
        await run_peer(options(tmp_path, "mm-1", insecure=True, key_file=tmp_path / "k"))


def test_the_key_file_comes_from_the_flag_then_the_environment(tmp_path):
    env = {"MURMUR_KEY_FILE": str(tmp_path / "env.key")}
    assert key_file_of(options(tmp_path, "a", key_file=tmp_path / "flag.key"), env) == tmp_path / "flag.key"
    assert key_file_of(options(tmp_path, "a", key_file=None), env) == tmp_path / "env.key"
    assert key_file_of(options(tmp_path, "a", insecure=True), env) is None


async def test_an_insecure_peer_says_so_in_its_log_and_status(tmp_path):
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            opts = options(tmp_path, "mm-1", insecure=True)
            info, stop, done = await start(nursery, opts)
            status = (await client.get(f"{info['http']}/status")).json()
            assert status["security"] == {"sealed": False, "insecure": True}
            stop.set()
            await done.wait()
    lines = log_events(opts.data_dir / "mm-1.log")
    assert lines[0]["event"] == "insecure" and lines[0]["sealed"] is False
