"""Real clusters: `murmur launch --peers 5` (7 OS processes on 127.0.0.1, `local` profile).

Each test launches its own cluster in a temporary data dir and stops every process in a
`finally`. Bounds are generous for a loaded 2-core machine; the benchmarks measure speed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal

import httpx
import pytest
import trio

from peer.tools.processes import pid_alive, poll_until, read_json

from .cluster_helpers import eventually, launched, log_lines, states_of, views, wait_state

pytestmark = pytest.mark.slow

NAMES = {"mm-1", "mm-2", "mm-3", "mm-4", "mm-5", "exchange", "ledger"}
CONVERGE = 20.0
DETECT = 15.0
# After SIGCONT a peer learns it was declared dead (gossip to the dead, push-pull) and refutes.
REFUTE = 25.0


async def wait_converged(client, cluster, bound: float = CONVERGE):
    async def check():
        all_views = await views(client, cluster.peers)
        ok = all(
            v is not None and set(v) == NAMES and all(row["state"] == "alive" for row in v.values())
            for v in all_views.values()
        )
        summary = {
            viewer: sorted((n, r["state"]) for n, r in v.items()) if v else None
            for viewer, v in all_views.items()
        }
        return ok, summary

    return await eventually(check, bound, "every peer sees 7 alive members")


async def test_launch_5_writes_cluster_file_and_every_peer_sees_7_alive(tmp_path):
    with trio.fail_after(120):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            assert {p["name"] for p in cluster.peers} == NAMES
            roles = {p["name"]: p["role"] for p in cluster.peers}
            assert roles["exchange"] == "exchange" and roles["ledger"] == "ledger"
            assert {roles[f"mm-{i}"] for i in range(1, 6)} == {"mm"}
            for p in cluster.peers:
                assert p["gossip"].startswith("127.0.0.1:")
                assert p["http"].startswith("http://127.0.0.1:")
                assert pid_alive(p["pid"])
                assert await trio.Path(p["data_dir"]).is_dir()
            await wait_converged(client, cluster)
            out = cluster.launcher_output()
            assert "murmur top" in out and "murmur members" in out
            # The path whole on one line, to copy, however long (the output is a file: 80 columns).
            assert f"cluster file   {cluster.data_dir / 'cluster.json'}\n" in out


async def test_sigkill_of_one_peer_is_seen_dead_by_all_others(tmp_path):
    with trio.fail_after(120):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            await wait_converged(client, cluster)
            victim = cluster.peer("mm-3")
            os.kill(victim["pid"], signal.SIGKILL)
            await wait_state(client, cluster.others("mm-3"), "mm-3", "dead", DETECT)
            # ...and nobody else was taken down with it.
            all_views = await views(client, cluster.others("mm-3"))
            for name in NAMES - {"mm-3"}:
                assert set(states_of(all_views, name).values()) == {"alive"}, name


async def test_sigstop_peer_is_declared_dead_then_refutes_after_sigcont(tmp_path):
    with trio.fail_after(150):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            await wait_converged(client, cluster)
            victim = cluster.peer("mm-2")
            before = (await views(client, [cluster.peer("mm-1")]))["mm-1"]["mm-2"]["incarnation"]
            os.kill(victim["pid"], signal.SIGSTOP)
            try:
                await wait_state(client, cluster.others("mm-2"), "mm-2", "dead", DETECT)
            finally:
                os.kill(victim["pid"], signal.SIGCONT)
            await wait_state(
                client, cluster.peers, "mm-2", "alive", REFUTE, min_incarnation=before + 1
            )
            events = [
                e
                for e in await log_lines(cluster, "mm-2")
                if e["event"] == "member" and e["node"] == "mm-2"
            ]
            assert any(e["incarnation"] > before for e in events), events


async def test_a_killed_peer_restarted_with_its_data_dir_rejoins_with_a_higher_incarnation(
    tmp_path,
):
    with trio.fail_after(150):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            await wait_converged(client, cluster)
            victim = cluster.peer("mm-4")
            before = (await views(client, [cluster.peer("mm-1")]))["mm-1"]["mm-4"]["incarnation"]
            os.kill(victim["pid"], signal.SIGKILL)
            await wait_state(client, cluster.others("mm-4"), "mm-4", "dead", DETECT)
            await cluster.restart("mm-4")
            await wait_state(
                client, cluster.peers, "mm-4", "alive", CONVERGE, min_incarnation=before + 1
            )
            # No manual clean-up was needed, and everyone agrees on the whole view again.
            await wait_converged(client, cluster)


async def test_sigterm_to_one_peer_makes_it_leave_and_others_record_left_not_dead(tmp_path):
    with trio.fail_after(120):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            await wait_converged(client, cluster)
            victim = cluster.peer("mm-5")
            os.kill(victim["pid"], signal.SIGTERM)
            await wait_state(client, cluster.others("mm-5"), "mm-5", "left", DETECT)
            await poll_until(lambda: not pid_alive(victim["pid"]), 10, "mm-5 exits after leaving")
            for name in NAMES - {"mm-5"}:
                transitions = {
                    (e["old"], e["new"])
                    for e in await log_lines(cluster, name)
                    if e["event"] == "member" and e["node"] == "mm-5"
                }
                assert ("alive", "left") in transitions, (name, transitions)
                assert not any(new == "dead" for _, new in transitions), (name, transitions)


async def test_sigint_to_the_launcher_stops_every_peer_gracefully_and_leaves_no_process(tmp_path):
    with trio.fail_after(120):
        async with launched(tmp_path / "data") as cluster, httpx.AsyncClient(timeout=2) as client:
            await wait_converged(client, cluster)
            pids = cluster.peer_pids()
            cluster.launcher.send_signal(signal.SIGINT)
            await poll_until(
                lambda: cluster.launcher.poll() is not None, 20, "the launcher exits", every=0.1
            )
            assert cluster.launcher.returncode == 0, cluster.launcher_output()
            assert [pid for pid in pids if pid_alive(pid)] == []
            for name in NAMES:
                events = [e["event"] for e in await log_lines(cluster, name)]
                # Each peer went through the graceful path, none was killed mid-way.
                assert "peer_left" in events and events[-1] == "peer_stopped", (name, events[-5:])
            assert "7 left gracefully" in cluster.launcher_output()
            assert (await read_json(cluster.data_dir / "cluster.json"))["status"] == "stopped"


async def test_killing_the_launcher_does_not_leave_its_peers_running(tmp_path):
    with trio.fail_after(120):
        async with launched(tmp_path / "data") as cluster:
            pids = cluster.peer_pids()
            cluster.launcher.kill()
            await trio.to_thread.run_sync(cluster.launcher.wait)
            await poll_until(
                lambda: not any(pid_alive(p) for p in pids),
                15,
                "every peer exits once its launcher is gone",
                every=0.1,
            )


async def test_discover_peers_with_no_seeds_find_each_other_over_mdns_on_loopback(peers, tmp_path):
    # Unique names: mDNS instance names must be unique on the link, whatever the cluster.
    tag = secrets.token_hex(3)
    names = [f"disc-{tag}-{i}" for i in (1, 2, 3)]
    discover = ["--discover", "--interfaces", "127.0.0.1", "--cluster", f"test-{tag}"]
    with trio.fail_after(60):
        started = []

        async def start(name: str) -> None:
            _, url = await peers("mm", *discover, name=name)
            started.append({"name": name, "http": url})

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(start, name)
        async with httpx.AsyncClient(timeout=2) as client:

            async def all_see_all():
                all_views = await views(client, started)
                ok = all(
                    v is not None
                    and set(v) == set(names)
                    and all(r["state"] == "alive" for r in v.values())
                    for v in all_views.values()
                )
                return ok, {k: sorted(v) if v else None for k, v in all_views.items()}

            await eventually(all_see_all, 20, "every --discover peer sees the others alive")
    # Discovery's decisions are in each peer's own JSON-lines log, with `ts` and `peer`.
    for name in names:
        text = await trio.Path(tmp_path / name / f"{name}.log").read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        found = [r for r in lines if r["event"] == "discovery_peer_found"]
        assert any(r["event"] == "discovery_started" for r in lines)
        assert {r["peer_name"] for r in found} >= set(names) - {name}
        assert all(r["peer"] == name and r["ts"] for r in found)
