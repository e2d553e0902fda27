"""One seeded run of the whole trading cluster: faults drawn from the seed, then the verdicts.

What it is for: `murmur sim --seed S` and the sweeps. It starts a `SimTradingCluster`, lets it
trade, injects the faults the seed draws (`plan_faults`, one at a time; `plan_drift` for the market
makers' clocks, docs/simulation.md), stops the faults, lets the cluster
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
PROFILES = ("none", "calm", "network", "storage", "chaos")


@dataclass
class Fault:
    at: float  # virtual seconds from the start of the run
    kind: str  # one of CHAOS
    subjects: list[str]
    lasts: float
    value: float = 0.0
    mode: str = ""  # diskfail: "kept" (the failed commit reached the disk) or "lost"

    def describe(self) -> str:
        k, v = self.kind, self.value
        if k == "loss":
            extra = f" p={v:.2f}"
        elif k == "delay":
            extra = f" {v * 1000:.0f} ms"
        elif k == "reorder":
            extra = f" jitter {v * 1000:.0f} ms over a 1 ms delay"
        elif k == "duplicate":
            extra = f" p={v:.2f}"
        elif k == "torn":
            extra = f" tail: the next tape write torn {v:.0%} into its last record, then down"
        elif k == "diskfail":
            extra = f" at commit {v:.0f}, {self.mode}, then down"
        elif k == "commitcrash":
            extra = f" after its commit of fills {v:.0f} from now, before answering, then down"
        else:
            extra = ""
        who = "->".join(self.subjects) if k == "oneway" else ",".join(self.subjects)
        return f"{self.at:8.3f}  {k} {who}{extra} for {self.lasts:.1f} s"


# The chaos profile's kinds, each as likely. (Appended ones came later: the order is the seeds'.)
CHAOS = ("partition", "isolate", "freeze", "crash", "loss", "delay",
         "oneway", "duplicate", "reorder", "torn", "diskfail", "commitcrash")
# The network profile's: cuts, pauses and what a network does to packets, every peer up.
NETWORK = ("partition", "isolate", "freeze", "loss", "delay", "oneway", "duplicate", "reorder")
# The storage profile's: what a crash or a failing disk does to what the tape and the ledger hold.
STORAGE = ("crash", "torn", "diskfail", "commitcrash")


def plan_faults(rng: random.Random, profile: str, names: list[str], duration: float) -> list[Fault]:
    """The faults of one run, in time order, all within [WARM, duration - SETTLE]."""
    if profile not in PROFILES:
        raise ValueError(f"unknown fault profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "none":
        return []
    mms = [n for n in names if n.startswith("mm-")]
    kinds = {"calm": ["loss", "delay"], "network": list(NETWORK), "storage": list(STORAGE)}.get(profile, list(CHAOS))
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
        elif kind in ("isolate", "freeze", "crash"):
            faults.append(Fault(t, kind, [rng.choice(names)], lasts))
        elif kind == "loss":
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.01, 0.2)))
        elif kind == "delay":
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.005, 0.1)))
        elif kind == "oneway":
            # What flows from the first subject to the second is cut; the other way flows. Between
            # two market makers, or between a market maker and the exchange, either way round.
            if len(mms) >= 2 and rng.random() < 0.5:
                pair = rng.sample(mms, 2)
            else:
                pair = [rng.choice(mms), "exchange"]
                if rng.random() < 0.5:
                    pair.reverse()
            faults.append(Fault(t, kind, pair, lasts))
        elif kind == "duplicate":
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.05, 0.5)))
        elif kind == "reorder":
            # A jitter 20 to 80 times the delay: packets sent a few ms apart overtake each other.
            faults.append(Fault(t, kind, [], lasts, rng.uniform(0.02, 0.08)))
        elif kind == "torn":
            faults.append(Fault(t, kind, ["exchange"], lasts, rng.uniform(0.05, 0.95)))
        elif kind == "commitcrash":
            faults.append(Fault(t, kind, ["ledger"], lasts, rng.randint(1, 5)))
        else:  # diskfail
            faults.append(Fault(t, kind, ["ledger"], lasts, rng.randint(1, 20),
                                rng.choice(("kept", "lost"))))
        t += lasts  # one fault at a time: each is judged by what follows it
    return faults


# Clock drift (chaos only), for the whole run, within the bounds the guarantees assume
# (docs/market-makers.md, "What rests on bounded clock drift and pauses"). The exchange is the
# reference (offset 0, rate 0): only differences between clocks matter, and the run's times
# (the last fault's end) are the exchange's tape times.
# - A market maker: any constant offset (its lease is measured from its own send time by its
#   own clock, never compared with another's), and a rate within +-2.5%: the exchange's clock
#   runs faster than a market maker's by at most 0.05 s over a 2 s lease, half the 0.1 s drift
#   margin (the other half is for the request's way to the exchange).
# - The ledger: any constant offset (a reservation's expiry is its own clock's now + ttl), and a
#   rate within +-1.5%: a reservation of 31 s by the ledger's clock covers a quote of 30 s by the
#   exchange's if the rates differ by less than 1 s in 30 (3.2%); 1.5% leaves half of that for
#   the way from the grant to the PUT. `murmur check` compares the ledger's times with the tape's,
#   so the judge maps the ledger's back to the exchange's clock (`ledger_clock`), which only the
#   simulation knows exactly; on real machines the two share a clock (docs/market-makers.md,
#   "What murmur check assumes").
MM_OFFSET = 2.0
MM_RATE = 0.025
LEDGER_OFFSET = 2.0
LEDGER_RATE = 0.015


def plan_drift(rng: random.Random, profile: str, names: list[str]) -> dict[str, tuple[float, float]]:
    """Each market maker's and the ledger's (offset in s at time 0, rate) for the run: none
    unless chaos. (The ledger is drawn last, so that the market makers' drifts of a seed are
    those drawn before the ledger had any.)"""
    if profile != "chaos":
        return {}
    drift = {name: (rng.uniform(-MM_OFFSET, MM_OFFSET), rng.uniform(-MM_RATE, MM_RATE))
             for name in names if name.startswith("mm-")}
    if "ledger" in names:
        drift["ledger"] = (rng.uniform(-LEDGER_OFFSET, LEDGER_OFFSET), rng.uniform(-LEDGER_RATE, LEDGER_RATE))
    return drift


def describe_drift(drift: dict[str, tuple[float, float]]) -> list[str]:
    return [f"{0.0:8.3f}  drift {name} {offset:+.3f} s, rate {rate:+.2%} for the run"
            for name, (offset, rate) in drift.items()]


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
    exits: list[str] = field(default_factory=list)  # a service raised, and no storage fault made it
    storage: list[dict[str, Any]] = field(default_factory=list)  # what the torn and diskfail faults did

    @property
    def violations(self) -> list[str]:
        out = [f"invariant {v.invariant}: {v.check}: {v.evidence[:3]}" for v in self.verdicts if v.held is False]
        out += [f"a peer stopped: {e}" for e in self.exits]
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
                "events": self.events, "data_dir": self.data_dir, "exits": self.exits, "storage": self.storage}


async def run_world(seed: int, mms: int, config: GossipConfig, data_dir: Path, *, duration: float = 60.0,
                    profile: str = "chaos", trading: TradingOptions | None = None) -> SimReport:
    report = SimReport(seed, mms, profile, duration, data_dir=str(data_dir))
    cluster = SimTradingCluster(mms, config, seed, data_dir, trading=trading)
    faults = plan_faults(random.Random(f"faults:{seed}"), profile, list(cluster.peers), duration)
    drift = plan_drift(random.Random(f"drift:{seed}"), profile, list(cluster.peers))
    for name, (offset, rate) in drift.items():
        cluster.peers[name].drift, cluster.peers[name].rate = offset, rate
    report.faults = describe_drift(drift) + [f.describe() for f in faults]
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
    report.exits = [f"{at:.3f} {name}: {what}" for at, name, what, injected in cluster.exits if not injected]
    report.storage = sorted(cluster.torn + cluster.disk_failures + cluster.commit_crashes, key=lambda s: s["at"])
    _judge(report, cluster, EPOCH + last_end, drift.get("ledger", (0.0, 0.0)))
    return report


def _oneway(c: SimTradingCluster, f: Fault, p: float) -> None:
    a, b = (c.peers[n] for n in f.subjects)
    # Every address of the one to every address of the other: gossip packets, and the HTTP
    # streams either opens (a connection's two directions are cut or not separately: a request
    # from b reaches a, but a's answer is held until the cut heals).
    for src in (a.gossip, a.http):
        for dst in (b.gossip, b.http):
            c.net.set_link_loss(src, dst, p)


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
    elif f.kind == "oneway":
        _oneway(c, f, 1.0)
    elif f.kind == "duplicate":
        c.net.set_duplicate(f.value)
    elif f.kind == "reorder":
        c.net.set_delay(0.001, f.value)
    elif f.kind == "torn":
        c.arm_torn_write(f.subjects[0], f.value)
    elif f.kind == "diskfail":
        c.arm_storage_failure(f.subjects[0], int(f.value), keep=f.mode == "kept")
    elif f.kind == "commitcrash":
        c.arm_crash_after_commit(f.subjects[0], int(f.value))


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
    elif f.kind in ("delay", "reorder"):
        c.net.set_delay(0.001, 0.001)
    elif f.kind == "oneway":
        _oneway(c, f, 0.0)
    elif f.kind == "duplicate":
        c.net.set_duplicate(0.0)
    elif f.kind in ("torn", "diskfail", "commitcrash"):
        # Restarted on its data like after a crash; a fault that never fired (no write or commit
        # in its window) is dropped and the peer never went down.
        name = f.subjects[0]
        if c.disarm_torn_write(name) or c.disarm_storage_failure(name) or c.disarm_crash_after_commit(name):
            c.trace.append(f"{trio.current_time():.6f} {name} {f.kind} did not fire")
        if not peers[name].up:
            await c.start(name)


def _judge(report: SimReport, c: SimTradingCluster, last_fault_end: float,
           ledger_drift: tuple[float, float]) -> None:
    from peer.exchange.tape import TapeReader

    tape_path = c.peers["exchange"].data_dir / "exchange.tape"
    ledger_path = c.peers["ledger"].data_dir / "ledger.db"
    records = list(TapeReader(tape_path).records())
    verdicts, facts = check_tape(records)
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        offset, rate = ledger_drift
        # The ledger's clock reads EPOCH + t + offset + rate * t at virtual time t (SimPeer.clock);
        # the exchange's EPOCH + t.
        verdicts += check_ledger(conn, facts, c.trading.exposure_limit,
                                 ledger_clock=lambda at: EPOCH + (at - EPOCH - offset) / (1.0 + rate))
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
