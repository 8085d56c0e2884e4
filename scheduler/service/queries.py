"""Queries: what ``status``, ``jobs``, ``explain``, ``history`` and ``logs`` answer.

They read the store and the engine's views and change nothing. The engine's part of a query runs
holding the engine lock (``Service.locked``); ``history`` reads the store only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, describe
from rayqueue.scheduler.engine import Engine, NodeView
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.rayjobs import RayUnavailable
from rayqueue.scheduler.service.state import NotFound, ServiceState
from rayqueue.scheduler.service.store import JobRecord


class Queries:
    def __init__(self, s: ServiceState) -> None:
        self.s = s

    def resolve(self, ref: str) -> JobRecord:
        """A job by id, or by name when exactly one job has it."""
        store = self.s.store
        row = store.get(ref)
        if row is not None:
            return row
        rows = store.by_name(ref)
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NotFound(f"no job with id or name {ref!r}")
        live = [r for r in rows if r.state in st.LIVE_STATES]
        if len(live) == 1:
            return live[0]
        ids = ", ".join(r.id for r in rows[-10:])
        raise NotFound(f"{len(rows)} jobs are named {ref!r}; use an id ({ids})")

    def explain(self, ref: str) -> dict[str, Any]:
        engine = self.s.engine
        row = self.resolve(ref)
        out = job_view(row, position=None)
        out.update(
            pending_in_queue=None,
            reason_code=row.reason_code,
            expected_start=None,
            attempt=row.attempt,
            submission_id=row.submission_id,
            ray_status=row.ray_status,
            ray_message=row.ray_message,
            pods=row.pods,
        )
        if engine.has_job(row.id):
            info = engine.explain(row.id)
            out["position"] = info.position
            out["pending_in_queue"] = info.pending_in_queue
            if info.state == WorkloadState.PENDING:
                # A forecast on a copy of the engine: running jobs end after their expected duration.
                out["expected_start"] = forecast_starts(engine, self.s.clock()).get(row.id)
            if info.reason is not None and row.state == st.PENDING:
                out["reason_code"] = info.reason.code.value
                out["reason"] = info.reason.message
        elif row.state == st.RUNNING and not out["reason"]:
            out["reason"] = "running in Ray"
        return out

    def job_views(
        self, states: list[str] | None = None, queue: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` jobs after the ``offset`` newest (all when ``limit`` is None), oldest first,
        and how many jobs match in all."""
        engine = self.s.engine
        rows, total = self.s.store.jobs_page(states, queue, limit, offset)
        out = []
        for row in rows:
            position = None
            if row.state == st.PENDING and engine.has_job(row.id):
                position = engine.explain(row.id).position
            out.append(job_view(row, position))
        return out, total

    def status(self) -> dict[str, Any]:
        return status_view(self.s.engine, self.s.ray.address)

    def tree_yaml(self) -> str:
        return yaml.safe_dump(self.s.engine.tree_manifest(), sort_keys=False)

    def history(
        self, ref: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` events (of one job) after the ``offset`` newest, oldest first, and how many
        there are in all."""
        return self.events_of(self.resolve(ref).id if ref else None, limit, offset)

    def events_of(
        self, owner: str | None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """The events of one job or service by its id (of all when ``owner`` is None), paged as
        :meth:`history` says."""
        events, total = self.s.store.events_page(owner, limit, offset)
        return [
            {"job": e.job_id, "at": e.at, "kind": e.kind, "state": e.state, "unit": e.unit, "message": e.message}
            for e in events
        ], total

    async def logs(self, ref: str) -> dict[str, Any]:
        """The driver's log: from Ray while the job lives there, else the tail kept in the store."""
        row = self.resolve(ref)
        text: str | None = None
        source = "none"
        live = row.state in st.ACTIVE_STATES or (row.state == st.CANCELLED and row.logs is None)
        if live and row.submission_id and (row.released or row.state == st.CANCELLED):
            try:
                text = await asyncio.to_thread(self.s.ray.logs, row.submission_id)
                source = "ray"
            except RayUnavailable:
                text = None
        if text is None and row.logs is not None:
            text, source = row.logs, "store"
        return {"id": row.id, "state": row.state, "source": source, "logs": text or ""}


def job_view(row: JobRecord, position: int | None) -> dict[str, Any]:
    """What `jobs` shows of one job; `explain` adds to it."""
    return {
        "id": row.id,
        "name": row.name,
        "queue": row.queue,
        "state": row.state,
        "priority": row.priority,
        "priority_class": row.priority_class,
        "unit": row.unit,
        "position": position,
        "request": describe(row.request_dict()),
        "submitted_at": row.submitted_at,
        "admitted_at": row.admitted_at,
        "running_at": row.running_at,
        "finished_at": row.finished_at,
        "preemptions": row.preemptions,
        "reason": row.reason,
    }


def status_view(engine: Engine, ray_address: str) -> dict[str, Any]:
    """What ``rayqueue status`` shows: per tree node usage / min / max, borrowed, pending and running
    jobs; per unit its capacity and use."""
    tree = engine.tree_view()
    by_name = {n.name: n for n in engine.node_views()}
    pending: dict[str, int] = {}
    running: dict[str, int] = {}
    for q in engine.queue_views():
        pending[q.name] = len(q.pending)
        running[q.name] = len(q.admitted)
    nodes: list[dict[str, Any]] = []

    def visit(node: NodeView) -> tuple[int, int]:
        index = len(nodes)
        nodes.append({})
        p, r = (pending.get(node.name, 0), running.get(node.name, 0)) if node.is_leaf else (0, 0)
        for child in node.children:
            cp, cr = visit(by_name[child])
            p, r = p + cp, r + cr
        resources = sorted((set(node.min) | set(node.max) | set(node.used)) - {MAX_JOBS}) + (
            [MAX_JOBS] if MAX_JOBS in node.max else []
        )
        nodes[index] = {
            "name": node.name,
            "path": node.path,
            "depth": node.depth,
            "leaf": node.is_leaf,
            "min": dict(node.min),
            "max": dict(node.max),
            "usage": {k: v for k, v in node.used.items() if v},
            "borrowed": dict(node.borrowed),
            "reserved": {k: v for k, v in node.reserved.items() if v and k != MAX_JOBS},  # services' headroom
            "resources": resources,
            "pending": p,
            "running": r,
        }
        return p, r

    visit(by_name[tree.root])
    units = [
        {
            "name": u.name,
            "resource": u.resource,
            "capacity": u.capacity,
            "usage": {k: v for k, v in u.used.items() if v and k != MAX_JOBS},
            "pods": u.pods,
            "max_pods": u.max_pods,
            "node_selector": u.node_selector,
        }
        for u in engine.unit_views()
    ]
    return {"tree": tree.name, "nodes": nodes, "units": units, "ray": ray_address}
