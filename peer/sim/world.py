"""One seeded run of the whole trading cluster: faults drawn from the seed, then the verdicts.

What it is for: `murmur sim --seed S` and the sweeps. It starts a `SimTradingCluster`, lets it
trade, injects the faults the seed draws (`FaultPlan`), stops the faults, lets the cluster
settle, stops it, and judges what it left on its simulated disk with the checker of `murmur
check` (`peer.tools.checker`): the safety verdicts per invariant, the liveness figures, and
whether every symbol was quoted again within `REQUOTE_BOUND` of the last fault. The trace hash
covers the membership events, the tape's bytes and the ledger's rows: the same seed gives the
same hash, byte for byte.

It must never read the wall clock or draw unseeded randomness (see peer/sim/cluster.py).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gossip.config import GossipConfig
from peer.sim.cluster import EPOCH, SimTradingCluster, TradingOptions
from peer.tools.checker import Verdict, check_ledger, check_tape, quote_liveness, requoted_within

# After the last fault ends, every symbol must be quoted again within this (docs/guarantees.md:
# detection, the lease, stepping aside, the claim; the same bound as the real-process scenarios).
REQUOTE_BOUND = 10.0
WARM = 5.0
SETTLE = 15.0
PROFILES = ("none", "calm", "chaos")


@dataclass
class Fault:
    at: float  # virtual seconds from the start of the run
    kind: str  # partition | isolate | freeze | crash | loss | delay
    subjects: list[str]
    lasts: float
    value: float = 0.0

    def describe(self) -> str:
        extra = f" p={self.value:.2f}" if self.kind == "loss" else f" {self.value * 1000:.0f} ms" if self.kind == "delay" else ""
        return f"{self.at:8.3f}  {self.kind} {','.join(self.subjects)}{extra} for {self.lasts:.1f} s"


def plan_faults(rng: random.Random, profile: str, names: list[str], duration: float) -> list[Fault]:
    """The faults of one run, in time order, all within [WARM, duration - SETTLE]."""
    if profile not in PROFILES:
        raise ValueError(f"unknown fault profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "none":
        return []
    mms = [n for n in names if n.startswith("mm-")]
    kinds = ["loss", "delay"] if profile == "calm" else ["partition", "isolate", "freeze", "crash", "loss", "delay"]
    faults: list[Fault] = []
    t = WARM
    end = duration - SETTLE
    while True:
        t += rng.uniform(1.0, 6.0)
        lasts = rng.uniform(1.0, 8.0)
        if t + lasts > end:
            break
        kind = rng.choice(kinds)
        if kind == "partition":
            shuffled = mms[:]
            rng.shuffle(shuffled)
            cut = sorted(shuffled[: max(1, len(mms) // 2)])
            faults.append(Fault(t, kind, cut, lasts))
        elif kind == "isolate":
            faults.append(Fault(t, kind, [rng.choice(names)], lasts))
        elif kind == "freeze":
            faults.append(Fault(t, kind, [rng.choice(names)], lasts))
        elif kind == "crash":
            faults.append(Fault(t, kind, [rng.choice(names)], lasts))
        elif kind == "loss":
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.01, 0.2)))
        else:
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.005, 0.1)))
        t += lasts  # one fault at a time: each is judged by what follows it
    return faults


@dataclass
class SimReport:
    seed: int
    mms: int
    profile: str
    duration: float
    faults: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    requoted_s: float | None = None  # after the last fault ended, until every symbol was quoted
    longest_gap_s: float = 0.0
    fills: int = 0
    trace_hash: str = ""
    events: int = 0
    data_dir: str = ""

    @property
    def violations(self) -> list[str]:
        out = [f"invariant {v.invariant}: {v.check}: {v.evidence[:3]}" for v in self.verdicts if v.held is False]
        if self.requoted_s is None or self.requoted_s > REQUOTE_BOUND:
            out.append(f"invariant 6: not every symbol was quoted again within {REQUOTE_BOUND:g} s of the last "
                       f"fault (took {self.requoted_s})")
        return out

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "mms": self.mms, "profile": self.profile, "duration": self.duration,
                "ok": self.ok, "violations": self.violations, "faults": self.faults,
                "verdicts": [v.to_json() for v in self.verdicts], "requoted_s": self.requoted_s,
                "longest_gap_s": self.longest_gap_s, "fills": self.fills, "trace_hash": self.trace_hash,
                "events": self.events, "data_dir": self.data_dir}


async def run_world(seed: int, mms: int, config: GossipConfig, data_dir: Path, *, duration: float = 60.0,
                    profile: str = "chaos", trading: TradingOptions | None = None) -> SimReport:
    report = SimReport(seed, mms, profile, duration, data_dir=str(data_dir))
    cluster = SimTradingCluster(mms, config, seed, data_dir, trading=trading)
    faults = plan_faults(random.Random(f"faults:{seed}"), profile, list(cluster.peers), duration)
    report.faults = [f.describe() for f in faults]
    last_end = WARM
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        for fault in faults:
            await trio.sleep_until(fault.at)
            await _inject(cluster, fault)
            await trio.sleep(fault.lasts)
            await _heal(cluster, fault)
            last_end = trio.current_time()
        await trio.sleep_until(duration)
        cluster.stop()
    _judge(report, cluster, EPOCH + last_end)
    return report


async def _inject(c: SimTradingCluster, f: Fault) -> None:
    peers = c.peers
    if f.kind == "partition":
        # The cut market makers on one side; everyone else (exchange and ledger too) on the other.
        left = [a for n in f.subjects for a in (peers[n].gossip, peers[n].http)]
        right = [a for n, p in peers.items() if n not in f.subjects for a in (p.gossip, p.http)]
        c.net.partition([left, right])
    elif f.kind == "isolate":
        (name,) = f.subjects
        one = [peers[name].gossip, peers[name].http]
        rest = [a for n, p in peers.items() if n != name for a in (p.gossip, p.http)]
        c.net.partition([one, rest])
    elif f.kind == "freeze":
        for addr in (peers[f.subjects[0]].gossip, peers[f.subjects[0]].http):
            c.net.freeze(addr)
    elif f.kind == "crash":
        c.crash(f.subjects[0])
    elif f.kind == "loss":
        c.net.set_loss(f.value)
    elif f.kind == "delay":
        c.net.set_delay(f.value, f.value / 2)


async def _heal(c: SimTradingCluster, f: Fault) -> None:
    peers = c.peers
    if f.kind in ("partition", "isolate"):
        c.net.heal()
    elif f.kind == "freeze":
        for addr in (peers[f.subjects[0]].gossip, peers[f.subjects[0]].http):
            c.net.thaw(addr)
    elif f.kind == "crash":
        await c.start(f.subjects[0])
    elif f.kind == "loss":
        c.net.set_loss(0.0)
    elif f.kind == "delay":
        c.net.set_delay(0.001, 0.001)


def _judge(report: SimReport, c: SimTradingCluster, last_fault_end: float) -> None:
    from peer.exchange.tape import TapeReader

    tape_path = c.peers["exchange"].data_dir / "exchange.tape"
    ledger_path = c.peers["ledger"].data_dir / "ledger.db"
    records = list(TapeReader(tape_path).records())
    verdicts, facts = check_tape(records)
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        verdicts += check_ledger(conn, facts, c.trading.exposure_limit)
        dump = "\n".join(sorted(conn.iterdump()))
    finally:
        conn.close()
    report.verdicts = verdicts
    liveness = quote_liveness(facts)
    within = requoted_within(liveness, last_fault_end)
    report.requoted_s = None if any(v is None for v in within.values()) else round(max(within.values(), default=0.0), 3)
    report.longest_gap_s = round(max((g.duration for s in liveness.symbols.values() for g in s.gaps), default=0.0), 3)
    report.fills = len(facts.fill_order)
    digest = hashlib.sha256()
    digest.update("\n".join(c.trace).encode())
    digest.update(tape_path.read_bytes())
    digest.update(dump.encode())
    report.trace_hash = digest.hexdigest()
    report.events = len(c.trace)
