"""Capacity pools a job is placed in whole (the runtime side of a ``ResourcePolicy``).

The engine accounts every admitted job against one unit; ``resourcepolicy.py`` builds these from the
manifest. Kept apart from the manifest's pydantic models so that the engine's hot path compiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rayqueue.quota.quantity import MAX_JOBS, NO_LIMIT, SLOTS, Demand, ManifestError, Resources, describe, format_quantity

UnitKind = Literal["ecs", "acs", "eci", "default"]
WhenTryNext = Literal["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax", "LackResourceAndNoTerminating"]


class ResourcePolicyError(ManifestError):
    """An invalid ResourcePolicy: every problem found, each naming the unit and the field."""

    def __init__(self, violations: list[str], source: str = "ResourcePolicy") -> None:
        super().__init__(violations, source)


@dataclass(slots=True, eq=False)
class Unit:
    """One capacity pool. ``capacity`` None means elastic (ACS): bounded only by ``max_pods``.

    A capacity is either *declared* (a ResourcePolicy's own figure: a resource it does not name is
    unbounded) or *measured* from the unit's nodes (``complete``: a resource no node of the unit has is
    0 there, as the nodes could never run it). A measured unit also knows ``largest``, per resource the
    most that any one of its nodes has, because a pod runs on one node, never across a pool.
    """

    name: str
    resource: UnitKind = "default"
    capacity: Resources | None = None
    max_pods: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    pods: int = 0
    # Pods of the jobs placed here that were asked to stop and are not yet confirmed gone (the engine's
    # Preempting jobs): ``LackResourceAndNoTerminating`` waits for them instead of trying the next unit.
    terminating_pods: int = 0
    complete: bool = False
    largest: Resources | None = None
    # What the policy declared, kept apart so that a unit measured from nodes can fall back to it.
    declared: Resources | None = field(default=None, init=False)
    # Usage and capacity by resource slot (see ``quantity.ResourceSlots``), always the same length.
    used: list[int] = field(default_factory=list, init=False)
    capacity_by_slot: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.declared = dict(self.capacity) if self.capacity is not None and not self.complete else None
        self.set_capacity(self.capacity, self.largest, self.complete)

    def set_capacity(self, capacity: Resources | None, largest: Resources | None = None,
                     complete: bool = False) -> None:
        self.capacity = capacity
        self.complete = complete and capacity is not None
        self.largest = largest if capacity is not None else None
        jobs_slot = SLOTS.slot(MAX_JOBS)  # first: a slot added after the vector would miss its fill
        self.capacity_by_slot = SLOTS.vector(capacity or {}, 0 if self.complete else NO_LIMIT)
        if self.complete and MAX_JOBS not in (capacity or {}):
            self.capacity_by_slot[jobs_slot] = NO_LIMIT  # a count of jobs, which no node has
        SLOTS.widen(self.used, 0)

    def capacity_of(self, resource: str) -> int:
        """The unit's capacity of one resource as admission reads it (``NO_LIMIT``: unbounded)."""
        if self.capacity is None:
            return NO_LIMIT
        value = self.capacity.get(resource)
        if value is not None:
            return value
        return 0 if self.complete and resource != MAX_JOBS else NO_LIMIT

    def lacks(self, resource: str) -> bool:
        """No node of this (measured) unit has any of ``resource``: a job needing it waits for nodes."""
        return self.complete and resource != MAX_JOBS and not (self.capacity or {}).get(resource)

    @property
    def usage(self) -> Resources:
        """What the jobs placed here use, per resource (non-zero entries)."""
        return SLOTS.resources(self.used)

    def used_of(self, resource: str) -> int:
        return SLOTS.value_of(self.used, resource)

    def widen(self) -> None:
        """Make room for resource slots added since this unit was made."""
        SLOTS.widen(self.used, 0)
        SLOTS.widen(self.capacity_by_slot, 0 if self.complete else NO_LIMIT)

    def shortfall(self, demand: Demand) -> str | None:
        """The first resource whose capacity the demand would exceed now (None: it fits)."""
        if self.capacity is None:
            return None
        if len(self.used) < demand.width:
            self.widen()
        slots, amounts = demand.slots, demand.amounts
        used, caps = self.used, self.capacity_by_slot
        for k in range(len(slots)):
            i = slots[k]
            cap = caps[i]
            if cap != NO_LIMIT and used[i] + amounts[k] > cap:
                return SLOTS.names[i]
        return None

    def can_ever_hold(self, request: Resources, pods: int, pod_request: Resources | None = None) -> bool:
        return self.never_holds(request, pods, pod_request) is None

    def never_holds(self, request: Resources, pods: int, pod_request: Resources | None = None) -> str | None:
        """Why this unit could not hold the job even when empty (None: it could). A resource the unit
        lacks altogether is not a reason: nodes that have it may join, and the job waits for them."""
        if self.max_pods is not None and pods > self.max_pods:
            return f"{self.name}: {pods} pods, max {self.max_pods}"
        if self.capacity is None:
            return None
        for r, v in request.items():
            cap = self.capacity.get(r)
            if cap is not None and v > cap and not self.lacks(r):
                return f"{self.name}: needs {format_quantity(v, r)} {r}, the unit has {format_quantity(cap, r)}"
        return self.pod_misfit(pod_request)

    def pod_misfit(self, pod_request: Resources | None) -> str | None:
        """Why no single node of this unit could run the gang's largest pod (None: one could, or the
        unit's nodes are unknown). ``pod_request`` is per resource the most any one pod asks."""
        largest = self.largest
        if largest is None or not pod_request:
            return None
        for r, v in pod_request.items():
            most = largest.get(r, 0)
            if v > most and most > 0:
                return (f"{self.name}: a pod needs {format_quantity(v, r)} {r}, its largest node has "
                        f"{format_quantity(most, r)}")
        return None

    def take(self, demand: Demand, pods: int) -> None:
        self._charge(demand, pods, True)

    def give_back(self, demand: Demand, pods: int) -> None:
        self._charge(demand, pods, False)

    def _charge(self, demand: Demand, pods: int, adding: bool) -> None:
        if len(self.used) < demand.width:
            self.widen()
        slots, amounts, used = demand.slots, demand.amounts, self.used
        for k in range(len(slots)):
            i = slots[k]
            used[i] = used[i] + amounts[k] if adding else used[i] - amounts[k]
        self.pods += pods if adding else -pods

    def describe_capacity(self) -> str:
        cap = "elastic" if self.capacity is None else (describe(self.capacity) or "no resources")
        pods = "" if self.max_pods is None else f", max {self.max_pods} pods"
        return f"{self.name} ({self.resource}): {cap}{pods}"


@dataclass
class Units:
    """The ordered pools a job may be placed in, and when to move on to the next one."""

    units: list[Unit]
    when_try_next: WhenTryNext = "LackResourceOrExceedMax"
    timeout_s: float = 0.0
    name: str = "default"
    by_name: dict[str, Unit] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ResourcePolicyError([f"unit names must be unique (got {names})"], self.name)
        if not self.units:
            raise ResourcePolicyError(["at least one unit is required"], self.name)
        self.by_name: dict[str, Unit] = {u.name: u for u in self.units}

    @classmethod
    def single(cls, capacity: Resources | None = None, name: str = "default") -> Units:
        """No ResourcePolicy: one pool with the cluster's capacity (None: unbounded)."""
        return cls([Unit(name=name, resource="default", capacity=capacity)])


def fresh_units(units: Units) -> Units:
    """A copy with nothing in use, so one scenario can be run more than once, or a forecast can run on
    the live engine's units: a unit measured from its nodes stays measured (a resource none of its nodes
    has is 0, a pod larger than its largest node never runs there), as in the engine it was copied from."""
    copies: list[Unit] = []
    for u in units.units:
        c = Unit(
            name=u.name,
            resource=u.resource,
            capacity=None if u.capacity is None else dict(u.capacity),
            max_pods=u.max_pods,
            node_selector=dict(u.node_selector),
            pod_labels=dict(u.pod_labels),
            tolerations=list(u.tolerations),
            complete=u.complete,
            largest=None if u.largest is None else dict(u.largest),
        )
        c.declared = None if u.declared is None else dict(u.declared)
        copies.append(c)
    return Units(copies, units.when_try_next, units.timeout_s, name=units.name)
