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
from typing import Any

from rayqueue.queue.queues import LeafQueue
from rayqueue.queue.workload import Reason, Workload, WorkloadState
from rayqueue.quota.quantity import Resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import views
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.changes import Changes
from rayqueue.scheduler.engine.cycle import Cycle
from rayqueue.scheduler.engine.decisions import Decision, Reject, ServiceGrant
from rayqueue.scheduler.engine.events import Events
from rayqueue.scheduler.engine.parking import Parking
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.preemption import Preemption
from rayqueue.scheduler.engine.preview import TreeEffect, preview_tree
from rayqueue.scheduler.engine.services import Service, ServiceSpec, ServiceView
from rayqueue.scheduler.engine.serving import Serving
from rayqueue.scheduler.engine.state import EngineConfig, EngineState, EngineStats
from rayqueue.scheduler.engine.units import Units
from rayqueue.scheduler.engine.views import Explanation, JobView, NodeView, QueueView, TreeView, UnitView


class Engine:
    __slots__ = ("_s", "_events", "_cycle", "_changes", "_serving")

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
        self._serving = Serving(s, ledger)
        self._cycle = Cycle(s, placer, parking, ledger, Preemption(s, placer, ledger, self._events), self._serving)
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

    # ================================================================ services (serving.py)

    def submit_service(self, svc: Service) -> Reason | None:
        """Queue a service (RayService, Serve application); the reason if it can never run. Raises
        ``UnknownQueue`` / ``DuplicateJob``, ``ServiceError`` for bad replica counts."""
        return self._serving.submit(svc)

    def restore_service(self, svc: Service, granted: int, by_unit: dict[str, int], admitted_at: float,
                        head_unit: str | None = None) -> None:
        """Count a service that already runs (after a restart), no checks; restore services before the
        jobs: a job restored as preempted for a service (``restore(..., preempted_by=<service uid>)``)
        holds no quota of its own, the service's counts it."""
        self._serving.restore(svc, granted, by_unit, admitted_at, head_unit)

    def scale_service(self, uid: str, replicas: int, now: float | None = None) -> None:
        """Its autoscaler asks for ``replicas``: a scale-down is returned to headroom at once, a
        scale-up is granted at the next ``schedule`` (see ``service_grants``)."""
        self._serving.scale(uid, replicas, self._s.clock() if now is None else now)

    def finish_service(self, uid: str) -> Service:
        """The service was deleted: both its clusters are released."""
        return self._serving.finish(uid)

    def begin_upgrade(self, uid: str, spec: ServiceSpec, replicas: int | None = None) -> None:
        """A zero-downtime upgrade: a second cluster is charged beside the running one once it fits."""
        self._serving.begin_upgrade(uid, spec, replicas)

    def finish_upgrade(self, uid: str) -> None:
        """The upgraded cluster serves; the old one is released."""
        self._serving.finish_upgrade(uid)

    def service_grants(self) -> list[ServiceGrant]:
        """What the cycles since the last call granted to services (admissions, scale-ups, upgrades)."""
        return self._serving.take_grants()

    def service(self, uid: str) -> ServiceView | None:
        svc = self._s.services.get(uid)
        return self._serving.view(svc) if svc is not None else None

    def services(self) -> list[ServiceView]:
        return [self._serving.view(v) for v in self._s.services.values()]

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

    def preview_tree(
        self, tree: QuotaTree, also: Callable[[list[NodeView]], None] | None = None
    ) -> list[TreeEffect]:
        """What applying ``tree`` would change, as data (``scheduler.presentation`` words it); raises
        ``QuotaTreeError`` if it would lose a job. ``also`` is given ``tree``'s node views as they would be
        with every admitted job counted, for a front end's own effects."""
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

    def tree_view(self) -> TreeView:
        return views.tree_view(self._s)

    def leaf_for(self, namespace: str | None = None, quota: str | None = None) -> str:
        """The queue (leaf) a job of ``namespace``, or naming ``quota``, goes to; ``KeyError`` if none."""
        return views.leaf_for(self._s, namespace, quota)

    def tree_manifest(self) -> dict[str, Any]:
        return views.tree_manifest(self._s)

    def unit_capacity_views(self) -> list[views.UnitCapacityView]:
        """What the capacity rule reads of each unit (``scheduler.engine.capacity``)."""
        return views.unit_capacity_views(self._s)

    def borrowed_share(self, uid: str) -> Resources:
        """The part of admitted job ``uid``'s request its leaf holds above its ``min``."""
        return views.borrowed_share(self._s, uid)

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
    def live_services(self) -> dict[str, Service]:
        return self._s.services

    @property
    def queues(self) -> dict[str, LeafQueue]:
        return self._s.queues
