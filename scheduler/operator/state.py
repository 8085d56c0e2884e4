"""What the operator's parts share: its configuration, the engine, and the caches of what the API showed.

The controller is split the way the engine is (``intake``, ``release``, ``recovery``, ``queries``); each
part holds this one :class:`OperatorState`. The engine and the caches are only touched under ``lock``
(short, never across I/O); ``cycle_lock`` keeps cycles and rebuilds one at a time.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayqueue.queue.priority import PriorityClasses
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.decisions import Decision
from rayqueue.scheduler.operator.events import EventPoster
from rayqueue.scheduler.operator.history import HistoryWriter, Record
from rayqueue.scheduler.operator.kube import KubeClient, Resource
from rayqueue.scheduler.operator.metrics import OperatorMetrics

PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", False, "ClusterKopfPeering")

# A condition annotation waiting to be written: (type, reason, message, position in the queue).
ConditionWrite = tuple[str, str, str, int | None]


@dataclass
class OperatorConfig:
    tree_name: str | None = None  # None: the ElasticQuotaTree seen (one per cluster, as in ACK)
    tree_namespace: str | None = None
    policy_name: str | None = None  # None: the ResourcePolicy seen, if any
    policy_namespace: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    debounce_s: float = 0.02  # gather a burst of events into one cycle
    apply_concurrency: int = 16
    status_interval_s: float = 1.0  # ElasticQuotaTree status is written at most this often
    retry_failed_after_s: float = 10.0
    announce_after_s: float = 1.0  # tell a pending job it waits (event + condition) once it waited this long
    # a waiting job's condition annotation is rewritten at most this often: a reason that keeps changing
    # (tried, parked, backing off) costs one patch per interval, the latest reason winning
    condition_interval_s: float = 5.0
    peering: str | None = None  # kopf peering name; None = standalone (always the leader)
    priority: int = 0
    identity: str = "rayqueue-operator"
    leadership_poll_s: float = 1.0
    watch_inactivity_s: float = 70.0  # kopf re-opens a watch that has been silent this long
    gauges_interval_s: float = 1.0  # pending/admitted/usage gauges are recomputed at most this often
    # SQLAlchemy URL of the SQL history the dashboard's job and history pages read (``history.py``); None: none
    history_url: str | None = None


class Extension(Protocol):
    """A front end for more kinds beside RayJobs (``services.py``: RayService, RayCluster), hooked into the
    rebuild, the cycle and the writing of decisions."""

    async def relist(self) -> None:
        """Before a resync (no lock held): list the kind's objects."""

    def reset(self) -> None:
        """In a resync, under ``lock``: the caches become what ``relist`` read."""

    def restore(self) -> None:
        """Under ``lock``, the engine just rebuilt: count the kind's running objects, before the RayJobs."""

    async def apply(self, d: Decision) -> bool:
        """Write a decision about one of the kind's objects; False: not one of ours."""

    async def after_cycle(self) -> None:
        """After each cycle's decisions are written (``cycle_lock`` held)."""


def _now() -> float:
    return time.time()


class OperatorState:
    """The engine, the objects last seen, and the flags the loops share."""

    def __init__(self, client: KubeClient, config: OperatorConfig, metrics: OperatorMetrics,
                 clock: Callable[[], float] = _now) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.events = EventPoster(client, instance=config.identity,
                                  on_posted=lambda reason: metrics.events.labels(reason).inc())
        client.on_retry = lambda verb, why: metrics.api_retries.labels(verb, why).inc()
        self.lock = asyncio.Lock()  # the engine and the object caches; never held across I/O
        self.cycle_lock = asyncio.Lock()  # one cycle (or rebuild) at a time, held while applying
        self.wake = asyncio.Event()  # the scheduling loop: something changed
        self.write_wake = asyncio.Event()  # the writer: a condition or the tree's status to write
        self.engine: Engine | None = None
        self.priorities = PriorityClasses()
        self.jobs: dict[str, dict[str, Any]] = {}  # uid -> latest body seen
        self.tree_body: dict[str, Any] | None = None  # the last good tree
        self.tree: QuotaTree | None = None  # a parsed copy of it (for namespace mapping; no usage)
        self.tree_error: list[str] | None = None
        self.policy_body: dict[str, Any] | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        self.rejected: dict[str, tuple[int, str]] = {}  # uid -> (generation, reason) not to resubmit
        self.released: dict[str, float] = {}  # uid -> admittedAtEpoch of the admission episode that ended
        self.announced: dict[str, str] = {}  # uid -> reason code last written for a pending job
        self.pending_writes: dict[str, ConditionWrite] = {}
        self.condition_written: dict[str, float] = {}  # uid -> monotonic time of its last condition write
        # uid -> the resourceVersion our own last admission or condition write produced: its watch event
        # only echoes what the engine already knows (the versions before it came through the watch, in
        # order, and the write changed nothing the engine reads). Not a preemption's: see apply_preempt.
        self.own_versions: dict[str, str] = {}
        self.extensions: list[Extension] = []  # more kinds than RayJobs (``services.py``)
        self.leader = config.peering is None
        self.synced = False
        self.cycles = 0
        self.status_dirty = False
        self.last_status: dict[str, Any] | None = None
        self.tree_condition: dict[str, Any] | None = None
        self.tree_condition_target: tuple[str | None, str] | None = None
        metrics.leader.set(1 if self.leader else 0)
        metrics.tree_valid.set(1)
        self.history: HistoryWriter | None = None
        if config.history_url:
            self.history = HistoryWriter(config.history_url, on_error=metrics.history_errors.inc)
        self.history_reasons: dict[str, str] = {}  # uid -> the reason code last recorded as ``Waiting``
        self.history_ended: set[str] = set()  # uids whose end was recorded (a finished job is seen again)

    def record(self, item: Record) -> None:
        """Queue a history record (no I/O here: a worker thread writes it). Only the leader records: one
        writer per history, and a follower that becomes leader relists, recording what it had not seen."""
        if self.history is not None and self.leader:
            self.history.record(item)

    def wrote(self, uid: str, body: dict[str, Any]) -> None:
        """The object as our own write left it (the answer to our patch)."""
        self.jobs[uid] = body
        self.own_versions[uid] = str((body.get("metadata") or {}).get("resourceVersion"))

    def write_condition(self, uid: str, type_: str, reason: str, message: str, position: int | None) -> None:
        """Queue a ``rayqueue.io/condition`` write for the writer (the latest one per job wins)."""
        self.pending_writes[uid] = (type_, reason, message, position)
        self.write_wake.set()

    def write_tree_condition(self, body: Mapping[str, Any], ok: bool, reason: str, message: str) -> None:
        self.tree_condition = {
            "type": "Valid", "status": "True" if ok else "False", "reason": reason, "message": message[:2000],
            "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "observedGeneration": (body.get("metadata") or {}).get("generation"),
        }
        self.tree_condition_target = (body["metadata"].get("namespace"), body["metadata"]["name"])
        self.status_dirty = True
        self.write_wake.set()


def object_ref(body: Mapping[str, Any]) -> str:
    """``Kind ns/name`` for messages."""
    meta = body.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{body.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name')}"


def ns_name(ref: str) -> tuple[str, str]:
    ns, _, name = ref.partition("/")
    return ns, name
