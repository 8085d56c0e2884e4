"""The admission cycle: which queue's head goes next, and admitting it, preempting for it or parking it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

from rayqueue.queue.queues import LeafQueue
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import Resources, describe
from rayqueue.quota.tree import QuotaNode
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.decisions import Admit, Decision, Placement, Reject
from rayqueue.scheduler.engine.parking import Parking
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.preemption import Preemption
from rayqueue.scheduler.engine.serving import Serving
from rayqueue.scheduler.engine.state import EngineState, Outcome, Turn
from rayqueue.scheduler.engine.units import Unit
from rayqueue.scheduler.engine.wakeup import ANY

# Library functions the hot path calls, as Final: mypyc keeps them in C statics instead of looking
# each one up in the module's globals dict at every call.
heappop: Final = heapq.heappop

# Wake-up rounds in one cycle after the first: what is left waits for the next cycle (see next_wakeup).
ROUNDS: Final = 3


class Cycle:
    """One admission cycle: queue heads in order across queues, each tried once."""

    __slots__ = ("s", "placer", "parking", "ledger", "preemption", "serving")

    def __init__(self, s: EngineState, placer: Placer, parking: Parking, ledger: BorrowLedger, preemption: Preemption,
                 serving: Serving) -> None:
        self.s = s
        self.serving = serving
        self.placer = placer
        self.parking = parking
        self.ledger = ledger
        self.preemption = preemption

    def schedule(self, now: float | None = None) -> list[Decision]:
        """One admission cycle: try queues in order until none has a job that could be admitted now."""
        now = self.s.clock() if now is None else now
        self.parking.fire_timers(now)
        self.s.stats.cycles += 1
        decisions: list[Decision] = []
        if self.s.services:
            # Services first: a scale-up within its reservation never waits behind batch, and a job this
            # cycle admits is never its victim.
            decisions.extend(self.serving.cycle(now))
        self.parking.wake_dirty()
        heap = self.s.heap
        queues = self.s.queues
        rounds = 0
        while True:
            while heap:
                entry: Turn = heappop(heap)
                q = queues.get(entry.queue)
                if q is None or entry.version != q.heap_version:
                    continue
                q.heap_key = None  # its live entry is out of the heap
                w = q.candidate()
                if w is None:
                    continue
                decision = self.attempt(w, q, now)
                if decision is not None:
                    decisions.extend(decision)
                self.s.offer(q)
            # Jobs woken may have failed elsewhere, leaving room unused: wake the next ones.
            rounds += 1
            if rounds > ROUNDS:
                break
            self.parking.wake_dirty()
            if not heap:
                break
        if self.s.withdrawn:
            decisions = self.drop_withdrawn(decisions)
        return decisions

    def drop_withdrawn(self, decisions: list[Decision]) -> list[Decision]:
        """Drop the Admits this cycle withdrew: each withdrawal takes back that job's earliest Admit."""
        left = self.s.withdrawn
        self.s.withdrawn = {}
        kept: list[Decision] = []
        for d in decisions:
            if isinstance(d, Admit):
                uid = d.workload.uid
                n = left.get(uid, 0)
                if n:
                    left[uid] = n - 1
                    continue
            kept.append(d)
        return kept

    def next_wakeup(self) -> float | None:
        if self.s.dirty or self.s.dirty_nodes:
            return self.s.now  # room freed that this cycle did not finish handing out
        timers = self.s.timers
        while timers:
            timer = timers[0]
            at: float = timer[0]
            uid: str = timer[2]
            token: int = timer[3]
            w = self.s.workloads.get(uid)
            if w is not None and w.park_token == token and w.uid in self.s.queues[w.queue].parked:
                return at
            heappop(timers)
        return None

    def attempt(self, w: Workload, q: LeafQueue, now: float) -> list[Decision] | None:
        stats = self.s.stats
        stats.attempts += 1
        never = None
        if w.checked_epoch != self.s.epoch:  # can-ever-fit only changes with the tree or the units
            never = self.placer.never_fits(w)
            w.checked_epoch = self.s.epoch
        if never is not None:
            stats.rejected += 1
            q.remove(w)
            self.s.workloads.pop(w.uid, None)
            w.state = WorkloadState.REJECTED
            w.reason = never
            return [Reject(w, never)]
        leaf = self.s.tree.leaves[w.queue]
        if self.s.reclaim_holds:
            if self.s.unhold(w.uid):
                self.s.dirty.add(ANY)  # the jobs held back for it compete again
            holder = self.preemption.held_from(w, leaf)
            if holder is not None:
                stats.parked += 1
                held = Reason(
                    ReasonCode.WAITING_FOR_RECLAIM,
                    f"{leaf.path} would borrow room being reclaimed for {holder}, which is within its guarantee",
                )
                self.parking.park(w, q, Outcome(held, [], None), now, backoff=False)
                return None
        outcome = self.placer.try_admit(w, leaf, now)
        if isinstance(outcome, Unit):
            stats.admitted += 1
            return [self.admit(w, q, leaf, outcome, now)]
        withdrawn = stats.withdrawn
        preemptions = self.preemption.plan(w, q, leaf, now, outcome)
        if stats.withdrawn != withdrawn and not preemptions:
            # Its victims were admitted in this very cycle and are pending again: their quota is free now.
            outcome = self.placer.try_admit(w, leaf, now)
            if isinstance(outcome, Unit):
                w.waiting_for = set()
                stats.admitted += 1
                return [self.admit(w, q, leaf, outcome, now)]
        stats.parked += 1
        stats.preempted += len(preemptions)
        self.parking.park(w, q, outcome, now, backoff=not preemptions)
        return list(preemptions) if preemptions else None

    def admit(self, w: Workload, q: LeafQueue, leaf: QuotaNode, unit: Unit, now: float) -> Admit:
        q.remove(w)
        w.admitted_at = now
        w.admitted_cycle = self.s.stats.cycles
        w.state = WorkloadState.ADMITTED
        q.start(w)
        self.s.tree.admit(leaf, w.demand)
        self.ledger.note_borrowing(leaf)
        if leaf.name in self.s.borrowing:
            self.s.borrow_admissions += 1
        unit.take(w.demand, w.pods)
        w.state = WorkloadState.ADMITTED
        w.unit = unit.name
        w.admitted_at = now
        w.failures = 0
        if w.waiting_for:
            w.waiting_for = set()
        borrowing = self.s.leaf_borrowed.get(leaf.name)  # a snapshot: the engine replaces, never mutates it
        w.reason = Reason(ReasonCode.ADMITTED, _admitted_message(leaf.path, unit.name, borrowing))
        placement = self.s.placements.get(unit.name)
        if placement is None:
            placement = self.s.placements[unit.name] = Placement(
                unit.name, unit.resource, unit.node_selector, unit.pod_labels, unit.tolerations
            )
        return Admit(w, placement)


def _admitted_message(path: str, unit: str, borrowing: Resources | None) -> Callable[[], str]:
    # A function of its own: a lambda inside ``Cycle.admit`` made mypyc build an environment object for
    # every call of ``admit`` (its locals live there), not only for the message.
    return lambda: f"admitted to {path} on unit {unit}" + (f", borrowing {describe(borrowing)}" if borrowing else "")
