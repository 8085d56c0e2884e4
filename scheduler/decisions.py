"""What one admission cycle returns: decisions as data, applied by a front end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.workload import Reason, Workload


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an admitted gang runs: one capacity unit of the ResourcePolicy (or the default pool)."""

    unit: str
    resource: str = "ecs"  # ecs | acs | eci | default
    node_selector: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Admit:
    workload: Workload
    placement: Placement


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop ``workload`` (suspend it); its quota stays held until the front end confirms."""

    workload: Workload
    reason: Reason
    preemptor: str


@dataclass(frozen=True, slots=True)
class Reject:
    """The job can never run as asked; it leaves its queue and never blocks it."""

    workload: Workload
    reason: Reason


Decision = Admit | Preempt | Reject
