"""Capacity pools a job is placed in whole (the runtime side of a ``ResourcePolicy``).

The engine accounts every admitted job against one unit; ``resourcepolicy.py`` builds these from the
manifest. Kept apart from the manifest's pydantic models so that the engine's hot path compiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rayqueue.quota.quantity import NO_LIMIT, SLOTS, Demand, ManifestError, Resources, describe

UnitKind = Literal["ecs", "acs", "eci", "default"]
WhenTryNext = Literal["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax", "LackResourceAndNoTerminating"]


class ResourcePolicyError(ManifestError):
    """An invalid ResourcePolicy: every problem found, each naming the unit and the field."""

    def __init__(self, violations: list[str], source: str = "ResourcePolicy") -> None:
        super().__init__(violations, source)


@dataclass(slots=True, eq=False)
class Unit:
    """One capacity pool. ``capacity`` None means elastic (ACS): bounded only by ``max_pods``."""

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
    # Usage and capacity by resource slot (see ``quantity.ResourceSlots``), always the same length.
    used: list[int] = field(default_factory=list, init=False)
    capacity_by_slot: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.set_capacity(self.capacity)

    def set_capacity(self, capacity: Resources | None) -> None:
        self.capacity = capacity
        self.capacity_by_slot = SLOTS.vector(capacity or {}, NO_LIMIT)
        SLOTS.widen(self.used, 0)

    @property
    def usage(self) -> Resources:
        """What the jobs placed here use, per resource (non-zero entries)."""
        return SLOTS.resources(self.used)

    def used_of(self, resource: str) -> int:
        return SLOTS.value_of(self.used, resource)

    def widen(self) -> None:
        """Make room for resource slots added since this unit was made."""
        SLOTS.widen(self.used, 0)
        SLOTS.widen(self.capacity_by_slot, NO_LIMIT)

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

    def can_ever_hold(self, request: Resources, pods: int) -> bool:
        if self.max_pods is not None and pods > self.max_pods:
            return False
        if self.capacity is None:
            return True
        return all(v <= self.capacity.get(r, v) for r, v in request.items())

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
        cap = "elastic" if self.capacity is None else describe(self.capacity)
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
