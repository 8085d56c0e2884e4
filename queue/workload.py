"""The engine's view of one job: what it asks for, where it queues, and where it stands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from rayqueue.quota.quantity import Demand, Resources


class WorkloadState(StrEnum):
    PENDING = "Pending"
    ADMITTED = "Admitted"
    PREEMPTING = "Preempting"  # asked to stop; its quota is held until the front end confirms
    FINISHED = "Finished"
    REJECTED = "Rejected"
    CANCELLED = "Cancelled"


class ReasonCode(StrEnum):
    QUEUED = "Queued"  # not yet considered
    QUOTA_MAX_EXCEEDED = "QuotaMaxExceeded"
    NO_CAPACITY_IN_UNITS = "NoCapacityInUnits"
    WAITING_FOR_RECLAIM = "WaitingForReclaim"
    WAITING_FOR_PREEMPTION = "WaitingForPreemption"
    BLOCKED_BY_HEAD = "BlockedByHead"
    BACKOFF = "Backoff"
    NEVER_FITS = "NeverFits"
    INVALID = "Invalid"
    ADMITTED = "Admitted"
    RECLAIMED = "Reclaimed"  # preempted to give a queue back its guarantee
    PREEMPTED_BY_PRIORITY = "PreemptedByPriority"


class Reason:
    """A typed reason code and a sentence a user can act on.

    The sentence may be given as a function: a job that waits is re-checked often and read rarely,
    so its sentence is only rendered when someone reads it.
    """

    __slots__ = ("code", "_message", "_render")

    def __init__(self, code: ReasonCode, message: str | Callable[[], str]) -> None:
        self.code = code
        if callable(message):
            self._message: str | None = None
            self._render: Callable[[], str] | None = message
        else:
            self._message = message
            self._render = None

    @property
    def message(self) -> str:
        if self._message is None:
            assert self._render is not None
            self._message = self._render()
            self._render = None
        return self._message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"Reason({self.code.value!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reason) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


@dataclass(slots=True, eq=False)
class Workload:
    """A gang of pods admitted whole or not at all.

    ``request`` is the total over all pods (milli-units); ``pods`` is how many pods the gang has (it
    counts against a unit's ``max``). Everything below the first block is owned by the engine.
    """

    uid: str
    queue: str
    request: Resources
    pods: int = 1
    priority: int = 0
    priority_class: str | None = None
    submitted_at: float = 0.0
    expected_duration: float | None = None
    name: str = ""
    # Per resource, the most any one pod of the gang asks (a pod runs on one node); None: unknown.
    pod_request: Resources | None = None

    state: WorkloadState = WorkloadState.PENDING
    reason: Reason | None = None
    admitted_at: float | None = None
    admitted_cycle: int = -1  # the engine cycle that admitted it (an admission it may still withdraw)
    unit: str | None = None
    preemptions: int = 0
    failures: int = 0  # consecutive attempts that did not fit (drives backoff)
    retry_after: float = 0.0
    pending_since: float = 0.0  # start of the current wait (submission or requeue)
    reclaim_memo: tuple[int, int] | None = None  # (borrow admissions, shortfall) at its last failed reclaim
    checked_epoch: int = -1  # the tree/units version its can-ever-fit check was made against
    order: tuple = ()  # its key in its queue, fixed while it is queued
    seq: int = 0  # arrival order, the last tie-breaker
    park_token: int = 0  # invalidates stale entries in wake-up indexes
    preempted_by: str | None = None
    waiting_for: set[str] = field(default_factory=set)  # victims this job waits on
    # Preempted for a service's scale-up: its quota went to the service at once, so stopping releases none.
    handed_over: bool = False
    demand: Demand = field(default_factory=lambda: Demand({}))  # ``request`` by resource slot, set on submit

    @property
    def display_name(self) -> str:
        return self.name or self.uid

    def fresh(self) -> Workload:
        """The same job as a new submission: its own fields, none of the engine's state."""
        return Workload(
            uid=self.uid,
            queue=self.queue,
            request=dict(self.request),
            pods=self.pods,
            priority=self.priority,
            priority_class=self.priority_class,
            submitted_at=self.submitted_at,
            expected_duration=self.expected_duration,
            name=self.name,
            pod_request=dict(self.pod_request) if self.pod_request is not None else None,
        )
