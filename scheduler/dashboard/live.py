"""What a front end tells the dashboard about now: the engine's state, read through its views.

A front end implements :class:`LiveSource`; ``rayqueue dashboard --db`` has none (history alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayqueue.queue.workload import WorkloadState
from rayqueue.scheduler.engine import Engine


@dataclass
class PendingJob:
    """A job the engine holds as pending, in its queue's order."""

    id: str
    name: str
    queue: str
    priority: int
    priority_class: str | None
    position: int | None
    reason_code: str | None
    reason: str | None
    expected_start: float | None
    submitted_at: float


@dataclass
class HeldJob:
    """A job holding quota (admitted, running or being preempted): where, and how much."""

    id: str
    queue: str
    unit: str | None
    request: dict[str, int]
    preempting: bool = False


@dataclass
class LiveSnapshot:
    """One consistent read of the engine (taken under its lock)."""

    taken_at: float
    #: ``status_view``'s shape: ``nodes`` (name, path, depth, leaf, min, max, usage, borrowed, resources,
    #: pending, running) and ``units`` (name, resource, capacity, usage, pods, max_pods)
    status: dict[str, Any]
    pending: list[PendingJob] = field(default_factory=list)
    held: list[HeldJob] = field(default_factory=list)
    #: quota node -> reserved headroom per resource (serving workloads), when the front end counts it
    reserved: dict[str, dict[str, int]] = field(default_factory=dict)
    #: False when the backlog is too large to forecast on every refresh (expected starts left out)
    forecast: bool = True
    #: queue -> how many jobs it has pending (``pending`` may hold only the first ones of each)
    pending_counts: dict[str, int] = field(default_factory=dict)


class LiveSource(Protocol):
    """A running front end, as the dashboard reads it."""

    #: The Ray dashboard's URL while the cluster lives (None: no Ray, or not known)
    ray_dashboard_url: str | None

    async def snapshot(self) -> LiveSnapshot: ...

    def ray_job_url(self, submission_id: str) -> str | None: ...


def engine_snapshot(engine: Engine, now: float, *, shown_per_queue: int = 200, forecast_limit: int = 2000,
                    starts: dict[str, float | None] | None = None) -> LiveSnapshot:
    """A reading of an engine through its views alone, for a front end without a status view of its own
    (the operator). Call it where the engine may be read (the front end's lock, or its event loop).
    ``starts``: a recent forecast to reuse; computed here when None and the backlog is small enough."""
    from rayqueue.quota.quantity import MAX_JOBS
    from rayqueue.scheduler.engine.forecast import forecast_starts

    queues = engine.queue_views()
    counts = {q.name: len(q.pending) for q in queues}
    running = {q.name: len(q.admitted) for q in queues}
    nodes: list[dict[str, Any]] = []
    for n in engine.node_views():
        resources = sorted((set(n.min) | set(n.max) | set(n.used)) - {MAX_JOBS})
        nodes.append({"name": n.name, "path": n.path, "depth": n.path.count("/"), "leaf": n.is_leaf,
                      "min": dict(n.min), "max": dict(n.max), "usage": {k: v for k, v in n.used.items() if v},
                      "borrowed": dict(n.borrowed), "resources": resources, "pending": 0, "running": 0})
    by_path = {n["path"]: n for n in nodes}
    for row in list(nodes):
        if row["leaf"]:
            path = row["path"]
            while path:
                by_path[path]["pending"] += counts.get(row["name"], 0)
                by_path[path]["running"] += running.get(row["name"], 0)
                path = path.rpartition("/")[0]
    units = [{"name": u.name, "resource": u.resource, "capacity": u.capacity, "max_pods": u.max_pods,
              "usage": {k: v for k, v in u.used.items() if v and k != MAX_JOBS}, "pods": u.pods}
             for u in engine.unit_views()]
    pending: list[PendingJob] = []
    for q in queues:
        for uid in q.pending[:shown_per_queue]:
            info, job = engine.explain(uid), engine.job(uid)
            if job is None:
                continue
            pending.append(PendingJob(
                id=uid, name=job.name, queue=job.queue, priority=job.priority, priority_class=None,
                position=info.position, reason_code=info.reason.code.value if info.reason else None,
                reason=info.reason.message if info.reason else None, expected_start=None,
                submitted_at=job.submitted_at))
    forecast = sum(counts.values()) <= forecast_limit
    if forecast and pending:
        found = starts if starts is not None else forecast_starts(engine, now)
        for p in pending:
            p.expected_start = found.get(p.id)
    held = [HeldJob(id=j.uid, queue=j.queue, unit=j.unit, request={r: v for r, v in j.request.items() if r != MAX_JOBS},
                    preempting=j.state == WorkloadState.PREEMPTING)
            for j in engine.jobs() if j.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING)]
    return LiveSnapshot(taken_at=time.monotonic(), status={"tree": engine.tree_view().name, "nodes": nodes, "units": units},
                        pending=pending, held=held, forecast=forecast, pending_counts=counts)
