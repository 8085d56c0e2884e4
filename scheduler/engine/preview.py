"""Previews: what a new quota tree would do to the jobs the engine holds (a dry run).
"""

from __future__ import annotations

from collections.abc import Callable

from rayqueue.quota.quantity import describe, format_quantity
from rayqueue.quota.tree import QuotaTree, QuotaTreeError, diff_trees
from rayqueue.scheduler.engine.state import EngineState
from rayqueue.scheduler.engine.views import admitted, pending


def tree_effects(s: EngineState, tree: QuotaTree) -> list[str]:
    lost = [w for w in s.workloads.values() if w.queue not in tree.leaves]
    if lost:
        by_queue: dict[str, list[str]] = {}
        for w in lost:
            by_queue.setdefault(w.queue, []).append(w.display_name)
        problems = [
            f"leaf {name} would be removed (or stop being a leaf) but holds {len(jobs)} job(s): "
            f"{', '.join(sorted(jobs)[:5])}{' ...' if len(jobs) > 5 else ''}"
            for name, jobs in sorted(by_queue.items())
        ]
        raise QuotaTreeError(problems, f"ElasticQuotaTree {tree.name}")
    tree.reset_usage()
    for w in admitted(s):
        tree.admit(tree.leaves[w.queue], w.demand)
    effects = diff_trees(s.tree, tree) or ["no change to the tree"]
    for node in tree:
        for r, m in node.max.items():
            used = node.used_of(r)
            if used > m:
                effects.append(
                    f"! {node.path} uses {format_quantity(used, r)} {r}, over its new max "
                    f"{format_quantity(m, r)}: running jobs keep running, nothing more is admitted there"
                )
        old = s.tree.nodes.get(node.name)
        now_borrowed = tree.borrowed(node)
        was_borrowed = s.tree.borrowed(old) if old is not None else {}
        if now_borrowed and now_borrowed != was_borrowed:
            effects.append(f"! {node.path} would be borrowing {describe(now_borrowed)} (reclaimable)")
    for w in pending(s):
        leaf = tree.leaves[w.queue]
        violation = tree.never_fits(leaf, w.request)
        if violation is not None:
            effects.append(f"! pending job {w.display_name} would never fit: {violation.sentence()}")
    return effects


def preview_tree(s: EngineState, tree: QuotaTree, also: Callable[[QuotaTree], list[str]] | None = None) -> list[str]:
    """What applying ``tree`` would change; raises ``QuotaTreeError`` if it would lose a job. ``also``
    adds a front end's own effects, computed while ``tree`` accounts every admitted job."""
    try:
        effects = tree_effects(s, tree)
        return effects + also(tree) if also is not None else effects
    finally:
        tree.reset_usage()
