"""The borrowing ledger: what reclaim may look at, kept up to date so that a hopeless reclaim
costs O(changed leaves).
"""

from __future__ import annotations

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.quantity import SLOTS
from rayqueue.quota.tree import QuotaNode
from rayqueue.scheduler.engine.state import EngineState


class BorrowLedger:
    """Which leaves borrow (use more than their min), how much per node, and how many leaves
    below each node hold a job a reclaim could take whole: kept up to date on every admission and release."""

    __slots__ = ("s",)

    def __init__(self, s: EngineState) -> None:
        self.s = s

    def note_borrowing(self, leaf: QuotaNode) -> None:
        """Keep the set of borrowing leaves and, per node, what its borrowing leaves use in all."""
        now = self.s.tree.borrowed(leaf)
        before = self.s.leaf_borrowed.get(leaf.name)
        if now or before:
            # Its usage changed: the most a reclaim could free there (counted lazily, see _count_borrowing).
            self.s.borrow_changed.add(leaf.name)
        if now != (before or {}):
            if now:
                self.s.borrowing.add(leaf.name)
                self.s.leaf_borrowed[leaf.name] = now
            else:
                self.s.borrowing.discard(leaf.name)
                self.s.leaf_borrowed.pop(leaf.name, None)
        self.note_victims(leaf)

    def note_victims(self, leaf: QuotaNode) -> None:
        """Keep, per node, how many leaves below it could lose a job to a reclaim: borrowing leaves
        with a running job that is not already being preempted."""
        has = False
        if leaf.name in self.s.borrowing:
            for v in self.s.queues[leaf.name].admitted.values():
                if v.state == WorkloadState.ADMITTED:
                    has = True
                    break
        if has == (leaf.name in self.s.victim_leaves):
            return
        delta = 1 if has else -1
        if has:
            self.s.victim_leaves.add(leaf.name)
        else:
            self.s.victim_leaves.discard(leaf.name)
        for node in leaf.lineage:
            self.s.victim_leaf_count[node.name] = self.s.victim_leaf_count.get(node.name, 0) + delta

    def count_borrowing(self) -> None:
        """Bring the per-node sums up to date with the leaves that changed since. A borrowing leaf may
        lose everything it uses (its last victim may leave it below its min), so the sums are of usage.
        Sums and counts are lists by resource slot: this runs for nearly every reclaim asked, over the
        leaves that changed since, so a name lookup per resource and node added up."""
        reclaimable, counted = self.s.reclaimable, self.s.borrow_counted
        tree = self.s.tree
        slots = tree.guaranteed_slots
        borrowing = self.s.borrowing
        width = len(SLOTS)
        for name in self.s.borrow_changed:
            leaf = tree.leaves.get(name)
            if leaf is None:
                continue
            used = leaf.used
            before = counted.get(name)
            deltas: list[int] = []
            changed = False
            any_now = False
            borrows = name in borrowing
            for i in slots:
                now = used[i] if borrows and i < len(used) else 0
                was = before[i] if before is not None and i < len(before) else 0
                if now:
                    any_now = True
                if now != was:
                    changed = True
                deltas.append(now - was)
            if changed:
                for node in leaf.lineage:
                    sums = reclaimable.get(node.name)
                    if sums is None:
                        sums = reclaimable[node.name] = [0] * width
                    elif len(sums) < width:
                        SLOTS.widen(sums, 0)
                    for k in range(len(slots)):
                        delta = deltas[k]
                        if delta:
                            i = slots[k]
                            sums[i] = sums[i] + delta
            if any_now:
                # A copy of the leaf's usage (only its guaranteed slots are read back): the items are
                # shared as they are, where storing them one by one boxed each large int anew.
                counted[name] = used.copy()
            elif before is not None:
                del counted[name]
        self.s.borrow_changed = set()
