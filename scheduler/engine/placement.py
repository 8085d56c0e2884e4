"""Placement: does a job fit now (quota path, then units), and can it ever fit.
"""

from __future__ import annotations

from collections.abc import Callable

from rayqueue.queue.workload import Reason, ReasonCode, Workload
from rayqueue.quota.quantity import MAX_JOBS, Resources, describe, format_quantity
from rayqueue.quota.tree import QuotaNode, QuotaViolation
from rayqueue.scheduler.engine.state import EngineState, Outcome
from rayqueue.scheduler.engine.units import Unit
from rayqueue.scheduler.engine.wakeup import BlockerKey


class Placer:
    """Where a job fits now: every quota node on its path, then the first ResourcePolicy unit
    with room (``whenTryNextUnits``); and whether it can ever fit."""

    __slots__ = ("s",)

    def __init__(self, s: EngineState) -> None:
        self.s = s

    def try_admit(self, w: Workload, leaf: QuotaNode, now: float) -> Unit | Outcome:
        # Every full node on the way up, so a wake from one of them checks the others first.
        over = self.s.tree.blocked_at(leaf, w.demand)
        if over:
            key, need = over[0]
            first = self.s.tree.nodes[key[1]]
            r: str = key[2]
            return Outcome(Reason(ReasonCode.QUOTA_MAX_EXCEEDED, _violation_message(first, r, first.used_of(r), need)), over)
        return self.place(w, now)

    def fits(self, w: Workload, leaf: QuotaNode, now: float) -> bool:
        """Whether ``try_admit`` would place the job now (without saying why not)."""
        return not self.s.tree.exceeds_max(leaf, w.demand) and isinstance(self.place(w, now), Unit)

    def place(self, w: Workload, now: float) -> Unit | Outcome:
        policy = self.s.units.when_try_next
        lacks: list[Callable[[], str]] = []
        blockers: list[tuple[BlockerKey, int]] = []
        retry_at: float | None = None
        request, pods, pod_request = w.request, w.pods, w.pod_request
        for unit in self.s.units.units:
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
                deadline = w.pending_since + self.s.units.timeout_s
                if now >= deadline:
                    continue
                retry_at = deadline
            break  # ExceedMax, or the timeout has not passed: wait for this unit
        reason = Reason(ReasonCode.NO_CAPACITY_IN_UNITS, lambda: "; ".join(m() for m in lacks))
        return Outcome(reason, blockers, retry_at, alternatives=True)

    def never_fits(self, w: Workload) -> Reason | None:
        leaf = self.s.tree.leaves.get(w.queue)
        if leaf is None:
            return Reason(ReasonCode.INVALID, self.s.unknown_queue_message(w.queue))
        violation = self.s.tree.never_fits(leaf, w.request)
        if violation is not None:
            r = violation.resource
            return Reason(
                ReasonCode.NEVER_FITS,
                f"needs {format_quantity(violation.requested, r)} {r}, max of {violation.node} is "
                f"{format_quantity(violation.limit, r)}",
            )
        why = [u.never_holds(w.request, w.pods, w.pod_request) for u in self.s.units.units]
        if all(why):
            return Reason(
                ReasonCode.NEVER_FITS,
                f"needs {describe(_visible(w.request))} in {w.pods} pods, larger than every unit "
                f"({'; '.join(m for m in why if m)})",
            )
        return None


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
