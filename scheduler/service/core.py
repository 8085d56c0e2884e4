"""The standalone service: one admission engine, its SQL store, and a Ray cluster it releases jobs to.

The service lives on one asyncio event loop, which must stay free to answer (``/healthz`` during a big
submission). Parsing runs in worker threads without the engine; slow engine work (a submission, a tree, an
admission cycle, a forecast) runs in a worker thread holding ``engine_lock``, which every other user of the
engine on the loop takes too, so the engine is used by one thread at a time. Blocking Ray calls run in
worker threads.

Order of writes, which is what makes a crash at any moment safe:

* submit: the engine accepts (or refuses) first, then the rows are committed, then the HTTP answer;
  a job is "accepted" only once its row exists.
* admit: the ``Admitted`` row (unit, attempt, submission id) is committed *before* Ray is called; after
  a crash such a job is submitted again with the same submission id, which Ray accepts at most once.
* finish / requeue: the row is committed, then the engine releases the quota.

On start the engine is rebuilt from the rows: running Ray jobs are re-attached (``engine.restore``),
jobs Ray finished while we were away are closed, pending jobs are queued again in submission order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from rayqueue.queue.priority import PriorityClasses, UnknownPriorityClass
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, Resources, describe
from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.capacity import apply_node_capacity
from rayqueue.scheduler.engine.decisions import Admit, Preempt, Reject
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.metrics import ServiceMetrics
from rayqueue.scheduler.service.raycluster import alive_nodes, node_capacities
from rayqueue.scheduler.service.rayjobs import (
    RayJobs,
    RayStatus,
    RaySubmitRefused,
    RayUnavailable,
    check_runnable,
    submission_for,
)
from rayqueue.scheduler.service.store import JobRecord, Store, submission_id
from rayqueue.scheduler.workloads.rayjob import (
    KIND,
    RayJobRejected,
    RayJobRequest,
    expected_duration,
    load_submission_documents,
    rayjob_request,
)
from rayqueue.scheduler.workloads.resourcepolicy import Units

log = logging.getLogger("rayqueue.service")
T = TypeVar("T")

#: Priority classes known without configuration (a Kubernetes cluster would have PriorityClasses).
DEFAULT_PRIORITY_CLASSES = {"low": 100, "normal": 500, "high": 1000}
REJECTED = "Rejected"
#: The characters Kubernetes draws a generated name's suffix from (no vowels, so no words; no 0, 1, 3).
GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
#: Kubernetes cuts ``generateName`` to 58 characters, so that with its 5-character suffix a name fits 63.
GENERATED_PREFIX_MAX = 58
TREE_SETTING = "quota_tree_yaml"


class SubmitError(ValueError):
    """A submission refused as a whole; ``problems`` name the document and the field, ``refused`` the
    documents (``file (document n)``, or a whole file that could not be read as YAML)."""

    def __init__(self, problems: list[str], refused: list[str] | None = None) -> None:
        self.problems = problems
        self.refused = refused or []
        super().__init__("\n".join(problems))

    @property
    def summary(self) -> str:
        """One line: which documents were refused, and that none was queued (all or nothing)."""
        where = ", ".join(self.refused) if self.refused else "the input"
        return f"submission refused ({where}); none of its documents was queued: a submission is all or nothing"


@dataclass
class PreparedJob:
    """One RayJob document checked without the engine: where it came from, its request, its priority."""

    where: str
    request: RayJobRequest
    manifest: dict[str, Any]
    priority: int
    priority_class: str | None


@dataclass
class Prepared:
    """A parsed submission on its way to the engine, with every problem found so far."""

    queue: str | None
    jobs: list[PreparedJob] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def refuse(self, where: str, problem: str) -> None:
        if where not in self.refused:
            self.refused.append(where)
        self.problems.append(problem)

    def error(self) -> SubmitError:
        return SubmitError(self.problems, self.refused)


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
    # No backoff: a parked job is only retried when a release leaves room for it (the engine's wake-up
    # index), and a backoff would let a newly requeued lower-priority job overtake it.
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(backoff_base_s=0.0))


@dataclass
class Accepted:
    id: str
    name: str
    queue: str
    priority: int
    priority_class: str | None
    state: str
    position: int | None
    reason: str | None  # the sentence: why it waits, or where it was admitted
    reason_code: str | None = None
    unit: str | None = None
    notes: list[str] = field(default_factory=list)


def default_tree() -> QuotaTree:
    """No tree configured: one leaf ``default`` (namespace ``default``), bounded only by Ray's capacity."""
    return QuotaTree.from_dict(
        {
            "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
            "kind": "ElasticQuotaTree",
            "metadata": {"name": "default"},
            "spec": {"root": {"name": "root", "children": [{"name": "default", "namespaces": ["default"]}]}},
        }
    )


class Service:
    def __init__(
        self,
        store: Store,
        ray: RayJobs,
        tree: QuotaTree,
        units: Units | None = None,
        priorities: PriorityClasses | None = None,
        config: ServiceConfig | None = None,
        clock: Callable[[], float] = time.time,
        tree_yaml: str | None = None,
        nodes: Callable[[str], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.store = store
        # Ray's alive nodes (resources, labels): the units' capacity
        self._nodes = nodes if nodes is not None else functools.partial(alive_nodes, token=ray.auth_token)
        self.ray = ray
        self.config = config or ServiceConfig()
        self.clock = clock
        self.units = units if units is not None else Units.single(None)
        self.engine = Engine(tree, self.units, self.config.engine, clock=clock)
        self.priorities = priorities or PriorityClasses(DEFAULT_PRIORITY_CLASSES)
        self.metrics = ServiceMetrics()
        self._tree_yaml = tree_yaml
        self._active: dict[str, str] = {}  # job id -> Ray submission id being followed
        self._preempting: set[str] = set()
        self._cancelled: set[str] = set()
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        #: Held by whoever uses the engine: the loops and the API on the event loop, and the worker threads
        #: that run slow engine work for them (a big submission, a tree, a forecast), one at a time.
        self.engine_lock = asyncio.Lock()
        self._requests: dict[str, RayJobRequest] = {}
        self.started = False

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Read Ray's capacity, rebuild the engine from the store, start the loops."""
        nodes = await asyncio.to_thread(self._nodes, self.ray.address)
        if not nodes:
            raise ServiceError(f"Ray at {self.ray.address} has no alive node (is the cluster up?)")
        async with self.engine_lock:
            self._apply_capacity(nodes)
            if self._tree_yaml is not None:
                self.store.set_setting(TREE_SETTING, self._tree_yaml)
            await self._recover()
            # Preemptions are counted from the history, so a restart neither forgets nor repeats one.
            for (queue, reason), n in self.store.event_counts("Preempting").items():
                self.metrics.evicted.labels(queue=queue, reason=reason or "Unknown").inc(n)
            self._run_cycle()
        self._tasks = [
            asyncio.create_task(self._schedule_loop(), name="rayqueue-schedule"),
            asyncio.create_task(self._poll_loop(), name="rayqueue-poll"),
            asyncio.create_task(self._capacity_loop(), name="rayqueue-capacity"),
        ]
        self.started = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        tasks = self._tasks + list(self._releasing.values()) + list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
            for task in stuck:
                log.warning("task %s did not stop within %.0fs", task.get_name(), timeout_s)
        self._tasks = []
        self.started = False

    def interrupt_running(self, why: str) -> int:
        """The Ray cluster is going away with us (our own local head): requeue what ran on it."""
        count = 0
        for row in self.store.jobs(st.ACTIVE_STATES):
            self._requeue_row(row, "Interrupted", f"{why}; requeued (attempt {row.attempt + 1} on the next start)")
            count += 1
        return count

    def wake(self) -> None:
        self._wake.set()

    async def locked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread holding the engine lock: engine work off the event loop."""
        async with self.engine_lock:
            return await asyncio.to_thread(fn, *args)

    # ================================================================ submissions

    def submit_text(
        self,
        text: str,
        *,
        queue: str | None = None,
        priority: str | None = None,
        ignore_other_kinds: bool = False,
        source: str = "input",
    ) -> list[Accepted]:
        """Accept every RayJob of a (multi-document) YAML text, or none of them (on the event loop)."""
        return self.submit_files([(source, text)], queue=queue, priority=priority,
                                 ignore_other_kinds=ignore_other_kinds)

    def submit_files(
        self,
        files: Sequence[tuple[str, str]],
        *,
        queue: str | None = None,
        priority: str | None = None,
        ignore_other_kinds: bool = False,
    ) -> list[Accepted]:
        """Every RayJob of every ``(source, text)``, or none of them, in one go on the calling thread; the
        HTTP API uses :meth:`submit`, which does the same off the event loop."""
        prepared = self.prepare_submission(files, queue=queue, priority=priority,
                                           ignore_other_kinds=ignore_other_kinds)
        workloads = self._accept(prepared)
        self._run_cycle()
        return self._answers(workloads)

    async def submit(
        self,
        files: Sequence[tuple[str, str]],
        *,
        queue: str | None = None,
        priority: str | None = None,
        ignore_other_kinds: bool = False,
    ) -> list[Accepted]:
        """:meth:`submit_files` for the event loop: parsing runs in a worker thread without the engine lock
        (a big or hostile body only costs that thread), the engine's part in a worker thread under it."""
        prepared = await asyncio.to_thread(self.prepare_submission, files, queue=queue, priority=priority,
                                           ignore_other_kinds=ignore_other_kinds)
        async with self.engine_lock:
            workloads = await asyncio.to_thread(self._accept, prepared)
            await self._cycle()
            return await asyncio.to_thread(self._answers, workloads)

    def prepare_submission(
        self,
        files: Sequence[tuple[str, str]],
        *,
        queue: str | None = None,
        priority: str | None = None,
        ignore_other_kinds: bool = False,
    ) -> Prepared:
        """Parse and check every document; touches neither the engine nor the store (any thread may run it)."""
        out = Prepared(queue=queue)
        for source, text in files:
            try:
                # Bounded (size, UTF-8, nesting, aliases), each document an object with a kind.
                docs = load_submission_documents(text, source)
            except RayJobRejected as exc:
                out.refuse(source, exc.message)
                continue
            found = False
            for index, doc in docs:
                where = f"{source} (document {index})"
                kind = doc.get("kind")
                if kind != KIND:
                    if ignore_other_kinds:
                        continue
                    meta = doc.get("metadata")
                    name = (meta.get("name") if isinstance(meta, dict) else None) or "<unnamed>"
                    out.refuse(where, f"{where}: kind {kind!r} ({name}) is not a RayJob; standalone mode "
                                      "queues ray.io/v1 RayJobs only (remove the document, or pass --ignore-other-kinds)")
                    continue
                found = True
                try:
                    req = rayjob_request(doc)
                    check_runnable(req, f"RayJob {req.name}")
                except RayJobRejected as exc:
                    out.refuse(where, f"{where}: {exc.message}")
                    continue
                try:
                    prio, prio_class = self.priorities.resolve(priority if priority is not None else req.priority_class)
                except UnknownPriorityClass as exc:
                    label = "--priority" if priority is not None else "label rayqueue.io/priority-class"
                    out.refuse(where, f"{where}: RayJob {req.name}: {label}: {exc}")
                    continue
                out.jobs.append(PreparedJob(where, req, doc, prio, prio_class))
            if not found and not any(r == source or r.startswith(f"{source} (") for r in out.refused):
                out.refuse(source, f"{source}: no RayJob document found")
        return out

    def _accept(self, prepared: Prepared) -> list[tuple[Workload, RayJobRequest, dict[str, Any], list[str]]]:
        """The engine's and the store's part of a submission, all or nothing (call it holding the engine
        lock, on any thread: it touches no asyncio object)."""
        queue = prepared.queue
        workloads: list[tuple[Workload, RayJobRequest, dict[str, Any], list[str]]] = []
        where_of: dict[str, str] = {}  # job id -> "file (document n)", for the engine's refusals
        taken: set[str] = set()  # ids given out in this submission; the store is asked about the rest
        for job in prepared.jobs:
            where, req, doc = job.where, job.request, job.manifest
            try:
                # like kubectl: no metadata.namespace means the namespace "default"
                leaf = self.engine.tree.leaf_for(namespace=req.namespace or "default", quota=queue or req.queue)
            except KeyError as exc:
                label = "--queue" if queue else ("label rayqueue.io/queue" if req.queue else "metadata.namespace")
                leaves = ", ".join(sorted(self.engine.tree.leaves))
                prepared.refuse(where, f"{where}: RayJob {req.name}: {label}: {exc.args[0]} (leaves: {leaves})")
                continue
            generated: str | None = None
            if req.generate_name:
                # As the Kubernetes API server does: the job is named once, here, and the name is stored
                # in its manifest, so it stays the same across restarts and every submit gets a new one.
                generated = self._generated_name(req.name, taken)
                doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "name": generated}}
                req = dataclasses.replace(req, name=generated, generate_name=False)
                taken.add(generated)
            # A generated name is unique already: it is the id too (`cpu-sample-x7k2p`).
            job_id = generated or self._new_id(req.name, taken)
            taken.add(job_id)
            w = Workload(
                uid=job_id,
                queue=leaf.name,
                request=dict(req.total),
                pods=req.pods,
                priority=job.priority,
                priority_class=job.priority_class,
                submitted_at=self.clock(),
                expected_duration=req.expected_duration,
                name=req.name,
                pod_request=req.largest_pod,
            )
            workloads.append((w, req, doc, list(req.notes)))
            where_of[job_id] = where
        if prepared.refused:
            raise prepared.error()
        # The engine decides what can never fit; all or nothing.
        added: list[Workload] = []
        for w, _req, _doc, _notes in workloads:
            try:
                rejected = self.engine.submit(w)
            except (UnknownQueue, DuplicateJob) as exc:
                prepared.refuse(where_of[w.uid], f"{where_of[w.uid]}: RayJob {w.name}: {exc}")
                continue
            if rejected is not None:
                prepared.refuse(
                    where_of[w.uid],
                    f"{where_of[w.uid]}: RayJob {w.name}: can never run in queue {w.queue}: {rejected.reason.message}",
                )
            else:
                added.append(w)
        if prepared.refused:
            for w in added:
                self.engine.cancel(w.uid)
            raise prepared.error()
        rows = [
            JobRecord(
                id=w.uid,
                name=w.name,
                namespace=req.namespace,
                queue=w.queue,
                priority=w.priority,
                priority_class=w.priority_class,
                state=st.PENDING,
                manifest=json.dumps(doc),
                request=json.dumps(_visible(w.request)),
                pods=w.pods,
                submitted_at=w.submitted_at,
            )
            for w, req, doc, _notes in workloads
        ]
        try:
            self.store.add_jobs(rows)
        except Exception:
            for w in added:
                self.engine.cancel(w.uid)
            raise
        for w, req, _doc, _notes in workloads:
            self._requests[w.uid] = req
            self.metrics.submitted.labels(queue=w.queue).inc()
        return workloads

    def _answers(self, workloads: list[tuple[Workload, RayJobRequest, dict[str, Any], list[str]]]) -> list[Accepted]:
        out = []
        for w, _req, _doc, notes in workloads:
            row = self.store.get(w.uid)
            info = self.engine.explain(w.uid) if self.engine.has_job(w.uid) else None
            out.append(
                Accepted(
                    id=w.uid,
                    name=w.name,
                    queue=w.queue,
                    priority=w.priority,
                    priority_class=w.priority_class,
                    state=row.state if row else st.PENDING,
                    position=info.position if info else None,
                    reason=info.reason.message if info and info.reason else None,
                    reason_code=info.reason.code.value if info and info.reason else None,
                    unit=row.unit if row else None,
                    notes=notes,
                )
            )
        return out

    def _generated_name(self, prefix: str, taken: set[str]) -> str:
        """``metadata.generateName`` + 5 random characters, like Kubernetes: a name no job has as its
        name or id (ids of this submission included)."""
        prefix = prefix[:GENERATED_PREFIX_MAX]
        while True:
            candidate = prefix + "".join(secrets.choice(GENERATED_NAME_ALPHABET) for _ in range(5))
            if candidate not in taken and self.store.get(candidate) is None and not self.store.by_name(candidate):
                return candidate

    def _new_id(self, name: str, taken: set[str]) -> str:
        """``name`` + 6 random hex digits, unused by any job (looked up by key, not by loading every id)."""
        while True:
            candidate = f"{name}-{secrets.token_hex(3)}"
            if candidate not in taken and self.store.get(candidate) is None:
                return candidate

    def cancel(self, ref: str) -> JobRecord:
        row = self.resolve(ref)
        if row.state not in st.LIVE_STATES:
            raise ServiceError(f"job {row.id} already ended ({row.state}); nothing to cancel")
        was = row.state
        if self.engine.has_job(row.id):
            self.engine.cancel(row.id)
        sid = self._active.pop(row.id, None) or row.submission_id
        self._preempting.discard(row.id)
        self._cancelled.add(row.id)
        row = self.store.transition(
            row.id, "Cancelled", f"cancelled by the user while {was}", state=st.CANCELLED, finished_at=self.clock()
        )
        if was in st.ACTIVE_STATES and sid:
            self._spawn(self._settle_cancelled(row.id, sid))
        self.wake()
        return row

    # ================================================================ the admission cycle

    def _run_cycle(self) -> None:
        """One admission cycle on the calling thread (the event loop's, holding the engine lock)."""
        started = time.perf_counter()
        self._apply_decisions(self.engine.schedule(self.clock()))
        self.metrics.cycles.inc()
        self.metrics.cycle_seconds.observe(time.perf_counter() - started)

    async def _cycle(self) -> None:
        """One admission cycle, the engine's part in a worker thread (call it holding the engine lock):
        a cycle over thousands of pending jobs must not stall the event loop."""
        started = time.perf_counter()
        decisions = await asyncio.to_thread(self.engine.schedule, self.clock())
        self._apply_decisions(decisions)  # creates release tasks: on the event loop
        self.metrics.cycles.inc()
        self.metrics.cycle_seconds.observe(time.perf_counter() - started)

    def _apply_decisions(self, decisions: Sequence[Admit | Preempt | Reject]) -> None:
        for d in decisions:
            try:
                if isinstance(d, Admit):
                    self._on_admit(d)
                elif isinstance(d, Preempt):
                    self._on_preempt(d)
                elif isinstance(d, Reject):
                    self._on_reject(d)
            except Exception:  # one bad decision must not stop the others
                log.exception("applying %s failed", type(d).__name__)

    def _on_admit(self, d: Admit) -> None:
        w = d.workload
        row = self.store.get(w.uid)
        if row is None:
            return
        now = self.clock()
        sid = submission_id(w.uid, row.attempt)
        self.store.transition(
            w.uid,
            "Admitted",
            w.reason.message if w.reason else f"admitted on unit {d.placement.unit}",
            at=now,
            state=st.ADMITTED,
            unit=d.placement.unit,
            admitted_at=now,
            submission_id=sid,
            released=False,
            reason_code=w.reason.code.value if w.reason else None,
            reason=w.reason.message if w.reason else None,
            borrowed=json.dumps(_borrowed_share(self.engine.tree, w)),
        )
        self.metrics.admitted.labels(queue=w.queue, unit=d.placement.unit).inc()
        self.metrics.wait_seconds.labels(queue=w.queue).observe(max(0.0, now - row.submitted_at))
        self._releasing[w.uid] = asyncio.create_task(self._release(w.uid, sid, d.placement.node_selector))

    def _on_preempt(self, d: Preempt) -> None:
        w = d.workload
        row = self.store.transition(
            w.uid,
            "Preempting",
            f"{d.reason.message} (for {d.preemptor})",
            state=st.PREEMPTING,
            reason_code=d.reason.code.value,
            reason=d.reason.message,
            preempted_by=d.preemptor,  # a restart resumes this preemption instead of deciding it again
        )
        self._preempting.add(w.uid)
        self.metrics.evicted.labels(queue=w.queue, reason=d.reason.code.value).inc()
        preemptor = self.engine.job(d.preemptor)
        self.metrics.preempted.labels(preempting_queue=preemptor.queue if preemptor is not None else "",
                                      reason=d.reason.code.value).inc()
        if row.released and row.submission_id:
            self._active[w.uid] = row.submission_id
            self._spawn(self._stop_in_ray(w.uid, row.submission_id))
        # Not released yet: the release task sees the preemption and stops the job right after.

    def _on_reject(self, d: Reject) -> None:
        w = d.workload
        if self.store.get(w.uid) is None:
            return
        self.metrics.rejected.labels(queue=w.queue, reason=d.reason.code.value).inc()
        self.store.transition(
            w.uid,
            "Rejected",
            d.reason.message,
            state=REJECTED,
            reason_code=d.reason.code.value,
            reason=d.reason.message,
            finished_at=self.clock(),
        )

    # ================================================================ Ray

    def _request(self, row: JobRecord) -> RayJobRequest:
        req = self._requests.get(row.id)
        if req is None:
            req = rayjob_request(row.manifest_dict(), validate=False)
            self._requests[row.id] = req
        return req

    async def _release(self, job_id: str, sid: str, node_selector: dict[str, str]) -> None:
        """Submit an admitted job to Ray; retried while Ray is unreachable, never twice (submission id)."""
        try:
            row = self.store.get(job_id)
            if row is None:
                return
            sub = submission_for(
                self._request(row), sid, job_id=job_id, queue=row.queue, unit=row.unit or "", node_selector=node_selector
            )
            delay = self.config.retry_base_s
            while True:
                if job_id in self._cancelled:
                    return
                started = time.perf_counter()
                try:
                    fresh = await asyncio.to_thread(self.ray.submit, sub)
                    break
                except RayUnavailable as exc:
                    log.warning("releasing %s: Ray unavailable (%s); retrying in %.1fs", job_id, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.config.retry_max_s)
                except RaySubmitRefused as exc:
                    async with self.engine_lock:
                        self._finalize(job_id, RayStatus("FAILED", f"Ray refused the job: {exc}"), logs=None)
                    return
            self.metrics.release_seconds.observe(time.perf_counter() - started)
            if job_id in self._cancelled:  # cancelled while Ray was being asked: stop what Ray started
                self.store.record(job_id, "Released", f"Ray took {sid} after the job was cancelled; stopping it")
                self._spawn(self._settle_cancelled(job_id, sid))
                return
            now = self.clock()
            self.store.transition(
                job_id,
                "Released",
                f"submitted to Ray as {sid}" + ("" if fresh else " (Ray already had it: not started twice)"),
                at=now,
                released=True,
                released_at=now,
            )
            self._active[job_id] = sid
            if job_id in self._preempting:
                self._spawn(self._stop_in_ray(job_id, sid))
        finally:
            self._releasing.pop(job_id, None)

    async def _stop_in_ray(self, job_id: str, sid: str) -> None:
        delay = self.config.retry_base_s
        while True:
            try:
                await asyncio.to_thread(self.ray.stop, sid)
                return
            except RayUnavailable as exc:
                log.warning("stopping %s: Ray unavailable (%s); retrying in %.1fs", job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)

    async def _settle_cancelled(self, job_id: str, sid: str) -> None:
        """A cancelled job Ray may still run: stop it, wait until Ray says it ended, and keep Ray's final
        status and the driver's log tail, so that `logs` and `history` still answer once Ray is gone."""
        await self._stop_in_ray(job_id, sid)
        deadline = time.monotonic() + self.config.cancel_settle_s
        status: RayStatus | None = None
        while True:
            try:
                status = await asyncio.to_thread(self.ray.status, sid)
                if status is None or status.terminal:
                    break
            except RayUnavailable:
                pass  # ask again
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(self.config.poll_interval_s)
        if status is None:
            self.store.transition(job_id, "RayStopped", f"Ray has no submission {sid}: nothing ran",
                                  ray_status=st.RAY_NOT_FOUND)
            return
        logs = None
        try:
            logs = await asyncio.to_thread(self.ray.logs, sid)
        except RayUnavailable:
            pass
        ended = status.terminal
        self.store.transition(
            job_id,
            "RayStopped" if ended else "RayStopping",
            f"Ray reports {sid} {status.status}" + ("" if ended else " after the stop request; asked again at the next start"),
            ray_status=status.status,
            ray_message=status.message,
            logs=logs[-self.config.log_tail_chars :] if logs else None,
        )
        if logs:
            self._keep_logs(job_id, st.CANCELLED, logs)

    async def _snapshot_logs(self, job_id: str, sid: str, kind: str) -> None:
        """Keep the driver's log as it was when Ray stopped it (a preemption): the next attempt's log
        replaces it in Ray, and Ray forgets both with its cluster."""
        try:
            logs = await asyncio.to_thread(self.ray.logs, sid)
        except RayUnavailable:
            return
        if logs:
            self._keep_logs(job_id, kind, logs)

    def _keep_logs(self, job_id: str, kind: str, logs: str) -> None:
        row = self.store.get(job_id)
        self.store.add_log_snapshot(job_id, row.attempt if row else 0, kind, logs, self.config.log_tail_chars)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("following Ray jobs failed")

    async def poll_once(self) -> None:
        followed = list(self._active.items())
        if not followed:
            return
        if len(followed) > 4:
            try:
                found = await asyncio.to_thread(self.ray.statuses, [sid for _, sid in followed])
            except RayUnavailable:
                return  # ask again next time
            results: list[RayStatus | None | BaseException] = [found.get(sid) for _, sid in followed]
        else:
            results = await asyncio.gather(
                *(asyncio.to_thread(self.ray.status, sid) for _, sid in followed), return_exceptions=True
            )
        changed = False
        for (job_id, sid), result in zip(followed, results, strict=True):
            if isinstance(result, BaseException):
                continue  # Ray unreachable: ask again next time
            if self._active.get(job_id) != sid:
                continue  # cancelled or requeued meanwhile
            changed |= await self._observe(job_id, sid, result)
        if changed:
            async with self.engine_lock:
                await self._cycle()

    async def _observe(self, job_id: str, sid: str, status: RayStatus | None) -> bool:
        if status is None:
            if job_id in self._releasing:
                return False
            # Released, yet Ray does not know it: the Ray cluster was replaced. Run it again.
            async with self.engine_lock:
                self._requeue(job_id, "Lost", f"Ray no longer knows submission {sid} (cluster restarted?)")
            return True
        if status.status == "RUNNING":
            row = self.store.get(job_id)
            if row is not None and row.state == st.ADMITTED:
                now = self.clock()
                self.store.transition(job_id, "Running", f"Ray runs {sid}", at=now, state=st.RUNNING, running_at=now)
                self.metrics.start_seconds.labels(queue=row.queue).observe(max(0.0, now - row.submitted_at))
            return False
        if not status.terminal:
            return False
        if job_id in self._preempting and status.status == "STOPPED":
            await self._snapshot_logs(job_id, sid, "Preempted")
            async with self.engine_lock:
                self._requeue(job_id, "Requeued", f"Ray stopped {sid}; back in the queue", preempted=True)
            return True
        logs = None
        try:
            logs = await asyncio.to_thread(self.ray.logs, sid)
        except RayUnavailable:
            pass
        async with self.engine_lock:
            if self._active.get(job_id) != sid:
                return False
            self._finalize(job_id, status, logs)
        return True

    def _finalize(self, job_id: str, status: RayStatus, logs: str | None) -> None:
        state = {"SUCCEEDED": st.SUCCEEDED, "FAILED": st.FAILED}.get(status.status, st.STOPPED)
        tail = logs[-self.config.log_tail_chars :] if logs else None
        row = self.store.transition(
            job_id,
            state,
            status.message or f"Ray reports {status.status}",
            state=state,
            finished_at=self.clock(),
            ray_status=status.status,
            ray_message=status.message,
            logs=tail,
        )
        if tail:
            self.store.add_log_snapshot(job_id, row.attempt, state, tail, self.config.log_tail_chars)
        self._active.pop(job_id, None)
        self._preempting.discard(job_id)
        if self.engine.has_job(job_id):
            self.engine.finish(job_id)
        self.metrics.finished.labels(queue=row.queue, state=state).inc()
        self.wake()

    def _requeue(self, job_id: str, kind: str, message: str, preempted: bool = False) -> None:
        row = self.store.get(job_id)
        if row is None:
            return
        self._active.pop(job_id, None)
        self._preempting.discard(job_id)
        self._requeue_row(row, kind, message, preempted)
        if self.engine.has_job(job_id):
            self.engine.suspended(job_id, self.clock())
        self.wake()

    # ================================================================ loops

    async def _schedule_loop(self) -> None:
        while True:
            async with self.engine_lock:
                wakeup = self.engine.next_wakeup()
            timeout = 5.0 if wakeup is None else min(5.0, max(0.0, wakeup - self.clock()))
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set, and the loop would then never stop.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()
            self._wake.clear()
            try:
                async with self.engine_lock:
                    await self._cycle()
            except Exception:
                log.exception("admission cycle failed")

    async def _capacity_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.capacity_interval_s)
            try:
                nodes = await asyncio.to_thread(self._nodes, self.ray.address)
            except Exception:
                continue
            if not nodes:
                continue
            async with self.engine_lock:
                if self._apply_capacity(nodes):
                    await self._cycle()

    def _apply_capacity(self, nodes: list[dict[str, Any]]) -> bool:
        """Each unit's capacity from Ray's alive nodes, by the rule both front ends share
        (``scheduler.engine.capacity``): Ray's nodes are the nodes. True if any unit changed."""
        changed = apply_node_capacity(self.engine, node_capacities(nodes))
        if changed:
            described = {u.name: u.description for u in self.engine.unit_views()}
            for name in changed:
                log.info("unit %s capacity: %s", name, described[name])
        return bool(changed)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ================================================================ recovery

    async def _recover(self) -> None:
        rows = self.store.jobs(st.LIVE_STATES)
        missing = sorted({r.queue for r in rows} - set(self.engine.tree.leaves))
        if missing:
            raise ServiceError(
                f"the quota tree has no leaf {', '.join(missing)} but the store holds live jobs there; "
                "start with a tree that has these leaves (nothing was changed)"
            )
        active = [r for r in rows if r.state in st.ACTIVE_STATES and r.submission_id]
        statuses = await asyncio.gather(
            *(asyncio.to_thread(self.ray.status, r.submission_id or "") for r in active), return_exceptions=True
        )
        for row, status in zip(active, statuses, strict=True):
            if isinstance(status, BaseException):
                raise ServiceError(f"cannot ask Ray about job {row.id}: {status}")
            sid = row.submission_id or ""
            if status is None and row.released:
                self._requeue_row(row, "Lost", f"Ray no longer knows submission {sid} (cluster restarted?)")
                continue
            if status is not None and status.terminal:
                if row.state == st.PREEMPTING and status.status == "STOPPED":
                    self._requeue_row(row, "Requeued", f"Ray stopped {sid} while rayqueue was down", preempted=True)
                    continue
                logs = await asyncio.to_thread(self.ray.logs, sid)
                self._active[row.id] = sid
                self._finalize(row.id, status, logs)
                continue
            if status is None and row.state == st.PREEMPTING:
                # Preempted before Ray ever had it: that preemption is complete, not to be decided again.
                self._requeue_row(row, "Requeued", f"preempted before Ray started {sid}; back in the queue",
                                  preempted=True)
                continue
            # Running (or pending) in Ray, or admitted but maybe never submitted: count it, as it was. A job
            # being preempted stays so, for the job it was preempted for: one decision, one event, one count.
            w = self._workload(row)
            preempting = row.state == st.PREEMPTING
            reason = None
            if preempting and row.reason_code in ReasonCode.__members__.values():
                reason = Reason(ReasonCode(row.reason_code), row.reason or "being preempted (restored)")
            self.engine.restore(w, row.unit, row.admitted_at or self.clock(), preempted_by=row.preempted_by,
                                preempting=preempting, reason=reason)
            # a transition, not a bare record: the history row then shows the job's state and unit
            self.store.transition(row.id, "Reattached", f"counted again on unit {row.unit} after a restart")
            if status is None:
                node_selector = self.units.by_name[w.unit or ""].node_selector if w.unit in self.units.by_name else {}
                self._releasing[row.id] = asyncio.create_task(self._release(row.id, sid, dict(node_selector)))
                continue
            if not row.released:
                self.store.transition(row.id, "Released", f"Ray has {sid} (found after a restart)", released=True)
            self._active[row.id] = sid
            if row.state == st.PREEMPTING:
                self._preempting.add(row.id)
                self._spawn(self._stop_in_ray(row.id, sid))
        for row in self.store.unsettled_cancelled():
            self._spawn(self._settle_cancelled(row.id, row.submission_id or ""))
        for row in self.store.jobs([st.PENDING]):
            if self.engine.has_job(row.id):
                continue
            w = self._workload(row)
            rejected = self.engine.submit(w)
            if rejected is not None:
                self.store.transition(
                    row.id,
                    "Rejected",
                    f"can never run under the current tree: {rejected.reason.message}",
                    state=REJECTED,
                    reason_code=rejected.reason.code.value,
                    reason=rejected.reason.message,
                    finished_at=self.clock(),
                )

    def _requeue_row(self, row: JobRecord, kind: str, message: str, preempted: bool = False) -> None:
        self.store.transition(
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

    def _workload(self, row: JobRecord) -> Workload:
        try:
            pod_request: Resources | None = self._request(row).largest_pod
        except (RayJobRejected, ValueError):
            pod_request = None  # a manifest an older version accepted: its pods are not checked per node
        return Workload(
            uid=row.id,
            queue=row.queue,
            request=row.request_dict(),
            pods=row.pods,
            priority=row.priority,
            priority_class=row.priority_class,
            submitted_at=row.submitted_at,
            expected_duration=_expected_duration(row),
            name=row.name,
            pod_request=pod_request,
        )

    # ================================================================ the quota tree

    def apply_tree(self, text: str, dry_run: bool = False, source: str = "ElasticQuotaTree") -> dict[str, Any]:
        """Validate a new tree and apply it (or only say what it would change), on the calling thread."""
        result = self._set_tree(QuotaTree.from_yaml_text(text, source), text, dry_run)
        if result["applied"]:
            self._run_cycle()
        return result

    async def apply_tree_async(
        self, text: str, dry_run: bool = False, source: str = "ElasticQuotaTree"
    ) -> dict[str, Any]:
        """:meth:`apply_tree` for the event loop: the tree is parsed in a worker thread without the engine
        lock, then set (or previewed) in a worker thread under it."""
        tree = await asyncio.to_thread(QuotaTree.from_yaml_text, text, source)
        async with self.engine_lock:
            result = await asyncio.to_thread(self._set_tree, tree, text, dry_run)
            if result["applied"]:
                await self._cycle()
        return result

    def _set_tree(self, tree: QuotaTree, text: str, dry_run: bool) -> dict[str, Any]:
        old = self.engine.tree
        if dry_run:
            # QuotaTreeError if a leaf holding jobs would go
            running: list[str] = []
            found = self.engine.preview_tree(tree, also=lambda t: running.extend(self._running_job_effects(old, t)))
            return {"applied": False, "effects": tree_effect_lines(found) + running}
        # The new tree now accounts every admitted job.
        effects = tree_effect_lines(self.engine.set_tree(tree)) + self._running_job_effects(old, tree)
        self.store.set_setting(TREE_SETTING, text)
        self.store.record("(quota)", "QuotaApplied", f"tree {tree.name}: " + "; ".join(effects))
        return {"applied": True, "effects": effects}

    def _running_job_effects(self, old: QuotaTree, new: QuotaTree, shown: int = 10) -> list[str]:
        """The admitted jobs behind the engine's node-level effects: those under a node that would be
        over its new ``max``, and those under a node that would newly borrow (reclaimable work).
        ``new`` must account every admitted job."""
        under: dict[str, list[Workload]] = {}
        for w in self.engine.admitted():
            for node in new.leaves[w.queue].lineage:
                under.setdefault(node.name, []).append(w)
        lines: list[str] = []

        def jobs_line(what: str, node_path: str, jobs: list[Workload]) -> None:
            ids = sorted(w.uid for w in jobs)
            more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
            lines.append(f"! running jobs {what} {node_path}: {', '.join(ids[:shown])}{more}")

        for node in new:
            jobs = under.get(node.name, [])
            if not jobs:
                continue
            over = sorted(r for r, m in node.max.items() if node.usage.get(r, 0) > m)
            if over:
                holding = [w for w in jobs if any(w.request.get(r, 0) for r in over)]
                jobs_line(f"over the new max ({', '.join(over)}) of", node.path, holding)
            was = old.nodes[node.name] if node.name in old.nodes else None
            was_borrowed = old.borrowed(was) if was is not None else {}
            borrowed = new.borrowed(node)
            newly = sorted(r for r, v in borrowed.items() if v > was_borrowed.get(r, 0))
            if newly:
                holding = [w for w in jobs if any(w.request.get(r, 0) for r in newly)]
                jobs_line(f"that would borrow ({', '.join(newly)}; reclaimable) in", node.path, holding)
        return lines

    def tree_yaml(self) -> str:
        return yaml.safe_dump(self.engine.tree.to_dict(), sort_keys=False)

    # ================================================================ views

    def resolve(self, ref: str) -> JobRecord:
        """A job by id, or by name when exactly one job has it."""
        row = self.store.get(ref)
        if row is not None:
            return row
        rows = self.store.by_name(ref)
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NotFound(f"no job with id or name {ref!r}")
        live = [r for r in rows if r.state in st.LIVE_STATES]
        if len(live) == 1:
            return live[0]
        ids = ", ".join(r.id for r in rows[-10:])
        raise NotFound(f"{len(rows)} jobs are named {ref!r}; use an id ({ids})")

    def explain(self, ref: str) -> dict[str, Any]:
        row = self.resolve(ref)
        out = self._job_view(row, position=None)
        out.update(
            pending_in_queue=None,
            reason_code=row.reason_code,
            expected_start=None,
            attempt=row.attempt,
            submission_id=row.submission_id,
            ray_status=row.ray_status,
            ray_message=row.ray_message,
            pods=row.pods,
        )
        if self.engine.has_job(row.id):
            info = self.engine.explain(row.id)
            out["position"] = info.position
            out["pending_in_queue"] = info.pending_in_queue
            if info.state == WorkloadState.PENDING:
                # A forecast on a copy of the engine: running jobs end after their expected duration.
                out["expected_start"] = forecast_starts(self.engine, self.clock()).get(row.id)
            if info.reason is not None and row.state == st.PENDING:
                out["reason_code"] = info.reason.code.value
                out["reason"] = info.reason.message
        elif row.state == st.RUNNING and not out["reason"]:
            out["reason"] = "running in Ray"
        return out

    def _job_view(self, row: JobRecord, position: int | None) -> dict[str, Any]:
        """What `jobs` shows of one job; `explain` adds to it."""
        return {
            "id": row.id,
            "name": row.name,
            "queue": row.queue,
            "state": row.state,
            "priority": row.priority,
            "priority_class": row.priority_class,
            "unit": row.unit,
            "position": position,
            "request": describe(row.request_dict()),
            "submitted_at": row.submitted_at,
            "admitted_at": row.admitted_at,
            "running_at": row.running_at,
            "finished_at": row.finished_at,
            "preemptions": row.preemptions,
            "reason": row.reason,
        }

    def job_views(
        self, states: list[str] | None = None, queue: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` jobs after the ``offset`` newest (all when ``limit`` is None), oldest first,
        and how many jobs match in all."""
        rows, total = self.store.jobs_page(states, queue, limit, offset)
        out = []
        for row in rows:
            position = None
            if row.state == st.PENDING and self.engine.has_job(row.id):
                position = self.engine.explain(row.id).position
            out.append(self._job_view(row, position))
        return out, total

    def status(self) -> dict[str, Any]:
        return status_view(self.engine, self.ray.address)

    def history(
        self, ref: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` events (of one job) after the ``offset`` newest, oldest first, and how many
        there are in all."""
        job_id = self.resolve(ref).id if ref else None
        events, total = self.store.events_page(job_id, limit, offset)
        return [
            {"job": e.job_id, "at": e.at, "kind": e.kind, "state": e.state, "unit": e.unit, "message": e.message}
            for e in events
        ], total

    async def logs(self, ref: str) -> dict[str, Any]:
        row = self.resolve(ref)
        text: str | None = None
        source = "none"
        live = row.state in st.ACTIVE_STATES or (row.state == st.CANCELLED and row.logs is None)
        if live and row.submission_id and (row.released or row.state == st.CANCELLED):
            try:
                text = await asyncio.to_thread(self.ray.logs, row.submission_id)
                source = "ray"
            except RayUnavailable:
                text = None
        if text is None and row.logs is not None:
            text, source = row.logs, "store"
        return {"id": row.id, "state": row.state, "source": source, "logs": text or ""}

    def refresh_metrics(self) -> None:
        self.metrics.refresh(self)


def status_view(engine: Engine, ray_address: str) -> dict[str, Any]:
    """What ``rayqueue status`` shows: per tree node usage / min / max, borrowed, pending and running
    jobs; per unit its capacity and use."""
    tree = engine.tree
    pending: dict[str, int] = {}
    running: dict[str, int] = {}
    for q in engine.queue_views():
        pending[q.name] = len(q.pending)
        running[q.name] = len(q.admitted)
    nodes: list[dict[str, Any]] = []

    def visit(node: Any) -> tuple[int, int]:
        index = len(nodes)
        nodes.append({})
        p, r = (pending.get(node.name, 0), running.get(node.name, 0)) if node.is_leaf else (0, 0)
        for child in node.children:
            cp, cr = visit(child)
            p, r = p + cp, r + cr
        resources = sorted((set(node.min) | set(node.max) | set(node.usage)) - {MAX_JOBS}) + (
            [MAX_JOBS] if MAX_JOBS in node.max else []
        )
        nodes[index] = {
            "name": node.name,
            "path": node.path,
            "depth": node.depth,
            "leaf": node.is_leaf,
            "min": {k: v for k, v in node.min.items()},
            "max": {k: v for k, v in node.max.items()},
            "usage": {k: v for k, v in node.usage.items() if v},
            "borrowed": tree.borrowed(node),
            "resources": resources,
            "pending": p,
            "running": r,
        }
        return p, r

    visit(tree.root)
    units = [
        {
            "name": u.name,
            "resource": u.resource,
            "capacity": u.capacity,
            "usage": {k: v for k, v in u.usage.items() if v and k != MAX_JOBS},
            "pods": u.pods,
            "max_pods": u.max_pods,
            "node_selector": u.node_selector,
        }
        for u in engine.units.units
    ]
    return {"tree": tree.name, "nodes": nodes, "units": units, "ray": ray_address}


def _borrowed_share(tree: QuotaTree, w: Workload) -> Resources:
    """The part of a just-admitted job's request its leaf holds above its ``min`` (reclaimable)."""
    lent = tree.borrowed(tree.leaves[w.queue])
    return {r: min(v, lent[r]) for r, v in w.request.items() if lent.get(r, 0) > 0 and r != MAX_JOBS}


def _visible(request: Resources) -> Resources:
    return {r: v for r, v in request.items() if r != MAX_JOBS}


__all__ = [
    "Accepted",
    "NotFound",
    "QuotaTreeError",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "SubmitError",
    "WorkloadState",
    "default_tree",
]


def _expected_duration(row: JobRecord) -> float | None:
    try:
        return expected_duration(row.manifest_dict())
    except (RayJobRejected, ValueError):
        return None
