"""A seeded fault scenario over a simulated cluster, with the membership checks it must pass.

What it is for: `murmur sim --seed S` (and its test). N peers join, then, under packet loss, one
peer is frozen and thawed, one crashes and restarts, and the cluster is cut into halves and
healed; when the faults stop the view must converge. The report holds the trace hash (same seed,
same hash) and each check, held or violated, with its evidence. It must never use the wall clock
or unseeded randomness: the whole run is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from gossip.config import GossipConfig
from gossip.simcluster import SimCluster
from gossip.types import MemberState


@dataclass
class Check:
    name: str
    held: bool
    evidence: str


@dataclass
class Report:
    seed: int
    peers: int
    profile: str
    trace_hash: str = ""
    events: int = 0
    sim_seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.held for c in self.checks)


async def run_scenario(seed: int, peers: int, config: GossipConfig, loss: float = 0.02,
                       settle_bound: float = 300.0) -> Report:
    if peers < 4:
        raise ValueError("the scenario needs at least 4 peers")
    report = Report(seed, peers, config.name)
    cluster = SimCluster(peers, config, seed, join_spread=2.0)
    rng = cluster.rng
    period = config.probe_interval

    def mark(what: str) -> None:
        report.timeline.append(f"{trio.current_time():9.3f}  {what}")

    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        took = await cluster.wait_converged(step=period)
        mark(f"{peers} peers joined; converged after {took:.1f} s")
        cluster.net.set_loss(loss)
        mark(f"loss {loss:.0%} on every link")

        frozen, crashed = rng.sample(cluster.names[1:], 2)
        others = [n for n in cluster.names if n != frozen]
        cluster.freeze(frozen)
        mark(f"froze {frozen}")
        detected = await _wait(lambda: cluster.all_see(frozen, MemberState.DEAD), 60 * period, period / 4)
        report.checks.append(Check(
            "frozen peer declared dead by all others",
            detected is not None,
            f"{frozen} dead everywhere after {detected:.2f} s" if detected is not None else f"{frozen} not dead everywhere",
        ))
        false = sorted({d for v in others for d in cluster.declared_dead(v)} - {frozen})
        report.checks.append(Check(
            "no live peer declared dead while one was frozen",
            not false,
            "none" if not false else f"declared dead: {', '.join(false)}",
        ))
        cluster.thaw(frozen)
        mark(f"thawed {frozen}")

        cluster.crash(crashed)
        mark(f"crashed {crashed}")
        await trio.sleep(30 * period)
        await cluster.restart(crashed)
        mark(f"restarted {crashed} at incarnation {cluster.incarnations[crashed]}")

        names = list(cluster.names)
        rng.shuffle(names)
        half = len(names) // 2
        left, right = sorted(names[:half]), sorted(names[half:])
        cluster.partition(left, right)
        mark(f"partitioned {len(left)} | {len(right)}")
        await trio.sleep(40 * period)
        cluster.heal()
        cluster.net.set_loss(0.0)
        mark("healed; loss off: faults stop here")

        settled = await _wait(cluster.converged, settle_bound, period / 2)
        views = {frozenset(cluster.alive_view(v)) for v in cluster.nodes}
        report.checks.append(Check(
            "views converge once faults stop (invariant 5)",
            settled is not None,
            f"all {peers} peers see all {peers} alive after {settled:.2f} s" if settled is not None
            else f"{len(views)} different views after {settle_bound:.0f} s",
        ))
        incs = cluster.incarnations
        report.checks.append(Check(
            "restarted peer rejoined above its old incarnation",
            all(cluster.nodes[v].core.member(crashed).incarnation >= incs[crashed] > 1 for v in cluster.nodes),
            f"{crashed} at incarnation {incs[crashed]} in every view",
        ))
        mark("converged" if settled is not None else "did not converge")
        report.sim_seconds = round(trio.current_time(), 3)
        report.trace_hash = cluster.trace_hash()
        report.events = len(cluster.trace)
        cluster.stop()
    return report


async def _wait(condition, bound: float, step: float) -> float | None:
    start = trio.current_time()
    with trio.move_on_after(bound):
        # Sampled every `step` of virtual time: the figure is defined at that granularity.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(step)
        return trio.current_time() - start
    return None
