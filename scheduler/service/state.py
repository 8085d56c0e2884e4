"""What the standalone service's parts share: the engine, its lock, the store, Ray, and the jobs in flight.

``intake``, ``release``, ``recovery``, ``queries`` and ``tree_changes`` each hold one ``ServiceState``
(as the engine's modules share one ``EngineState``), so a job's bookkeeping lives in one place whichever
part touches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.metrics import ServiceMetrics
from rayqueue.scheduler.service.rayjobs import RayJobs
from rayqueue.scheduler.service.store import JobRecord, Store
from rayqueue.scheduler.workloads.rayjob import RayJobRequest, rayjob_request

#: Priority classes known without configuration (a Kubernetes cluster would have PriorityClasses).
DEFAULT_PRIORITY_CLASSES = {"low": 100, "normal": 500, "high": 1000}
REJECTED = "Rejected"
TREE_SETTING = "quota_tree_yaml"


class ServiceError(RuntimeError):
    pass


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class ServiceConfig:
    poll_interval_s: float = 0.2  # how often running Ray jobs are asked for their status
    capacity_interval_s: float = 5.0  # how often Ray's nodes are read for unit capacity
    retry_base_s: float = 0.5  # Ray unreachable: retry a release / stop after this, doubling
    retry_max_s: float = 10.0
    log_tail_chars: int = 64_000  # how much of a finished driver's log is kept in SQL
    #: how long log snapshots (at preemption, at the end) are kept; None: for ever
    log_retention_s: float | None = 30 * 86400.0
    cancel_settle_s: float = 60.0  # how long a cancelled job's end is awaited in Ray (for its status and log)
    #: the largest HTTP request body read (413 beyond); a KubeRay sample is a few KiB, a batch of them far less
    max_body_bytes: int = 4 * 2**20
    serve_http_port: int = 8000  # Ray Serve's HTTP proxy on 127.0.0.1, for services (serving.py)
    # No backoff: a parked job is only retried when a release leaves room for it (the engine's wake-up
    # index), and a backoff would let a newly requeued lower-priority job overtake it.
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(backoff_base_s=0.0))


class ServiceState:
    """The service's shared state. Everything here is used on the event loop, or in a worker thread
    holding ``engine_lock``; asyncio objects (tasks, the wake event) only on the event loop."""

    def __init__(
        self,
        store: Store,
        ray: RayJobs,
        engine: Engine,
        priorities: PriorityClasses,
        config: ServiceConfig,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.ray = ray
        self.engine = engine
        self.priorities = priorities
        self.config = config
        self.clock = clock
        self.metrics = ServiceMetrics()
        #: Held by whoever uses the engine: the loops and the API on the event loop, and the worker threads
        #: that run slow engine work for them (a big submission, a tree, a forecast), one at a time.
        self.engine_lock = asyncio.Lock()
        self.active: dict[str, str] = {}  # job id -> Ray submission id being followed
        # Followed submissions whose row is past Admitted (Running recorded, or being preempted): the
        # status poll need not read their row again, which at hundreds of running jobs cost most of the
        # service's CPU (a row read per job, every poll interval).
        self.past_admitted: set[str] = set()
        self.preempting: set[str] = set()
        self.cancelled: set[str] = set()
        self.releasing: dict[str, asyncio.Task[None]] = {}  # job id -> the task submitting it to Ray
        self.background: set[asyncio.Task[Any]] = set()
        self.wake_event = asyncio.Event()
        # parsed once per job and process: a manifest is re-read from its row only after a restart
        self.requests: dict[str, RayJobRequest] = {}

    def wake(self) -> None:
        """Ask the scheduling loop for a cycle soon (something left room or arrived)."""
        self.wake_event.set()

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task that ``Service.stop`` cancels; kept referenced until it ends."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def unfollow(self, job_id: str) -> str | None:
        """Stop following the job in Ray (it ended, was requeued or cancelled); its submission id, if any."""
        sid = self.active.pop(job_id, None)
        if sid is not None:
            self.past_admitted.discard(sid)
        return sid

    def request(self, row: JobRecord) -> RayJobRequest:
        """The job's RayJob request, from this process's cache or its stored manifest."""
        req = self.requests.get(row.id)
        if req is None:
            req = rayjob_request(row.manifest_dict(), validate=False)
            self.requests[row.id] = req
        return req


def requeue_row(store: Store, row: JobRecord, kind: str, message: str, preempted: bool = False) -> None:
    """Back to Pending in the store, as a new attempt (a new Ray submission id when admitted again)."""
    store.transition(
        row.id,
        kind,
        message,
        state=st.PENDING,
        attempt=row.attempt + 1,
        released=False,
        unit=None,
        submission_id=None,
        admitted_at=None,
        running_at=None,
        preemptions=row.preemptions + (1 if preempted else 0),
        preempted_by=None,
    )
