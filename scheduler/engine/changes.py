"""Changes to the tree, the units and their capacity, applied while jobs run.
"""

from __future__ import annotations

import sys

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.quantity import Resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.parking import Parking
from rayqueue.scheduler.engine.preview import TreeEffect, tree_effects
from rayqueue.scheduler.engine.serving import retake_services
from rayqueue.scheduler.engine.state import EngineState
from rayqueue.scheduler.engine.units import Units
from rayqueue.scheduler.engine.views import admitted


class Changes:
    """The tree, the ResourcePolicy or a unit's capacity changes while jobs run."""

    __slots__ = ("s", "parking", "ledger")

    def __init__(self, s: EngineState, parking: Parking, ledger: BorrowLedger) -> None:
        self.s = s
        self.parking = parking
        self.ledger = ledger

    def set_unit_capacity(self, name: str, capacity: Resources | None, max_pods: int | None = -1, *,
                          largest: Resources | None = None, complete: bool = False) -> None:
        """A unit's capacity changed (nodes joined or left). Only the jobs waiting on this unit look
        again, at the next cycle; what can ever fit is checked again at each job's next try.

        ``complete``: measured from the unit's nodes, so a resource it does not name is 0 there;
        ``largest``: per resource, the most any one of those nodes has (the biggest pod it can run)."""
        unit = self.s.units.by_name[name]
        before = (unit.capacity, unit.max_pods, unit.complete, unit.largest)
        unit.set_capacity(
            {sys.intern(r): v for r, v in capacity.items()} if capacity is not None else None,
            {sys.intern(r): v for r, v in largest.items()} if largest is not None else None,
            complete,
        )
        if max_pods != -1:
            unit.max_pods = max_pods
        if (unit.capacity, unit.max_pods, unit.complete, unit.largest) == before:
            return
        if (unit.complete, unit.largest) != before[2:]:
            # Which pods fit on one node, or which resources count as absent, changed: a job that skipped
            # this unit for that holds no blocker on it, so every waiting job looks again.
            self.parking.wake_all()
            return
        self.s.epoch += 1
        for r in set(before[0] or {}) | set(unit.capacity or {}):
            self.s.dirty.add(("unit", name, r))
        self.s.dirty.add(("pods", name, ""))

    def set_units(self, units: Units) -> None:
        """Swap the ResourcePolicy; running jobs keep their unit when it still exists."""
        for w in admitted(self.s):
            if w.unit not in units.by_name:
                w.unit = units.units[0].name
            if not w.handed_over:
                units.by_name[w.unit].take(w.demand, w.pods)
            if w.state == WorkloadState.PREEMPTING:
                units.by_name[w.unit].terminating_pods += w.pods
        retake_services(self.s, units)
        self.s.units = units
        self.s.placements = {}
        self.parking.wake_all()

    def set_tree(self, tree: QuotaTree) -> list[TreeEffect]:
        effects = tree_effects(self.s, tree)  # leaves ``tree`` accounting every admitted job
        self.s.tree = tree
        self.s.sync_queues()
        self.s.borrowing, self.s.leaf_borrowed, self.s.reclaimable = set(), {}, {}
        self.s.borrow_changed, self.s.borrow_counted = set(), {}
        self.s.victim_leaves, self.s.victim_leaf_count = set(), {}
        self.s.reclaim_holds = {}  # new mins: every waiting preemptor plans again
        self.s.borrow_admissions += 1  # new mins: a reclaim that failed before may succeed now
        for leaf in tree.leaves.values():
            self.ledger.note_borrowing(leaf)
        self.parking.wake_all()
        return effects
