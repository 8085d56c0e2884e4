"""Quota tree changes: a new ``ElasticQuotaTree`` applied while jobs run, or previewed (a dry run).

The engine says what a tree changes at its nodes (``scheduler.presentation`` words it); this module adds
which running jobs are behind those effects, stores the applied tree (a restart uses it) and records the
change in the history.
"""

from __future__ import annotations

from typing import Any

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import JobView, NodeView
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.service.state import TREE_SETTING, ServiceState


class TreeChanges:
    def __init__(self, s: ServiceState) -> None:
        self.s = s

    def set_tree(self, tree: QuotaTree, text: str, dry_run: bool) -> dict[str, Any]:
        """Apply ``tree`` (or only say what it would change); call it holding the engine lock."""
        s = self.s
        old = {n.name: n for n in s.engine.node_views()}
        if dry_run:
            # QuotaTreeError if a leaf holding jobs would go
            running: list[str] = []
            found = s.engine.preview_tree(tree, also=lambda new: running.extend(self._running_job_effects(old, new)))
            return {"applied": False, "effects": tree_effect_lines(found) + running}
        # The new tree now accounts every admitted job.
        effects = tree_effect_lines(s.engine.set_tree(tree)) + self._running_job_effects(old, s.engine.node_views())
        s.store.set_setting(TREE_SETTING, text)
        s.store.record("(quota)", "QuotaApplied", f"tree {tree.name}: " + "; ".join(effects))
        return {"applied": True, "effects": effects}

    def _running_job_effects(self, old: dict[str, NodeView], new: list[NodeView], shown: int = 10) -> list[str]:
        """The admitted jobs behind the engine's node-level effects: those under a node that would be
        over its new ``max``, and those under a node that would newly borrow (reclaimable work).
        ``new`` must account every admitted job."""
        engine = self.s.engine
        by_name = {n.name: n for n in new}
        under: dict[str, list[JobView]] = {}
        for job in [*engine.jobs(WorkloadState.ADMITTED), *engine.jobs(WorkloadState.PREEMPTING)]:
            name: str | None = job.queue
            while name is not None:  # the job's leaf and every node above it
                under.setdefault(name, []).append(job)
                name = by_name[name].parent
        lines: list[str] = []

        def jobs_line(what: str, node_path: str, jobs: list[JobView]) -> None:
            ids = sorted(j.uid for j in jobs)
            more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
            lines.append(f"! running jobs {what} {node_path}: {', '.join(ids[:shown])}{more}")

        for node in new:
            jobs = under.get(node.name, [])
            if not jobs:
                continue
            over = sorted(r for r, m in node.max.items() if node.used.get(r, 0) > m)
            if over:
                holding = [j for j in jobs if any(j.request.get(r, 0) for r in over)]
                jobs_line(f"over the new max ({', '.join(over)}) of", node.path, holding)
            was = old.get(node.name)
            was_borrowed = was.borrowed if was is not None else {}
            newly = sorted(r for r, v in node.borrowed.items() if v > was_borrowed.get(r, 0))
            if newly:
                holding = [j for j in jobs if any(j.request.get(r, 0) for r in newly)]
                jobs_line(f"that would borrow ({', '.join(newly)}; reclaimable) in", node.path, holding)
        return lines
