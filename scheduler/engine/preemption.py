"""Preemption (lower priority in the same queue) and reclaim (borrowed work elsewhere): candidate
selection and the minimal set of victims.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from rayqueue.queue.queues import LeafQueue
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import NO_LIMIT, SLOTS, describe
from rayqueue.quota.tree import QuotaNode
from rayqueue.scheduler.engine.borrowing import BorrowLedger
from rayqueue.scheduler.engine.decisions import Preempt
from rayqueue.scheduler.engine.events import Events
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.state import EngineState, Outcome


class Preemption:
    """Preemption and reclaim: which running jobs to stop so that a waiting one fits (candidate
    order, then a minimal set), and withdrawing admissions made in the same cycle."""

    __slots__ = ("s", "placer", "ledger", "events")

    def __init__(self, s: EngineState, placer: Placer, ledger: BorrowLedger, events: Events) -> None:
        self.s = s
        self.placer = placer
        self.ledger = ledger
        self.events = events

    def plan(self, w: Workload, q: LeafQueue, leaf: QuotaNode, now: float, outcome: Outcome) -> list[Preempt]:
        """Kueue's classical preemption: victims in the job's own queue (lower priority, where the leaf's
        ``preemptionPolicy`` allows it), then borrowed work elsewhere if the job then fits within its
        own guarantee; taken one at a time until the job fits, then the ones not needed are given back."""
        if w.waiting_for and any(
            (v := self.s.workloads.get(uid)) is not None and v.state == WorkloadState.PREEMPTING for uid in w.waiting_for
        ):
            waiting = ", ".join(sorted(w.waiting_for))
            inner = outcome.reason
            outcome.reason = Reason(ReasonCode.WAITING_FOR_RECLAIM, lambda: f"waiting for {waiting} to stop; then {inner}")
            return []
        # Cheap checks first: most jobs that wait have nothing they could preempt.
        order = q.victim_order
        own = q.preemption == "LowerPriority" and bool(order) and order[0][0] < w.priority
        if not own and not (
            self.s.config.reclaim and self.s.tree.within_guarantee(leaf, w.demand) and self.reclaim_could_help(w, outcome)
        ):
            return []
        # A plan that failed can only succeed once new borrowed work exists or the shortfall shrank: a
        # job admitted meanwhile in the preemptor's own queue, taken back, leaves the state that failed.
        shortfall = self.shortfall(w, outcome)
        memo = w.reclaim_memo
        if memo is not None and memo[0] == self.s.borrow_admissions and shortfall >= memo[1]:
            return []
        victims, reclaimed = self.choose_victims(w, q, leaf, now, outcome, own)
        if not victims:
            w.reclaim_memo = (self.s.borrow_admissions, shortfall)
            return []
        w.reclaim_memo = None
        return self.preempt(w, victims, reclaimed, outcome, leaf)

    def held_from(self, w: Workload, leaf: QuotaNode) -> str | None:
        """The preemptor whose reclaimed room ``w`` would take by borrowing below a node it waits on
        (None: ``w`` stays within its guarantee, or nobody waits there)."""
        if not self.s.reclaim_holds or self.s.tree.within_guarantee(leaf, w.demand):
            return None
        # The earliest hold on any node of its path (each node's holders are in the order of the holds).
        holders = self.s.holders
        best: str | None = None
        best_place = 0
        for node in leaf.lineage:
            at = holders.get(node.name)
            if at is None:
                continue
            for uid, place in at.items():
                if uid != w.uid:
                    if best is None or place < best_place:
                        best, best_place = uid, place
                    break
        return best

    def fits_now(self, w: Workload, leaf: QuotaNode, now: float) -> bool:
        return self.placer.fits(w, leaf, now)

    def choose_victims(
        self, w: Workload, q: LeafQueue, leaf: QuotaNode, now: float, outcome: Outcome, own: bool
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
                    self.unaccount(v)
                    removed.append(v)
                    keep.append(True)
                    if self.fits_now(w, leaf, now):
                        fits = True
                        break
            n_own = len(removed)
            # Other queues' borrowed work only for a job that, its own queue's candidates taken, fits
            # within its guarantee (Kueue: reclaim never lets the preemptor borrow at the same time).
            if (
                not fits
                and self.s.config.reclaim
                and self.s.tree.within_guarantee(leaf, w.demand)
                and self.reclaim_could_help(w, outcome)
            ):
                for v in self.reclaim_candidates(w, leaf, outcome):
                    self.unaccount(v)
                    removed.append(v)
                    keep.append(True)
                    if self.fits_now(w, leaf, now):
                        fits = True
                        break
            if not fits:
                return [], []
            # Give back every victim that is not needed, latest choice first (the last one is needed).
            # While a reclaimed victim stays in the set, the job must still fit within its guarantee.
            cross = len(removed) - n_own
            for i in range(len(removed) - 2, -1, -1):
                v = removed[i]
                self.account(v)
                left = cross - 1 if i >= n_own else cross
                if self.fits_now(w, leaf, now) and (left == 0 or self.s.tree.within_guarantee(leaf, w.demand)):
                    keep[i] = False
                    cross = left
                else:
                    self.unaccount(v)
            victims = [removed[i] for i in range(len(removed)) if keep[i]]
            reclaimed = [i >= n_own for i in range(len(removed)) if keep[i]]
            return victims, reclaimed
        finally:
            # Whatever is still taken out of the accounting goes back: this was only a simulation.
            for i in range(len(removed)):
                if keep[i]:
                    self.account(removed[i])

    def reclaim_candidates(self, w: Workload, leaf: QuotaNode, outcome: Outcome) -> Iterator[Workload]:
        """Borrowed work in other queues, one at a time: nearest in the tree first (siblings, then
        cousins, ...), then lowest priority, then (among equals) a job whose removal keeps its queue at
        or above its min, then newest. A queue is a candidate only while it is still borrowing in a
        resource the job is short of, checked again after each victim (the caller has taken it out of
        the accounting by then), so its last victim may leave it below its min. Generated level by
        level: a reclaim that succeeds among siblings never looks at the rest of the tree."""
        needed = self.needed_slots(w, outcome)
        if not needed:
            return
        blocking_depths = [self.s.tree.nodes[key[1]].depth for key, _ in outcome.blockers if key[0] == "node"]
        blocking_units = {key[1] for key, _ in outcome.blockers if key[0] in ("unit", "pods")}
        order = self.s.leaf_order
        below = self.s.leaf_span[leaf.name]
        counts = self.s.victim_leaf_count
        lineage = leaf.lineage
        leaves = self.s.tree.leaves
        for level in range(1, len(lineage)):
            ancestor = lineage[level]
            # A victim in this level frees quota on a blocking node only if that node is this ancestor or above.
            frees_quota = any(d <= ancestor.depth for d in blocking_depths)
            span = self.s.leaf_span[ancestor.name]
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
                if name not in self.s.victim_leaves:
                    continue
                queue = self.s.queues[name]
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

    def needed_slots(self, w: Workload, outcome: Outcome) -> list[int]:
        """The guaranteed resources (by slot) the job is short of: over a ``max`` on its path or over a
        unit's capacity; when it is short of none of them (a pod cap, ``max-jobs``), every guaranteed
        resource it requests. A queue is reclaimed from only while it borrows one of these."""
        guaranteed = self.s.tree.guaranteed
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
            for unit in self.s.units.units:
                if unit.capacity is None or i >= len(unit.capacity_by_slot):
                    continue
                cap = unit.capacity_by_slot[i]
                used = unit.used[i] if i < len(unit.used) else 0
                if cap != NO_LIMIT and used + amount > cap:
                    short.append(i)
                    break
        return short or requested

    def preempt(
        self, w: Workload, victims: list[Workload], reclaimed: list[bool], outcome: Outcome, leaf: QuotaNode
    ) -> list[Preempt]:
        decisions: list[Preempt] = []
        cycle = self.s.stats.cycles
        started: list[Workload] = []
        for k in range(len(victims)):
            v = victims[k]
            code = ReasonCode.RECLAIMED if reclaimed[k] else ReasonCode.PREEMPTED_BY_PRIORITY
            if v.admitted_cycle == cycle:
                # Admitted in this cycle, so no front end has acted on it yet: take the admission back
                # instead of starting the job only to stop it.
                self.withdraw(v, w, code, leaf)
                continue
            v_leaf = self.s.tree.leaves[v.queue]
            if code == ReasonCode.RECLAIMED:
                message = (
                    f"preempted to return {leaf.path} its guarantee for {w.display_name} "
                    f"({v_leaf.path} is borrowing {describe(self.s.tree.borrowed(v_leaf))})"
                )
            else:
                message = f"preempted by higher-priority {w.display_name} (priority {w.priority} > {v.priority}) in {leaf.path}"
            v.reason = Reason(code, message)
            started.append(v)
        if not started:
            return decisions
        for v in started:
            v.state = WorkloadState.PREEMPTING
            self.s.units.by_name[v.unit or ""].terminating_pods += v.pods
            v.preempted_by = w.uid
            assert v.reason is not None
            decisions.append(Preempt(v, v.reason, w.uid))
        for v in started:
            self.ledger.note_victims(self.s.tree.leaves[v.queue])
        if any(v.reason is not None and v.reason.code == ReasonCode.RECLAIMED for v in started):
            held = tuple(name for (kind, name, _r), _need in outcome.blockers if kind == "node")
            if held:
                self.s.hold(w.uid, held)
        self.wait_for(w, started, outcome)
        return decisions

    def wait_for(self, w: Workload, victims: list[Workload], outcome: Outcome) -> None:
        """``w`` waits for ``victims`` to stop; its reason says so."""
        w.waiting_for = {v.uid for v in victims}
        reclaim = any(v.reason is not None and v.reason.code == ReasonCode.RECLAIMED for v in victims)
        wait_code = ReasonCode.WAITING_FOR_RECLAIM if reclaim else ReasonCode.WAITING_FOR_PREEMPTION
        names = ", ".join(v.display_name for v in victims)
        inner = outcome.reason
        outcome.reason = Reason(wait_code, lambda: f"preempting {names} to make room; {inner}")

    def withdraw(self, v: Workload, w: Workload, code: ReasonCode, leaf: QuotaNode) -> None:
        """Undo ``v``'s admission of this cycle: pending again, at its old place in its queue."""
        self.events.release(v)
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
        q = self.s.queues[v.queue]
        q.add(v)
        self.s.offer(q)
        self.s.stats.withdrawn += 1
        self.s.withdrawn[v.uid] = self.s.withdrawn.get(v.uid, 0) + 1

    def account(self, v: Workload) -> None:
        self.s.tree.admit(self.s.tree.leaves[v.queue], v.demand)
        self.s.units.by_name[v.unit or ""].take(v.demand, v.pods)

    def unaccount(self, v: Workload) -> None:
        self.s.tree.release(self.s.tree.leaves[v.queue], v.demand)
        self.s.units.by_name[v.unit or ""].give_back(v.demand, v.pods)

    def shortfall(self, w: Workload, outcome: Outcome) -> int:
        """How much is missing at the tightest blocker (0 when unknown)."""
        best: int | None = None
        for (kind, name, r), _need in outcome.blockers:
            if kind == "node":
                node = self.s.tree.nodes[name]
                short = node.used_of(r) + w.request.get(r, 0) - node.max[r]
            elif kind == "unit":
                unit = self.s.units.by_name[name]
                short = unit.used_of(r) + w.request.get(r, 0) - (unit.capacity or {}).get(r, 0)
            elif kind == "terminating":
                continue  # frees itself: nothing a reclaim must make up for
            else:
                unit = self.s.units.by_name[name]
                short = unit.pods + w.pods - (unit.max_pods or 0)
            best = short if best is None else min(best, short)
        return best or 0

    def reclaim_could_help(self, w: Workload, outcome: Outcome) -> bool:
        """False when no leaf holds a job a reclaim could take, or all that the borrowing leaves use (the
        most a reclaim could free) is less than the shortfall (both kept up to date, so this costs
        O(blockers) plus the leaves whose usage changed since the last reclaim asked)."""
        if not self.s.victim_leaf_count.get(self.s.tree.root.name, 0):
            return False
        if self.s.borrow_changed:
            self.ledger.count_borrowing()
        root_sums = self.s.reclaimable.get(self.s.tree.root.name)
        for (kind, name, r), _need in outcome.blockers:
            if r not in self.s.tree.guaranteed:
                return True  # no bound known for a resource nobody guarantees
            if kind == "node":
                node = self.s.tree.nodes[name]
                short = node.used_of(r) + w.request.get(r, 0) - node.max[r]
                if self.s.victim_leaf_count.get(name, 0) and _sum_of(self.s.reclaimable.get(name), r) >= short:
                    return True
            elif kind == "unit":
                unit = self.s.units.by_name[name]
                cap = unit.capacity or {}
                short = unit.used_of(r) + w.request.get(r, 0) - cap.get(r, 0)
                if _sum_of(root_sums, r) >= short:
                    return True
            elif kind != "terminating":
                return True
        return False


def _sum_of(sums: list[int] | None, resource: str) -> int:
    """One resource's entry of a per-slot sum (0 where there is none)."""
    return 0 if sums is None else SLOTS.value_of(sums, resource)


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
