"""What one admission cycle returns: decisions as data, applied by a front end.

Plain classes rather than dataclasses: they are built on the engine's hot path, and mypyc compiles an
explicit ``__init__`` but leaves a dataclass's generated one interpreted.
"""

from __future__ import annotations

from typing import Any

from rayqueue.queue.workload import Reason, Workload


class Placement:
    """Where an admitted gang runs: one capacity unit of the ResourcePolicy (or the default pool).

    The engine hands out one Placement per unit to every job admitted there: read it, never change it.
    """

    __slots__ = ("unit", "resource", "node_selector", "pod_labels", "tolerations")

    def __init__(
        self,
        unit: str,
        resource: str = "ecs",  # ecs | acs | eci | default
        node_selector: dict[str, str] | None = None,
        pod_labels: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
    ) -> None:
        self.unit = unit
        self.resource = resource
        self.node_selector: dict[str, str] = dict(node_selector or {})
        self.pod_labels: dict[str, str] = dict(pod_labels or {})
        self.tolerations: list[dict[str, Any]] = list(tolerations or [])

    def __repr__(self) -> str:
        return (f"Placement(unit={self.unit!r}, resource={self.resource!r}, node_selector={self.node_selector!r}, "
                f"pod_labels={self.pod_labels!r}, tolerations={self.tolerations!r})")


class Admit:
    __slots__ = ("workload", "placement")

    def __init__(self, workload: Workload, placement: Placement) -> None:
        self.workload = workload
        self.placement = placement

    def __repr__(self) -> str:
        return f"Admit({self.workload.uid!r}, unit={self.placement.unit!r})"


class Preempt:
    """Stop ``workload`` (suspend it); its quota stays held until the front end confirms."""

    __slots__ = ("workload", "reason", "preemptor")

    def __init__(self, workload: Workload, reason: Reason, preemptor: str) -> None:
        self.workload = workload
        self.reason = reason
        self.preemptor = preemptor

    def __repr__(self) -> str:
        return f"Preempt({self.workload.uid!r}, {self.reason!r}, preemptor={self.preemptor!r})"


class Reject:
    """The job can never run as asked; it leaves its queue and never blocks it."""

    __slots__ = ("workload", "reason")

    def __init__(self, workload: Workload, reason: Reason) -> None:
        self.workload = workload
        self.reason = reason

    def __repr__(self) -> str:
        return f"Reject({self.workload.uid!r}, {self.reason!r})"


class ServiceGrant:
    """A service may run ``replicas`` replicas now (``added`` of them new, per unit): the front end
    raises the worker group's replicas (or Serve's ``max_replicas``) to that. ``first``: the service was
    just admitted; ``upgrade``: this is the second cluster of a zero-downtime upgrade.

    Not a ``Decision``: ``Engine.schedule`` returns the batch decisions (the ``Preempt`` of every job a
    scale-up takes back headroom from among them) and ``Engine.service_grants`` hands these out."""

    __slots__ = ("service", "replicas", "added", "placements", "first", "upgrade")

    def __init__(self, service: Any, replicas: int, added: dict[str, int], placements: dict[str, Placement],
                 first: bool = False, upgrade: bool = False) -> None:
        self.service = service  # a ``services.Service``; typed loosely to keep this module a leaf
        self.replicas = replicas
        self.added = added
        self.placements = placements
        self.first = first
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"ServiceGrant({self.service.uid!r}, replicas={self.replicas}, added={self.added!r})"


Decision = Admit | Preempt | Reject
