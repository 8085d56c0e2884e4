"""The standalone service: one admission engine, its SQL store, and a Ray cluster it releases jobs to.

``Service`` is a small facade that the HTTP API, the runner and the CLI call. It decides nothing itself:
it wires the parts that do, each a module named by what it does, all sharing one ``ServiceState``:

- ``intake``: a submission parsed, checked and queued, all or nothing;
- ``admission``: the engine's cycle, each decision committed to the store before it reaches Ray;
- ``release``: jobs submitted to Ray, stopped (preempted, cancelled) and followed to their end;
- ``recovery``: the engine rebuilt from the store and Ray after a restart;
- ``capacity``: the units' capacity from Ray's alive nodes;
- ``tree_changes``: a new quota tree applied or previewed;
- ``queries``: status, jobs, explain, history and logs.

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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rayqueue.queue.priority import PriorityClasses
from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.service.admission import Admission, Decided
from rayqueue.scheduler.service.capacity import RayCapacity
from rayqueue.scheduler.service.intake import Accepted, AcceptedJob, Intake, Prepared, SubmitError
from rayqueue.scheduler.service.metrics import ServiceMetrics
from rayqueue.scheduler.service.queries import Queries, status_view
from rayqueue.scheduler.service.raycluster import alive_nodes
from rayqueue.scheduler.service.rayjobs import RayJobs
from rayqueue.scheduler.service.recovery import Recovery
from rayqueue.scheduler.service.release import Release
from rayqueue.scheduler.service.serving import AcceptedService, ServiceRecord, Serving
from rayqueue.scheduler.service.state import (
    DEFAULT_PRIORITY_CLASSES,
    REJECTED,
    TREE_SETTING,
    NotFound,
    ServiceConfig,
    ServiceError,
    ServiceState,
)
from rayqueue.scheduler.service.store import JobRecord, Store
from rayqueue.scheduler.service.tree_changes import TreeChanges
from rayqueue.scheduler.workloads.resourcepolicy import Units

log = logging.getLogger("rayqueue.service")
T = TypeVar("T")


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
        config = config or ServiceConfig()
        units = units if units is not None else Units.single(None)
        engine = Engine(tree, units, config.engine, clock=clock)
        s = self.state = ServiceState(store, ray, engine,
                                      priorities or PriorityClasses(DEFAULT_PRIORITY_CLASSES), config, clock)
        self.intake = Intake(s)
        self.release = Release(s, self._cycle)
        self.admission = Admission(s, self.release)
        self.recovery = Recovery(s, self.release)
        self.capacity = RayCapacity(
            s, nodes if nodes is not None else functools.partial(alive_nodes, token=ray.auth_token), self._cycle)
        self.trees = TreeChanges(s)
        self.queries = Queries(s)
        # services (RayService -> Ray Serve): hooked into intake and the admission cycle
        self.serving = Serving(s, self._cycle, config.serve_http_port)
        self.intake.services = self.serving.prepare_into
        self.admission.after_apply = self.serving.after_cycle
        self._tree_yaml = tree_yaml
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    # What the front ends and tests read of the shared state.

    @property
    def store(self) -> Store:
        return self.state.store

    @property
    def ray(self) -> RayJobs:
        return self.state.ray

    @property
    def engine(self) -> Engine:
        return self.state.engine

    @property
    def engine_lock(self) -> asyncio.Lock:
        return self.state.engine_lock

    @property
    def config(self) -> ServiceConfig:
        return self.state.config

    @property
    def metrics(self) -> ServiceMetrics:
        return self.state.metrics

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Read Ray's capacity, rebuild the engine from the store, start the loops."""
        s = self.state
        nodes = await asyncio.to_thread(self.capacity.nodes, s.ray.address)
        if not nodes:
            raise ServiceError(f"Ray at {s.ray.address} has no alive node (is the cluster up?)")
        async with s.engine_lock:
            self.capacity.apply(nodes)
            if self._tree_yaml is not None:
                s.store.set_setting(TREE_SETTING, self._tree_yaml)
            self.serving.recover()  # before the jobs: a job preempted for a service needs it
            await self.recovery.recover()
            # Preemptions are counted from the history, so a restart neither forgets nor repeats one.
            for (queue, reason), n in s.store.event_counts("Preempting").items():
                s.metrics.evicted.labels(queue=queue, reason=reason or "Unknown").inc(n)
            self.admission.run_cycle()
        self._tasks = [
            asyncio.create_task(self.admission.schedule_loop(), name="rayqueue-schedule"),
            asyncio.create_task(self.release.poll_loop(), name="rayqueue-poll"),
            asyncio.create_task(self.capacity.loop(), name="rayqueue-capacity"),
            asyncio.create_task(self.serving.loop(), name="rayqueue-serve"),
        ]
        self.started = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        s = self.state
        tasks = self._tasks + list(s.releasing.values()) + list(s.background)
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
        return self.recovery.interrupt_running(why)

    def wake(self) -> None:
        self.state.wake()

    async def locked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread holding the engine lock: engine work off the event loop."""
        async with self.state.engine_lock:
            return await asyncio.to_thread(fn, *args)

    async def _cycle(self) -> None:
        await self.admission.cycle()

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
        prepared = self.intake.prepare(files, queue=queue, priority=priority, ignore_other_kinds=ignore_other_kinds)
        services, workloads = self._queue(prepared)
        self.admission.run_cycle()
        return self.intake.answers(workloads) + self.serving.answers(services)

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
        prepared = await asyncio.to_thread(self.intake.prepare, files, queue=queue, priority=priority,
                                           ignore_other_kinds=ignore_other_kinds)
        async with self.state.engine_lock:
            # One hand-over to a worker thread for the engine's whole part: on a busy machine each one
            # can wait for a time slice, and a submission's answer waits for all of them.
            answers, decided = await asyncio.to_thread(self._accept_and_decide, prepared)
            self.admission.dispatch(decided)
            return answers

    def _queue(self, prepared: Prepared) -> tuple[list[AcceptedService], list[AcceptedJob]]:
        """Queue a submission's services and jobs, all or nothing (the services are withdrawn if a job
        is refused)."""
        services = self.serving.accept(prepared)
        try:
            workloads = self.intake.accept(prepared)
        except Exception:
            self.serving.undo(services)
            raise
        return services, workloads

    def _accept_and_decide(self, prepared: Prepared) -> tuple[list[Accepted], Decided]:
        """Queue the submission (services and jobs, all or nothing), run the admission cycle and answer
        (in a worker thread, holding the lock)."""
        services, workloads = self._queue(prepared)
        started = time.perf_counter()
        decided = self.admission.decide()
        self.state.metrics.cycles.inc()
        self.state.metrics.cycle_seconds.observe(time.perf_counter() - started)
        admitted = {item[1].id: item[1] for item in decided if isinstance(item, tuple)}
        return self.intake.answers(workloads, admitted) + self.serving.answers(services), decided

    def cancel(self, ref: str) -> JobRecord | ServiceRecord:
        if not self._is_job(ref) and self.serving.owns(ref):
            return self.serving.cancel(ref)
        return self.release.cancel(self.queries.resolve(ref))

    async def poll_once(self) -> None:
        """Ask Ray about every followed job once (the poll loop's step)."""
        await self.release.poll_once()

    # ================================================================ the quota tree

    def apply_tree(self, text: str, dry_run: bool = False, source: str = "ElasticQuotaTree") -> dict[str, Any]:
        """Validate a new tree and apply it (or only say what it would change), on the calling thread."""
        result = self.trees.set_tree(QuotaTree.from_yaml_text(text, source), text, dry_run)
        if result["applied"]:
            self.admission.run_cycle()
        return result

    async def apply_tree_async(
        self, text: str, dry_run: bool = False, source: str = "ElasticQuotaTree"
    ) -> dict[str, Any]:
        """:meth:`apply_tree` for the event loop: the tree is parsed in a worker thread without the engine
        lock, then set (or previewed) in a worker thread under it."""
        tree = await asyncio.to_thread(QuotaTree.from_yaml_text, text, source)
        async with self.state.engine_lock:
            result = await asyncio.to_thread(self.trees.set_tree, tree, text, dry_run)
            if result["applied"]:
                await self.admission.cycle()
        return result

    # ================================================================ queries

    def resolve(self, ref: str) -> JobRecord:
        return self.queries.resolve(ref)

    def explain(self, ref: str) -> dict[str, Any]:
        if self._is_job(ref):
            return self.queries.explain(ref)
        if self.serving.owns(ref):
            return self.serving.explain(ref)
        return self.queries.explain(ref)

    def _is_job(self, ref: str) -> bool:
        return self.state.store.get(ref) is not None or bool(self.state.store.by_name(ref))

    def job_views(
        self, states: list[str] | None = None, queue: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        return self.queries.job_views(states, queue, limit, offset)

    def status(self) -> dict[str, Any]:
        return {**self.queries.status(), "services": self.serving.views()}

    def tree_yaml(self) -> str:
        return self.queries.tree_yaml()

    def history(
        self, ref: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        if ref is not None and not self._is_job(ref) and (service := self.serving.find(ref)) is not None:
            return self.queries.events_of(service.id, limit, offset)
        return self.queries.history(ref, limit, offset)

    async def logs(self, ref: str) -> dict[str, Any]:
        return await self.queries.logs(ref)

    def refresh_metrics(self) -> None:
        self.state.metrics.refresh(self)


__all__ = [
    "DEFAULT_PRIORITY_CLASSES",
    "REJECTED",
    "TREE_SETTING",
    "Accepted",
    "NotFound",
    "QuotaTreeError",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "SubmitError",
    "WorkloadState",
    "default_tree",
    "status_view",
]
