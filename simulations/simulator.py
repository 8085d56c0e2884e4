"""Replay a trace against the real admission engine in virtual time, event by event.

The simulator is a front end like the service and the operator: it owns no admission logic. It feeds
the :class:`~rayqueue.scheduler.engine.Engine` the trace's arrivals and the jobs' finishes, runs
admission cycles after each batch of events that share a time (and again at that time whenever the
engine asks for it), and applies the decisions; the loop itself is :mod:`.driver`'s, shared with the
forecast:

- ``Admit``: the job runs for its ``duration``; a finish event is scheduled at ``now + duration``.
- ``Preempt``: a simulated suspension is instant, so the simulator calls ``engine.suspended`` at once
  (the victim's quota is released in the same instant) and the job re-queues. Its work restarts from
  scratch when it is admitted again (no checkpoints): the full duration runs again.
- ``Reject``: the job leaves the simulation and is counted.

There are no fixed ticks: the clock jumps from event to event (arrivals, finishes, and the engine's own
timers from :meth:`Engine.next_wakeup`, e.g. backoff, a ``TimeoutOrExceedMax`` deadline, or "now" when
a cycle freed more room than it handed out).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import CPU, GPU
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt, Reject
from rayqueue.scheduler.engine.driver import Driver, VirtualClock
from rayqueue.scheduler.engine.units import fresh_units
from rayqueue.scheduler.workloads.resourcepolicy import Units
from rayqueue.simulations.config import ClusterConfig, EngineOptions, Scenario, TraceRef
from rayqueue.simulations.serving import ServiceTrace, ServingMode, ServingTracker
from rayqueue.simulations.trace import RowProblem, Trace, TraceError, load_trace


@dataclass(slots=True)
class JobRecord:
    """What happened to one job of the trace."""

    uid: str
    job: str
    queue: str
    priority: int
    priority_class: str | None
    submit: float
    duration: float
    amount: int  # of the summary's resource, milli-units
    pods: int
    first_admit: float | None = None
    admit: float | None = None  # the admission whose run completed
    finish: float | None = None
    unit: str | None = None
    preemptions: int = 0
    status: str = "pending"  # pending | running | finished | rejected | unfinished
    reason: str = ""
    busy_seconds: float = 0.0  # time spent running, wasted runs included

    @property
    def wait(self) -> float | None:
        return None if self.first_admit is None else self.first_admit - self.submit


@dataclass
class UnitInfo:
    name: str
    resource: str  # ecs | acs | eci | default
    capacity: int | None  # of the summary's resource; None: elastic
    price: float  # per GPU-hour


@dataclass
class LeafInfo:
    name: str
    path: str
    min: int
    max: int | None


@dataclass
class SimulationResult:
    name: str
    resource: str  # the resource the summary accounts (nvidia.com/gpu, or cpu for CPU-only traces)
    records: list[JobRecord]
    problems: list[RowProblem]
    units: list[UnitInfo]
    leaves: list[LeafInfo]
    cluster: ClusterConfig
    # Usage changes of ``resource`` in time order: (time, unit index, leaf index, delta milli-units).
    change_t: array = field(default_factory=lambda: array("d"))
    change_unit: array = field(default_factory=lambda: array("i"))
    change_leaf: array = field(default_factory=lambda: array("i"))
    change_delta: array = field(default_factory=lambda: array("q"))
    end: float = 0.0
    wall_seconds: float = 0.0
    cycles: int = 0
    events: int = 0
    trace_rows: int = 0
    trace_source: str = ""
    description: str = ""
    engine_stats: dict[str, int] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)  # per service (simulations/serving.py), if any


def engine_config(options: EngineOptions) -> EngineConfig:
    cfg = EngineConfig(
        default_queueing=options.queueing,
        default_preemption=options.preemption,
        reclaim=options.reclaim,
    )
    if options.backoff.baseSeconds is not None:
        cfg.backoff_base_s = options.backoff.baseSeconds
    if options.backoff.maxSeconds is not None:
        cfg.backoff_max_s = options.backoff.maxSeconds
    return cfg


def summary_resource(trace: Trace, tree: QuotaTree) -> str:
    """GPUs when the trace or the tree speaks of them, else CPU."""
    if GPU in trace.resources() or GPU in tree.guaranteed or GPU in tree.bounded:
        return GPU
    return CPU


class Simulator:
    def __init__(
        self,
        tree: QuotaTree,
        units: Units,
        cluster: ClusterConfig,
        trace: Trace,
        *,
        name: str = "simulation",
        description: str = "",
        progress: bool = False,
        on_progress: Callable[[float, int, int], None] | None = None,
        services: ServiceTrace | None = None,
        serving: ServingMode = "reservation",
    ) -> None:
        tree.reset_usage()
        self.tree = tree
        self.units = fresh_units(units)
        self.cluster = cluster
        self.trace = trace
        self.name = name
        self.description = description
        self.progress = progress
        self.on_progress = on_progress
        self.clock = VirtualClock()
        self.engine = Engine(tree, self.units, engine_config(cluster.engine), clock=self.clock)
        self.driver = Driver(self.engine, self.clock)
        self.resource = summary_resource(trace, tree)
        self.serving: ServingTracker | None = None
        if services is not None:
            self.serving = ServingTracker(
                self.engine, services, serving, {u.name: cluster.price(u.name) for u in self.units.units},
                {u.name for u in self.units.units if u.capacity is None or u.resource in ("acs", "eci")},
            )

    def run(self) -> SimulationResult:
        started = time.perf_counter()
        engine = self.engine
        resource = self.resource
        jobs = self.trace.jobs
        leaf_names = list(self.tree.leaves)
        leaf_index = {n: i for i, n in enumerate(leaf_names)}
        unit_index = {u.name: i for i, u in enumerate(self.units.units)}
        records: list[JobRecord] = []
        by_uid: dict[str, int] = {}
        for j in jobs:
            uid = f"r{j.row}"
            by_uid[uid] = len(records)
            records.append(
                JobRecord(
                    uid,
                    j.job,
                    j.queue,
                    j.priority,
                    j.priority_class,
                    j.submit,
                    j.duration,
                    j.request.get(resource, 0),
                    j.pods,
                )
            )
        result = SimulationResult(
            name=self.name,
            resource=resource,
            records=records,
            problems=list(self.trace.problems),
            units=[
                UnitInfo(
                    u.name,
                    u.resource,
                    None if u.capacity is None else u.capacity.get(resource),
                    self.cluster.price(u.name),
                )
                for u in self.units.units
            ],
            leaves=[
                LeafInfo(n, leaf.path, leaf.min.get(resource, 0), leaf.max.get(resource)) for n, leaf in self.tree.leaves.items()
            ],
            cluster=self.cluster,
            trace_rows=self.trace.rows,
            trace_source=self.trace.source,
            description=self.description,
        )
        ct, cu, cl, cd = result.change_t, result.change_unit, result.change_leaf, result.change_delta

        driver = self.driver
        n = len(jobs)
        ai = 0
        done = 0
        # The last instant at which a job arrived, was admitted, preempted, rejected or finished. An engine
        # timer that fires after that (a TimeoutOrExceedMax deadline of a job admitted before it, a backoff
        # of a job gone since) changes nothing and must not stretch the makespan, nor the prepaid cost.
        last_change = 0.0
        events = 0
        bar = _Progress(self.progress, n, self.on_progress)

        serving = self.serving

        def on_decision(d: Decision, now: float) -> None:
            nonlocal last_change, done
            last_change = now
            if serving is not None and serving.on_decision(d, now):
                return  # a service's own scale-up request (serving: none)
            rec = records[by_uid[d.workload.uid]]
            if type(d) is Admit:
                rec.status = "running"
                rec.admit = now
                if rec.first_admit is None:
                    rec.first_admit = now
                rec.unit = d.placement.unit
                if rec.amount:
                    ct.append(now)
                    cu.append(unit_index[d.placement.unit])
                    cl.append(leaf_index[rec.queue])
                    cd.append(rec.amount)
            elif type(d) is Preempt:
                # Seen before the driver confirms the suspension, so the workload still names its unit.
                rec.status = "pending"
                rec.preemptions += 1
                rec.busy_seconds += now - (now if rec.admit is None else rec.admit)
                if rec.amount:
                    ct.append(now)
                    cu.append(unit_index[d.workload.unit or ""])
                    cl.append(leaf_index[rec.queue])
                    cd.append(-rec.amount)
            elif type(d) is Reject:
                rec.status = "rejected"
                rec.reason = str(d.reason)
                done += 1

        while True:
            arrival = jobs[ai].submit if ai < n else None
            if serving is not None:
                step = serving.next_change()
                if step is not None and (arrival is None or step < arrival):
                    arrival = step
            now_or_none = driver.next_instant(arrival)
            if now_or_none is None:
                break
            now = now_or_none
            driver.advance(now)
            before = events
            # 1. the finishes due now
            for uid in driver.due_finishes(now):
                rec = records[by_uid[uid]]
                engine.finish(uid)
                events += 1
                last_change = now
                rec.status = "finished"
                rec.finish = now
                rec.busy_seconds += now - (now if rec.admit is None else rec.admit)
                done += 1
                if rec.amount:
                    ct.append(now)
                    cu.append(unit_index[rec.unit or ""])
                    cl.append(leaf_index[rec.queue])
                    cd.append(-rec.amount)
            # 2. the arrivals due now
            while ai < n and jobs[ai].submit <= now:
                j = jobs[ai]
                rec = records[ai]
                ai += 1
                events += 1
                last_change = now
                w = Workload(
                    uid=rec.uid,
                    queue=j.queue,
                    request=dict(j.request),
                    pods=j.pods,
                    priority=j.priority,
                    priority_class=j.priority_class,
                    submitted_at=j.submit,
                    expected_duration=j.duration,
                    name=j.job,
                )
                rejected = engine.submit(w)
                if rejected is not None:
                    rec.status = "rejected"
                    rec.reason = str(rejected.reason)
                    done += 1
                else:
                    rec.status = "pending"
            # 2b. the services' load steps due now: their autoscalers ask for replicas
            step_due = serving.next_change() if serving is not None else None
            if serving is not None and (step_due is not None and step_due <= now or not serving.started):
                serving.apply(now)
                events += 1
                last_change = now
            if events == before:
                events += 1  # neither a finish nor an arrival: one of the engine's timers
            # 3. admission cycles until the engine asks for none at this instant
            driver.settle(now, on_decision)
            if serving is not None:
                for k, unit, delta in serving.observe(now):
                    ct.append(now)
                    cu.append(unit_index[unit])
                    cl.append(leaf_index[serving.runs[k].load.queue])
                    cd.append(delta)
            bar.update(now, done)

        bar.close(last_change, done)
        for rec in records:
            if rec.status in ("pending", "running"):
                rec.status = "unfinished"  # e.g. waits forever behind a StrictFIFO head that never fits
        result.end = last_change
        if serving is not None:
            result.services = serving.summary(last_change)
        result.cycles = driver.cycles
        result.events = events
        result.wall_seconds = time.perf_counter() - started
        s = engine.stats
        result.engine_stats = {
            "attempts": s.attempts,
            "admitted": s.admitted,
            "parked": s.parked,
            "rejected": s.rejected,
            "preempted": s.preempted,
            "cycles": s.cycles,
        }
        return result


class _Progress:
    """A rich progress bar over completed jobs, refreshed at most every 2,000 events."""

    def __init__(self, enabled: bool, total: int, callback: Callable[[float, int, int], None] | None) -> None:
        self.enabled = enabled
        self.total = total
        self.callback = callback
        self.count = 0
        self._progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]simulating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("jobs done · virtual time {task.fields[vt]}"),
                TimeElapsedColumn(),
                transient=False,
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task("simulate", total=total, vt="0s")
            self._progress.start()

    def update(self, now: float, done: int) -> None:
        self.count += 1
        if self.count % 2000:
            return
        if self.callback is not None:
            self.callback(now, done, self.total)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, vt=format_duration(now))

    def close(self, now: float, done: int) -> None:
        if self.callback is not None:
            self.callback(now, done, self.total)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, vt=format_duration(now))
            self._progress.stop()


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def simulate_scenario(
    scenario: Scenario,
    *,
    trace: TraceRef | None = None,
    strict: bool = False,
    progress: bool = False,
) -> SimulationResult:
    """Load the scenario's trace (or ``trace``) against its tree and run it; raises ``TraceError``."""
    ref = trace or scenario.trace
    if ref is None:
        raise TraceError(f"scenario {scenario.name}: no trace given (add trace: to the scenario or pass --trace)")
    engine_opts = scenario.cluster.engine
    priorities = PriorityClasses(engine_opts.priorityClasses, default=engine_opts.defaultPriority)
    loaded = load_trace(ref.path, scenario.tree, priorities=priorities, strict=strict, format=ref.format)
    sim = Simulator(
        scenario.tree,
        scenario.units,
        scenario.cluster,
        loaded,
        name=scenario.name,
        description=scenario.description,
        progress=progress,
        services=scenario.services,
        serving=scenario.serving,
    )
    return sim.run()
