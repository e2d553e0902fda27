"""A market maker cut from the exchange but not from the other market makers steps aside.

Scenario 2 of issue 11, in one process: a real exchange and ledger over loopback HTTP, two
market makers sharing one membership view (the gossip view, with dissemination made instant:
tests/gossip covers that part), and mm-1's way to the exchange through a TCP proxy that the test
cuts. mm-2 still sees mm-1 alive, and so does the exchange, so nothing frees mm-1's symbols but
its lease running out and mm-1 saying, in its meta, that it is aside.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import httpx
import trio

from gossip.config import profile
from gossip.simcluster import SimCluster
from gossip.types import MemberState
from peer.logs import JsonLog
from peer.market_maker.authority import AuthorityConfig
from peer.market_maker.quoting import PlannerConfig
from peer.market_maker.reach import UNREACHABLE, ReachConfig
from peer.market_maker.rendezvous import assignment, candidates_from_view
from peer.market_maker.service import MarketMakerService
from peer.tools.processes import poll_until
from tests.peer.market_maker.test_service import SYMBOLS, View, start_market

REACH = ReachConfig()  # the defaults: aside_after 2.0 s, back_after 0.5 s, probe every 0.25 s
REQUEST_TIMEOUT = 1.0
# A loaded machine (2 cores, other suites running) delays every step a little: slack on each bound.
SLACK = 1.0


class CuttableLink:
    """A TCP proxy to one HTTP server that can be cut: cutting closes the connections it carries
    and holds new ones open unanswered until the heal, as a cut link looks to an HTTP client."""

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.cut = False
        self._healed = trio.Event()
        self._carried: set[trio.CancelScope] = set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        await trio.serve_listeners(self._carry, listeners)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self._healed = trio.Event()
            for scope in list(self._carried):
                scope.cancel()
        else:
            self._healed.set()

    async def _carry(self, stream: trio.abc.Stream) -> None:
        async with stream:
            if self.cut:
                await self._healed.wait()  # black-holed: never answered, closed at the heal
                return
            with trio.CancelScope() as scope:
                self._carried.add(scope)
                try:
                    upstream = await trio.open_tcp_stream(self.host, self.port)
                    async with upstream, trio.open_nursery() as nursery:
                        async def pump(src, dst) -> None:
                            async for data in src:
                                await dst.send_all(data)
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(pump, stream, upstream)
                        nursery.start_soon(pump, upstream, stream)
                finally:
                    self._carried.discard(scope)


async def test_a_holder_cut_from_the_exchange_steps_aside_and_its_symbols_are_quoted_again(tmp_path):
    view = View()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as c:
        _, _, ex, _ = await start_market(nursery, tmp_path, view)
        link = CuttableLink(ex)
        proxied = await nursery.start(link.run)
        asides: dict[str, list[tuple[float, str | None]]] = {"mm-1": [], "mm-2": []}

        def set_aside_for(name: str):
            def set_aside(reason: str | None) -> None:
                # What runner.py does through gossip, made instant: the member's meta changes.
                asides[name].append((trio.current_time(), reason))
                row = view.rows[name]
                meta = {k: v for k, v in row.meta.items() if k != "aside"}
                view.rows[name] = replace(row, meta=meta if reason is None else {**meta, "aside": reason},
                                          incarnation=row.incarnation + 1)
                for listener in view.listeners:
                    listener()
            return set_aside

        def members_through_the_link():
            # mm-1 reaches the exchange through the proxy; everything else directly.
            return [replace(m, meta={**m.meta, "http": proxied}) if m.name == "exchange" else m
                    for m in view.members()]

        services = {}
        for name, members in (("mm-1", members_through_the_link), ("mm-2", view.members)):
            view.add(name, "mm", None)
            mm = MarketMakerService(name, members=members, planner_config=PlannerConfig(refresh_interval=1.0),
                                    authority_config=AuthorityConfig(lease_duration=2.0), reach_config=REACH,
                                    request_timeout=REQUEST_TIMEOUT, set_aside=set_aside_for(name),
                                    log=JsonLog(name, stream=io.StringIO()))
            view.listeners.append(mm.view_changed)
            await nursery.start(mm.run)
            services[name] = mm

        owners = assignment(SYMBOLS, ["mm-1", "mm-2"])
        mine = sorted(s for s, o in owners.items() if o == "mm-1")
        assert mine, "pick symbols so that mm-1 owns one"

        async def quoted_by(expected: dict[str, str]):
            quotes = {q["symbol"]: q["holder"] for q in (await c.get(f"{ex}/quotes")).json()["quotes"]}
            return all(quotes.get(s) == o for s, o in expected.items())

        await poll_until(lambda: quoted_by(owners), 5, f"every symbol quoted by {owners}")

        # Watch the exchange's quotes: the longest time each of mm-1's symbols goes unquoted.
        gaps: dict[str, float] = dict.fromkeys(mine, 0.0)

        async def watch() -> None:
            since: dict[str, float | None] = dict.fromkeys(mine)
            while True:
                live = {q["symbol"] for q in (await c.get(f"{ex}/quotes")).json()["quotes"]}
                now = trio.current_time()
                for s in mine:
                    if s in live:
                        since[s] = None
                    else:
                        since[s] = since[s] if since[s] is not None else now
                        gaps[s] = max(gaps[s], now - since[s])
                await trio.sleep(0.02)

        nursery.start_soon(watch)
        cut_at = trio.current_time()
        link.set_cut(True)

        # Noticed within aside_after of the first unanswered call, which goes out at most one
        # probe interval after the cut.
        bound_aside = REACH.aside_after + REACH.probe_interval + SLACK
        await poll_until(lambda: asides["mm-1"], bound_aside, "mm-1 steps aside")
        aside_at, reason = asides["mm-1"][0]
        assert reason == UNREACHABLE
        assert asides["mm-2"] == [], "mm-2 reaches the exchange: it never steps aside"
        assert services["mm-1"].aside_reason == UNREACHABLE and services["mm-1"].stats.steps_aside == 1

        # mm-2 takes mm-1's symbols: the exchange grants its claims once mm-1's lease has run
        # out, which it has by the time mm-1 steps aside (the lease is aside_after long and was
        # last renewed before the cut).
        await poll_until(lambda: quoted_by(dict.fromkeys(SYMBOLS, "mm-2")), bound_aside + SLACK,
                         "every symbol quoted by mm-2")
        requoted = trio.current_time() - cut_at
        # Unquoted from mm-1's lease end to mm-2's quote: at most what the aside takes beyond
        # the lease's remainder, plus the claim and the quote.
        assert max(gaps.values()) <= REACH.aside_after + REACH.probe_interval + SLACK, gaps

        heal_at = trio.current_time()
        link.set_cut(False)
        await poll_until(lambda: len(asides["mm-1"]) == 2, REACH.back_after + REACH.probe_interval
                         + REQUEST_TIMEOUT + SLACK, "mm-1 steps back")
        back_at, reason = asides["mm-1"][1]
        assert reason is None and back_at - heal_at >= REACH.back_after - 0.01
        assert "aside" not in view.rows["mm-1"].meta and services["mm-1"].stats.steps_back == 1
        await poll_until(lambda: quoted_by(owners), 5, f"mm-1's symbols handed back: {owners}")

        lines = [json.loads(line) for line in services["mm-1"].log.stream.getvalue().splitlines()]
        (aside_line,) = [x for x in lines if x["event"] == "mm_step_aside"]
        assert aside_line["reason"] == UNREACHABLE and aside_line["failures"] >= 1
        assert aside_line["failing_s"] >= REACH.aside_after and aside_line["aside_after"] == REACH.aside_after
        (back_line,) = [x for x in lines if x["event"] == "mm_step_back"]
        assert back_line["successes"] >= 2 and back_line["back_after"] == REACH.back_after
        print(f"aside {aside_at - cut_at:.2f}s after the cut, all quoted by mm-2 {requoted:.2f}s after it, "
              f"longest gap {max(gaps.values()):.2f}s, back {back_at - heal_at:.2f}s after the heal")
        nursery.cancel_scope.cancel()


async def test_a_market_maker_that_starts_cut_from_the_exchange_steps_aside():
    """Idle is not failure, but a start that gets no answer is: the service must not sit in the
    others' assignment while it cannot even read the exchange's symbols."""
    called: list[str | None] = []
    mm = MarketMakerService("mm-1", members=lambda: [], set_aside=called.append,
                            reach_config=ReachConfig(aside_after=0.5, probe_interval=0.1),
                            log=JsonLog("mm-1", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mm.run)
        await poll_until(lambda: called, 3, "set_aside called")
        assert called == [UNREACHABLE] and mm.stats.exchange_probes >= 1
        nursery.cancel_scope.cancel()


async def test_a_failing_set_aside_is_logged_and_the_peer_still_steps_aside_in_its_own_view():
    def broken(reason):
        raise ValueError("incarnation is at its bound")

    mm = MarketMakerService("mm-1", members=lambda: [], set_aside=broken,
                            reach_config=ReachConfig(aside_after=0.3, probe_interval=0.1),
                            log=JsonLog("mm-1", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mm.run)
        await poll_until(lambda: mm.aside_reason, 3, "aside")
        events = [json.loads(line)["event"] for line in mm.log.stream.getvalue().splitlines()]
        assert "mm_set_aside_failed" in events and "mm_loop_failed" not in events
        nursery.cancel_scope.cancel()


async def test_an_aside_in_gossip_meta_reaches_every_view_and_moves_only_its_symbols(autojump_clock):
    """The gossip half, on the simulated network with the `local` profile: node-0001 is cut
    from node-0000 (standing in for the exchange) and from nobody else, so every view still holds
    it alive. Its meta update with "aside" reaches every view, node-0000's too through the
    others, and every peer then computes the same owners: the assignment without it."""
    symbols = [f"S{i}" for i in range(40)]
    cluster = SimCluster(6, profile("local"), seed=11, join_spread=0.5)
    names = cluster.names
    holder = names[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        await cluster.wait_converged()

        def owners(viewer: str) -> dict[str, str | None]:
            return assignment(symbols, candidates_from_view(cluster.nodes[viewer].members()))

        everyone = assignment(symbols, names)
        assert holder in everyone.values() and all(owners(v) == everyone for v in names)
        cluster.net.set_link_loss(cluster.addrs[names[0]], cluster.addrs[holder], 1.0)
        started = trio.current_time()
        cluster.nodes[holder].update_meta({"role": "mm", "aside": UNREACHABLE})
        without = assignment(symbols, [n for n in names if n != holder])
        await poll_until(lambda: all(owners(v) == without for v in names), 5, "every view without the holder")
        spread = trio.current_time() - started
        # A few gossip rounds (every 50 ms in `local`): far under a lease.
        assert spread < 0.5, spread
        print(f"aside seen by every view {spread:.3f}s (virtual) after the meta update")
        assert all(cluster.view(v)[holder] is MemberState.ALIVE for v in names), "still alive: only aside"
        assert {s for s in symbols if without[s] != everyone[s]} == {s for s in symbols if everyone[s] == holder}

        cluster.nodes[holder].update_meta({"role": "mm"})
        await poll_until(lambda: all(owners(v) == everyone for v in names), 5, "every view with the holder again")
        cluster.stop()
        nursery.cancel_scope.cancel()


async def test_a_peer_process_gossips_its_aside_and_clears_it_when_the_exchange_appears(tmp_path):
    """peer/runner.py's wiring, in-process with real UDP and HTTP: two market makers and no
    exchange step aside (no exchange in the view is a failure), each sees the other's "aside"
    in /members; an exchange joins, and both step back, the key gone from every view."""
    from tests.peer.test_runner import joining, log_events, members_of, options, start, wait_for

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=2) as client:
            a, stop_a, done_a = await start(nursery, options(tmp_path, "mm-1"))
            b, stop_b, done_b = await start(nursery, joining(tmp_path, "mm-2", a))

            async def asides(info) -> dict[str, object]:
                return {n: r["meta"].get("aside") for n, r in (await members_of(client, info)).items()}

            async def both_aside_in_both_views():
                views = [await asides(i) for i in (a, b)]
                return all(v == {"mm-1": UNREACHABLE, "mm-2": UNREACHABLE} for v in views)

            await wait_for(both_aside_in_both_views)
            status = (await client.get(f"{a['http']}/mm")).json()
            assert status["aside"] == UNREACHABLE and status["exchange_reach"]["reachable"] is False
            assert status["steps_aside"] == 1

            e, stop_e, done_e = await start(nursery, joining(tmp_path, "exchange", a, role="exchange"))

            async def none_aside():
                views = [await asides(i) for i in (a, b, e)]
                return all(set(v) == {"mm-1", "mm-2", "exchange"} and not any(v.values()) for v in views)

            await wait_for(none_aside)
            for stop, done in ((stop_b, done_b), (stop_a, done_a), (stop_e, done_e)):
                stop.set()
                await done.wait()
    events = [x["event"] for x in log_events(tmp_path / "mm-1" / "mm-1.log")]
    assert events.count("mm_step_aside") == 1 and events.count("mm_step_back") == 1
