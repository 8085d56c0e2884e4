"""The admission engine: quota tree + queues + ResourcePolicy units, no I/O.

Front ends feed it events (``submit``, ``finish``, ``suspended``, ``cancel``) and call ``schedule``,
which returns decisions as data (``Admit``, ``Preempt``, ``Reject``). Every waiting job carries a typed
reason.

Why it stays fast with 100,000 pending jobs: a cycle never scans the queues. Queues that have a job to
try sit in one heap ordered across queues; a job that does not fit is *parked* in a wake-up index keyed
by what blocked it (a quota node's ``max`` or a unit's capacity, per resource, sorted by how much it
needs), and only a release on that node or unit that leaves enough room wakes it. A decision therefore
costs O(log pending + depth x resources), independent of how many jobs wait.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rayqueue.queue.queues import LeafQueue, PreemptionPolicy, QueueingStrategy
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, MILLI, NO_LIMIT, SLOTS, Demand, Resources, describe, format_quantity
from rayqueue.quota.tree import (
    PREEMPTION_ATTRIBUTE,
    QUEUEING_ATTRIBUTE,
    QuotaNode,
    QuotaTree,
    QuotaTreeError,
    QuotaViolation,
    diff_trees,
)
from rayqueue.scheduler.decisions import Admit, Decision, Placement, Preempt, Reject
from rayqueue.scheduler.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.units import Unit, Units
from rayqueue.scheduler.wakeup import ANY, BlockerKey, WakeIndex, WakeOrder

_RETRY, _REINDEX = 0, 1
# Wake-up rounds in one cycle after the first: what is left waits for the next cycle (see next_wakeup).
ROUNDS = 3


@dataclass(slots=True)
class EngineConfig:
    default_queueing: QueueingStrategy = "BestEffortFIFO"
    default_preemption: PreemptionPolicy = "LowerPriority"
    reclaim: bool = True
    # A job that is woken and still does not fit waits base * 2**(k-1) (capped) before it is tried
    # again; the first wake after it parks is never delayed.
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass(slots=True)
class EngineStats:
    """Counters a front end exports as metrics; ``attempts`` counts every admission decision."""

    attempts: int = 0
    admitted: int = 0
    parked: int = 0
    rejected: int = 0
    preempted: int = 0
    cycles: int = 0
    moved: int = 0  # parked jobs moved to another full blocker instead of being tried
    withdrawn: int = 0  # admissions taken back in the cycle that made them (see Engine._withdraw)


@dataclass(frozen=True, slots=True)
class Explanation:
    uid: str
    state: WorkloadState
    queue: str
    position: int | None
    pending_in_queue: int
    reason: Reason | None
    unit: str | None = None
    admitted_at: float | None = None
    expected_start: float | None = None


class _Outcome:
    """Why one attempt did not admit: the reason and what to wait on."""

    __slots__ = ("reason", "blockers", "retry_at", "alternatives")

    def __init__(self, reason: Reason, blockers: list[tuple[BlockerKey, int]], retry_at: float | None = None,
                 alternatives: bool = False) -> None:
        self.reason = reason
        self.blockers = blockers
        self.retry_at = retry_at
        # Quota blockers must all have room; unit blockers are alternatives (any unit with room will do).
        self.alternatives = alternatives


class Engine:
    def __init__(
        self,
        tree: QuotaTree,
        units: Units | None = None,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tree = tree
        self.units = units if units is not None else Units.single(None)
        self.config = config or EngineConfig()
        self.clock = clock
        self.workloads: dict[str, Workload] = {}
        self.queues: dict[str, LeafQueue] = {}
        self._seq = itertools.count(1)
        # (within guarantee?, -priority, fair share, submitted, seq, version, queue): one flat tuple, so a
        # heap comparison is one tuple comparison.
        self._heap: list[tuple[int, int, float, float, int, int, str]] = []
        self._placements: dict[str, Placement] = {}  # per unit, shared by every job admitted there
        self._index = WakeIndex()
        self._dirty: set[BlockerKey] = set()  # blockers to look at in the next wake-up round
        self._dirty_nodes: set[str] = set()  # quota nodes released on since: each of their blockers
        # uid -> (its blockers, its wake order) while parked
        self._parked: dict[str, tuple[list[tuple[BlockerKey, int]], WakeOrder]] = {}
        # (when, seq, uid, park token, kind): kind RETRY tries the job then; REINDEX ends a backoff.
        self._timers: list[tuple[float, int, str, int, int]] = []
        self._now = 0.0  # the time of the latest cycle: backoff is measured against it
        self._epoch = 0  # bumped when the tree or the units change
        self.stats = EngineStats()
        self._borrowing: set[str] = set()  # leaves using more than their min: where reclaim looks
        self._leaf_borrowed: dict[str, Resources] = {}
        self._borrow_admissions = 0  # admissions into borrowing leaves: new work a reclaim could take
        self._victim_leaves: set[str] = set()
        self._victim_leaf_count: dict[str, int] = {}
        self._reclaimable: dict[str, Resources] = {}  # per node: what its borrowing leaves use in all
        # Leaves whose borrowing changed since ``_reclaimable`` last took it in, and what it took in: the
        # sums are brought up to date only when a reclaim asks (admissions and releases far outnumber it).
        self._borrow_changed: set[str] = set()
        self._borrow_counted: dict[str, Resources] = {}
        # uid -> how many of its admissions this cycle were withdrawn: schedule() drops those Admits.
        self._withdrawn: dict[str, int] = {}
        # preemptor uid -> victims restored as being preempted for it before it was submitted again
        self._restored_waits: dict[str, set[str]] = {}
        self._sync_queues()

    # ================================================================ events from a front end

    def submit(self, w: Workload) -> Reject | None:
        """Queue a job. Raises ``UnknownQueue`` / ``DuplicateJob``; returns ``Reject`` if it can never fit."""
        if w.uid in self.workloads:
            raise DuplicateJob(f"job {w.uid!r} is already known to the engine (state {self.workloads[w.uid].state})")
        if w.queue not in self.tree.leaves:
            raise UnknownQueue(self._unknown_queue_message(w.queue))
        w.request = _engine_request(w.request)
        w.demand = Demand(w.request)
        if w.pod_request is not None:
            w.pod_request = {sys.intern(r): v for r, v in w.pod_request.items() if v}
        w.seq = next(self._seq)
        w.state = WorkloadState.PENDING
        w.pending_since = w.submitted_at if w.submitted_at else self.clock()
        never = self._never_fits(w)
        w.checked_epoch = self._epoch
        if never is not None:
            w.state = WorkloadState.REJECTED
            w.reason = never
            return Reject(w, never)
        w.reason = Reason(ReasonCode.QUEUED, "waiting for the next admission cycle")
        if self._restored_waits:
            # Victims restored as being preempted for this job: it waits for them, choosing no others.
            w.waiting_for = self._restored_waits.pop(w.uid, set())
        self.workloads[w.uid] = w
        q = self.queues[w.queue]
        q.add(w)
        self._offer(q)
        return None

    def finish(self, uid: str) -> Workload:
        """The job finished, failed or was deleted: release what it held. Pending jobs are removed."""
        w = self._get(uid)
        if w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            self._release(w)
        elif w.state == WorkloadState.PENDING:
            self._dequeue(w)
        w.state = WorkloadState.FINISHED
        self.workloads.pop(uid, None)
        return w

    def cancel(self, uid: str) -> Workload:
        w = self.finish(uid)
        w.state = WorkloadState.CANCELLED
        return w

    def suspended(self, uid: str, now: float | None = None) -> Workload:
        """A preempted (or externally suspended) job stopped: release its quota and requeue it."""
        w = self._get(uid)
        if w.state not in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            return w
        now = self.clock() if now is None else now
        preempted = w.state == WorkloadState.PREEMPTING
        self._release(w)
        if preempted:
            w.preemptions += 1
        w.state = WorkloadState.PENDING
        w.unit = None
        w.admitted_at = None
        w.failures = 0
        w.pending_since = now
        w.waiting_for = set()
        q = self.queues[w.queue]
        q.add(w)
        if preempted and self.config.backoff_base_s > 0:
            # A preempted job waits a little before it competes again, so a borrower that keeps being
            # reclaimed does not thrash: base, 2 x base, ... per preemption, capped.
            delay = min(self.config.backoff_base_s * 2 ** (w.preemptions - 1), self.config.backoff_max_s)
            backoff = _Outcome(Reason(ReasonCode.BACKOFF, f"preempted; competes again after {delay:g}s"), [], now + delay)
            self._park(w, q, backoff, now, False)
            w.retry_after = now + delay
        else:
            w.retry_after = 0.0
            self._offer(q)
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
        if w.uid in self.workloads:
            raise DuplicateJob(f"job {w.uid!r} is already known to the engine")
        if w.queue not in self.tree.leaves:
            raise UnknownQueue(self._unknown_queue_message(w.queue))
        w.request = _engine_request(w.request)
        w.demand = Demand(w.request)
        unit_name = unit if unit in self.units.by_name else self.units.units[0].name
        w.seq = next(self._seq)
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
            if preempted_by:
                preemptor = self.workloads.get(preempted_by)
                if preemptor is not None:
                    preemptor.waiting_for = preemptor.waiting_for | {w.uid}
                else:  # restored before the job it was preempted for: handed over on submit
                    self._restored_waits.setdefault(preempted_by, set()).add(w.uid)
        else:
            w.state = WorkloadState.ADMITTED
            w.reason = Reason(ReasonCode.ADMITTED, f"running on unit {unit_name} (restored)")
        self.workloads[w.uid] = w
        leaf = self.tree.leaves[w.queue]
        self.queues[w.queue].start(w)
        self.tree.admit(leaf, w.demand)
        self._note_borrowing(leaf)
        if leaf.name in self._borrowing:
            self._borrow_admissions += 1
        self.units.by_name[unit_name].take(w.demand, w.pods)
        if preempting:  # its pods are still stopping: LackResourceAndNoTerminating waits for them
            self.units.by_name[unit_name].terminating_pods += w.pods

    # ================================================================ the admission cycle

    def schedule(self, now: float | None = None) -> list[Decision]:
        """One admission cycle: try queues in order until none has a job that could be admitted now."""
        now = self.clock() if now is None else now
        self._fire_timers(now)
        self.stats.cycles += 1
        decisions: list[Decision] = []
        self._wake_dirty()
        heap = self._heap
        queues = self.queues
        rounds = 0
        while True:
            while heap:
                entry = heapq.heappop(heap)
                version, name = entry[5], entry[6]
                q = queues.get(name)
                if q is None or version != q.heap_version:
                    continue
                q.heap_key = None  # its live entry is out of the heap
                w = q.candidate()
                if w is None:
                    continue
                decision = self._attempt(w, q, now)
                if decision is not None:
                    decisions.extend(decision)
                self._offer(q)
            # Jobs woken may have failed elsewhere, leaving room unused: wake the next ones.
            rounds += 1
            if rounds > ROUNDS:
                break
            self._wake_dirty()
            if not heap:
                break
        if self._withdrawn:
            decisions = self._drop_withdrawn(decisions)
        return decisions

    def _drop_withdrawn(self, decisions: list[Decision]) -> list[Decision]:
        """Drop the Admits this cycle withdrew: each withdrawal takes back that job's earliest Admit."""
        left = self._withdrawn
        self._withdrawn = {}
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
        if self._dirty or self._dirty_nodes:
            return self._now  # room freed that this cycle did not finish handing out
        timers = self._timers
        while timers:
            at, _, uid, token, _kind = timers[0]
            w = self.workloads.get(uid)
            if w is not None and w.park_token == token and w.uid in self.queues[w.queue].parked:
                return at
            heapq.heappop(timers)
        return None

    # ================================================================ views

    def explain(self, uid: str) -> Explanation:
        w = self._get(uid)
        q = self.queues[w.queue]
        position = None
        reason = w.reason
        if w.state == WorkloadState.PENDING:
            position = q.position(w)
            head = q.head()
            if q.strategy == "StrictFIFO" and head is not None and head is not w:
                reason = Reason(
                    ReasonCode.BLOCKED_BY_HEAD,
                    f"queue {q.name} is StrictFIFO and its head {head.display_name} waits "
                    f"({head.reason or 'not yet tried'})",
                )
        return Explanation(
            uid=w.uid,
            state=w.state,
            queue=w.queue,
            position=position,
            pending_in_queue=len(q),
            reason=reason,
            unit=w.unit,
            admitted_at=w.admitted_at,
        )

    def pending(self, queue: str | None = None) -> Iterable[Workload]:
        """Pending jobs in queue order (one queue, or every queue one after another)."""
        names = [queue] if queue else list(self.queues)
        for name in names:
            q = self.queues[name]
            for key in q.pending:
                yield q.jobs[key]

    def admitted(self) -> Iterable[Workload]:
        for q in self.queues.values():
            yield from q.admitted.values()

    # ================================================================ tree and capacity changes

    def set_unit_capacity(self, name: str, capacity: Resources | None, max_pods: int | None = -1, *,
                          largest: Resources | None = None, complete: bool = False) -> None:
        """A unit's capacity changed (nodes joined or left). Only the jobs waiting on this unit look
        again, at the next cycle; what can ever fit is checked again at each job's next try.

        ``complete``: measured from the unit's nodes, so a resource it does not name is 0 there;
        ``largest``: per resource, the most any one of those nodes has (the biggest pod it can run)."""
        unit = self.units.by_name[name]
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
            self._wake_all()
            return
        self._epoch += 1
        for r in set(before[0] or {}) | set(unit.capacity or {}):
            self._dirty.add(("unit", name, r))
        self._dirty.add(("pods", name, ""))

    def set_units(self, units: Units) -> None:
        """Swap the ResourcePolicy; running jobs keep their unit when it still exists."""
        for w in self.admitted():
            if w.unit not in units.by_name:
                w.unit = units.units[0].name
            units.by_name[w.unit].take(w.demand, w.pods)
            if w.state == WorkloadState.PREEMPTING:
                units.by_name[w.unit].terminating_pods += w.pods
        self.units = units
        self._placements = {}
        self._wake_all()

    def preview_tree(self, tree: QuotaTree, also: Callable[[QuotaTree], list[str]] | None = None) -> list[str]:
        """What applying ``tree`` would change; raises ``QuotaTreeError`` if it would lose a job. ``also``
        adds a front end's own effects, computed while ``tree`` accounts every admitted job."""
        try:
            effects = self._tree_effects(tree)
            return effects + also(tree) if also is not None else effects
        finally:
            tree.reset_usage()

    def set_tree(self, tree: QuotaTree) -> list[str]:
        effects = self._tree_effects(tree)  # leaves ``tree`` accounting every admitted job
        self.tree = tree
        self._sync_queues()
        self._borrowing, self._leaf_borrowed, self._reclaimable = set(), {}, {}
        self._borrow_changed, self._borrow_counted = set(), {}
        self._victim_leaves, self._victim_leaf_count = set(), {}
        self._borrow_admissions += 1  # new mins: a reclaim that failed before may succeed now
        for leaf in tree.leaves.values():
            self._note_borrowing(leaf)
        self._wake_all()
        return effects

    # ================================================================ internals: attempts

    def _attempt(self, w: Workload, q: LeafQueue, now: float) -> list[Decision] | None:
        stats = self.stats
        stats.attempts += 1
        never = None
        if w.checked_epoch != self._epoch:  # can-ever-fit only changes with the tree or the units
            never = self._never_fits(w)
            w.checked_epoch = self._epoch
        if never is not None:
            stats.rejected += 1
            q.remove(w)
            self.workloads.pop(w.uid, None)
            w.state = WorkloadState.REJECTED
            w.reason = never
            return [Reject(w, never)]
        leaf = self.tree.leaves[w.queue]
        outcome = self._try_admit(w, leaf, now)
        if isinstance(outcome, Unit):
            stats.admitted += 1
            return [self._admit(w, q, leaf, outcome, now)]
        withdrawn = stats.withdrawn
        preemptions = self._plan_preemption(w, q, leaf, now, outcome)
        if stats.withdrawn != withdrawn and not preemptions:
            # Its victims were admitted in this very cycle and are pending again: their quota is free now.
            outcome = self._try_admit(w, leaf, now)
            if isinstance(outcome, Unit):
                w.waiting_for = set()
                stats.admitted += 1
                return [self._admit(w, q, leaf, outcome, now)]
        stats.parked += 1
        stats.preempted += len(preemptions)
        self._park(w, q, outcome, now, backoff=not preemptions)
        return list(preemptions) if preemptions else None

    def _try_admit(self, w: Workload, leaf: QuotaNode, now: float) -> Unit | _Outcome:
        # Every full node on the way up, so a wake from one of them checks the others first.
        over = self.tree.over_max(leaf, w.demand)
        if over:
            first, r = over[0]
            return _Outcome(
                Reason(ReasonCode.QUOTA_MAX_EXCEEDED, _violation_message(first, r, first.used_of(r), w.request[r])),
                [(("node", node.name, r), w.request[r]) for node, r in over],
            )
        return self._place(w, now)

    def _place(self, w: Workload, now: float) -> Unit | _Outcome:
        policy = self.units.when_try_next
        lacks: list[Callable[[], str]] = []
        blockers: list[tuple[BlockerKey, int]] = []
        retry_at: float | None = None
        request, pods, pod_request = w.request, w.pods, w.pod_request
        for unit in self.units.units:
            if unit.largest is not None and pod_request:
                misfit = unit.pod_misfit(pod_request)
                if misfit is not None:  # room in the pool, but no one node could run its largest pod
                    lacks.append(_const(misfit))
                    continue
            if unit.max_pods is not None and unit.pods + pods > unit.max_pods:
                lacks.append(_pods_message(unit.name, unit.max_pods, unit.pods, pods))
                if unit.can_ever_hold(request, pods, pod_request):
                    blockers.append((("pods", unit.name, ""), pods))
                continue  # every policy moves on when a unit's max is exceeded
            resource = unit.shortfall(w.demand)
            if resource is None:
                return unit
            if unit.lacks(resource):
                lacks.append(_lacks_message(unit.name, resource, request[resource]))
            else:
                capacity = unit.capacity_of(resource)
                lacks.append(_full_message(unit.name, resource, unit.used_of(resource), capacity, request[resource]))
            if not unit.can_ever_hold(request, pods, pod_request):
                continue
            blockers.append((("unit", unit.name, resource), request[resource]))
            if policy == "LackResourceOrExceedMax":
                continue
            if policy == "LackResourceAndNoTerminating":
                if not unit.terminating_pods:
                    continue
                # Its terminating pods may leave room here: wait for them to go (woken when the last does).
                lacks.append(_terminating_message(unit.name, unit.terminating_pods))
                blockers.append((("terminating", unit.name, ""), 0))
                break
            if policy == "TimeoutOrExceedMax":
                deadline = w.pending_since + self.units.timeout_s
                if now >= deadline:
                    continue
                retry_at = deadline
            break  # ExceedMax, or the timeout has not passed: wait for this unit
        reason = Reason(ReasonCode.NO_CAPACITY_IN_UNITS, lambda: "; ".join(m() for m in lacks))
        return _Outcome(reason, blockers, retry_at, alternatives=True)

    def _never_fits(self, w: Workload) -> Reason | None:
        leaf = self.tree.leaves.get(w.queue)
        if leaf is None:
            return Reason(ReasonCode.INVALID, self._unknown_queue_message(w.queue))
        violation = self.tree.never_fits(leaf, w.request)
        if violation is not None:
            r = violation.resource
            return Reason(
                ReasonCode.NEVER_FITS,
                f"needs {format_quantity(violation.requested, r)} {r}, max of {violation.node} is "
                f"{format_quantity(violation.limit, r)}",
            )
        why = [u.never_holds(w.request, w.pods, w.pod_request) for u in self.units.units]
        if all(why):
            return Reason(
                ReasonCode.NEVER_FITS,
                f"needs {describe(_visible(w.request))} in {w.pods} pods, larger than every unit "
                f"({'; '.join(m for m in why if m)})",
            )
        return None

    def _admit(self, w: Workload, q: LeafQueue, leaf: QuotaNode, unit: Unit, now: float) -> Admit:
        q.remove(w)
        w.admitted_at = now
        w.admitted_cycle = self.stats.cycles
        w.state = WorkloadState.ADMITTED
        q.start(w)
        self.tree.admit(leaf, w.demand)
        self._note_borrowing(leaf)
        if leaf.name in self._borrowing:
            self._borrow_admissions += 1
        unit.take(w.demand, w.pods)
        w.state = WorkloadState.ADMITTED
        w.unit = unit.name
        w.admitted_at = now
        w.failures = 0
        if w.waiting_for:
            w.waiting_for = set()
        borrowing = self._leaf_borrowed.get(leaf.name)  # a snapshot: the engine replaces, never mutates it
        w.reason = Reason(
            ReasonCode.ADMITTED,
            lambda: f"admitted to {leaf.path} on unit {unit.name}" + (f", borrowing {describe(borrowing)}" if borrowing else ""),
        )
        placement = self._placements.get(unit.name)
        if placement is None:
            placement = self._placements[unit.name] = Placement(
                unit.name, unit.resource, unit.node_selector, unit.pod_labels, unit.tolerations
            )
        return Admit(w, placement)

    # ================================================================ internals: preemption

    def _plan_preemption(self, w: Workload, q: LeafQueue, leaf: QuotaNode, now: float, outcome: _Outcome) -> list[Preempt]:
        """Kueue's classical preemption: victims in the job's own queue (lower priority, where the leaf's
        ``preemptionPolicy`` allows it), then borrowed work elsewhere if the job then fits within its
        own guarantee; taken one at a time until the job fits, then the ones not needed are given back."""
        if w.waiting_for and any(
            (v := self.workloads.get(uid)) is not None and v.state == WorkloadState.PREEMPTING for uid in w.waiting_for
        ):
            waiting = ", ".join(sorted(w.waiting_for))
            inner = outcome.reason
            outcome.reason = Reason(ReasonCode.WAITING_FOR_RECLAIM, lambda: f"waiting for {waiting} to stop; then {inner}")
            return []
        # Cheap checks first: most jobs that wait have nothing they could preempt.
        order = q.victim_order
        own = q.preemption == "LowerPriority" and bool(order) and order[0][0] < w.priority
        if not own and not (
            self.config.reclaim and self.tree.within_guarantee(leaf, w.demand) and self._reclaim_could_help(w, outcome)
        ):
            return []
        # A plan that failed can only succeed once new borrowed work exists or the shortfall shrank: a
        # job admitted meanwhile in the preemptor's own queue, taken back, leaves the state that failed.
        shortfall = self._shortfall(w, outcome)
        memo = w.reclaim_memo
        if memo is not None and memo[0] == self._borrow_admissions and shortfall >= memo[1]:
            return []
        victims, reclaimed = self._choose_victims(w, q, leaf, now, outcome, own)
        if not victims:
            w.reclaim_memo = (self._borrow_admissions, shortfall)
            return []
        w.reclaim_memo = None
        return self._preempt(w, victims, reclaimed, outcome, leaf)

    def _fits_now(self, w: Workload, leaf: QuotaNode, now: float) -> bool:
        return isinstance(self._try_admit(w, leaf, now), Unit)

    def _choose_victims(
        self, w: Workload, q: LeafQueue, leaf: QuotaNode, now: float, outcome: _Outcome, own: bool
    ) -> tuple[list[Workload], list[bool]]:
        """A minimal set of victims whose removal lets ``w`` fit, and for each whether it is reclaimed
        from another queue (else preempted by priority in ``w``'s own queue); empty if none does."""
        removed: list[Workload] = []
        keep: list[bool] = []  # per removed job: still taken out of the accounting
        fits = False
        try:
            if own:
                # The own queue is nearest: its lower-priority jobs, lowest priority and newest first.
                admitted = q.admitted
                for key in q.victim_order:
                    if key[0] >= w.priority:
                        break
                    v = admitted[key[-1]]
                    if v.state != WorkloadState.ADMITTED:
                        continue
                    self._unaccount(v)
                    removed.append(v)
                    keep.append(True)
                    if self._fits_now(w, leaf, now):
                        fits = True
                        break
            n_own = len(removed)
            # Other queues' borrowed work only for a job that, its own queue's candidates taken, fits
            # within its guarantee (Kueue: reclaim never lets the preemptor borrow at the same time).
            if (
                not fits
                and self.config.reclaim
                and self.tree.within_guarantee(leaf, w.demand)
                and self._reclaim_could_help(w, outcome)
            ):
                for v in self._reclaim_candidates(w, leaf, outcome):
                    self._unaccount(v)
                    removed.append(v)
                    keep.append(True)
                    if self._fits_now(w, leaf, now):
                        fits = True
                        break
            if not fits:
                return [], []
            # Give back every victim that is not needed, latest choice first (the last one is needed).
            # While a reclaimed victim stays in the set, the job must still fit within its guarantee.
            cross = len(removed) - n_own
            for i in range(len(removed) - 2, -1, -1):
                v = removed[i]
                self._account(v)
                left = cross - 1 if i >= n_own else cross
                if self._fits_now(w, leaf, now) and (left == 0 or self.tree.within_guarantee(leaf, w.demand)):
                    keep[i] = False
                    cross = left
                else:
                    self._unaccount(v)
            victims = [removed[i] for i in range(len(removed)) if keep[i]]
            reclaimed = [i >= n_own for i in range(len(removed)) if keep[i]]
            return victims, reclaimed
        finally:
            # Whatever is still taken out of the accounting goes back: this was only a simulation.
            for i in range(len(removed)):
                if keep[i]:
                    self._account(removed[i])

    def _reclaim_candidates(self, w: Workload, leaf: QuotaNode, outcome: _Outcome) -> Iterator[Workload]:
        """Borrowed work in other queues, one at a time: nearest in the tree first (siblings, then
        cousins, ...), then lowest priority, then (among equals) a job whose removal keeps its queue at
        or above its min, then newest. A queue is a candidate only while it is still borrowing in a
        resource the job is short of, checked again after each victim (the caller has taken it out of
        the accounting by then), so its last victim may leave it below its min. Generated level by
        level: a reclaim that succeeds among siblings never looks at the rest of the tree."""
        needed = self._needed_slots(w, outcome)
        if not needed:
            return
        blocking_depths = [self.tree.nodes[key[1]].depth for key, _ in outcome.blockers if key[0] == "node"]
        blocking_units = {key[1] for key, _ in outcome.blockers if key[0] in ("unit", "pods")}
        order = self._leaf_order
        below = self._leaf_span[leaf.name]
        counts = self._victim_leaf_count
        lineage = leaf.lineage
        leaves = self.tree.leaves
        for level in range(1, len(lineage)):
            ancestor = lineage[level]
            # A victim in this level frees quota on a blocking node only if that node is this ancestor or above.
            frees_quota = any(d <= ancestor.depth for d in blocking_depths)
            span = self._leaf_span[ancestor.name]
            if (not frees_quota and not blocking_units) or counts.get(ancestor.name, 0) <= counts.get(
                lineage[level - 1].name, 0
            ):
                below = span  # nothing to take in this level
                continue
            lo, hi = span
            names = [*order[lo : below[0]], *order[below[1] : hi]]
            below = span
            lanes: list[list[Workload]] = []
            lane_nodes: list[QuotaNode] = []
            for name in names:
                if name not in self._victim_leaves:
                    continue
                queue = self.queues[name]
                admitted = queue.admitted
                jobs: list[Workload] = []
                for key in queue.victim_order:
                    v = admitted[key[-1]]
                    if (
                        v.state == WorkloadState.ADMITTED
                        and (frees_quota or v.unit in blocking_units)
                        and _holds_any(v, needed)
                    ):
                        jobs.append(v)
                if jobs:
                    lanes.append(jobs)
                    lane_nodes.append(leaves[name])
            # One entry per queue under its best job; only the queue a victim came from changes.
            heads: list[tuple[tuple[int, int, float, int, int], int]] = []
            for i in range(len(lanes)):
                best = _lane_best(lanes[i], lane_nodes[i], needed)
                if best is not None:
                    heads.append((best, i))
            heapq.heapify(heads)
            while heads:
                best, i = heapq.heappop(heads)
                jobs = lanes[i]
                v = jobs.pop(best[4])
                yield v
                following = _lane_best(jobs, lane_nodes[i], needed) if jobs else None
                if following is not None:
                    heapq.heappush(heads, (following, i))

    def _needed_slots(self, w: Workload, outcome: _Outcome) -> list[int]:
        """The guaranteed resources (by slot) the job is short of: over a ``max`` on its path or over a
        unit's capacity; when it is short of none of them (a pod cap, ``max-jobs``), every guaranteed
        resource it requests. A queue is reclaimed from only while it borrows one of these."""
        guaranteed = self.tree.guaranteed
        demand = w.demand
        requested: list[int] = []
        short: list[int] = []
        blocked = {key[2] for key, _ in outcome.blockers if key[0] == "node"}
        for k in range(len(demand.slots)):
            i = demand.slots[k]
            amount = demand.amounts[k]
            name = SLOTS.names[i]
            if amount <= 0 or name not in guaranteed:
                continue
            requested.append(i)
            if name in blocked:
                short.append(i)
                continue
            for unit in self.units.units:
                if unit.capacity is None or i >= len(unit.capacity_by_slot):
                    continue
                cap = unit.capacity_by_slot[i]
                used = unit.used[i] if i < len(unit.used) else 0
                if cap != NO_LIMIT and used + amount > cap:
                    short.append(i)
                    break
        return short or requested

    def _preempt(
        self, w: Workload, victims: list[Workload], reclaimed: list[bool], outcome: _Outcome, leaf: QuotaNode
    ) -> list[Preempt]:
        decisions: list[Preempt] = []
        cycle = self.stats.cycles
        started: list[Workload] = []
        for k in range(len(victims)):
            v = victims[k]
            code = ReasonCode.RECLAIMED if reclaimed[k] else ReasonCode.PREEMPTED_BY_PRIORITY
            if v.admitted_cycle == cycle:
                # Admitted in this cycle, so no front end has acted on it yet: take the admission back
                # instead of starting the job only to stop it.
                self._withdraw(v, w, code, leaf)
                continue
            v_leaf = self.tree.leaves[v.queue]
            if code == ReasonCode.RECLAIMED:
                message = (
                    f"preempted to return {leaf.path} its guarantee for {w.display_name} "
                    f"({v_leaf.path} is borrowing {describe(self.tree.borrowed(v_leaf))})"
                )
            else:
                message = f"preempted by higher-priority {w.display_name} (priority {w.priority} > {v.priority}) in {leaf.path}"
            v.reason = Reason(code, message)
            started.append(v)
        if not started:
            return decisions
        for v in started:
            v.state = WorkloadState.PREEMPTING
            self.units.by_name[v.unit or ""].terminating_pods += v.pods
            v.preempted_by = w.uid
            assert v.reason is not None
            decisions.append(Preempt(v, v.reason, w.uid))
        for v in started:
            self._note_victims(self.tree.leaves[v.queue])
        self._wait_for(w, started, outcome)
        return decisions

    def _wait_for(self, w: Workload, victims: list[Workload], outcome: _Outcome) -> None:
        """``w`` waits for ``victims`` to stop; its reason says so."""
        w.waiting_for = {v.uid for v in victims}
        reclaim = any(v.reason is not None and v.reason.code == ReasonCode.RECLAIMED for v in victims)
        wait_code = ReasonCode.WAITING_FOR_RECLAIM if reclaim else ReasonCode.WAITING_FOR_PREEMPTION
        names = ", ".join(v.display_name for v in victims)
        inner = outcome.reason
        outcome.reason = Reason(wait_code, lambda: f"preempting {names} to make room; {inner}")

    def _withdraw(self, v: Workload, w: Workload, code: ReasonCode, leaf: QuotaNode) -> None:
        """Undo ``v``'s admission of this cycle: pending again, at its old place in its queue."""
        self._release(v)
        v.state = WorkloadState.PENDING
        v.unit = None
        v.admitted_at = None
        v.admitted_cycle = -1
        v.failures = 0
        why = "its guarantee" if code == ReasonCode.RECLAIMED else "room"
        v.reason = Reason(
            ReasonCode.QUEUED,
            f"admission withdrawn in the cycle that made it: {leaf.path} needed {why} for {w.display_name}",
        )
        q = self.queues[v.queue]
        q.add(v)
        self._offer(q)
        self.stats.withdrawn += 1
        self._withdrawn[v.uid] = self._withdrawn.get(v.uid, 0) + 1

    def _account(self, v: Workload) -> None:
        self.tree.admit(self.tree.leaves[v.queue], v.demand)
        self.units.by_name[v.unit or ""].take(v.demand, v.pods)

    def _unaccount(self, v: Workload) -> None:
        self.tree.release(self.tree.leaves[v.queue], v.demand)
        self.units.by_name[v.unit or ""].give_back(v.demand, v.pods)

    # ================================================================ internals: parking and waking

    def _park(self, w: Workload, q: LeafQueue, outcome: _Outcome, now: float, backoff: bool) -> None:
        q.park(w)
        w.reason = outcome.reason
        w.park_token += 1
        token = w.park_token
        delay = 0.0
        if backoff:
            w.failures += 1
            if w.failures > 1 and self.config.backoff_base_s > 0:
                delay = min(self.config.backoff_base_s * 2 ** (w.failures - 2), self.config.backoff_max_s)
            w.retry_after = now + delay
        else:
            w.failures = 0
            w.retry_after = 0.0
        # Jobs within their guarantee wake first, as they go first across queues.
        within = 0 if self.tree.within_guarantee(self.tree.leaves[w.queue], w.demand) else 1
        order: WakeOrder = (within, -w.priority, w.submitted_at, w.display_name, w.seq)
        blockers = outcome.blockers
        if not blockers and outcome.retry_at is None:
            blockers = [(ANY, 0)]  # nothing a release would signal: retry after any release
        if outcome.retry_at is not None:
            heapq.heappush(self._timers, (outcome.retry_at, w.seq, w.uid, token, _RETRY))
        self._parked[w.uid] = ([] if outcome.alternatives else blockers, order)
        if delay > 0:
            # Backing off: out of the wake-up index until the delay ends, so releases meanwhile neither
            # wake it nor count it against the room they free.
            heapq.heappush(self._timers, (w.retry_after, w.seq, w.uid, token, _REINDEX))
            return
        if outcome.alternatives:
            for key, need in blockers:  # any of them freeing may be enough
                self._index.add(key, need, order, token, w)
        elif blockers:
            # One live entry, under the first blocker; when that one frees, the others are checked first.
            key, need = blockers[0]
            self._index.add(key, need, order, token, w)

    def _wake(self, w: Workload) -> None:
        q = self.queues.get(w.queue)
        if q is None or w.state != WorkloadState.PENDING or w.uid not in q.parked:
            return
        w.park_token += 1  # every other index entry of this parking is now stale
        self._parked.pop(w.uid, None)
        q.unpark(w)
        self._offer(q)

    def _room(self, key: BlockerKey) -> float:
        kind, name, r = key
        if kind == "node":
            node = self.tree.nodes.get(name)
            i = SLOTS.index.get(r)
            if node is None or i is None or i >= len(node.used) or node.max_by_slot[i] == NO_LIMIT:
                return float("inf")
            return node.max_by_slot[i] - node.used[i]
        if kind == "unit":
            unit = self.units.by_name.get(name)
            cap = NO_LIMIT if unit is None else unit.capacity_of(r)
            if unit is None or cap == NO_LIMIT:
                return float("inf")
            return cap - unit.used_of(r)
        if kind == "pods":
            unit = self.units.by_name.get(name)
            if unit is None or unit.max_pods is None:
                return float("inf")
            return unit.max_pods - unit.pods
        if kind == "terminating":  # no room until the unit's last terminating pod is gone
            unit = self.units.by_name.get(name)
            return -1.0 if unit is not None and unit.terminating_pods else float("inf")
        return float("inf")

    def _wake_dirty(self) -> None:
        if self._dirty_nodes:
            nodes, self._dirty_nodes = self._dirty_nodes, set()
            index, dirty = self._index, self._dirty
            for name in nodes:
                keys = index.node_keys(name)
                if keys is not None:
                    dirty.update(keys)
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            self._wake_blocker(key)

    def _wake_blocker(self, key: BlockerKey) -> None:
        if key not in self._index:
            return
        woken = self._index.pop_fitting(key, self._room(key))
        if woken and key != ANY:
            self._dirty.add(key)
        for w, token in woken:
            self._wake_or_move(w, token, key)

    def _end_backoff(self, w: Workload, token: int) -> None:
        """Back into the wake-up index; the blockers are looked at once this cycle, within their room."""
        parked = self._parked.get(w.uid)
        if parked is None or not parked[0]:  # unit alternatives (or nothing recorded): simply try again
            self._wake(w)
            return
        blockers, order = parked
        key, need = blockers[0]
        self._index.add(key, need, order, token, w)
        self._dirty.add(key)

    def _wake_or_move(self, w: Workload, token: int, skip: BlockerKey | None = None) -> None:
        """Wake a parked job if every blocker it recorded has room; else move its one index entry to
        a blocker that still lacks room, without an attempt."""
        parked = self._parked.get(w.uid)
        if parked is None:
            self._wake(w)
            return
        blockers, order = parked
        for key, need in blockers:
            if key != skip and key != ANY and self._room(key) < need:
                self._index.add(key, need, order, token, w)
                self.stats.moved += 1
                return
        self._wake(w)

    def _fire_timers(self, now: float) -> None:
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, uid, token, kind = heapq.heappop(timers)
            w = self.workloads.get(uid)
            if w is None or w.park_token != token:
                continue
            if kind == _RETRY:
                self._wake(w)
            else:  # the backoff is over: woken now if its blockers have room, else back into the index
                self._end_backoff(w, token)

    def _release(self, w: Workload) -> None:
        leaf = self.tree.leaves[w.queue]
        unit = self.units.by_name[w.unit or ""]
        self.tree.release(leaf, w.demand)
        self._note_borrowing(leaf)
        unit.give_back(w.demand, w.pods)
        if w.state == WorkloadState.PREEMPTING:
            unit.terminating_pods -= w.pods
            if not unit.terminating_pods:
                self._dirty.add(("terminating", unit.name, ""))
        self.queues[w.queue].stop(w)
        # What this release could unblock (its quota path, then its unit) is woken at the next cycle,
        # once per blocker and within the room left then, however many releases came before it.
        dirty = self._dirty
        dirty_nodes = self._dirty_nodes
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
        self._offer(self.queues[w.queue])

    def _note_borrowing(self, leaf: QuotaNode) -> None:
        """Keep the set of borrowing leaves and, per node, what its borrowing leaves use in all."""
        now = self.tree.borrowed(leaf)
        before = self._leaf_borrowed.get(leaf.name)
        if now or before:
            # Its usage changed: the most a reclaim could free there (counted lazily, see _count_borrowing).
            self._borrow_changed.add(leaf.name)
        if now != (before or {}):
            if now:
                self._borrowing.add(leaf.name)
                self._leaf_borrowed[leaf.name] = now
            else:
                self._borrowing.discard(leaf.name)
                self._leaf_borrowed.pop(leaf.name, None)
        self._note_victims(leaf)

    def _note_victims(self, leaf: QuotaNode) -> None:
        """Keep, per node, how many leaves below it could lose a job to a reclaim: borrowing leaves
        with a running job that is not already being preempted."""
        has = False
        if leaf.name in self._borrowing:
            for v in self.queues[leaf.name].admitted.values():
                if v.state == WorkloadState.ADMITTED:
                    has = True
                    break
        if has == (leaf.name in self._victim_leaves):
            return
        delta = 1 if has else -1
        if has:
            self._victim_leaves.add(leaf.name)
        else:
            self._victim_leaves.discard(leaf.name)
        for node in leaf.lineage:
            self._victim_leaf_count[node.name] = self._victim_leaf_count.get(node.name, 0) + delta

    def _count_borrowing(self) -> None:
        """Bring the per-node sums up to date with the leaves that changed since. A borrowing leaf may
        lose everything it uses (its last victim may leave it below its min), so the sums are of usage."""
        reclaimable, counted = self._reclaimable, self._borrow_counted
        guaranteed = self.tree.guaranteed
        for name in self._borrow_changed:
            leaf = self.tree.leaves.get(name)
            if leaf is None:
                continue
            now: Resources = {}
            if name in self._borrowing:
                for r in guaranteed:
                    used = leaf.used_of(r)
                    if used:
                        now[r] = used
            before = counted.get(name) or {}
            for r in guaranteed:
                delta = now.get(r, 0) - before.get(r, 0)
                if delta:
                    for node in leaf.lineage:
                        sums = reclaimable.get(node.name)
                        if sums is None:
                            sums = reclaimable[node.name] = {}
                        sums[r] = sums.get(r, 0) + delta
            if now:
                counted[name] = now
            else:
                counted.pop(name, None)
        self._borrow_changed = set()

    def _shortfall(self, w: Workload, outcome: _Outcome) -> int:
        """How much is missing at the tightest blocker (0 when unknown)."""
        best: int | None = None
        for (kind, name, r), _need in outcome.blockers:
            if kind == "node":
                node = self.tree.nodes[name]
                short = node.used_of(r) + w.request.get(r, 0) - node.max[r]
            elif kind == "unit":
                unit = self.units.by_name[name]
                short = unit.used_of(r) + w.request.get(r, 0) - (unit.capacity or {}).get(r, 0)
            elif kind == "terminating":
                continue  # frees itself: nothing a reclaim must make up for
            else:
                unit = self.units.by_name[name]
                short = unit.pods + w.pods - (unit.max_pods or 0)
            best = short if best is None else min(best, short)
        return best or 0

    def _reclaim_could_help(self, w: Workload, outcome: _Outcome) -> bool:
        """False when no leaf holds a job a reclaim could take, or all that the borrowing leaves use (the
        most a reclaim could free) is less than the shortfall (both kept up to date, so this costs
        O(blockers) plus the leaves whose usage changed since the last reclaim asked)."""
        if not self._victim_leaf_count.get(self.tree.root.name, 0):
            return False
        if self._borrow_changed:
            self._count_borrowing()
        root_sums = self._reclaimable.get(self.tree.root.name, {})
        for (kind, name, r), _need in outcome.blockers:
            if r not in self.tree.guaranteed:
                return True  # no bound known for a resource nobody guarantees
            if kind == "node":
                node = self.tree.nodes[name]
                short = node.used_of(r) + w.request.get(r, 0) - node.max[r]
                if self._victim_leaf_count.get(name, 0) and self._reclaimable.get(name, {}).get(r, 0) >= short:
                    return True
            elif kind == "unit":
                unit = self.units.by_name[name]
                cap = unit.capacity or {}
                short = unit.used_of(r) + w.request.get(r, 0) - cap.get(r, 0)
                if root_sums.get(r, 0) >= short:
                    return True
            elif kind != "terminating":
                return True
        return False

    def _wake_all(self) -> None:
        self._epoch += 1
        self._index.clear()
        self._timers.clear()
        self._parked.clear()
        for q in self.queues.values():
            for uid in list(q.parked):
                w = self.workloads[uid]
                w.failures = 0
                w.retry_after = 0.0
                self._wake(w)
            self._offer(q)

    def _offer(self, q: LeafQueue) -> None:
        """(Re)place the queue in the cross-queue heap under its current candidate's key; a queue whose
        live entry already has that key stays as it is (most releases do not change it)."""
        w = q.candidate()
        if w is None:
            q.heap_version += 1
            q.heap_key = None
            return
        leaf = self.tree.leaves[q.name]
        within = 0 if self.tree.within_guarantee(leaf, w.demand) else 1
        share = self.tree.fair_share(leaf) if q.name in self._borrowing else 0.0
        key = (within, -w.priority, share, w.submitted_at, w.seq)
        if key == q.heap_key:
            return
        q.heap_version += 1
        q.heap_key = key
        # Built field by field: a starred tuple goes through a list in compiled code.
        heapq.heappush(self._heap, (within, -w.priority, share, w.submitted_at, w.seq, q.heap_version, q.name))

    # ================================================================ internals: bookkeeping

    def _get(self, uid: str) -> Workload:
        try:
            return self.workloads[uid]
        except KeyError:
            raise KeyError(f"no job {uid!r} is pending or running") from None

    def _dequeue(self, w: Workload) -> None:
        q = self.queues[w.queue]
        q.remove(w)
        self._parked.pop(w.uid, None)
        w.park_token += 1
        self._offer(q)

    def _unknown_queue_message(self, name: str) -> str:
        leaves = sorted(self.tree.leaves)
        shown = ", ".join(leaves[:10]) + (" ..." if len(leaves) > 10 else "")
        if name in self.tree.nodes:
            return f"queue {name!r} is not a leaf of the quota tree; jobs queue at leaves ({shown})"
        return f"unknown queue {name!r}: no leaf of the quota tree has that name (leaves: {shown})"

    def _strategy(self, leaf: QuotaNode) -> tuple[QueueingStrategy, PreemptionPolicy]:
        strategy = leaf.attributes.get(QUEUEING_ATTRIBUTE, self.config.default_queueing)
        preemption = leaf.attributes.get(PREEMPTION_ATTRIBUTE, self.config.default_preemption)
        return strategy, preemption

    def _sync_queues(self) -> None:
        """One queue per leaf of the current tree; existing queues keep their jobs."""
        # Leaves in depth-first order: every subtree's leaves are one contiguous span of this list.
        self._leaf_order: list[str] = []
        self._leaf_span: dict[str, tuple[int, int]] = {}
        stack: list[tuple[QuotaNode, bool]] = [(self.tree.root, False)]
        starts: dict[str, int] = {}
        while stack:
            node, done = stack.pop()
            if done:
                self._leaf_span[node.name] = (starts[node.name], len(self._leaf_order))
                continue
            starts[node.name] = len(self._leaf_order)
            if node.is_leaf:
                self._leaf_order.append(node.name)
                self._leaf_span[node.name] = (starts[node.name], len(self._leaf_order))
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.children))
        for name, leaf in self.tree.leaves.items():
            strategy, preemption = self._strategy(leaf)
            q = self.queues.get(name)
            if q is None:
                self.queues[name] = LeafQueue(name, strategy, preemption)
            else:
                q.strategy, q.preemption = strategy, preemption
        for name in list(self.queues):
            if name not in self.tree.leaves:
                del self.queues[name]

    def _tree_effects(self, tree: QuotaTree) -> list[str]:
        lost = [w for w in self.workloads.values() if w.queue not in tree.leaves]
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
        for w in self.admitted():
            tree.admit(tree.leaves[w.queue], w.demand)
        effects = diff_trees(self.tree, tree) or ["no change to the tree"]
        for node in tree:
            for r, m in node.max.items():
                used = node.used_of(r)
                if used > m:
                    effects.append(
                        f"! {node.path} uses {format_quantity(used, r)} {r}, over its new max "
                        f"{format_quantity(m, r)}: running jobs keep running, nothing more is admitted there"
                    )
            old = self.tree.nodes.get(node.name)
            now_borrowed = tree.borrowed(node)
            was_borrowed = self.tree.borrowed(old) if old is not None else {}
            if now_borrowed and now_borrowed != was_borrowed:
                effects.append(f"! {node.path} would be borrowing {describe(now_borrowed)} (reclaimable)")
        for w in self.pending():
            leaf = tree.leaves[w.queue]
            violation = tree.never_fits(leaf, w.request)
            if violation is not None:
                effects.append(f"! pending job {w.display_name} would never fit: {violation.sentence()}")
        return effects


def _engine_request(request: Resources) -> Resources:
    """The request as the engine counts it: every job counts one against ``kube-queue/max-jobs``, and
    resource names are interned (see ``quota.quantity``)."""
    out = {sys.intern(r): v for r, v in request.items()}
    if MAX_JOBS not in out:
        out[MAX_JOBS] = MILLI
    return out


def _holds_any(v: Workload, slots: list[int]) -> bool:
    """``v`` holds some of one of these resource slots."""
    demand = v.demand
    for k in range(len(demand.slots)):
        if demand.amounts[k] > 0 and demand.slots[k] in slots:
            return True
    return False


def _borrowing_in(node: QuotaNode, slots: list[int]) -> bool:
    """The node uses more than its min of one of these resource slots."""
    used, mins = node.used, node.min_by_slot
    for i in slots:
        if i < len(used) and used[i] > mins[i]:
            return True
    return False


def _keeps_min(v: Workload, node: QuotaNode) -> bool:
    """Taking ``v`` leaves its leaf at or above its min on every guaranteed resource."""
    demand, used, guarantee = v.demand, node.used, node.guarantee_by_slot
    for k in range(len(demand.slots)):
        i = demand.slots[k]
        if i < len(used) and guarantee[i] != NO_LIMIT and used[i] - demand.amounts[k] < guarantee[i]:
            return False
    return True


def _lane_best(jobs: list[Workload], node: QuotaNode, needed: list[int]) -> tuple[int, int, float, int, int] | None:
    """The job a reclaim takes next from one queue (``jobs`` in victim order), as its rank across
    queues (priority, 0 if taking it keeps the queue at or above its min, newest first) and its index;
    None when the queue no longer borrows a resource the preemptor is short of."""
    if not jobs or not _borrowing_in(node, needed):
        return None
    priority = jobs[0].priority
    for idx in range(len(jobs)):
        v = jobs[idx]
        if v.priority != priority:
            break
        if _keeps_min(v, node):
            return (priority, 0, -(v.admitted_at or 0.0), -v.seq, idx)
    v = jobs[0]
    return (priority, 1, -(v.admitted_at or 0.0), -v.seq, 0)


def _violation_message(node: QuotaNode, r: str, used: int, requested: int) -> Callable[[], str]:
    limit = node.max[r]
    return lambda: QuotaViolation(node.path, r, used, requested, limit).sentence()


def _pods_message(unit: str, max_pods: int, in_use: int, requested: int) -> Callable[[], str]:
    return lambda: f"{unit} at max {max_pods} pods ({in_use} in use, {requested} requested)"


def _terminating_message(unit: str, pods: int) -> Callable[[], str]:
    return lambda: (
        f"waiting for {pods} terminating pod{'' if pods == 1 else 's'} on unit {unit} to go before trying the next unit"
    )


def _const(message: str) -> Callable[[], str]:
    return lambda: message


def _lacks_message(unit: str, r: str, requested: int) -> Callable[[], str]:
    return lambda: f"{unit} has no {r}: none of its nodes has any ({format_quantity(requested, r)} requested)"


def _full_message(unit: str, r: str, used: int, cap: int, requested: int) -> Callable[[], str]:
    return lambda: (
        f"{unit} full ({format_quantity(used, r)}/{format_quantity(cap, r)} {r} in use, "
        f"{format_quantity(requested, r)} requested)"
    )


def _visible(request: Resources) -> Resources:
    return {r: v for r, v in request.items() if r != MAX_JOBS}

