"""The simulator and the forecast take exactly the decisions the live engine takes on the same inputs.

The reference below drives an engine the way the service and the operator do in real time, written
plainly and apart from the simulator's loop: a job is submitted when it arrives, finished at its
admission time plus its duration, a preemption is confirmed at once; a cycle runs after *every* event
and whenever ``Engine.next_wakeup()`` says so, *including the instant it is at* (a cycle that freed
more room than it handed out asks for another one now). Every admission (job, time, unit) of the
simulator must be the reference's, in the same order.

The simulator hands the events that share an instant to the engine together before its cycle there (as
a front end's debounce would); the generated traces have continuous random times, so no two of their
events share an instant and a cycle per event and a cycle per instant are the same thing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from rayqueue.queue.priority import PriorityClasses
from rayqueue.queue.workload import Workload
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.engine.units import fresh_units
from rayqueue.scheduler.workloads.resourcepolicy import Unit, Units
from rayqueue.simulations.config import cluster_from_dict, load_scenario
from rayqueue.simulations.simulator import Simulator, engine_config
from rayqueue.simulations.trace import Trace, TraceJob, load_trace

GPU = "nvidia.com/gpu"
SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"

Admission = tuple[str, float, str]  # (job, time, unit)


class LiveFrontEnd:
    """An engine fed one event at a time, with a cycle after each, as a live front end feeds it."""

    def __init__(self, tree: QuotaTree, units: Units, config: EngineConfig, trace: Trace) -> None:
        tree.reset_usage()
        self.now = 0.0
        self.engine = Engine(tree, fresh_units(units), config, clock=lambda: self.now)
        self.arrivals = sorted(trace.jobs, key=lambda j: (j.submit, j.row))
        self.duration = {f"r{j.row}": j.duration for j in self.arrivals}
        self.order = {f"r{j.row}": i for i, j in enumerate(self.arrivals)}
        self.ends: dict[str, float] = {}  # uid -> when its current run ends
        self.admissions: list[Admission] = []
        self.next = 0

    def run(self, until: float = float("inf")) -> list[Admission]:
        """Every event up to ``until``; returns every admission so far, in the order they happened."""
        engine = self.engine
        while True:
            times = list(self.ends.values())
            if self.next < len(self.arrivals):
                times.append(self.arrivals[self.next].submit)
            wake = engine.next_wakeup()
            if wake is not None:
                times.append(wake)
            if not times or min(times) > until:
                return self.admissions
            self.now = now = max(min(times), self.now)
            events = False
            for uid in sorted((u for u, t in self.ends.items() if t <= now), key=self.order.__getitem__):
                del self.ends[uid]
                engine.finish(uid)
                self.cycles()
                events = True
            while self.next < len(self.arrivals) and self.arrivals[self.next].submit <= now:
                j = self.arrivals[self.next]
                self.next += 1
                engine.submit(
                    Workload(
                        uid=f"r{j.row}", queue=j.queue, request=dict(j.request), pods=j.pods, priority=j.priority,
                        priority_class=j.priority_class, submitted_at=j.submit, expected_duration=j.duration,
                        name=j.job,
                    )
                )
                self.cycles()
                events = True
            if not events:
                self.cycles()  # the engine's own wake-up

    def cycles(self) -> None:
        """A cycle, and more at this instant while a suspension was confirmed or the engine asks for now."""
        now, engine = self.now, self.engine
        while True:
            confirmed = False
            for d in engine.schedule(now):
                uid = d.workload.uid
                if isinstance(d, Admit):
                    self.admissions.append((d.workload.name, now, d.placement.unit))
                    self.ends[uid] = now + self.duration[uid]
                elif isinstance(d, Preempt):
                    del self.ends[uid]
                    engine.suspended(uid, now)
                    confirmed = True
            wake = engine.next_wakeup()
            if not confirmed and (wake is None or wake > now):
                return


def live_admissions(tree: QuotaTree, units: Units, config: EngineConfig, trace: Trace) -> list[Admission]:
    return LiveFrontEnd(tree, units, config, trace).run()


class _Observed:
    """The simulator's engine as its driver sees it, recording every admission ``schedule`` returns (a
    stand-in, since the engine's methods cannot be replaced: the class has slots and is compiled)."""

    def __init__(self, engine: Engine, seen: list[Admission]) -> None:
        self._engine = engine
        self._seen = seen

    def schedule(self, now: float | None = None) -> list[Decision]:
        decisions = self._engine.schedule(now)
        self._seen.extend((d.workload.name, now, d.placement.unit) for d in decisions if isinstance(d, Admit))  # type: ignore[misc]
        return decisions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def simulated_admissions(sim: Simulator) -> list[Admission]:
    """Every admission the simulator's engine decides, observed at the engine's boundary."""
    seen: list[Admission] = []
    sim.driver.engine = _Observed(sim.engine, seen)  # type: ignore[assignment]
    sim.run()
    return seen


def test_spillover_scenario_admits_every_job_when_the_live_engine_does() -> None:
    sc = load_scenario(SCENARIOS / "spillover" / "scenario.yaml")
    priorities = PriorityClasses(sc.cluster.engine.priorityClasses, default=sc.cluster.engine.defaultPriority)
    trace = load_trace(sc.trace.path, sc.tree, priorities=priorities, format=sc.trace.format)  # type: ignore[union-attr]
    expected = live_admissions(sc.tree, sc.units, engine_config(sc.cluster.engine), trace)
    got = simulated_admissions(Simulator(sc.tree, sc.units, sc.cluster, trace))
    assert len({job for job, _, _ in expected}) == 126  # every job of the trace, some twice (preempted)
    assert got == expected


def _tree() -> QuotaTree:
    return QuotaTree.from_dict(
        {
            "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
            "kind": "ElasticQuotaTree",
            "spec": {
                "root": {
                    "name": "root",
                    "min": {GPU: 16},
                    "max": {GPU: 28},
                    "children": [
                        {"name": "a", "min": {GPU: 6}, "max": {GPU: 20},
                         "attributes": {"preemptionPolicy": "LowerPriority"}},
                        {"name": "b", "min": {GPU: 6}, "max": {GPU: 16}},
                        {"name": "c", "min": {GPU: 4}, "max": {GPU: 12},
                         "attributes": {"preemptionPolicy": "LowerPriority"}},
                    ],
                }
            },
        }
    )


def _generated(seed: int, n: int = 400) -> Trace:
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1 / 40)
        jobs.append(
            TraceJob(
                row=i + 1, job=f"g{i:04d}", queue=rng.choice("aabbc"), submit=t,
                duration=rng.uniform(30, 900), request={GPU: rng.choice([1, 1, 2, 2, 4, 8]) * 1000},
                pods=rng.choice([1, 1, 2, 3]), priority=rng.choice([0, 0, 100, 1000]),
            )
        )
    return Trace(jobs, rows=n)


CLUSTER = cluster_from_dict(
    {
        "units": [
            {"name": "ecs", "resource": "ecs", "capacity": {GPU: 16}},
            {"name": "acs", "resource": "acs", "elastic": True, "maxPods": 10},
        ],
        "engine": {"preemption": "LowerPriority", "reclaim": True, "backoff": {"baseSeconds": 5, "maxSeconds": 60}},
    }
)


def _units() -> Units:
    return Units([Unit("ecs", "ecs", {GPU: 16_000}), Unit("acs", "acs", None, max_pods=10)])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_trace_with_preemption_admits_every_job_when_the_live_engine_does(seed: int) -> None:
    trace = _generated(seed)
    expected = live_admissions(_tree(), _units(), engine_config(CLUSTER.engine), trace)
    sim = Simulator(_tree(), _units(), CLUSTER, trace)
    got = simulated_admissions(sim)
    assert sim.engine.stats.preempted > 0  # the trace exercises preemption
    assert got == expected


def _rounds_trace() -> tuple[QuotaTree, Units, Trace]:
    """A release whose room the engine hands out over two cycles at one instant.

    root's max is 4 GPUs and the one unit holds 4 pods. r1 (1 GPU, 1 pod) and r2 (3 GPUs, 3 pods) fill
    both; p0..p5 (1 GPU, 2 pods each) then z (1 GPU, 1 pod) queue behind root's max. When r1 ends at 10,
    its GPU wakes the p's one at a time (each then lacks pods) for a few rounds; the cycle stops there and
    asks for another at 10, which reaches z: z starts at 10, not when r2 ends at 100.
    """
    tree = QuotaTree.from_dict(
        {
            "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
            "kind": "ElasticQuotaTree",
            "spec": {"root": {"name": "root", "max": {GPU: 4}, "children": [{"name": "q"}]}},
        }
    )
    units = Units([Unit("ecs", "ecs", {GPU: 8000}, max_pods=4)])
    rows = [(0.0, 10.0, 1, 1), (0.0, 100.0, 3, 3)] + [(1.0 + i, 5.0, 1, 2) for i in range(6)] + [(9.0, 5.0, 1, 1)]
    names = ["r1", "r2"] + [f"p{i}" for i in range(6)] + ["z"]
    jobs = [
        TraceJob(row=i + 1, job=name, queue="q", submit=s, duration=d, request={GPU: g * 1000}, pods=pods)
        for i, (name, (s, d, g, pods)) in enumerate(zip(names, rows, strict=True))
    ]
    return tree, units, Trace(jobs, rows=len(jobs))


ECS_ONLY = cluster_from_dict({"units": [{"name": "ecs", "resource": "ecs", "capacity": {GPU: 8}, "maxPods": 4}]})


def test_a_cycle_asked_for_at_the_same_instant_runs_in_the_simulator() -> None:
    tree, units, trace = _rounds_trace()
    expected = live_admissions(tree, units, engine_config(ECS_ONLY.engine), trace)
    assert ("z", 10.0, "ecs") in expected
    tree, units, trace = _rounds_trace()
    assert simulated_admissions(Simulator(tree, units, ECS_ONLY, trace)) == expected


def test_forecast_takes_the_cycle_asked_for_at_the_same_instant() -> None:
    # At 9 every job has arrived; the forecast from there is what the live engine then does.
    tree, units, trace = _rounds_trace()
    live = LiveFrontEnd(tree, units, engine_config(ECS_ONLY.engine), trace)
    live.run(until=9.0)
    pending = {w.name: w.uid for w in live.engine.pending()}
    assert sorted(pending) == ["p0", "p1", "p2", "p3", "p4", "p5", "z"]
    starts = forecast_starts(live.engine, 9.0)
    done = len(live.admissions)
    first: dict[str, float] = {}
    for job, t, _unit in live.run()[done:]:
        first.setdefault(job, t)
    assert first["z"] == 10.0
    assert {job: starts[uid] for job, uid in pending.items()} == first
