"""Service workloads (a RayService, or in standalone a Ray Serve application) as the engine holds them.

A service is not a gang: its replicas come and go one at a time as its autoscaler asks. The engine charges
its head and its current replicas, and keeps the rest up to ``max_replicas`` as *reserved headroom* in its
leaf (see ``serving.py`` and docs/admission.md). Plain data here; the decisions are in ``serving.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rayqueue.queue.workload import Reason
from rayqueue.quota.quantity import MAX_JOBS, MILLI, Resources

#: KubeRay's default maxReplicas (int32 max): "unset", so the reservation is capped by the quota instead.
UNSET_MAX_REPLICAS = 2**31 - 1


class ServiceError(ValueError):
    """A service event the engine cannot take (unknown service, bad replica counts): one line."""


class ServiceState(StrEnum):
    PENDING = "Pending"  # waiting for its reservation or its minimum replicas
    RUNNING = "Running"
    FINISHED = "Finished"
    REJECTED = "Rejected"  # its reservation is larger than a ``max`` on its path: it can never run


@dataclass(slots=True, eq=False)
class ServiceSpec:
    """One Ray cluster of a service: its head, one replica (a worker group's pods for one replica, or
    one Serve replica's actors), and the bounds its autoscaler moves within."""

    head: Resources
    replica: Resources
    min_replicas: int
    max_replicas: int
    hot_reserve: int = 0  # replicas' worth kept idle, never lent to batch
    head_pods: int = 1
    replica_pods: int = 1

    def check(self, what: str) -> None:
        if self.min_replicas < 0:
            raise ServiceError(f"{what}: minReplicas must not be negative (got {self.min_replicas})")
        if self.max_replicas < self.min_replicas:
            raise ServiceError(
                f"{what}: maxReplicas {self.max_replicas} is below minReplicas {self.min_replicas}"
            )
        if self.hot_reserve < 0:
            raise ServiceError(f"{what}: hotReserve must not be negative (got {self.hot_reserve})")
        if any(v < 0 for v in (*self.head.values(), *self.replica.values())):
            raise ServiceError(f"{what}: resources must not be negative")

    def hot(self, replicas: int) -> int:
        """Replicas' worth held idle above ``replicas``: the hot reserve, never beyond the maximum."""
        return max(0, min(self.hot_reserve, self.max_replicas - replicas))

    def head_charge(self) -> Resources:
        """The head as charged: it counts one against ``kube-queue/max-jobs``, as every job does."""
        out = dict(self.head)
        out[MAX_JOBS] = out.get(MAX_JOBS, 0) + MILLI
        return out

    def footprint(self) -> Resources:
        """Head plus ``max_replicas``: what the service reserves on every node of its path."""
        return combine(self.head_charge(), self.replica, self.max_replicas)

    def guaranteed_part(self) -> Resources:
        """Head plus ``min_replicas``: what must lie within its leaf's guarantee."""
        return combine(self.head_charge(), self.replica, self.min_replicas)


@dataclass(slots=True, eq=False)
class Cluster:
    """What one Ray cluster of a service holds now: its replicas per unit (in the units' order), its hot
    reserve (charged in quota only), and where its head runs."""

    spec: ServiceSpec
    granted: int = 0
    hot: int = 0
    head_unit: str | None = None
    by_unit: dict[str, int] = field(default_factory=dict)

    def charge(self) -> Resources:
        """What the cluster holds in quota: head, granted replicas and the hot reserve."""
        return combine(self.spec.head_charge(), self.spec.replica, self.granted + self.hot)


@dataclass(slots=True, eq=False)
class Service:
    """A service as a front end submits it, and (below the first block) what the engine keeps of it."""

    uid: str
    queue: str
    spec: ServiceSpec
    replicas: int  # what its autoscaler asks now (clamped into [min, max] by the engine)
    priority: int = 0
    name: str = ""
    submitted_at: float = 0.0

    state: ServiceState = ServiceState.PENDING
    reason: Reason | None = None
    cluster: Cluster | None = None
    upgrade: Cluster | None = None  # the second cluster of a zero-downtime upgrade, once charged
    upgrade_spec: ServiceSpec | None = None  # asked for, not yet charged
    upgrade_replicas: int = 0
    admitted_at: float | None = None
    scale_wait_since: float | None = None  # a scale-up waits since then (None: none waits)
    scale_waited_s: float = 0.0  # seconds scale-ups waited, in all
    preemptions: int = 0  # batch jobs preempted for it
    notes: list[str] = field(default_factory=list)  # what the engine changed of what was asked (an event each)

    @property
    def display_name(self) -> str:
        return self.name or self.uid

    @property
    def granted(self) -> int:
        return self.cluster.granted if self.cluster is not None else 0

    @property
    def target(self) -> int:
        return min(max(self.replicas, self.spec.min_replicas), self.spec.max_replicas)


def combine(base: Resources, per: Resources, n: int) -> Resources:
    """``base`` plus ``n`` times ``per``."""
    out = dict(base)
    if n:
        for r, v in per.items():
            out[r] = out.get(r, 0) + v * n
    return out


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service as front ends read it."""

    uid: str
    name: str
    queue: str
    state: ServiceState
    reason: Reason | None
    replicas: int  # what its autoscaler asks
    granted: int  # replicas charged now
    min_replicas: int
    max_replicas: int
    hot_reserve: int
    by_unit: dict[str, int]
    used: Resources  # charged now (head + granted replicas, both clusters during an upgrade)
    reserved: Resources  # headroom up to max_replicas beyond the hot reserve: what batch may borrow
    hot: Resources  # the hot reserve, charged (in the nodes' ``used``) and never lent
    upgrading: bool
    preemptions: int
    scale_waited_s: float
