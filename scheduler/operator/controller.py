"""The operator's core: keeps the engine in step with the API and applies its decisions.

kopf handlers (``handlers.py``) call the ``on_*`` methods with every watch event; the methods update the
engine under one asyncio lock and wake the scheduling loop. The loop runs ``engine.schedule()`` (debounced,
one cycle at a time) and applies each decision with the Kubernetes API. The engine does no I/O; this class
does all of it, through :class:`KubeClient` (retries) and :class:`EventPoster` (events in the background).

State is derived from the objects, so a restart or a leader change rebuilds it from a fresh list
(:meth:`resync`): a RayJob is admitted when it carries our admission record and is not suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.queue.workload import Reason, ReasonCode, WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, Resources, format_quantity, parse_resources
from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.capacity import NodeCapacity, apply_node_capacity
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt, Reject
from rayqueue.scheduler.operator.kube import (
    NODES,
    POLICIES,
    PRIORITY_CLASSES,
    RAYJOBS,
    TREES,
    ApiError,
    Conflict,
    EventPoster,
    KubeClient,
    NotFound,
    Resource,
)
from rayqueue.scheduler.operator.metrics import OperatorMetrics
from rayqueue.scheduler.operator.rayjobs import (
    CONDITION_ANNOTATION,
    MUTATED_ANNOTATION,
    JobError,
    JobState,
    admit_patch,
    condition,
    job_uid,
    observe,
    preempt_patch,
    preemption_record,
    workload_for,
)
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.workloads.resourcepolicy import ResourcePolicyError, Units, units_from_manifest

log = logging.getLogger("rayqueue.operator")

PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", False, "ClusterKopfPeering")


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
    peering: str | None = None  # kopf peering name; None = standalone (always the leader)
    priority: int = 0
    identity: str = "rayqueue-operator"
    leadership_poll_s: float = 1.0
    watch_inactivity_s: float = 70.0  # kopf re-opens a watch that has been silent this long
    gauges_interval_s: float = 1.0  # pending/admitted/usage gauges are recomputed at most this often


def _now() -> float:
    return time.time()


class Controller:
    def __init__(self, client: KubeClient, config: OperatorConfig | None = None,
                 metrics: OperatorMetrics | None = None, clock: Callable[[], float] = _now) -> None:
        self.client = client
        self.config = config or OperatorConfig()
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self.events = EventPoster(client, instance=self.config.identity,
                                  on_posted=lambda reason: self.metrics.events.labels(reason).inc())
        client.on_retry = lambda verb, why: self.metrics.api_retries.labels(verb, why).inc()
        self.lock = asyncio.Lock()  # the engine and the object caches; never held across I/O
        self.cycle_lock = asyncio.Lock()  # one cycle (or rebuild) at a time, held while applying
        self.wake = asyncio.Event()
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
        self.pending_writes: dict[str, tuple[str, str, str, int | None]] = {}
        self.leader = self.config.peering is None
        self.synced = False
        self.cycles = 0
        self._status_dirty = False
        self._last_status: dict[str, Any] | None = None
        self._gauges_at = -1e9
        self._tasks: list[asyncio.Task[None]] = []
        self._write_wake = asyncio.Event()
        self._write_sem = asyncio.Semaphore(8)
        self.metrics.leader.set(1 if self.leader else 0)
        self.metrics.tree_valid.set(1)

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Rebuild from the API, then run the loops (scheduling, status writer, leadership)."""
        await self.client.start()
        self.events.start()
        if self.leader:
            await self.resync()
        self._tasks = [
            asyncio.create_task(self._loop(), name="rayqueue scheduling loop"),
            asyncio.create_task(self._writer(), name="rayqueue condition writer"),
        ]
        if self.config.peering is not None:
            self._tasks.append(asyncio.create_task(self._leadership(), name="rayqueue leadership"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await self.events.drain(timeout=2.0)
        await self.events.stop()
        await self.client.close()

    async def resync(self) -> None:
        """Forget everything and rebuild the engine from a fresh list of every object we read."""
        trees = await self.client.list(TREES, self.config.tree_namespace)
        policies = await self.client.list(POLICIES, self.config.policy_namespace)
        classes = await self.client.list(PRIORITY_CLASSES)
        nodes = await self.client.list(NODES)
        jobs = await self.client.list(RAYJOBS)
        async with self.cycle_lock, self.lock:
            self.engine = None
            self.tree = self.tree_body = None
            self.policy_body = None
            self.jobs.clear()
            self.rejected.clear()
            self.announced.clear()
            self.pending_writes.clear()
            self.priorities = PriorityClasses()
            for pc in classes:
                self._set_priority_class("ADDED", pc)
            self.nodes = {n["metadata"]["name"]: n for n in nodes}
            for p in policies:
                if self._is_our_policy(p):
                    self.policy_body = p
            for j in jobs:
                self.jobs[job_uid(j)] = j
            for t in trees:
                if self._is_our_tree(t):
                    self._apply_tree(t, rebuild=False)
            self._rebuild_engine()
            self.synced = True
        log.info("rebuilt from the API: %d RayJobs, tree %s, policy %s, %d nodes", len(jobs),
                 "valid" if self.tree is not None else "missing", "set" if self.policy_body else "none",
                 len(nodes))
        self.wake.set()

    # ================================================================ watch events (from kopf)

    async def on_rayjob(self, event_type: str, body: Mapping[str, Any]) -> None:
        body = dict(body)
        uid = job_uid(body)
        async with self.lock:
            if event_type == "DELETED":
                self.jobs.pop(uid, None)
                self.rejected.pop(uid, None)
                self.announced.pop(uid, None)
                if self.engine is not None and self.engine.has_job(uid):
                    self.engine.finish(uid)
                    self._status_dirty = True
            else:
                self.jobs[uid] = body
                if self.engine is not None:
                    self._sync_job(body)
        self.wake.set()

    async def on_tree(self, event_type: str, body: Mapping[str, Any]) -> None:
        body = dict(body)
        if not self._is_our_tree(body):
            return
        async with self.lock:
            if event_type == "DELETED":
                log.warning("ElasticQuotaTree %s deleted; keeping the last good tree", body["metadata"]["name"])
                return
            self._apply_tree(body, rebuild=True)
        self.wake.set()

    async def on_policy(self, event_type: str, body: Mapping[str, Any]) -> None:
        body = dict(body)
        if not self._is_our_policy(body):
            return
        async with self.lock:
            if event_type == "DELETED":
                if self.policy_body is not None and \
                        self.policy_body["metadata"].get("name") == body["metadata"].get("name"):
                    self.policy_body = None
                    if self.engine is not None:
                        self.engine.set_units(self._units())
                        self._apply_capacities()
            else:
                if self.policy_body is not None and self.policy_body.get("spec") == body.get("spec"):
                    self.policy_body = body
                    return
                try:
                    units_from_manifest(body, source=self._ref(body))
                except ResourcePolicyError as exc:
                    self.events.post(body, "ResourcePolicy", "InvalidPolicy",
                                     f"{exc}; the operator keeps using the previous policy", "Warning")
                    return
                self.policy_body = body
                if self.engine is not None:
                    self.engine.set_units(self._units())
                    self._apply_capacities()
                    self.events.post(body, "ResourcePolicy", "PolicyApplied",
                                     "units: " + "; ".join(u.description for u in self.engine.unit_views()))
        self.wake.set()

    async def on_priority_class(self, event_type: str, body: Mapping[str, Any]) -> None:
        async with self.lock:
            self._set_priority_class(event_type, body)
            # Jobs rejected for an unknown class get another chance now.
            retry = [uid for uid, (_, reason) in self.rejected.items() if reason == "UnknownPriorityClass"]
            for uid in retry:
                self.rejected.pop(uid, None)
                if self.engine is not None and uid in self.jobs:
                    self._sync_job(self.jobs[uid])
        self.wake.set()

    async def on_node(self, event_type: str, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        async with self.lock:
            if event_type == "DELETED":
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = dict(body)
            if self.engine is not None:
                self._apply_capacities()
        self.wake.set()

    # ================================================================ keeping the engine in step

    def _sync_job(self, body: Mapping[str, Any]) -> None:
        """Make the engine agree with one RayJob object (idempotent, safe with stale events)."""
        engine = self.engine
        assert engine is not None
        obs = observe(body, self.tree)
        uid = obs.uid
        w = engine.job(uid)
        record_epoch = float(obs.record.get("admittedAtEpoch", 0)) if obs.record else 0.0
        if obs.state is JobState.UNMANAGED:
            if w is not None:
                engine.cancel(uid)
            return
        if obs.state is JobState.FINISHED:
            if w is not None:
                engine.finish(uid)
                self._status_dirty = True
            self.announced.pop(uid, None)
            return
        if obs.state in (JobState.ADMITTED, JobState.STOPPING):
            if record_epoch <= self.released.get(uid, -1.0):
                return  # a stale event from an admission that has already ended
            if w is not None and w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
                return
            if w is not None:  # pending here, admitted by another instance: count it as running
                engine.cancel(uid)
            try:
                job = workload_for(body, engine.tree, self.priorities, self.clock())
            except JobError as exc:
                log.warning("cannot restore %s: %s", obs.name, exc.message)
                return
            unit = obs.record.get("unit") if obs.record else None
            preemption = preemption_record(body) if obs.state is JobState.STOPPING else None
            if preemption is not None:
                # We suspended it for another job and KubeRay has not confirmed yet: resume that
                # preemption (its quota stays held for that job), never decide or count it again.
                code = str(preemption.get("reason") or "")
                reason = Reason(ReasonCode(code), "being preempted (restored)") \
                    if code in ReasonCode.__members__.values() else None
                engine.restore(job, unit, record_epoch, preempted_by=str(preemption.get("for") or "") or None,
                               preempting=True, reason=reason)
            else:
                engine.restore(job, unit, record_epoch)
            self.announced.pop(uid, None)
            self._status_dirty = True
            return
        # Pending: suspended and not holding quota (never admitted, or admitted and now Suspended).
        if w is not None and w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            if obs.record is None or w.admitted_at is None or record_epoch + 1e-6 < w.admitted_at:
                return  # stale: an event from before our admission patch
            self.released[uid] = record_epoch
            engine.suspended(uid)
            self._status_dirty = True
            return
        if w is not None:
            return  # already queued
        rejected = self.rejected.get(uid)
        if rejected is not None and rejected[0] == obs.generation:
            return
        try:
            job = workload_for(body, engine.tree, self.priorities, self.clock())
        except JobError as exc:
            self._reject(body, obs.generation, exc.reason, exc.message)
            return
        reject = engine.submit(job)
        if reject is not None:
            self._reject(body, obs.generation, reject.reason.code.value, reject.reason.message, job.queue)
            return
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(MUTATED_ANNOTATION) and CONDITION_ANNOTATION not in annotations:
            self.events.post(dict(body), "RayJob", "Mutated",
                             f"the rayqueue webhook set {annotations[MUTATED_ANNOTATION]} so that the job "
                             f"waits in queue {job.queue} and frees its Ray cluster when it finishes")
        self._status_dirty = True

    def _reject(self, body: Mapping[str, Any], generation: int, reason: str, message: str, queue: str = "") -> None:
        uid = job_uid(body)
        self.rejected[uid] = (generation, reason)
        self.events.post(dict(body), "RayJob", "Rejected", f"{reason}: {message}", "Warning")
        self._write_condition(uid, "Rejected", reason, message, None)
        self.metrics.rejected.labels(queue, reason).inc()

    def _apply_tree(self, body: dict[str, Any], rebuild: bool) -> None:
        if self.tree_body is not None and self.tree_body.get("spec") == body.get("spec") and self.engine:
            self.tree_body = body  # our own status write or metadata change: nothing to apply
            return
        ref = self._ref(body)
        try:
            tree = QuotaTree.from_dict(body, source=ref)
            if self.engine is not None:
                self.engine.preview_tree(QuotaTree.from_dict(body, source=ref))
        except QuotaTreeError as exc:
            self._tree_invalid(body, exc.violations)
            return
        effects: list[str] = []
        self.tree_body = body
        self.tree = tree
        self.tree_error = None
        self.metrics.tree_valid.set(1)
        if self.engine is not None and rebuild:
            effects = tree_effect_lines(self.engine.set_tree(QuotaTree.from_dict(body, source=ref)))
            for uid in list(self.jobs):
                self._sync_job(self.jobs[uid])
        elif rebuild:
            self._rebuild_engine()
        self.events.post(body, "ElasticQuotaTree", "TreeApplied",
                         "; ".join(effects) if effects else "quota tree applied")
        self._write_tree_condition(body, True, "Applied", "quota tree applied" + (
            ": " + "; ".join(effects) if effects else ""))
        self._status_dirty = True

    def _tree_invalid(self, body: dict[str, Any], violations: list[str]) -> None:
        self.tree_error = violations
        self.metrics.tree_valid.set(0)
        keeping = (f"keeping the last good tree (generation "
                   f"{(self.tree_body or {}).get('metadata', {}).get('generation', '?')})"
                   if self.tree_body is not None else "no tree is in effect: nothing is admitted")
        message = "invalid ElasticQuotaTree: " + "; ".join(violations) + "; " + keeping
        log.warning("%s: %s", self._ref(body), message)
        self.events.post(body, "ElasticQuotaTree", "InvalidTree", message, "Warning")
        self._write_tree_condition(body, False, "Invalid", message)

    def _rebuild_engine(self) -> None:
        if self.tree_body is None:
            self.engine = None
            return
        tree = QuotaTree.from_dict(self.tree_body, source=self._ref(self.tree_body))
        self.engine = Engine(tree, self._units(), self.config.engine, clock=self.clock)
        self._apply_capacities()
        self.released.clear()
        for body in sorted(self.jobs.values(), key=lambda b: (b["metadata"].get("creationTimestamp") or "",
                                                               b["metadata"].get("name") or "")):
            self._sync_job(body)
        self._status_dirty = True

    def _units(self) -> Units:
        if self.policy_body is not None:
            try:
                return units_from_manifest(self.policy_body, source=self._ref(self.policy_body))
            except ResourcePolicyError:
                pass
        return Units.single(None)

    def _apply_capacities(self) -> None:
        """Every unit's capacity from the Ready, schedulable Nodes (``scheduler.engine.capacity``'s rule), worked
        out afresh from the Nodes each time: after a policy edit the units are new objects, and a figure
        remembered from the old ones would leave them unbounded."""
        if self.engine is None:
            return
        apply_node_capacity(self.engine, self._node_capacities())

    def _node_capacities(self) -> list[NodeCapacity] | None:
        """The usable Nodes' allocatable; None when the API shows no Node at all (nothing is known)."""
        if not self.nodes:
            return None
        out = []
        for n in self.nodes.values():
            if not _node_usable(n):
                continue
            meta = n.get("metadata") or {}
            alloc = (n.get("status") or {}).get("allocatable") or {}
            try:
                res = parse_resources(alloc, field=f"Node {meta.get('name')} status.allocatable")
            except ValueError as exc:
                log.warning("ignoring a Node's capacity: %s", exc)
                continue
            out.append(NodeCapacity(str(meta.get("name")), dict(meta.get("labels") or {}), res))
        return out

    def _set_priority_class(self, event_type: str, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.priorities.remove(name)
        else:
            self.priorities.set(name, int(body.get("value", 0)))

    def _is_our_tree(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        if self.config.tree_name and meta.get("name") != self.config.tree_name:
            return False
        return not (self.config.tree_namespace and meta.get("namespace") != self.config.tree_namespace)

    def _is_our_policy(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        if self.config.policy_name and meta.get("name") != self.config.policy_name:
            return False
        return not (self.config.policy_namespace and meta.get("namespace") != self.config.policy_namespace)

    @staticmethod
    def _ref(body: Mapping[str, Any]) -> str:
        meta = body.get("metadata") or {}
        ns = meta.get("namespace")
        return f"{body.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name')}"

    # ================================================================ the scheduling loop

    async def _loop(self) -> None:
        while True:
            timeout = None
            if self.engine is not None:
                at = self.engine.next_wakeup()
                if at is not None:
                    timeout = max(0.0, at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout if timeout is not None else 30.0)
            await asyncio.sleep(self.config.debounce_s)
            self.wake.clear()
            if not self.leader or not self.synced:
                continue
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("admission cycle failed; retrying")
                await asyncio.sleep(1.0)
                self.wake.set()

    async def cycle(self) -> list[Decision]:
        """One admission cycle, its decisions applied (idempotently) before the next one starts.

        The engine is only touched under ``lock`` (short, no I/O), so watch events keep flowing while
        decisions are written; ``cycle_lock`` keeps cycles (and rebuilds) one at a time.
        """
        async with self.cycle_lock:
            async with self.lock:
                engine = self.engine
                if engine is None:
                    return []
                started = time.perf_counter()
                decisions = engine.schedule(self.clock())
                self.cycles += 1
                self.metrics.cycles.inc()
            if decisions:
                sem = asyncio.Semaphore(self.config.apply_concurrency)

                async def apply(d: Decision) -> None:
                    async with sem:
                        await self._apply(d)

                await asyncio.gather(*(apply(d) for d in decisions))
                self._status_dirty = True
            self._maybe_update_gauges()
            self.metrics.cycle_seconds.observe(time.perf_counter() - started)
            log.debug("cycle %d: %d decisions in %.3fs", self.cycles, len(decisions), time.perf_counter() - started)
        if self._status_dirty:
            self._write_wake.set()
        return decisions

    async def _apply(self, d: Decision) -> None:
        try:
            if isinstance(d, Admit):
                await self._apply_admit(d)
            elif isinstance(d, Preempt):
                await self._apply_preempt(d)
            elif isinstance(d, Reject):
                body = self.jobs.get(d.workload.uid)
                if body is not None:
                    self._reject(body, int(body["metadata"].get("generation") or 0),
                                 d.reason.code.value, d.reason.message, d.workload.queue)
        except ApiError as exc:
            log.warning("could not apply %s to %s: %s", type(d).__name__, d.workload.display_name, exc)
            self._give_back(d.workload.uid, str(exc))
        except (TimeoutError, OSError) as exc:
            log.warning("could not apply %s to %s: %s", type(d).__name__, d.workload.display_name, exc)
            self._give_back(d.workload.uid, str(exc))

    def _give_back(self, uid: str, why: str) -> None:
        """A decision that could not be applied: undo it in the engine and try again later."""
        engine = self.engine
        w = engine.job(uid) if engine is not None else None
        if engine is None or w is None:
            return
        if w.state == WorkloadState.ADMITTED:
            engine.cancel(uid)
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.retry_failed_after_s, self._retry_later, uid)
        # A preemption that could not be written is simply decided again by a later cycle.

    def _retry_later(self, uid: str) -> None:
        body = self.jobs.get(uid)
        if body is not None and self.engine is not None and not self.engine.has_job(uid):
            self._sync_job(body)
            self.wake.set()

    async def _apply_admit(self, d: Admit) -> None:
        w, placement = d.workload, d.placement
        uid = w.uid
        admitted_at = w.admitted_at or self.clock()
        body = self.jobs.get(uid)
        for attempt in range(6):
            if self.engine is None or self.engine.current_state(w) != WorkloadState.ADMITTED:
                return  # deleted, finished or rebuilt while we were writing: nothing to admit any more
            if body is None or attempt > 0:
                try:
                    body = await self.client.get(RAYJOBS, *self._ns_name(w.name))
                except NotFound:
                    self._gone(uid)
                    return
                self.jobs[uid] = body
            obs = observe(body, self.tree)
            if obs.uid != uid or obs.state in (JobState.FINISHED, JobState.UNMANAGED):
                self._gone(uid)
                return
            if obs.state is JobState.ADMITTED and obs.record is not None and \
                    abs(float(obs.record.get("admittedAtEpoch", 0)) - admitted_at) < 1e-6:
                break  # already applied (an earlier attempt's answer was lost)
            patch = admit_patch(body, w, placement, admitted_at, by=self.config.identity)
            try:
                body = await self.client.patch(RAYJOBS, obs.namespace, obs.name, patch)
                self.jobs[uid] = body
                break
            except Conflict:
                self.metrics.conflicts.inc()
                continue
            except NotFound:
                self._gone(uid)
                return
        else:
            raise ApiError(409, f"{w.display_name}: the object kept changing; admission postponed")
        self.announced.pop(uid, None)
        self.pending_writes.pop(uid, None)
        waited = admitted_at - (w.submitted_at or admitted_at)
        self.metrics.admitted.labels(w.queue, placement.unit).inc()
        self.metrics.wait_seconds.labels(w.queue).observe(max(0.0, waited))
        self.events.post(body, "RayJob", "Admitted",
                         f"admitted to unit {placement.unit} ({placement.resource}) from queue {w.queue} "
                         f"after {waited:.1f}s; priority {w.priority}"
                         + (f" ({w.priority_class})" if w.priority_class else ""))

    async def _apply_preempt(self, d: Preempt) -> None:
        w = d.workload
        if self.engine is None or self.engine.current_state(w) != WorkloadState.PREEMPTING:
            return
        ns, name = self._ns_name(w.name)
        preemptor = self.engine.job(d.preemptor) if self.engine else None
        by = preemptor.name if preemptor is not None else d.preemptor
        message = f"{d.reason.message} (to make room for {by}); quota is held until the job is Suspended"
        try:
            body = await self.client.patch(RAYJOBS, ns, name, preempt_patch(d.reason.code.value, message, d.preemptor))
        except NotFound:
            self._gone(w.uid)
            return
        self.jobs[w.uid] = body
        self.metrics.evicted.labels(w.queue, d.reason.code.value).inc()
        self.metrics.preempted.labels(preemptor.queue if preemptor is not None else "", d.reason.code.value).inc()
        self.events.post(body, "RayJob", "Preempted", f"{d.reason.code.value}: {message}", "Warning")

    def _gone(self, uid: str) -> None:
        if self.engine is not None and self.engine.has_job(uid):
            self.engine.finish(uid)
        self.jobs.pop(uid, None)

    @staticmethod
    def _ns_name(ref: str) -> tuple[str, str]:
        ns, _, name = ref.partition("/")
        return ns, name

    # ================================================================ telling users why

    def _announce_pending(self) -> None:
        """Queued events (once per waiting episode) and a condition annotation when the reason changes.

        Only for jobs that waited ``announce_after_s``: a job admitted at once is told "Admitted" only,
        which spares the API server a write per job in a burst.
        """
        engine = self.engine
        if engine is None:
            return
        horizon = self.clock() - self.config.announce_after_s
        for w in engine.pending():
            code = w.reason.code.value if w.reason else "Queued"
            if self.announced.get(w.uid) == code:
                continue
            if (w.pending_since or w.submitted_at or 0.0) > horizon:
                continue
            first = w.uid not in self.announced
            self.announced[w.uid] = code
            ex = engine.explain(w.uid)
            message = f"{w.reason.message if w.reason else 'queued'}"
            position = ex.position
            if first:
                body = self.jobs.get(w.uid)
                if body is not None:
                    self.events.post(body, "RayJob", "Queued",
                                     f"queued in {w.queue} at position {position}: {message}")
            self._write_condition(w.uid, "Queued", code, message, position)

    def _write_condition(self, uid: str, type_: str, reason: str, message: str, position: int | None) -> None:
        self.pending_writes[uid] = (type_, reason, message, position)
        self._write_wake.set()

    def _write_tree_condition(self, body: Mapping[str, Any], ok: bool, reason: str, message: str) -> None:
        self._tree_condition = {
            "type": "Valid", "status": "True" if ok else "False", "reason": reason, "message": message[:2000],
            "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "observedGeneration": (body.get("metadata") or {}).get("generation"),
        }
        self._tree_condition_target = (body["metadata"].get("namespace"), body["metadata"]["name"])
        self._status_dirty = True
        self._write_wake.set()

    async def _writer(self) -> None:
        """Condition annotations of pending/rejected jobs and the tree's status, in the background."""
        last_status = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._write_wake.wait(), timeout=max(0.05, self.config.announce_after_s / 2))
            self._write_wake.clear()
            if not self.leader or self.engine is None:
                continue
            async with self.lock:
                self._announce_pending()
                self._maybe_update_gauges()  # also when no cycle runs: the last cycle's are not lost
            writes, self.pending_writes = self.pending_writes, {}
            await asyncio.gather(*(self._write_limited(uid, item) for uid, item in writes.items()))
            now = time.monotonic()
            if self._status_dirty:
                wait = self.config.status_interval_s - (now - last_status)
                if wait > 0:
                    await asyncio.sleep(wait)
                self._status_dirty = False
                last_status = time.monotonic()
                try:
                    await self._write_tree_status()
                except Exception as exc:
                    log.warning("could not write the ElasticQuotaTree status: %s", exc)
                    self._status_dirty = True
                    self._write_wake.set()

    async def _write_limited(self, uid: str, item: tuple[str, str, str, int | None]) -> None:
        async with self._write_sem:
            await self._write_one(uid, item)

    async def _write_one(self, uid: str, item: tuple[str, str, str, int | None]) -> None:
        type_, reason, message, position = item
        for _ in range(3):
            body = self.jobs.get(uid)
            if body is None:
                return
            w = self.engine.job(uid) if self.engine else None
            if type_ == "Queued" and (w is None or w.state != WorkloadState.PENDING):
                return  # overtaken by an admission: its own patch wrote the condition
            meta = body["metadata"]
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                  "annotations": {CONDITION_ANNOTATION: condition(type_, reason, message,
                                                                                  position)}}}
            try:
                new = await self.client.patch(RAYJOBS, meta.get("namespace"), meta["name"], patch)
                if job_uid(new) == uid and uid in self.jobs:
                    self.jobs[uid] = new
                return
            except Conflict:
                self.metrics.conflicts.inc()
                try:
                    fresh = await self.client.get(RAYJOBS, meta.get("namespace"), meta["name"])
                except NotFound:
                    return
                if job_uid(fresh) == uid and uid in self.jobs:
                    self.jobs[uid] = fresh
            except NotFound:
                return
            except Exception as exc:
                log.warning("could not write the condition of %s: %s", meta.get("name"), exc)
                return

    def tree_status(self) -> dict[str, Any]:
        if self.engine is None:
            return {}
        status = tree_status(self.engine)
        if self.tree_body is not None:
            status["observedGeneration"] = self.tree_body["metadata"].get("generation")
        return status

    async def _write_tree_status(self) -> None:
        target = getattr(self, "_tree_condition_target", None)
        status = self.tree_status()
        cond = getattr(self, "_tree_condition", None)
        if cond is not None:
            status["conditions"] = [cond]
        if target is None or not status or status == self._last_status:
            return
        ns, name = target
        # A merge patch keeps every key it does not name: what the status showed before (our last write,
        # or what a previous instance wrote) and no longer has is deleted with a null.
        shown = self._last_status if self._last_status is not None else (self.tree_body or {}).get("status")
        try:
            await self.client.patch(TREES, ns, name, {"status": merge_patch(shown or {}, status)}, sub="status")
        except NotFound:
            return
        self._last_status = status

    def _maybe_update_gauges(self) -> None:
        """The gauges walk every workload: at most once per ``gauges_interval_s`` rather than after every
        cycle (thousands of cycles over 15,000 queued jobs in Kueue's baseline), from either loop."""
        if time.monotonic() - self._gauges_at >= self.config.gauges_interval_s:
            self._gauges_at = time.monotonic()
            self._update_gauges()

    def _update_gauges(self) -> None:
        if self.engine is not None:
            self.metrics.update(self.engine)

    # ================================================================ leadership (kopf peering)

    def is_leader(self, peering: Mapping[str, Any] | None) -> bool:
        """Like kopf: we admit unless a live peer has a higher priority or the same one."""
        if peering is None:
            return True
        now = datetime.datetime.now(datetime.UTC)
        for identity, info in (peering.get("status") or {}).items():
            if identity == self.config.identity or not isinstance(info, Mapping):
                continue
            try:
                lastseen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
            except ValueError:
                continue
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=datetime.UTC)
            alive = lastseen + datetime.timedelta(seconds=float(info.get("lifetime", 60))) > now
            if alive and int(info.get("priority", 0)) >= self.config.priority:
                return False
        return True

    async def _leadership(self) -> None:
        assert self.config.peering is not None
        # A newcomer waits a few polls before it claims leadership, so that a lower-priority leader
        # (polling as often) has seen it and stepped down first.
        await asyncio.sleep(3 * self.config.leadership_poll_s)
        while True:
            try:
                peering = await self.client.get(PEERINGS, None, self.config.peering)
            except NotFound:
                peering = None
            except Exception as exc:
                log.warning("cannot read the peering object: %s", exc)
                await asyncio.sleep(self.config.leadership_poll_s)
                continue
            leader = self.is_leader(peering)
            if leader and not self.leader:
                log.info("%s: this instance now admits (no live peer with a higher priority)",
                         self.config.identity)
                try:
                    await self.resync()
                except Exception as exc:
                    log.warning("resync failed, retrying: %s", exc)
                    await asyncio.sleep(self.config.leadership_poll_s)
                    continue
                self.leader = True
                self.wake.set()
            elif not leader and self.leader:
                log.info("%s: standing by (a peer with a higher priority admits)", self.config.identity)
                self.leader = False
                self.synced = False
            self.metrics.leader.set(1 if self.leader else 0)
            await asyncio.sleep(self.config.leadership_poll_s)

    # ================================================================ views for tests and the CLI

    def summary(self) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            return {"tree": None}
        counts = engine.counts()
        return {
            "pending": counts.get(WorkloadState.PENDING, 0),
            "admitted": counts.get(WorkloadState.ADMITTED, 0),
            "preempting": counts.get(WorkloadState.PREEMPTING, 0),
            "cycles": self.cycles,
            "tree_error": self.tree_error,
        }


def tree_status(engine: Engine) -> dict[str, Any]:
    """The ElasticQuotaTree's ``status.nodes``: per node what its admitted jobs use, what pending jobs
    request, what it borrows, and the job counts. Every resource the node limits is shown, 0 included:
    an SRE reading ``used`` after a team's jobs ended sees 0, not the last figure."""
    requested: dict[str, Resources] = {}
    pending_jobs: dict[str, int] = {}
    admitted_jobs: dict[str, int] = {}
    for w in engine.jobs():
        leaf = engine.tree.leaves.get(w.queue)
        if leaf is None:
            continue
        for node in leaf.lineage:
            if w.state == WorkloadState.PENDING:
                acc = requested.setdefault(node.name, {})
                for r, v in w.request.items():
                    acc[r] = acc.get(r, 0) + v
                pending_jobs[node.name] = pending_jobs.get(node.name, 0) + 1
            elif w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
                admitted_jobs[node.name] = admitted_jobs.get(node.name, 0) + 1

    def render(res: Mapping[str, int], always: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
        return {r: (str(res.get(r, 0) // 1000) if r == MAX_JOBS else format_quantity(res.get(r, 0), r))
                for r in sorted(set(always) | {r for r, v in res.items() if v})}

    nodes = {}
    for node in engine.tree:
        limited = set(node.min) | set(node.max)
        nodes[node.name] = {
            "used": render(node.usage, limited),
            "requested": render(requested.get(node.name, {})),
            "borrowed": render(engine.tree.borrowed(node)),
            "admittedJobs": admitted_jobs.get(node.name, 0),
            "pendingJobs": pending_jobs.get(node.name, 0),
        }
    return {"nodes": nodes}


def merge_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that turns ``before`` into ``after``: keys gone are nulled, maps recursively."""
    patch: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            patch[key] = merge_patch(old, value)
        else:
            patch[key] = value
    for key in before:
        if key not in after:
            patch[key] = None
    return patch


def _node_usable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    for c in conditions:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return True  # no conditions reported (tests, fresh nodes): count it


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
