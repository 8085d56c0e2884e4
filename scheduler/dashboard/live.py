"""What a front end tells the dashboard about now: the engine's state, read through its views.

A front end implements :class:`LiveSource`; ``rayqueue dashboard --db`` has none (history alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class PendingJob:
    """A job the engine holds as pending, in its queue's order."""

    id: str
    name: str
    queue: str
    priority: int
    priority_class: str | None
    position: int | None
    reason_code: str | None
    reason: str | None
    expected_start: float | None
    submitted_at: float


@dataclass
class HeldJob:
    """A job holding quota (admitted, running or being preempted): where, and how much."""

    id: str
    queue: str
    unit: str | None
    request: dict[str, int]
    preempting: bool = False


@dataclass
class LiveSnapshot:
    """One consistent read of the engine (taken under its lock)."""

    taken_at: float
    #: ``status_view``'s shape: ``nodes`` (name, path, depth, leaf, min, max, usage, borrowed, resources,
    #: pending, running) and ``units`` (name, resource, capacity, usage, pods, max_pods)
    status: dict[str, Any]
    pending: list[PendingJob] = field(default_factory=list)
    held: list[HeldJob] = field(default_factory=list)
    #: quota node -> reserved headroom per resource (serving workloads), when the front end counts it
    reserved: dict[str, dict[str, int]] = field(default_factory=dict)
    #: False when the backlog is too large to forecast on every refresh (expected starts left out)
    forecast: bool = True
    #: queue -> how many jobs it has pending (``pending`` may hold only the first ones of each)
    pending_counts: dict[str, int] = field(default_factory=dict)


class LiveSource(Protocol):
    """A running front end, as the dashboard reads it."""

    #: The Ray dashboard's URL while the cluster lives (None: no Ray, or not known)
    ray_dashboard_url: str | None

    async def snapshot(self) -> LiveSnapshot: ...

    def ray_job_url(self, submission_id: str) -> str | None: ...
