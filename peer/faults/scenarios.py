"""Fault scenarios on real clusters: launch, trade, inject, heal, then judge with `murmur check`.

What it is for: the Jepsen-style proof that murmur keeps its invariants under the faults it exists
for. Each scenario launches a cluster of real processes (`murmur launch`, order flow on), injects
one kind of fault through the `Nemesis` (partitions, one-way cuts, a flapping link, freezes,
kills, restarts), heals, and waits until every symbol is quoted again. Then the cluster is
stopped and judged by `murmur check` (every safety verdict must hold) and by the liveness figures
the checker derives from the tape (quote gaps, and the time from the heal to every symbol quoted
again). `tests/peer/faults/test_scenarios.py` asserts on them; `bench/partitions.py` prints the
table of docs/BENCH.md.

What it must never do: leave a process or a namespace behind (every cluster is stopped in a
`finally`), or decide a verdict itself: safety is `murmur check`'s exit code.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from peer.exchange.tape import TapeReader
from peer.faults.nemesis import Nemesis, Outcome
from peer.faults.plan import Partition
from peer.tools.checker import check_tape, quote_liveness, requoted_within
from peer.tools.cluster_file import read_cluster
from peer.tools.processes import CLI, NotInTime, poll_until, run_command, stop_group

# Every symbol must be quoted again within this many seconds of the heal. What it is made of
# (docs/guarantees.md): failure detection (about 1 s with the local profile), the exchange's lease
# running out (2 s), the claim, the reservation and the quote (tens of ms), with room for a busy
# 2-core machine.
REQUOTE_BOUND = 10.0
# Scenario 2: the symbols of a holder cut from the exchange are quoted by another market maker,
# while the cut lasts, within this: the holder steps aside (no successful call to the exchange
# for about 1.5 s), gossip spreads it (under 1 s), the exchange's lease of the holder runs out (2 s
# after its last renewal), the new owner claims and quotes.
ASIDE_BOUND = 10.0
STARTUP_BOUND = 60.0
POLL = 0.1


@dataclass
class ScenarioReport:
    name: str
    what: str
    check_exit: int = -1
    violations: list[str] = field(default_factory=list)
    heal_to_quoted_s: float | None = None  # tape: from the last heal until every symbol was quoted
    longest_gap_s: float = 0.0  # tape: the longest time a symbol had no live quote, from the first fault
    longest_gap_after_heal_s: float = 0.0  # tape: the longest gap that began after the heal
    gaps: int = 0
    fills: int = 0  # fills on the tape from the first fault to the end
    notes: dict[str, Any] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ScenarioCluster:
    """A launched cluster that a scenario drives: the launcher process, its Nemesis, the exchange."""

    def __init__(self, data_dir: Path, peers: int, launch_args: list[str]) -> None:
        self.data_dir = data_dir
        self.peers = peers
        self.launch_args = launch_args
        self.launcher: subprocess.Popen | None = None
        self.cluster: dict[str, Any] = {}
        self.nemesis: Nemesis | None = None
        self.first_fault_at: float | None = None
        self.last_heal_at: float | None = None
        self.stopping_at: float | None = None
        self.report: ScenarioReport | None = None

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*CLI, "launch", "--peers", str(self.peers), "--data-dir", str(self.data_dir), *self.launch_args]
        self.launcher = await trio.to_thread.run_sync(_spawn, argv, self.data_dir / "launcher.out")
        await self._wait_running()
        self.nemesis = Nemesis(self.data_dir / "cluster.json")

    async def _wait_running(self) -> None:
        assert self.launcher is not None

        async def running() -> bool:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"launcher exited with {self.launcher.returncode}:\n{self.launcher_output()}")
            try:
                self.cluster = read_cluster(self.data_dir / "cluster.json")
            except Exception:
                return False
            return self.cluster.get("status") == "running" and self.cluster.get("launcher_pid") == self.launcher.pid

        await poll_until(running, STARTUP_BOUND, "cluster.json says running", every=POLL)

    def launcher_output(self) -> str:
        try:
            return (self.data_dir / "launcher.out").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGINT to the launcher (every peer leaves), then SIGKILL whatever is left."""
        peers = [p.get("pid") for p in self.cluster.get("peers", [])]
        self.stopping_at = time.time()
        launcher = self.launcher
        self.launcher = None
        if launcher is not None:
            await trio.to_thread.run_sync(lambda: stop_group([launcher], grace=20.0, signum=signal.SIGINT))
        await trio.to_thread.run_sync(lambda: stop_group([p for p in peers if p], grace=0))

    # -- what the exchange shows --------------------------------------------------------------

    @property
    def exchange_url(self) -> str:
        return self._peer("exchange")["http"]

    def _peer(self, name: str) -> dict[str, Any]:
        return next(p for p in self.cluster["peers"] if p["name"] == name)

    async def _get(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=1.0) as client:
            r = await client.get(f"{self.exchange_url}{path}")
            r.raise_for_status()
            return r.json()

    async def symbols(self) -> list[str]:
        return sorted((await self._get("/prices"))["prices"])

    async def quoted(self) -> set[str]:
        try:
            return {q["symbol"] for q in (await self._get("/quotes"))["quotes"]}
        except (httpx.HTTPError, ValueError, KeyError):
            return set()  # the exchange is down or frozen: nothing is known to be quoted

    async def holders(self) -> dict[str, str]:
        rows = (await self._get("/authority"))["authority"]
        return {r["symbol"]: r["holder"] for r in rows if r.get("holder")}

    async def wait_quoted(self, bound: float, symbols: set[str] | None = None, what: str = "") -> float:
        """Seconds until every symbol (or those given) has a live quote at the exchange."""
        want = set(symbols) if symbols is not None else set(await self.symbols())
        begun = trio.current_time()

        async def all_quoted() -> bool:
            return want <= await self.quoted()

        try:
            await poll_until(all_quoted, bound, what or f"{sorted(want)} quoted", every=POLL)
        except NotInTime as exc:
            missing = sorted(want - await self.quoted())
            raise NotInTime(f"{exc}: still unquoted {missing}") from None
        return trio.current_time() - begun

    # -- faults ----------------------------------------------------------------------------------

    async def act(self, action: Callable[[Nemesis], Outcome], *, heals: bool = False) -> Outcome:
        """Run one Nemesis action (blocking HTTP and signals) off the trio thread; keep its time."""
        assert self.nemesis is not None
        nemesis = self.nemesis
        outcome = await trio.to_thread.run_sync(lambda: action(nemesis))
        now = time.time()
        if heals:
            self.last_heal_at = now
        elif self.first_fault_at is None:
            self.first_fault_at = now
        return outcome

    async def partition(self, spec: str, **kw: Any) -> Outcome:
        from peer.faults.plan import parse_groups

        assert self.nemesis is not None
        groups = parse_groups(spec, self.nemesis.names())
        one_way = kw.pop("one_way", False)
        return await self.act(lambda n: n.partition(Partition(groups, one_way), **kw))

    async def heal(self) -> Outcome:
        return await self.act(lambda n: n.heal(), heals=True)

    async def mm_names(self) -> list[str]:
        return [p["name"] for p in self.cluster["peers"] if p["role"] == "mm"]

    async def wait_settled(self, bound: float, mms: list[str] | None = None) -> float:
        """Seconds until every symbol is quoted by the market maker rendezvous hashing names over
        `mms` (default: all of them): the cluster is back where it was before the fault."""
        from peer.market_maker.rendezvous import assignment

        symbols = await self.symbols()
        expected = assignment(symbols, mms if mms is not None else await self.mm_names())
        begun = trio.current_time()
        last: list[Any] = [None]

        async def settled() -> bool:
            try:
                holders, quoted = await self.holders(), await self.quoted()
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            last[0] = {s: (holders.get(s), s in quoted) for s in symbols if holders.get(s) != expected[s] or s not in quoted}
            return not last[0]

        try:
            await poll_until(settled, bound, "every symbol quoted by its rendezvous owner", every=POLL)
        except NotInTime as exc:
            raise NotInTime(f"{exc}: (holder, quoted) of the others: {last[0]}") from None
        return trio.current_time() - begun

    # -- the verdict -----------------------------------------------------------------------------

    async def judge(self, report: ScenarioReport) -> ScenarioReport:
        """After stop: `murmur check` for safety, the tape for the liveness figures."""
        done = await run_command([*CLI, "check", str(self.data_dir), "--json"], bound=120.0)
        report.check_exit = done.returncode
        try:
            verdict = json.loads(done.stdout)
        except ValueError:
            report.violations.append(f"murmur check printed no JSON: {done.stderr[-500:]}")
            return report
        report.violations += [f"{v['invariant']}: {v['check']}: {v['evidence'][:3]}"
                              for v in verdict["verdicts"] if v["status"] == "violated"]
        report.violations += verdict.get("problems", [])
        records = list(TapeReader(self.data_dir / "exchange" / "exchange.tape").records())
        _verdicts, facts = check_tape(records)
        end_at = max((r.get("at", 0.0) for r in records), default=0.0)
        # The window judged: from the first fault to the moment the cluster was asked to stop
        # (a graceful stop releases every symbol: that last gap is not the scenario's).
        since = self.first_fault_at or 0.0
        until = min(self.stopping_at or end_at, end_at)
        liveness = quote_liveness(facts, end_at=end_at)

        def clipped(g) -> float:
            return min(g.end if g.end is not None else end_at, until) - max(g.start, since)

        gaps = [g for sym in liveness.symbols.values() for g in sym.gaps if clipped(g) > 0]
        report.gaps = len(gaps)
        report.longest_gap_s = round(max((clipped(g) for g in gaps), default=0.0), 3)
        report.fills = sum(1 for f in facts.fills.values() if since <= f.get("created_at", 0.0) <= until)
        if self.last_heal_at is not None:
            heal = self.last_heal_at
            # When every symbol was quoted at or after the heal (0 for one quoted at that moment).
            within = requoted_within(liveness, heal)
            report.heal_to_quoted_s = (None if any(v is None for v in within.values())
                                       else round(max(within.values(), default=0.0), 3))
            # And the longest gap that began after the heal (hand-overs back to their owners).
            report.longest_gap_after_heal_s = round(max((clipped(g) for g in gaps if g.start >= heal), default=0.0), 3)
        report.timeline = [f"{r.get('time')} {r.get('fault')} {r.get('summary') or r.get('peer') or ''}".strip()
                           for r in verdict.get("faults", {}).get("records", [])]
        return report


def _spawn(argv: list[str], out_path: Path) -> subprocess.Popen:
    with open(out_path, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


Scenario = Callable[[ScenarioCluster, ScenarioReport], Awaitable[None]]


async def run_scenario(name: str, data_dir: Path, *, scenario: Scenario, peers: int = 4,
                       launch_args: list[str] | None = None, what: str = "") -> ScenarioReport:
    """Launch, let every symbol be quoted, run `scenario`, stop, judge."""
    report = ScenarioReport(name, what)
    cluster = ScenarioCluster(data_dir, peers, launch_args or [])
    try:
        await cluster.start()
        if "netns" in cluster.cluster:
            report.notes["lan_tag"] = cluster.cluster["netns"]["tag"]
        report.notes["first_quoted_s"] = round(await cluster.wait_quoted(STARTUP_BOUND, what="the first quotes"), 3)
        await scenario(cluster, report)
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop()
    return await cluster.judge(report)


# --- the scenarios ------------------------------------------------------------------------------
# Each takes a running cluster whose symbols are all quoted and the report to fill in. Times:
# WARM of trading before the fault, HOLD of fault, then the heal, and the cluster must settle
# (every symbol quoted by its rendezvous owner) within SETTLE_BOUND.

WARM = 1.0
HOLD = 3.0
SETTLE_BOUND = 20.0
FLAP_PERIOD = 1.0
FLAP_FOR = 20.0


async def _settle(c: ScenarioCluster, r: ScenarioReport) -> None:
    r.notes["settled_s"] = round(await c.wait_settled(SETTLE_BOUND), 3)


async def _busiest_holder(c: ScenarioCluster) -> tuple[str, list[str]]:
    holders = await c.holders()
    by_mm: dict[str, list[str]] = {}
    for symbol, mm in sorted(holders.items()):
        by_mm.setdefault(mm, []).append(symbol)
    mm = max(sorted(by_mm), key=lambda m: len(by_mm[m]))
    return mm, by_mm[mm]


async def split_halves(c: ScenarioCluster, r: ScenarioReport) -> None:
    mms = await c.mm_names()
    half = len(mms) // 2
    left, right = mms[:half], mms[half:] + ["exchange", "ledger"]
    await trio.sleep(WARM)
    r.notes["partition"] = (await c.partition(f"{','.join(left)} | {','.join(right)}")).lines
    # While cut, the side with the exchange must take over the other side's symbols.
    r.notes["majority_quotes_all_s"] = round(await c.wait_settled(SETTLE_BOUND, mms=mms[half:]), 3)
    await trio.sleep(HOLD)
    await c.heal()
    await _settle(c, r)


async def holder_cut_from_exchange(c: ScenarioCluster, r: ScenarioReport) -> None:
    await trio.sleep(WARM)
    holder, symbols = await _busiest_holder(c)
    r.notes["holder"], r.notes["symbols"] = holder, symbols
    await c.partition(f"{holder} | exchange")
    begun = trio.current_time()

    async def taken_over() -> bool:
        try:
            holders, quoted = await c.holders(), await c.quoted()
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return all(holders.get(s) not in (None, holder) and s in quoted for s in symbols)

    # The holder's peers still see it alive: only its stepping aside lets them take its symbols.
    await poll_until(taken_over, ASIDE_BOUND, f"{symbols} quoted by another market maker than {holder}", every=POLL)
    r.notes["taken_over_s"] = round(trio.current_time() - begun, 3)
    await trio.sleep(HOLD / 2)
    await c.heal()
    await _settle(c, r)


async def _cut_hold_heal(c: ScenarioCluster, r: ScenarioReport, spec: str, **kw: Any) -> None:
    await trio.sleep(WARM)
    await c.partition(spec, **kw)
    await trio.sleep(HOLD)
    await c.heal()
    await _settle(c, r)


async def _kill_and_restart(c: ScenarioCluster, r: ScenarioReport, name: str, down: float) -> None:
    await trio.sleep(WARM)
    await c.act(lambda n: n.kill(name))
    await trio.sleep(down)
    out = await c.act(lambda n: n.restart(name), heals=True)
    r.notes["restart"] = out.lines[0] if out.lines else ""
    await _settle(c, r)


async def exchange_isolated(c: ScenarioCluster, r: ScenarioReport) -> None:
    others = [p["name"] for p in c.cluster["peers"] if p["name"] != "exchange"]
    await _cut_hold_heal(c, r, f"exchange | {','.join(others)}")


async def ledger_killed(c: ScenarioCluster, r: ScenarioReport) -> None:
    await _kill_and_restart(c, r, "ledger", HOLD)


async def flapping_link(c: ScenarioCluster, r: ScenarioReport) -> None:
    await trio.sleep(WARM)
    holder, _symbols = await _busiest_holder(c)
    r.notes["link"] = f"{holder} - exchange"
    # On a fixed schedule: cut at every whole period, healed half a period later, however long
    # each command takes.
    begun = trio.current_time()
    flaps = int(FLAP_FOR / FLAP_PERIOD)
    for i in range(flaps):
        await trio.sleep_until(begun + i * FLAP_PERIOD)
        await c.partition(f"{holder} | exchange")
        await trio.sleep_until(begun + (i + 0.5) * FLAP_PERIOD)
        await c.heal()
    r.notes["flaps"] = flaps
    r.notes["flapped_for_s"] = round(trio.current_time() - begun, 3)
    await _settle(c, r)


async def one_way_between_mms(c: ScenarioCluster, r: ScenarioReport) -> None:
    a, b = (await c.mm_names())[:2]
    await _cut_hold_heal(c, r, f"{a} | {b}", one_way=True)


async def frozen_holder(c: ScenarioCluster, r: ScenarioReport) -> None:
    await trio.sleep(WARM)
    holder, symbols = await _busiest_holder(c)
    old = {row["symbol"]: row["epoch"] for row in (await c._get("/authority"))["authority"] if row.get("holder") == holder}
    r.notes["holder"], r.notes["old_epochs"] = holder, old
    await c.act(lambda n: n.freeze(holder))
    # Past its lease: the others must take its symbols (with new epochs) while it sleeps.
    others = [m for m in await c.mm_names() if m != holder]
    r.notes["taken_over_s"] = round(await c.wait_settled(SETTLE_BOUND, mms=others), 3)
    await c.act(lambda n: n.thaw(holder), heals=True)
    r.notes["thawed_at"] = c.last_heal_at
    await _settle(c, r)


async def exchange_killed(c: ScenarioCluster, r: ScenarioReport) -> None:
    await _kill_and_restart(c, r, "exchange", HOLD / 2)


async def full_restart(c: ScenarioCluster, r: ScenarioReport) -> None:
    await trio.sleep(WARM)
    c.first_fault_at = time.time()
    await c.stop()
    await c.start()
    c.last_heal_at = time.time()
    await _settle(c, r)


NETNS = ["--netns", "--discover"]
SCENARIOS: dict[str, tuple[str, Scenario, list[str]]] = {
    "split-halves": ("market makers split in two halves, exchange and ledger on one side", split_halves, []),
    "holder-cut-from-exchange": ("a holder cut from the exchange only; its peers still see it",
                                 holder_cut_from_exchange, []),
    "exchange-isolated": ("the exchange cut from every other peer, then healed", exchange_isolated, []),
    "ledger-killed": ("the ledger SIGKILLed while fills arrive, then restarted", ledger_killed, []),
    "flapping-link": ("a holder's link to the exchange cut and healed every second for 20 s", flapping_link, []),
    "one-way": ("a one-way cut between two market makers", one_way_between_mms, []),
    "frozen-holder": ("a holder frozen (SIGSTOP) past its lease, then thawed", frozen_holder, []),
    "exchange-killed": ("the exchange SIGKILLed in a stream of fills, then restarted", exchange_killed, []),
    "full-restart": ("the whole cluster stopped and launched again on its data", full_restart, []),
    "netns-split": ("in network namespaces, found by mDNS: the halves split in the kernel too", split_halves, NETNS),
}
