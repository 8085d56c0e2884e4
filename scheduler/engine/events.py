"""Events from a front end: a job arrives, ends, is suspended or restored; what it held is released
and what that release could unblock is marked for the next cycle.
"""

from __future__ import annotations

import sys

from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import Demand
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.decisions import Reject
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.parking import Parking
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.state import EngineState, Outcome, engine_request
from rayqueue.scheduler.engine.wakeup import ANY


class Events:
    """A front end's events about one job: submitted, finished, cancelled, suspended, restored."""

    __slots__ = ("s", "placer", "parking", "ledger")

    def __init__(self, s: EngineState, placer: Placer, parking: Parking, ledger: BorrowLedger) -> None:
        self.s = s
        self.placer = placer
        self.parking = parking
        self.ledger = ledger

    def submit(self, w: Workload) -> Reject | None:
        """Queue a job. Raises ``UnknownQueue`` / ``DuplicateJob``; returns ``Reject`` if it can never fit."""
        if w.uid in self.s.workloads:
            raise DuplicateJob(f"job {w.uid!r} is already known to the engine (state {self.s.workloads[w.uid].state})")
        if w.queue not in self.s.tree.leaves:
            raise UnknownQueue(self.s.unknown_queue_message(w.queue))
        w.request = engine_request(w.request)
        w.demand = Demand(w.request)
        if w.pod_request is not None:
            w.pod_request = {sys.intern(r): v for r, v in w.pod_request.items() if v}
        w.seq = next(self.s.seq)
        w.state = WorkloadState.PENDING
        w.pending_since = w.submitted_at if w.submitted_at else self.s.clock()
        never = self.placer.never_fits(w)
        w.checked_epoch = self.s.epoch
        if never is not None:
            w.state = WorkloadState.REJECTED
            w.reason = never
            return Reject(w, never)
        w.reason = Reason(ReasonCode.QUEUED, "waiting for the next admission cycle")
        if self.s.restored_waits:
            # Victims restored as being preempted for this job: it waits for them, choosing no others.
            w.waiting_for = self.s.restored_waits.pop(w.uid, set())
        self.s.workloads[w.uid] = w
        q = self.s.queues[w.queue]
        q.add(w)
        self.s.offer(q)
        return None

    def finish(self, uid: str) -> Workload:
        """The job finished, failed or was deleted: release what it held. Pending jobs are removed."""
        w = self.s.get(uid)
        if self.s.unhold(uid):
            self.s.dirty.add(ANY)  # the jobs held back for it compete again
        if w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            self.release(w)
        elif w.state == WorkloadState.PENDING:
            self.dequeue(w)
        w.state = WorkloadState.FINISHED
        self.s.workloads.pop(uid, None)
        return w

    def cancel(self, uid: str) -> Workload:
        w = self.finish(uid)
        w.state = WorkloadState.CANCELLED
        return w

    def suspended(self, uid: str, now: float | None = None) -> Workload:
        """A preempted (or externally suspended) job stopped: release its quota and requeue it."""
        w = self.s.get(uid)
        if w.state not in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            return w
        now = self.s.clock() if now is None else now
        preempted = w.state == WorkloadState.PREEMPTING
        self.release(w)
        if preempted:
            w.preemptions += 1
        w.state = WorkloadState.PENDING
        w.unit = None
        w.admitted_at = None
        w.failures = 0
        w.pending_since = now
        w.waiting_for = set()
        q = self.s.queues[w.queue]
        q.add(w)
        if preempted and self.s.config.backoff_base_s > 0:
            # A preempted job waits a little before it competes again, so a borrower that keeps being
            # reclaimed does not thrash: base, 2 x base, ... per preemption, capped.
            delay = min(self.s.config.backoff_base_s * 2 ** (w.preemptions - 1), self.s.config.backoff_max_s)
            backoff = Outcome(Reason(ReasonCode.BACKOFF, f"preempted; competes again after {delay:g}s"), [], now + delay)
            self.parking.park(w, q, backoff, now, False)
            w.retry_after = now + delay
        else:
            w.retry_after = 0.0
            self.s.offer(q)
        return w

    def restore(
        self,
        w: Workload,
        unit: str | None,
        admitted_at: float,
        preempted_by: str | None = None,
        preempting: bool | None = None,
        reason: Reason | None = None,
    ) -> None:
        """Count a job that already runs (rebuilding after a restart); no checks, nothing twice.

        ``preempted_by`` restores a job that was being preempted for that job (``preempting=True``
        without it: being stopped for a job no longer known): its quota stays held until ``suspended``,
        it is no candidate for another preemption, and the job it was preempted for waits for it
        instead of choosing a second victim. The decision is not made, nor counted, again. ``reason``:
        the reason it was given then (``Reclaimed`` or ``PreemptedByPriority``), if the front end kept it."""
        if w.uid in self.s.workloads:
            raise DuplicateJob(f"job {w.uid!r} is already known to the engine")
        if w.queue not in self.s.tree.leaves:
            raise UnknownQueue(self.s.unknown_queue_message(w.queue))
        w.request = engine_request(w.request)
        w.demand = Demand(w.request)
        unit_name = unit if unit in self.s.units.by_name else self.s.units.units[0].name
        w.seq = next(self.s.seq)
        w.unit = unit_name
        w.admitted_at = admitted_at
        if preempting is None:
            preempting = preempted_by is not None
        if preempting:
            w.state = WorkloadState.PREEMPTING
            w.preempted_by = preempted_by or None
            w.reason = reason or Reason(
                ReasonCode.RECLAIMED,
                f"being preempted{f' for {preempted_by}' if preempted_by else ''} (restored); "
                f"its quota is held until it has stopped",
            )
            if preempted_by and preempted_by in self.s.services:
                # Preempted for a service's scale-up: its quota is counted in the service's (restored first).
                w.handed_over = True
            elif preempted_by:
                preemptor = self.s.workloads.get(preempted_by)
                if preemptor is not None:
                    preemptor.waiting_for = preemptor.waiting_for | {w.uid}
                else:  # restored before the job it was preempted for: handed over on submit
                    self.s.restored_waits.setdefault(preempted_by, set()).add(w.uid)
        else:
            w.state = WorkloadState.ADMITTED
            w.reason = Reason(ReasonCode.ADMITTED, f"running on unit {unit_name} (restored)")
        self.s.workloads[w.uid] = w
        leaf = self.s.tree.leaves[w.queue]
        self.s.queues[w.queue].start(w)
        if not w.handed_over:
            self.s.tree.admit(leaf, w.demand)
            self.s.units.by_name[unit_name].take(w.demand, w.pods)
        self.ledger.note_borrowing(leaf)
        if leaf.name in self.s.borrowing:
            self.s.borrow_admissions += 1
        if preempting:  # its pods are still stopping: LackResourceAndNoTerminating waits for them
            self.s.units.by_name[unit_name].terminating_pods += w.pods

    def release(self, w: Workload) -> None:
        leaf = self.s.tree.leaves[w.queue]
        unit = self.s.units.by_name[w.unit or ""]
        if w.handed_over:  # its quota went to a service when it was preempted (serving.hand_over)
            w.handed_over = False
        else:
            self.s.tree.release(leaf, w.demand)
            unit.give_back(w.demand, w.pods)
        self.ledger.note_borrowing(leaf)
        if w.state == WorkloadState.PREEMPTING:
            # Its preemptor tries again now, even if the room it counted on went elsewhere meanwhile:
            # parked under a room it may never see again, it would wait for good.
            preemptor = self.s.workloads.get(w.preempted_by or "")
            if preemptor is not None:
                self.parking.wake(preemptor)
            unit.terminating_pods -= w.pods
            if not unit.terminating_pods:
                self.s.dirty.add(("terminating", unit.name, ""))
        self.s.queues[w.queue].stop(w)
        # What this release could unblock (its quota path, then its unit) is woken at the next cycle,
        # once per blocker and within the room left then, however many releases came before it.
        dirty = self.s.dirty
        dirty_nodes = self.s.dirty_nodes
        for node in leaf.lineage:
            dirty_nodes.add(node.name)
        if unit.capacity is not None:
            for r in w.request:
                if r in unit.capacity:
                    dirty.add(("unit", unit.name, r))
        if unit.max_pods is not None:
            dirty.add(("pods", unit.name, ""))
        dirty.add(ANY)
        # The leaf's usage fell, so its queue's order across queues may improve.
        self.s.offer(self.s.queues[w.queue])

    def dequeue(self, w: Workload) -> None:
        q = self.s.queues[w.queue]
        q.remove(w)
        self.s.parked.pop(w.uid, None)
        w.park_token += 1
        self.s.offer(q)
