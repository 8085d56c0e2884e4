"""The admission engine's one entry point: quota tree + queues + ResourcePolicy units, no I/O.

Front ends feed it events (``submit``, ``finish``, ``suspended``, ``cancel``) and call ``schedule``,
which returns decisions as data (``Admit``, ``Preempt``, ``Reject``). Every waiting job carries a typed
reason.

``Engine`` decides nothing itself: it wires the parts that do, each a module named by what it decides,
all sharing one ``EngineState``:

- ``cycle``: which queue's head goes next, admitting it (or preempting for it, or parking it);
- ``placement``: does the job fit now on its quota path and in a unit, can it ever fit;
- ``preemption``: which running jobs to stop (priority in the queue, reclaim of borrowed work);
- ``borrowing``: the ledger of borrowing leaves that reclaim reads;
- ``parking``: the wake-up index and backoff of jobs that did not fit;
- ``events``: a front end's events about one job (submit, finish, suspended, restore);
- ``changes`` and ``preview``: a new tree, ResourcePolicy or capacity, applied or dry-run;
- ``views``: what front ends read.

Why it stays fast with 100,000 pending jobs: a cycle never scans the queues. Queues that have a job to
try sit in one heap ordered across queues; a job that does not fit is *parked* in a wake-up index keyed
by what blocked it (a quota node's ``max`` or a unit's capacity, per resource, sorted by how much it
needs), and only a release on that node or unit that leaves enough room wakes it. A decision therefore
costs O(log pending + depth x resources), independent of how many jobs wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from rayqueue.queue.queues import LeafQueue
from rayqueue.queue.workload import Reason, Workload, WorkloadState
from rayqueue.quota.quantity import Resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import views
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.changes import Changes
from rayqueue.scheduler.engine.cycle import Cycle
from rayqueue.scheduler.engine.decisions import Decision, Reject
from rayqueue.scheduler.engine.events import Events
from rayqueue.scheduler.engine.parking import Parking
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.preemption import Preemption
from rayqueue.scheduler.engine.preview import TreeEffect, preview_tree
from rayqueue.scheduler.engine.state import EngineConfig, EngineState, EngineStats
from rayqueue.scheduler.engine.units import Units
from rayqueue.scheduler.engine.views import Explanation, JobView, NodeView, QueueView, UnitView


class Engine:
    __slots__ = ("_s", "_events", "_cycle", "_changes")

    def __init__(
        self,
        tree: QuotaTree,
        units: Units | None = None,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = self._s = EngineState(tree, units, config, clock)
        placer = Placer(s)
        parking = Parking(s)
        ledger = BorrowLedger(s)
        self._events = Events(s, placer, parking, ledger)
        self._cycle = Cycle(s, placer, parking, ledger, Preemption(s, placer, ledger, self._events))
        self._changes = Changes(s, parking, ledger)

    # ================================================================ events from a front end

    def submit(self, w: Workload) -> Reject | None:
        """Queue a job. Raises ``UnknownQueue`` / ``DuplicateJob``; returns ``Reject`` if it can never fit."""
        return self._events.submit(w)

    def finish(self, uid: str) -> Workload:
        """The job finished, failed or was deleted: release what it held. Pending jobs are removed."""
        return self._events.finish(uid)

    def cancel(self, uid: str) -> Workload:
        return self._events.cancel(uid)

    def suspended(self, uid: str, now: float | None = None) -> Workload:
        """A preempted (or externally suspended) job stopped: release its quota and requeue it."""
        return self._events.suspended(uid, now)

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
        self._events.restore(w, unit, admitted_at, preempted_by, preempting, reason)

    # ================================================================ the admission cycle

    def schedule(self, now: float | None = None) -> list[Decision]:
        """One admission cycle: try queues in order until none has a job that could be admitted now."""
        return self._cycle.schedule(now)

    def next_wakeup(self) -> float | None:
        return self._cycle.next_wakeup()

    # ================================================================ tree and capacity changes

    def set_unit_capacity(
        self,
        name: str,
        capacity: Resources | None,
        max_pods: int | None = -1,
        *,
        largest: Resources | None = None,
        complete: bool = False,
    ) -> None:
        """A unit's capacity changed (nodes joined or left). Only the jobs waiting on this unit look
        again, at the next cycle; what can ever fit is checked again at each job's next try.

        ``complete``: measured from the unit's nodes, so a resource it does not name is 0 there;
        ``largest``: per resource, the most any one of those nodes has (the biggest pod it can run)."""
        self._changes.set_unit_capacity(name, capacity, max_pods, largest=largest, complete=complete)

    def set_units(self, units: Units) -> None:
        """Swap the ResourcePolicy; running jobs keep their unit when it still exists."""
        self._changes.set_units(units)

    def preview_tree(self, tree: QuotaTree, also: Callable[[QuotaTree], None] | None = None) -> list[TreeEffect]:
        """What applying ``tree`` would change, as data (``scheduler.presentation`` words it); raises
        ``QuotaTreeError`` if it would lose a job. ``also`` runs while ``tree`` accounts every admitted job,
        for a front end's own effects."""
        return preview_tree(self._s, tree, also)

    def set_tree(self, tree: QuotaTree) -> list[TreeEffect]:
        """Apply ``tree`` while jobs run; returns what changed (as ``preview_tree``)."""
        return self._changes.set_tree(tree)

    # ================================================================ views

    def explain(self, uid: str) -> Explanation:
        return views.explain(self._s, uid)

    def pending(self, queue: str | None = None) -> Iterable[Workload]:
        """Pending jobs in queue order (one queue, or every queue one after another)."""
        return views.pending(self._s, queue)

    def admitted(self) -> Iterable[Workload]:
        return views.admitted(self._s)

    def has_job(self, uid: str) -> bool:
        """The engine holds ``uid`` (pending, admitted or preempting)."""
        return uid in self._s.workloads

    def current_state(self, w: Workload) -> WorkloadState | None:
        """The state of this very job if the engine still holds it; None once it finished, was
        cancelled or rejected, or another job took its uid."""
        return w.state if self._s.workloads.get(w.uid) is w else None

    def job(self, uid: str) -> JobView | None:
        return views.job(self._s, uid)

    def jobs(self, state: WorkloadState | None = None) -> list[JobView]:
        return views.jobs(self._s, state)

    def counts(self) -> dict[WorkloadState, int]:
        return views.counts(self._s)

    def queue_views(self) -> list[QueueView]:
        return views.queue_views(self._s)

    def node_views(self) -> list[NodeView]:
        return views.node_views(self._s)

    def unit_views(self) -> list[UnitView]:
        return views.unit_views(self._s)

    def unit_capacity_views(self) -> list[views.UnitCapacityView]:
        """What the capacity rule reads of each unit (``scheduler.engine.capacity``)."""
        return views.unit_capacity_views(self._s)

    def queue_totals(self) -> list[views.QueueTotals]:
        """Per leaf queue: pending and admitted counts and the pending jobs' summed request."""
        return views.queue_totals(self._s)

    # The engine's live state, for the engine's own tests and the simulator's checks; front ends read
    # the views above instead, so that what they may rely on stays small.

    @property
    def tree(self) -> QuotaTree:
        return self._s.tree

    @property
    def units(self) -> Units:
        return self._s.units

    @property
    def config(self) -> EngineConfig:
        return self._s.config

    @property
    def clock(self) -> Callable[[], float]:
        return self._s.clock

    @property
    def stats(self) -> EngineStats:
        return self._s.stats

    @property
    def workloads(self) -> dict[str, Workload]:
        return self._s.workloads

    @property
    def queues(self) -> dict[str, LeafQueue]:
        return self._s.queues
