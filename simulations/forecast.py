"""Expected start times: simulate an engine's current state forward, on a copy, in virtual time.

Front ends call :func:`forecast_starts` for ``rayqueue explain`` ("expected start"). The copy is a
fresh engine with the same tree, units and configuration; every running job is restored with its
``admitted_at`` and finishes at ``admitted_at + expected_duration``; every pending job is queued again in
its original order. Then the same admission cycles run as in the simulator, event by event, until
every pending job has a start or nothing more can happen.

Assumptions (said in ``rayqueue explain`` too): no new job arrives; a job runs exactly its
``expected_duration``; a job without one never finishes in the forecast, so whatever waits for its
room gets ``None`` (unknown); a preemption is instant and the victim restarts from scratch. The live
engine is never touched.
"""

from __future__ import annotations

import heapq

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.decisions import Admit, Preempt
from rayqueue.simulations.simulator import fresh_units

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
    clock_now = [now]
    copy = Engine(tree, units, engine.config, clock=lambda: clock_now[0])

    waiting: dict[str, float | None] = {}
    finish_heap: list[tuple[float, str, int]] = []  # (time, uid, run number)
    runs: dict[str, int] = {}
    pending: list[Workload] = []
    for w in engine.workloads.values():
        if w.state == WorkloadState.ADMITTED:
            c = w.fresh()
            admitted_at = w.admitted_at if w.admitted_at is not None else now
            copy.restore(c, w.unit, admitted_at)
            if w.expected_duration is not None:
                runs[c.uid] = 1
                heapq.heappush(finish_heap, (max(now, admitted_at + w.expected_duration), c.uid, 1))
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

    t = now
    for _ in range(max_instants):
        clock_now[0] = t
        while finish_heap and finish_heap[0][0] <= t:
            _, uid, run = heapq.heappop(finish_heap)
            if runs.get(uid) == run and uid in copy.workloads:
                copy.finish(uid)
        for _ in range(1000):
            preempted = False
            for d in copy.schedule(t):
                uid = d.workload.uid
                if isinstance(d, Admit):
                    if uid in unresolved:
                        waiting[uid] = t
                        unresolved.discard(uid)
                    duration = d.workload.expected_duration
                    runs[uid] = runs.get(uid, 0) + 1
                    if duration is not None:
                        heapq.heappush(finish_heap, (t + duration, uid, runs[uid]))
                elif isinstance(d, Preempt):
                    preempted = True
                    runs[uid] = runs.get(uid, 0) + 1  # its pending finish is void
                    copy.suspended(uid, t)
            if not preempted:
                break
        if not unresolved:
            break
        candidates = []
        if finish_heap:
            candidates.append(finish_heap[0][0])
        wake = copy.next_wakeup()
        if wake is not None and wake > t:
            candidates.append(wake)
        if not candidates:
            break
        t = min(candidates)
        if limit is not None and t > limit:
            break
    return waiting
