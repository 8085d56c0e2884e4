"""Quota tree changes: a new ``ElasticQuotaTree`` applied while jobs run, or previewed (a dry run).

The engine says what a tree changes at its nodes (``scheduler.presentation`` words it); this module adds
which running jobs are behind those effects, stores the applied tree (a restart uses it) and records the
change in the history.
"""

from __future__ import annotations

from typing import Any

from rayqueue.queue.workload import Workload
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.service.state import TREE_SETTING, ServiceState


class TreeChanges:
    def __init__(self, s: ServiceState) -> None:
        self.s = s

    def set_tree(self, tree: QuotaTree, text: str, dry_run: bool) -> dict[str, Any]:
        """Apply ``tree`` (or only say what it would change); call it holding the engine lock."""
        s = self.s
        old = s.engine.tree
        if dry_run:
            # QuotaTreeError if a leaf holding jobs would go
            running: list[str] = []
            found = s.engine.preview_tree(tree, also=lambda t: running.extend(self._running_job_effects(old, t)))
            return {"applied": False, "effects": tree_effect_lines(found) + running}
        # The new tree now accounts every admitted job.
        effects = tree_effect_lines(s.engine.set_tree(tree)) + self._running_job_effects(old, tree)
        s.store.set_setting(TREE_SETTING, text)
        s.store.record("(quota)", "QuotaApplied", f"tree {tree.name}: " + "; ".join(effects))
        return {"applied": True, "effects": effects}

    def _running_job_effects(self, old: QuotaTree, new: QuotaTree, shown: int = 10) -> list[str]:
        """The admitted jobs behind the engine's node-level effects: those under a node that would be
        over its new ``max``, and those under a node that would newly borrow (reclaimable work).
        ``new`` must account every admitted job."""
        under: dict[str, list[Workload]] = {}
        for w in self.s.engine.admitted():
            for node in new.leaves[w.queue].lineage:
                under.setdefault(node.name, []).append(w)
        lines: list[str] = []

        def jobs_line(what: str, node_path: str, jobs: list[Workload]) -> None:
            ids = sorted(w.uid for w in jobs)
            more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
            lines.append(f"! running jobs {what} {node_path}: {', '.join(ids[:shown])}{more}")

        for node in new:
            jobs = under.get(node.name, [])
            if not jobs:
                continue
            over = sorted(r for r, m in node.max.items() if node.usage.get(r, 0) > m)
            if over:
                holding = [w for w in jobs if any(w.request.get(r, 0) for r in over)]
                jobs_line(f"over the new max ({', '.join(over)}) of", node.path, holding)
            was = old.nodes[node.name] if node.name in old.nodes else None
            was_borrowed = old.borrowed(was) if was is not None else {}
            borrowed = new.borrowed(node)
            newly = sorted(r for r, v in borrowed.items() if v > was_borrowed.get(r, 0))
            if newly:
                holding = [w for w in jobs if any(w.request.get(r, 0) for r in newly)]
                jobs_line(f"that would borrow ({', '.join(newly)}; reclaimable) in", node.path, holding)
        return lines
