"""Queries: what the operator shows about the engine (tree status, gauges, a summary), from its views.

Nothing here changes the engine; it reads ``Engine``'s views (``scheduler.engine.views``), never its
live tree, units or workloads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, Resources, format_quantity
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.operator.state import OperatorState


class Queries:
    def __init__(self, state: OperatorState) -> None:
        self.s = state
        self._gauges_at = -1e9

    def tree_status(self) -> dict[str, Any]:
        s = self.s
        if s.engine is None:
            return {}
        status = tree_status(s.engine)
        if s.tree_body is not None:
            status["observedGeneration"] = s.tree_body["metadata"].get("generation")
        return status

    def maybe_update_gauges(self) -> None:
        """The gauges walk every workload: at most once per ``gauges_interval_s`` rather than after every
        cycle (thousands of cycles over 15,000 queued jobs in Kueue's baseline), from either loop."""
        if time.monotonic() - self._gauges_at >= self.s.config.gauges_interval_s:
            self._gauges_at = time.monotonic()
            if self.s.engine is not None:
                self.s.metrics.update(self.s.engine)

    def summary(self) -> dict[str, Any]:
        s = self.s
        engine = s.engine
        if engine is None:
            return {"tree": None}
        counts = engine.counts()
        return {
            "pending": counts.get(WorkloadState.PENDING, 0),
            "admitted": counts.get(WorkloadState.ADMITTED, 0),
            "preempting": counts.get(WorkloadState.PREEMPTING, 0),
            "cycles": s.cycles,
            "tree_error": s.tree_error,
        }


def tree_status(engine: Engine) -> dict[str, Any]:
    """The ElasticQuotaTree's ``status.nodes``: per node what its admitted jobs use, what pending jobs
    request, what it borrows, and the job counts. Every resource the node limits is shown, 0 included:
    an SRE reading ``used`` after a team's jobs ended sees 0, not the last figure."""
    views = engine.node_views()
    parents = {n.name: n.parent for n in views}
    lineages: dict[str, list[str]] = {}
    for n in views:
        if n.is_leaf:
            line: list[str] = []
            at: str | None = n.name
            while at is not None:
                line.append(at)
                at = parents[at]
            lineages[n.name] = line
    requested: dict[str, Resources] = {}
    pending_jobs: dict[str, int] = {}
    admitted_jobs: dict[str, int] = {}
    for q in engine.queue_totals():  # per leaf, then up its lineage: no walk over every job per node
        lineage = lineages.get(q.name)
        if lineage is None:
            continue
        for name in lineage:
            if q.pending:
                acc = requested.setdefault(name, {})
                for r, v in q.requested.items():
                    acc[r] = acc.get(r, 0) + v
                pending_jobs[name] = pending_jobs.get(name, 0) + q.pending
            if q.admitted:
                admitted_jobs[name] = admitted_jobs.get(name, 0) + q.admitted

    def render(res: Mapping[str, int], always: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
        return {r: (str(res.get(r, 0) // 1000) if r == MAX_JOBS else format_quantity(res.get(r, 0), r))
                for r in sorted(set(always) | {r for r, v in res.items() if v})}

    nodes = {}
    for n in views:
        nodes[n.name] = {
            "used": render(n.used, set(n.min) | set(n.max)),
            "requested": render(requested.get(n.name, {})),
            "borrowed": render(n.borrowed),
            "admittedJobs": admitted_jobs.get(n.name, 0),
            "pendingJobs": pending_jobs.get(n.name, 0),
        }
    return {"nodes": nodes}


def merge_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that turns ``before`` into ``after``: keys gone are nulled, maps recursively."""
    patch: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            patch[key] = merge_patch(old, value)
        else:
            patch[key] = value
    for key in before:
        if key not in after:
            patch[key] = None
    return patch
