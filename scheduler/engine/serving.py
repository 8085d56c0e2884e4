"""Services next to batch: reservations, scale-ups that take back lent headroom, scale-downs, upgrades.

A service (``services.Service``) is charged its head and its current replicas on every node of its path;
the rest up to ``max_replicas`` is *reserved headroom*. Batch jobs are admitted by the ordinary rules
(usage + request within every ``max``), so they may run on that headroom, but only as borrowers: when the
service scales up, the engine takes back what it needs from them in the same cycle. The *hot reserve*
(``hot_reserve`` replicas' worth) is charged in quota like replicas that run, so batch never gets it.

Rules, in one place (docs/admission.md words them with examples):

- *reservation*: on every node of a service's path, the services under it reserve head + ``max_replicas``
  each; per node, each child's reservations or its ``min`` (whichever is larger) add up within ``max``,
  so a reservation never takes a sibling's guarantee. Head + ``min_replicas`` lie within the leaf's
  ``min`` (on the resources the tree guarantees).
- *candidates* for a scale-up: running batch jobs under a node the scale-up would exceed, in the
  service's own leaf or in a leaf that borrows (uses more than its ``min``); lowest priority, then
  newest first, one at a time until the replica fits. Their quota is handed to the service at once (the
  job is ``Preempting``, its pods terminate; ``suspended`` releases nothing more), so the scale-up is
  admitted in the cycle that asked for it and no ``max`` is ever exceeded.
- *units*: each replica goes to the first unit with room (ECS, then ACS); a scale-down removes replicas
  from the last unit first. Units are never a reason to preempt: a full ECS spills to the next unit.

Services are tried at the start of every cycle, before any batch job, so a job admitted in this cycle
is never a victim (no admission has to be withdrawn).

Why one module of about 650 lines: a service's life (submit, scale, upgrade, finish), its reservation
check and the choice of the batch jobs it takes headroom back from all charge and uncharge through the
same few helpers (``charge``, ``place``, ``undo``) inside one cycle, and an ``undo`` must reverse exactly
what they did; the engine is compiled with mypyc, where calls between modules cost more than calls within
one. Split apart, each half would reach into the other's bookkeeping.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rayqueue.queue.queues import victim_key
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, Demand, Resources, describe, format_quantity
from rayqueue.quota.tree import QuotaNode, QuotaViolation
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.decisions import Placement, Preempt, ServiceGrant
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.services import (
    UNSET_MAX_REPLICAS,
    Cluster,
    Service,
    ServiceError,
    ServiceSpec,
    ServiceState,
    ServiceView,
    combine,
)
from rayqueue.scheduler.engine.state import EngineState
from rayqueue.scheduler.engine.units import Unit, Units
from rayqueue.scheduler.engine.wakeup import ANY


class Serving:
    """Service events (submit, scale, finish, upgrade) and the services' part of each cycle."""

    __slots__ = ("s", "ledger", "grants")

    def __init__(self, s: EngineState, ledger: BorrowLedger) -> None:
        self.s = s
        self.ledger = ledger
        self.grants: list[ServiceGrant] = []  # made by cycles, taken by the front end

    # ================================================================ events

    def submit(self, svc: Service) -> Reason | None:
        """Queue a service; returns the reason if it can never run (it is then ``Rejected``)."""
        s = self.s
        if svc.uid in s.services or svc.uid in s.workloads:
            raise DuplicateJob(f"service {svc.uid!r} is already known to the engine")
        if svc.queue not in s.tree.leaves:
            raise UnknownQueue(s.unknown_queue_message(svc.queue))
        svc.spec = _interned(svc.spec)
        svc.spec.check(f"service {svc.display_name}")
        leaf = s.tree.leaves[svc.queue]
        if svc.spec.max_replicas >= UNSET_MAX_REPLICAS:
            cap = self.most_replicas(svc.spec, leaf)
            svc.spec.max_replicas = max(cap, svc.spec.min_replicas)
            svc.notes.append(f"maxReplicas is unset: the reservation is capped at {svc.spec.max_replicas} replicas "
                             f"by the quota on {leaf.path}")
        never = self.never_fits(svc.spec, leaf)
        if never is not None:
            svc.state = ServiceState.REJECTED
            svc.reason = never
            return never
        svc.state = ServiceState.PENDING
        svc.reason = Reason(ReasonCode.QUEUED, "waiting for the next admission cycle")
        s.services[svc.uid] = svc
        return None

    def restore(self, svc: Service, granted: int, by_unit: dict[str, int], admitted_at: float,
                head_unit: str | None = None) -> None:
        """Count a service that already runs (rebuilding after a restart): ``granted`` replicas placed
        ``by_unit``, its hot reserve, no checks. Restore services before the jobs preempted for them."""
        s = self.s
        if svc.uid in s.services or svc.uid in s.workloads:
            raise DuplicateJob(f"service {svc.uid!r} is already known to the engine")
        if svc.queue not in s.tree.leaves:
            raise UnknownQueue(s.unknown_queue_message(svc.queue))
        spec = svc.spec = _interned(svc.spec)
        spec.check(f"service {svc.display_name}")
        if sum(by_unit.values()) != granted:
            raise ServiceError(f"service {svc.display_name}: {granted} replicas granted but {sum(by_unit.values())} placed")
        leaf = s.tree.leaves[svc.queue]
        first = s.units.units[0].name
        c = Cluster(spec, granted=granted, hot=spec.hot(granted))
        c.head_unit = head_unit if head_unit in s.units.by_name else first
        s.units.by_name[c.head_unit].take(Demand(spec.head_charge()), spec.head_pods)
        for name, n in by_unit.items():
            name = name if name in s.units.by_name else first
            c.by_unit[name] = c.by_unit.get(name, 0) + n
            for _ in range(n):
                s.units.by_name[name].take(Demand(spec.replica), spec.replica_pods)
        self.charge(leaf, c.charge(), 1)
        svc.cluster = c
        svc.state = ServiceState.RUNNING
        svc.admitted_at = admitted_at
        svc.reason = Reason(ReasonCode.ADMITTED, f"running {granted} replicas in {leaf.path} (restored)")
        s.services[svc.uid] = svc

    def scale(self, uid: str, replicas: int, now: float) -> None:
        """The service's autoscaler asks for ``replicas`` (clamped into [min, max]). A scale-down returns
        replicas to headroom at once; a scale-up is granted at the next cycle."""
        svc = self.get(uid)
        if replicas < 0:
            raise ServiceError(f"service {svc.display_name}: replicas must not be negative (got {replicas})")
        svc.replicas = replicas
        c = svc.cluster
        if c is None:
            return
        target = svc.target
        if target < c.granted:
            self.shrink(svc, c, c.granted - target)
        if target > c.granted:
            if svc.scale_wait_since is None:
                svc.scale_wait_since = now
        else:
            self.stop_waiting(svc, now)

    def finish(self, uid: str) -> Service:
        """The service was deleted: release both its clusters."""
        svc = self.get(uid)
        for c in (svc.cluster, svc.upgrade):
            if c is not None:
                self.release_cluster(svc, c)
        svc.cluster = svc.upgrade = None
        svc.state = ServiceState.FINISHED
        del self.s.services[uid]
        return svc

    def begin_upgrade(self, uid: str, spec: ServiceSpec, replicas: int | None = None) -> None:
        """A zero-downtime upgrade starts: a second cluster (``spec``) is charged beside the running one
        from the next cycle that finds room for it, until ``finish_upgrade``."""
        svc = self.get(uid)
        spec = _interned(spec)
        spec.check(f"service {svc.display_name} (upgrade)")
        leaf = self.s.tree.leaves[svc.queue]
        never = self.never_fits(spec, leaf)
        if never is not None:
            raise ServiceError(f"service {svc.display_name}: the upgraded cluster can never run: {never.message}")
        problem = self.reservation_problem(spec, leaf, svc)
        if problem is not None:
            raise ServiceError(f"service {svc.display_name}: the upgraded cluster's reservation does not fit: {problem}")
        if svc.upgrade is not None:
            self.release_cluster(svc, svc.upgrade)
            svc.upgrade = None
        svc.upgrade_spec = spec
        svc.upgrade_replicas = svc.replicas if replicas is None else replicas

    def finish_upgrade(self, uid: str) -> None:
        """The new cluster serves: the old one is released and the new one holds the reservation."""
        svc = self.get(uid)
        new = svc.upgrade
        if new is None:
            raise ServiceError(f"service {svc.display_name}: no upgraded cluster is running")
        if svc.cluster is not None:
            self.release_cluster(svc, svc.cluster)
        svc.cluster, svc.upgrade, svc.upgrade_spec = new, None, None
        svc.spec = new.spec
        svc.replicas = svc.upgrade_replicas
        # The new cluster was charged without a hot reserve; it gets as much of it as fits now.
        leaf = self.s.tree.leaves[svc.queue]
        want = new.spec.hot(new.granted)
        while new.hot < want and self.s.tree.fits(leaf, Demand(new.spec.replica)) is None:
            self.charge(leaf, new.spec.replica, 1)
            new.hot += 1

    def get(self, uid: str) -> Service:
        try:
            return self.s.services[uid]
        except KeyError:
            raise ServiceError(f"no service {uid!r} is pending or running") from None

    # ================================================================ the cycle

    def cycle(self, now: float) -> list[Preempt]:
        """Admit pending services, grant scale-ups and upgrades: before any batch job of the cycle."""
        preempts: list[Preempt] = []
        for svc in sorted(self.s.services.values(), key=lambda v: (-v.priority, v.submitted_at, v.uid)):
            if svc.state == ServiceState.PENDING:
                self.try_admit(svc, now, preempts)
            elif svc.cluster is not None and svc.target > svc.cluster.granted:
                self.scale_up(svc, now, preempts)
            if svc.upgrade_spec is not None and svc.upgrade is None and svc.state == ServiceState.RUNNING:
                self.try_upgrade(svc, now, preempts)
        return preempts

    def try_admit(self, svc: Service, now: float, preempts: list[Preempt]) -> None:
        leaf = self.s.tree.leaves[svc.queue]
        spec = svc.spec
        problem = self.reservation_problem(spec, leaf, None)
        if problem is not None:
            svc.reason = Reason(ReasonCode.QUOTA_MAX_EXCEEDED, f"reservation does not fit: {problem}")
            return
        c = Cluster(spec)
        taken: list[Preempt] = []
        why = self.start_cluster(svc, c, leaf, spec.min_replicas, taken, hot=True)
        if why is not None:
            self.undo(taken)
            svc.reason = why
            return
        preempts.extend(taken)
        svc.cluster = c
        svc.state = ServiceState.RUNNING
        svc.admitted_at = now
        svc.reason = Reason(ReasonCode.ADMITTED, f"admitted to {leaf.path} with {c.granted} replicas")
        self.grants.append(ServiceGrant(svc, c.granted, dict(c.by_unit), self.placements(c), first=True))
        if svc.target > c.granted:
            svc.scale_wait_since = now
            self.scale_up(svc, now, preempts)

    def start_cluster(self, svc: Service, c: Cluster, leaf: QuotaNode, replicas: int,
                      taken: list[Preempt], hot: bool) -> Reason | None:
        """Charge a new cluster's head, ``replicas`` replicas and (``hot``) its hot reserve, all or
        nothing (the caller undoes ``taken`` when a reason comes back). An upgrade's second cluster has
        no hot reserve of its own: the running one keeps it."""
        spec = c.spec
        held = spec.hot(replicas) if hot else 0
        whole = combine(spec.head_charge(), spec.replica, replicas + held)
        why = self.make_room(svc, leaf, whole, taken if hot else None)
        if why is not None:
            return why
        head_unit = self.place(spec.head_charge(), spec.head_pods)
        if head_unit is None:
            return self.units_reason(spec.head_charge(), spec.head_pods, "its head")
        units: list[Unit] = []
        for _ in range(replicas):
            unit = self.place(spec.replica, spec.replica_pods)
            if unit is None:
                for u in units:
                    u.give_back(Demand(spec.replica), spec.replica_pods)
                head_unit.give_back(Demand(spec.head_charge()), spec.head_pods)
                return self.units_reason(spec.replica, spec.replica_pods, f"{replicas} replicas")
            units.append(unit)
        self.charge(leaf, whole, 1)
        c.head_unit = head_unit.name
        for u in units:
            c.by_unit[u.name] = c.by_unit.get(u.name, 0) + 1
        c.granted, c.hot = replicas, held
        return None

    def scale_up(self, svc: Service, now: float, preempts: list[Preempt]) -> None:
        """Grant replicas one at a time up to the target, taking back lent headroom for each; what does
        not fit waits with a reason (only beyond the reservation, or when no unit has room)."""
        c = svc.cluster
        assert c is not None
        leaf = self.s.tree.leaves[svc.queue]
        spec = c.spec
        added: dict[str, int] = {}
        why: Reason | None = None
        while c.granted < svc.target:
            # The top ``hot_reserve`` replicas below the maximum are the hot reserve, already charged.
            from_hot = spec.hot(c.granted + 1) < c.hot
            if not from_hot:
                why = self.make_room(svc, leaf, spec.replica, preempts)
                if why is not None:
                    break
            unit = self.place(spec.replica, spec.replica_pods)
            if unit is None:
                why = self.units_reason(spec.replica, spec.replica_pods, "a replica")
                break
            if from_hot:
                c.hot -= 1
            else:
                self.charge(leaf, spec.replica, 1)
            c.granted += 1
            c.by_unit[unit.name] = c.by_unit.get(unit.name, 0) + 1
            added[unit.name] = added.get(unit.name, 0) + 1
        if added:
            self.grants.append(ServiceGrant(svc, c.granted, added, self.placements(c)))
        if why is None:
            self.stop_waiting(svc, now)
            svc.reason = Reason(ReasonCode.ADMITTED, f"running {c.granted} replicas in {leaf.path}")
        else:
            inner = why
            svc.reason = Reason(
                inner.code, f"scale-up to {svc.target} replicas waits at {c.granted}: {inner.message}"
            )

    def try_upgrade(self, svc: Service, now: float, preempts: list[Preempt]) -> None:
        spec = svc.upgrade_spec
        assert spec is not None and svc.cluster is not None
        leaf = self.s.tree.leaves[svc.queue]
        new = Cluster(spec)
        replicas = min(max(svc.upgrade_replicas, spec.min_replicas), spec.max_replicas)
        taken: list[Preempt] = []
        why = self.start_cluster(svc, new, leaf, replicas, taken, hot=False)
        if why is not None:
            self.undo(taken)
            old = describe(_visible(svc.cluster.charge()))
            wanted = describe(_visible(combine(spec.head_charge(), spec.replica, replicas)))
            svc.reason = Reason(
                why.code,
                f"zero-downtime upgrade charges both clusters (running: {old}; new: {wanted}) and the new "
                f"one does not fit: {why.message}",
            )
            return
        preempts.extend(taken)
        svc.upgrade = new
        svc.reason = Reason(ReasonCode.ADMITTED, f"upgrading: both clusters charged in {leaf.path}")
        self.grants.append(ServiceGrant(svc, new.granted, dict(new.by_unit), self.placements(new), upgrade=True))

    def take_grants(self) -> list[ServiceGrant]:
        out, self.grants = self.grants, []
        return out

    # ================================================================ rules

    def never_fits(self, spec: ServiceSpec, leaf: QuotaNode) -> Reason | None:
        """Its reservation alone is larger than a ``max`` on its path, or its minimum than its leaf's ``min``."""
        violation = self.s.tree.never_fits(leaf, spec.footprint())
        if violation is not None:
            r = violation.resource
            return Reason(
                ReasonCode.NEVER_FITS,
                f"head + maxReplicas {spec.max_replicas} need {format_quantity(violation.requested, r)} {r}, "
                f"max of {violation.node} is {format_quantity(violation.limit, r)}",
            )
        guaranteed = self.s.tree.guaranteed
        for r, v in spec.guaranteed_part().items():
            if r in guaranteed and v > leaf.min.get(r, 0):
                return Reason(
                    ReasonCode.NEVER_FITS,
                    f"head + minReplicas {spec.min_replicas} need {format_quantity(v, r)} {r}, "
                    f"min of {leaf.path} is {format_quantity(leaf.min.get(r, 0), r)}",
                )
        return None

    def most_replicas(self, spec: ServiceSpec, leaf: QuotaNode) -> int:
        """The most replicas a reservation of this service alone can have (see ``reservation_problem``):
        head + replicas within the leaf's ``max``, and on each node above, within its ``max`` less the
        ``min`` of the children off the path (a reservation never takes a sibling's guarantee)."""
        most = UNSET_MAX_REPLICAS
        head = spec.head_charge()
        below: QuotaNode | None = None  # the child of ``node`` on the path
        for node in leaf.lineage:
            for r, limit in node.max.items():
                per = spec.replica.get(r, 0)
                if per > 0:
                    siblings = 0 if below is None else sum(c.min.get(r, 0) for c in node.children if c is not below)
                    most = min(most, max(0, (limit - siblings - head.get(r, 0)) // per))
            below = node
        return most

    def reservation_problem(self, spec: ServiceSpec, leaf: QuotaNode, replacing: Service | None) -> str | None:
        """Why ``spec``'s reservation does not fit beside the running services' (None: it does).
        ``replacing``: a service whose own cluster the spec would replace (an upgrade)."""
        others = [v for v in self.s.services.values()
                  if v.state == ServiceState.RUNNING and v is not replacing and v.cluster is not None]
        guaranteed = self.s.tree.guaranteed
        part: Resources = dict(spec.guaranteed_part())
        for v in others:
            if v.queue == leaf.name:
                for r, x in v.spec.guaranteed_part().items():
                    part[r] = part.get(r, 0) + x
        for r, x in part.items():
            if r in guaranteed and x > leaf.min.get(r, 0):
                names = ", ".join(v.display_name for v in others if v.queue == leaf.name)
                return (f"head + minReplicas of the services in {leaf.path} ({names or 'none other'} and this one) "
                        f"need {format_quantity(x, r)} {r}, above its min {format_quantity(leaf.min.get(r, 0), r)}")
        reserved: dict[str, Resources] = {}  # per node: the footprints of the services below it
        for v in [*others, None]:
            foot = spec.footprint() if v is None else v.spec.footprint()
            node_leaf = leaf if v is None else self.s.tree.leaves[v.queue]
            for node in node_leaf.lineage:
                acc = reserved.setdefault(node.name, {})
                for r, x in foot.items():
                    acc[r] = acc.get(r, 0) + x
        for node in leaf.lineage:
            for r, limit in node.max.items():
                if node.is_leaf:
                    total = reserved.get(node.name, {}).get(r, 0)
                else:
                    total = sum(max(c.min.get(r, 0), reserved.get(c.name, {}).get(r, 0)) for c in node.children)
                if total > limit:
                    return (f"{node.path} would reserve {format_quantity(total, r)} of max "
                            f"{format_quantity(limit, r)} {r} (services' head + maxReplicas"
                            f"{'' if node.is_leaf else ', or a child’s min where larger'})")
        return None

    def make_room(self, svc: Service, leaf: QuotaNode, need: Resources, taken: list[Preempt] | None) -> Reason | None:
        """Take back lent headroom until ``need`` fits on the service's path; the reason when it cannot.
        ``taken`` None: take nothing back (an upgrade's second cluster is beyond the reservation)."""
        demand = Demand(need)
        tree = self.s.tree
        while True:
            over = tree.over_max(leaf, demand)
            if not over:
                return None
            victim = None if taken is None else self.next_victim(svc, leaf, {node.name for node, _ in over})
            if victim is None or taken is None:
                node, r = over[0]
                return Reason(
                    ReasonCode.QUOTA_MAX_EXCEEDED,
                    QuotaViolation(node.path, r, node.used_of(r), need.get(r, 0), node.max[r]).sentence()
                    + (" and no batch job borrows the room" if taken is not None else ""),
                )
            if victim.state == WorkloadState.PREEMPTING:
                self.take_over(victim, svc)  # already stopping: no second stop, no Preempt
            else:
                taken.append(self.hand_over(victim, svc, leaf))

    def next_victim(self, svc: Service, leaf: QuotaNode, over: set[str]) -> Workload | None:
        """The next batch job to stop: under a node the scale-up would exceed, in the service's leaf or a
        borrowing leaf; one already stopping for a batch job first (its room is taken over), then the
        lowest priority, then newest."""
        s = self.s
        best: Workload | None = None
        seen: set[str] = set()
        for name in over:
            lo, hi = s.leaf_span[name]
            for leaf_name in s.leaf_order[lo:hi]:
                if leaf_name in seen:
                    continue
                seen.add(leaf_name)
                if leaf_name != leaf.name and leaf_name not in s.borrowing:
                    continue
                for key in s.queues[leaf_name].victim_order:
                    v = s.queues[leaf_name].admitted[key[-1]]
                    if v.state == WorkloadState.PREEMPTING and not v.handed_over:
                        return v  # already stopping for a batch job: taking its room disrupts nothing more
                    if v.state == WorkloadState.ADMITTED:
                        if best is None or victim_key(v) < victim_key(best):
                            best = v
                        break  # the first admitted one in victim order is this queue's best
        return best

    def take_over(self, v: Workload, svc: Service) -> None:
        """``v`` is already stopping, preempted for a batch job: the service takes its quota now (a
        scale-up within the reservation does not wait for batch's own reclaim); the batch job that
        preempted it waits on as before, for room elsewhere or later."""
        s = self.s
        v_leaf = s.tree.leaves[v.queue]
        s.tree.release(v_leaf, v.demand)
        s.units.by_name[v.unit or ""].give_back(v.demand, v.pods)
        v.handed_over = True
        v.preempted_by = svc.uid
        self.ledger.note_borrowing(v_leaf)

    def hand_over(self, v: Workload, svc: Service, leaf: QuotaNode) -> Preempt:
        """Stop ``v`` and give its quota to the service at once; its pods are terminating."""
        s = self.s
        v_leaf = s.tree.leaves[v.queue]
        unit = s.units.by_name[v.unit or ""]
        s.tree.release(v_leaf, v.demand)
        unit.give_back(v.demand, v.pods)
        unit.terminating_pods += v.pods
        v.handed_over = True
        v.state = WorkloadState.PREEMPTING
        v.preempted_by = svc.uid
        v.reason = Reason(
            ReasonCode.RECLAIMED,
            f"preempted for service {svc.display_name}: it scaled up into the headroom it reserves in "
            f"{leaf.path}, which was lent to this job",
        )
        self.ledger.note_borrowing(v_leaf)
        svc.preemptions += 1
        s.stats.preempted += 1
        return Preempt(v, v.reason, svc.uid)

    def undo(self, taken: list[Preempt]) -> None:
        """Give back victims a failed attempt took: running again, as if never chosen."""
        s = self.s
        for p in reversed(taken):
            v = p.workload
            v_leaf = s.tree.leaves[v.queue]
            unit = s.units.by_name[v.unit or ""]
            s.tree.admit(v_leaf, v.demand)
            unit.take(v.demand, v.pods)
            unit.terminating_pods -= v.pods
            v.handed_over = False
            v.state = WorkloadState.ADMITTED
            v.preempted_by = None
            v.reason = Reason(ReasonCode.ADMITTED, f"admitted to {v_leaf.path} on unit {unit.name}")
            self.ledger.note_borrowing(v_leaf)
            svc = s.services.get(p.preemptor)
            if svc is not None:
                svc.preemptions -= 1
            s.stats.preempted -= 1

    def place(self, request: Resources, pods: int) -> Unit | None:
        """The first unit with room for one replica (or the head), and take it there."""
        demand = Demand(request)
        for unit in self.s.units.units:
            if unit.max_pods is not None and unit.pods + pods > unit.max_pods:
                continue
            if unit.shortfall(demand) is None:
                unit.take(demand, pods)
                return unit
        return None

    def units_reason(self, request: Resources, pods: int, what: str) -> Reason:
        parts = [u.describe_capacity() + f", {describe(_visible(u.usage))} in use" for u in self.s.units.units]
        return Reason(
            ReasonCode.NO_CAPACITY_IN_UNITS,
            f"no unit has room for {what} ({describe(_visible(request))} in {pods} pods): " + "; ".join(parts),
        )

    # ================================================================ accounting

    def shrink(self, svc: Service, c: Cluster, k: int) -> None:
        """Remove ``k`` replicas, from the last unit first (ACS before ECS); they return to headroom."""
        leaf = self.s.tree.leaves[svc.queue]
        spec = c.spec
        demand = Demand(spec.replica)
        order = [u for u in reversed(self.s.units.units) if c.by_unit.get(u.name)]
        for _ in range(k):
            unit = order[0]
            unit.give_back(demand, spec.replica_pods)
            c.by_unit[unit.name] -= 1
            if not c.by_unit[unit.name]:
                del c.by_unit[unit.name]
                order.pop(0)
            c.granted -= 1
            self.mark_unit(unit, spec.replica)
            if spec.hot(c.granted) > c.hot:
                c.hot += 1  # the replica's quota becomes hot reserve: nothing to release
            else:
                self.charge(leaf, spec.replica, -1)

    def release_cluster(self, svc: Service, c: Cluster) -> None:
        leaf = self.s.tree.leaves[svc.queue]
        spec = c.spec
        demand = Demand(spec.replica)
        for name, n in c.by_unit.items():
            unit = self.s.units.by_name.get(name)
            if unit is not None:
                for _ in range(n):
                    unit.give_back(demand, spec.replica_pods)
                self.mark_unit(unit, spec.replica)
        head = self.s.units.by_name.get(c.head_unit or "")
        if head is not None:
            head.give_back(Demand(spec.head_charge()), spec.head_pods)
            self.mark_unit(head, spec.head_charge())
        self.charge(leaf, c.charge(), -1)
        c.granted = c.hot = 0
        c.by_unit = {}

    def charge(self, leaf: QuotaNode, res: Resources, sign: int) -> None:
        """Add (+1) or take back (-1) ``res`` on the leaf's path; a release wakes what waits on it."""
        s = self.s
        if sign > 0:
            s.tree.admit(leaf, Demand(res))
        else:
            s.tree.release(leaf, Demand(res))
            for node in leaf.lineage:
                s.dirty_nodes.add(node.name)
            s.dirty.add(ANY)
        self.ledger.note_borrowing(leaf)
        s.offer(s.queues[leaf.name])

    def mark_unit(self, unit: Unit, request: Resources) -> None:
        if unit.capacity is not None:
            for r in request:
                if r in unit.capacity:
                    self.s.dirty.add(("unit", unit.name, r))
        if unit.max_pods is not None:
            self.s.dirty.add(("pods", unit.name, ""))
        self.s.dirty.add(ANY)

    def stop_waiting(self, svc: Service, now: float) -> None:
        if svc.scale_wait_since is not None:
            svc.scale_waited_s += max(0.0, now - svc.scale_wait_since)
            svc.scale_wait_since = None

    def placements(self, c: Cluster) -> dict[str, Placement]:
        out: dict[str, Placement] = {}
        for name in (c.head_unit, *c.by_unit):
            unit = self.s.units.by_name.get(name or "")
            if unit is not None:
                out[unit.name] = Placement(unit.name, unit.resource, unit.node_selector, unit.pod_labels,
                                           unit.tolerations)
        return out

    # ================================================================ views

    def hot_held(self) -> dict[str, Resources]:
        """Per quota node: the hot reserve its services hold in ``used`` (idle, never lent)."""
        out: dict[str, Resources] = {}
        for svc in self.s.services.values():
            for c in (svc.cluster, svc.upgrade):
                if c is None or not c.hot:
                    continue
                for node in self.s.tree.leaves[svc.queue].lineage:
                    acc = out.setdefault(node.name, {})
                    for r, v in c.spec.replica.items():
                        acc[r] = acc.get(r, 0) + v * c.hot
        return out

    def view(self, svc: Service) -> ServiceView:
        used: Resources = {}
        by_unit: dict[str, int] = {}
        for c in (svc.cluster, svc.upgrade):
            if c is None:
                continue
            for r, v in combine(c.spec.head, c.spec.replica, c.granted).items():
                used[r] = used.get(r, 0) + v
            for name, n in c.by_unit.items():
                by_unit[name] = by_unit.get(name, 0) + n
        c = svc.cluster
        reserved = combine({}, c.spec.replica, c.spec.max_replicas - c.granted - c.hot) if c is not None else {}
        hot = combine({}, c.spec.replica, c.hot) if c is not None else {}
        return ServiceView(
            uid=svc.uid, name=svc.display_name, queue=svc.queue, state=svc.state, reason=svc.reason,
            replicas=svc.replicas, granted=svc.granted, min_replicas=svc.spec.min_replicas,
            max_replicas=svc.spec.max_replicas, hot_reserve=svc.spec.hot_reserve, by_unit=by_unit,
            used={r: v for r, v in used.items() if v}, reserved={r: v for r, v in reserved.items() if v},
            hot={r: v for r, v in hot.items() if v},
            upgrading=svc.upgrade is not None, preemptions=svc.preemptions, scale_waited_s=svc.scale_waited_s,
        )


def reserved_by_node(s: EngineState) -> dict[str, Resources]:
    """Per quota node: the headroom its running services reserve beyond their hot reserve (up to
    ``max_replicas``): what batch may borrow. ``used`` + this above ``max`` is what is lent now."""
    out: dict[str, Resources] = {}
    for svc in s.services.values():
        c = svc.cluster
        if c is None:
            continue
        room = c.spec.max_replicas - c.granted - c.hot
        if room <= 0:
            continue
        for node in s.tree.leaves[svc.queue].lineage:
            acc = out.setdefault(node.name, {})
            for r, v in c.spec.replica.items():
                acc[r] = acc.get(r, 0) + v * room
    return out


def account_services(s: EngineState, tree_admit: Callable[[str, Resources], None]) -> None:
    """Charge every service's clusters through ``tree_admit(leaf_name, resources)`` (a new tree's
    accounting, see ``preview.tree_effects``)."""
    for svc in s.services.values():
        for c in (svc.cluster, svc.upgrade):
            if c is not None:
                tree_admit(svc.queue, c.charge())


def _interned(spec: ServiceSpec) -> ServiceSpec:
    spec.head = {sys.intern(r): v for r, v in spec.head.items()}
    spec.replica = {sys.intern(r): v for r, v in spec.replica.items()}
    return spec


def _visible(res: Resources) -> Resources:
    return {r: v for r, v in res.items() if r != MAX_JOBS and v}


def retake_services(s: EngineState, units: Units) -> None:
    """A new ResourcePolicy: each service's replicas and head stay on their unit when it still exists,
    else go to the first unit (as running jobs do)."""
    first = units.units[0].name
    for svc in s.services.values():
        for c in (svc.cluster, svc.upgrade):
            if c is None:
                continue
            moved: dict[str, int] = {}
            for name, n in c.by_unit.items():
                name = name if name in units.by_name else first
                moved[name] = moved.get(name, 0) + n
                for _ in range(n):
                    units.by_name[name].take(Demand(c.spec.replica), c.spec.replica_pods)
            c.by_unit = moved
            if c.head_unit is not None:
                c.head_unit = c.head_unit if c.head_unit in units.by_name else first
                units.by_name[c.head_unit].take(Demand(c.spec.head_charge()), c.spec.head_pods)
