"""Previews: what a new quota tree would do to the jobs the engine holds (a dry run).

The effects are data (``TreeEffect``); the words are the front ends' (``scheduler/presentation.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rayqueue.quota.quantity import Demand, Resources
from rayqueue.quota.tree import QuotaTree, QuotaTreeError, QuotaViolation, diff_trees
from rayqueue.scheduler.engine.serving import account_services
from rayqueue.scheduler.engine.state import EngineState
from rayqueue.scheduler.engine.views import NodeView, admitted, pending, tree_node_views


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """One difference between the current tree and the new one (as ``quota.tree.diff_trees`` words it)."""

    text: str


@dataclass(frozen=True, slots=True)
class OverNewMax:
    """A node would use more than its new ``max``: running jobs keep running, nothing more is admitted there."""

    path: str
    resource: str
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class NewBorrowing:
    """A node would borrow (use above its ``min``), or borrow other amounts than now: reclaimable."""

    path: str
    borrowed: Resources


@dataclass(frozen=True, slots=True)
class PendingNeverFits:
    """A pending job would never fit under the new tree."""

    job: str
    violation: QuotaViolation


TreeEffect = TreeDiff | OverNewMax | NewBorrowing | PendingNeverFits


def tree_effects(s: EngineState, tree: QuotaTree) -> list[TreeEffect]:
    lost = [w for w in (*s.workloads.values(), *s.services.values()) if w.queue not in tree.leaves]
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
        if not w.handed_over:
            tree.admit(tree.leaves[w.queue], w.demand)
    account_services(s, lambda leaf, res: tree.admit(tree.leaves[leaf], Demand(res)))
    effects: list[TreeEffect] = [TreeDiff(line) for line in diff_trees(s.tree, tree)]
    for node in tree:
        for r, m in node.max.items():
            used = node.used_of(r)
            if used > m:
                effects.append(OverNewMax(node.path, r, used, m))
        old = s.tree.nodes.get(node.name)
        now_borrowed = tree.borrowed(node)
        was_borrowed = s.tree.borrowed(old) if old is not None else {}
        if now_borrowed and now_borrowed != was_borrowed:
            effects.append(NewBorrowing(node.path, now_borrowed))
    for w in pending(s):
        leaf = tree.leaves[w.queue]
        violation = tree.never_fits(leaf, w.request)
        if violation is not None:
            effects.append(PendingNeverFits(w.display_name, violation))
    return effects


def preview_tree(
    s: EngineState, tree: QuotaTree, also: Callable[[list[NodeView]], None] | None = None
) -> list[TreeEffect]:
    """What applying ``tree`` would change; raises ``QuotaTreeError`` if it would lose a job. ``also`` is
    given ``tree``'s node views while it accounts every admitted job (a front end's own effects)."""
    try:
        effects = tree_effects(s, tree)
        if also is not None:
            also(tree_node_views(tree))
        return effects
    finally:
        tree.reset_usage()
