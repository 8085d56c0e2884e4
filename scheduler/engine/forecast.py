"""Expected start times: simulate an engine's current state forward, on a copy, in virtual time.

Front ends call :func:`forecast_starts` for ``rayqueue explain`` ("expected start"). The copy is a
fresh engine with the same tree, units and configuration; every running job is restored with its
``admitted_at`` and finishes at ``admitted_at + expected_duration``; every pending job is queued again in
its original order. Then the simulator's own loop (:mod:`.driver`) runs the copy forward, event by
event, including the cycles the engine asks for at the same instant, until every pending job has a
start or nothing more can happen.

Assumptions (said in ``rayqueue explain`` too): no new job arrives; a job runs exactly its
``expected_duration``; a job without one never finishes in the forecast, so whatever waits for its
room gets ``None`` (unknown); a preemption is instant and the victim restarts from scratch. The live
engine is never touched.
"""

from __future__ import annotations

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.decisions import Admit, Decision
from rayqueue.scheduler.engine.driver import Driver, SimulationError, VirtualClock
from rayqueue.scheduler.engine.facade import Engine
from rayqueue.scheduler.engine.services import Service, ServiceSpec, ServiceState
from rayqueue.scheduler.engine.units import fresh_units

#: Bounds that keep a forecast cheap on a large backlog (a cycle admits many jobs at once).
MAX_INSTANTS = 20_000


def forecast_starts(
    engine: Engine,
    now: float,
    *,
    horizon_s: float | None = None,
    max_instants: int = MAX_INSTANTS,
) -> dict[str, float | None]:
    """Each pending (or preempting) job's expected start time; ``None`` when it cannot be told.

    ``horizon_s`` stops looking that far past ``now`` (later starts are reported as ``None``).
    """
    tree = QuotaTree.from_dict(engine.tree.to_dict(), source=f"ElasticQuotaTree {engine.tree.name}")
    units = fresh_units(engine.units)
    clock = VirtualClock(now)
    copy = Engine(tree, units, engine.config, clock=clock)
    driver = Driver(copy, clock)

    # Running services keep what they hold now (their replicas and hot reserve), restored before the jobs
    # (a job preempted for one holds no quota of its own). Their autoscalers are not forecast.
    for svc in engine.live_services.values():
        held = svc.cluster
        if svc.state == ServiceState.RUNNING and held is not None:
            spec = held.spec
            twin = Service(uid=svc.uid, queue=svc.queue, replicas=held.granted, priority=svc.priority, name=svc.name,
                           spec=ServiceSpec(dict(spec.head), dict(spec.replica), spec.min_replicas, spec.max_replicas,
                                            spec.hot_reserve, spec.head_pods, spec.replica_pods))
            copy.restore_service(twin, held.granted, dict(held.by_unit), svc.admitted_at or now, held.head_unit)
    waiting: dict[str, float | None] = {}
    pending: list[Workload] = []
    for w in engine.workloads.values():
        if w.state == WorkloadState.ADMITTED:
            c = w.fresh()
            admitted_at = w.admitted_at if w.admitted_at is not None else now
            copy.restore(c, w.unit, admitted_at)
            if c.expected_duration is not None:
                # A job overdue by its expected duration is taken to end now, not in the past.
                driver.running(c, max(now, admitted_at + c.expected_duration))
        elif w.state in (WorkloadState.PENDING, WorkloadState.PREEMPTING):
            pending.append(w)
    # Same order as the live engine's arrivals, so ties break the same way.
    pending.sort(key=lambda w: w.seq)
    for w in pending:
        c = w.fresh()
        if copy.submit(c) is None:
            waiting[c.uid] = None
    unresolved = set(waiting)
    limit = None if horizon_s is None else now + horizon_s

    def on_decision(d: Decision, t: float) -> None:
        uid = d.workload.uid
        if type(d) is Admit and uid in unresolved:
            waiting[uid] = t
            unresolved.discard(uid)

    t: float | None = now
    for _ in range(max_instants):
        if t is None or (limit is not None and t > limit):
            break
        driver.advance(t)
        for uid in driver.due_finishes(t):
            if uid in copy.workloads:
                copy.finish(uid)
        try:
            driver.settle(t, on_decision)
        except SimulationError:
            break  # an engine that never settles: what is left stays unknown rather than hanging explain
        if not unresolved:
            break
        t = driver.next_instant()
    return waiting
