"""Preemption (lower priority in the same queue) and reclaim (borrowed work elsewhere): candidate
selection and the minimal set of victims.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator

from rayqueue.queue.queues import LeafQueue, VictimKey
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import Resources, describe
from rayqueue.quota.tree import QuotaNode
from rayqueue.scheduler.engine.borrowing import BorrowLedger, takeable
from rayqueue.scheduler.engine.decisions import Preempt
from rayqueue.scheduler.engine.events import Events
from rayqueue.scheduler.engine.placement import Placer
from rayqueue.scheduler.engine.state import EngineState, Outcome
from rayqueue.scheduler.engine.units import Unit


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
        if w.waiting_for and any(
            (v := self.s.workloads.get(uid)) is not None and v.state == WorkloadState.PREEMPTING for uid in w.waiting_for
        ):
            waiting = ", ".join(sorted(w.waiting_for))
            inner = outcome.reason
            outcome.reason = Reason(ReasonCode.WAITING_FOR_RECLAIM, lambda: f"waiting for {waiting} to stop; then {inner}")
            return []
        if self.s.config.reclaim and self.s.tree.within_guarantee(leaf, w.demand) and self.reclaim_could_help(w, outcome):
            # A reclaim that failed can only succeed once new borrowed work exists or the shortfall shrank.
            shortfall = self.shortfall(w, outcome)
            memo = w.reclaim_memo
            if memo is None or memo[0] != self.s.borrow_admissions or shortfall < memo[1]:
                victims = self.choose_victims(w, leaf, now, self.reclaim_candidates(leaf, outcome))
                if victims:
                    w.reclaim_memo = None
                    return self.preempt(w, victims, outcome, ReasonCode.RECLAIMED, leaf)
                w.reclaim_memo = (self.s.borrow_admissions, shortfall)
        if q.preemption == "LowerPriority":
            candidates = itertools.takewhile(lambda v: v.priority < w.priority, q.victims())
            victims = self.choose_victims(w, leaf, now, candidates)
            if victims:
                return self.preempt(w, victims, outcome, ReasonCode.PREEMPTED_BY_PRIORITY, leaf)
        return []

    def reclaim_candidates(self, leaf: QuotaNode, outcome: Outcome) -> Iterator[Workload]:
        """Borrowed work elsewhere that could unblock ``leaf``: nearest in the tree first, then lowest
        priority, then newest. Generated level by level (siblings, then cousins, ...), so a reclaim that
        succeeds among siblings never looks at the rest of the tree."""
        blocking_depths = [self.s.tree.nodes[key[1]].depth for key, _ in outcome.blockers if key[0] == "node"]
        blocking_units = {key[1] for key, _ in outcome.blockers if key[0] in ("unit", "pods")}
        order = self.s.leaf_order
        below = self.s.leaf_span[leaf.name]
        counts = self.s.victim_leaf_count
        lineage = leaf.lineage
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
            # Each lane is in victim order: merge them lazily (the search usually needs the first few).
            lanes: list[Iterator[VictimKey]] = []
            heads: list[tuple[VictimKey, int]] = []
            for name in names:
                borrowed = self.s.leaf_borrowed.get(name)
                if borrowed is None or name not in self.s.victim_leaves:
                    continue
                lane = self.victim_lane(name, borrowed, frees_quota, blocking_units)
                first = next(lane, None)
                if first is not None:
                    heads.append((first, len(lanes)))
                    lanes.append(lane)
            heapq.heapify(heads)
            while heads:
                key, i = heads[0]
                yield self.s.workloads[key[-1]]
                following = next(lanes[i], None)
                if following is None:
                    heapq.heappop(heads)
                else:
                    heapq.heapreplace(heads, (following, i))

    def victim_lane(
        self, name: str, borrowed: Resources, frees_quota: bool, blocking_units: set[str]
    ) -> Iterator[VictimKey]:
        """One leaf's jobs that it could lose without dropping below its min, in victim order (lazily:
        the merge across leaves usually needs only the first few). Re-checked cumulatively when chosen."""
        admitted = self.s.queues[name].admitted
        guaranteed = self.s.tree.guaranteed
        for key in self.s.queues[name].victim_order:
            v = admitted[key[-1]]
            if (frees_quota or v.unit in blocking_units) and takeable(v, borrowed, guaranteed):
                yield key

    def choose_victims(self, w: Workload, leaf: QuotaNode, now: float, candidates: Iterable[Workload]) -> list[Workload]:
        """A small set of candidates whose removal lets ``w`` fit; empty if none does."""
        guaranteed = self.s.tree.guaranteed
        removed: list[Workload] = []
        fits = False
        try:
            for v in candidates:
                v_leaf = self.s.tree.leaves[v.queue]
                # Never push a victim's queue below its own guarantee.
                if v_leaf is not leaf and any(
                    v_leaf.used_of(r) - x < v_leaf.min.get(r, 0) for r, x in v.request.items() if r in guaranteed
                ):
                    continue
                self.unaccount(v)
                removed.append(v)
                if isinstance(self.placer.try_admit(w, leaf, now), Unit):
                    fits = True
                    break
            if not fits:
                return []
            # Give back every victim that is not needed, newest choice first.
            needed: list[Workload] = []
            for v in reversed(removed[:-1]):
                self.account(v)
                if isinstance(self.placer.try_admit(w, leaf, now), Unit):
                    removed.remove(v)
                else:
                    self.unaccount(v)
                    needed.append(v)
            return [removed[-1], *reversed(needed)]
        finally:
            for v in removed:
                self.account(v)

    def preempt(
        self, w: Workload, victims: list[Workload], outcome: Outcome, code: ReasonCode, leaf: QuotaNode
    ) -> list[Preempt]:
        decisions: list[Preempt] = []
        cycle = self.s.stats.cycles
        fresh = [v for v in victims if v.admitted_cycle == cycle]
        if fresh:
            # Admitted in this cycle, so no front end has acted on it yet: take the admission back
            # instead of starting the job only to stop it.
            victims = [v for v in victims if v.admitted_cycle != cycle]
            for v in fresh:
                self.withdraw(v, w, code, leaf)
            if not victims:
                return decisions
        for v in victims:
            v.state = WorkloadState.PREEMPTING
            v.preempted_by = w.uid
            if code == ReasonCode.RECLAIMED:
                message = (
                    f"preempted to return {leaf.path} its guarantee for {w.display_name} "
                    f"({self.s.tree.leaves[v.queue].path} is borrowing "
                    f"{describe(self.s.tree.borrowed(self.s.tree.leaves[v.queue]))})"
                )
            else:
                message = f"preempted by higher-priority {w.display_name} (priority {w.priority} > {v.priority}) in {leaf.path}"
            v.reason = Reason(code, message)
            decisions.append(Preempt(v, v.reason, w.uid))
        for v in victims:
            self.ledger.note_victims(self.s.tree.leaves[v.queue])
        w.waiting_for = {v.uid for v in victims}
        wait_code = ReasonCode.WAITING_FOR_RECLAIM if code == ReasonCode.RECLAIMED else ReasonCode.WAITING_FOR_PREEMPTION
        names = ", ".join(v.display_name for v in victims)
        inner = outcome.reason
        outcome.reason = Reason(wait_code, lambda: f"preempting {names} to make room; {inner}")
        return decisions

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
            else:
                unit = self.s.units.by_name[name]
                short = unit.pods + w.pods - (unit.max_pods or 0)
            best = short if best is None else min(best, short)
        return best or 0

    def reclaim_could_help(self, w: Workload, outcome: Outcome) -> bool:
        """False when no leaf holds a job a reclaim could take, or all the borrowing that a reclaim could
        take back is less than the shortfall (both kept up to date, so this costs O(blockers) plus the
        leaves whose borrowing changed since the last reclaim asked)."""
        if not self.s.victim_leaf_count.get(self.s.tree.root.name, 0):
            return False
        if self.s.borrow_changed:
            self.ledger.count_borrowing()
        root_sums = self.s.reclaimable.get(self.s.tree.root.name, {})
        for (kind, name, r), _need in outcome.blockers:
            if r not in self.s.tree.guaranteed:
                return True  # no bound known for a resource nobody guarantees
            if kind == "node":
                node = self.s.tree.nodes[name]
                short = node.used_of(r) + w.request.get(r, 0) - node.max[r]
                if self.s.victim_leaf_count.get(name, 0) and self.s.reclaimable.get(name, {}).get(r, 0) >= short:
                    return True
            elif kind == "unit":
                unit = self.s.units.by_name[name]
                cap = unit.capacity or {}
                short = unit.used_of(r) + w.request.get(r, 0) - cap.get(r, 0)
                if root_sums.get(r, 0) >= short:
                    return True
            else:
                return True
        return False
