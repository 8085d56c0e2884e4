"""RayService and RayCluster as queued workloads: the operator's front end for the engine's services.

Both kinds are gated by ``suspend`` as RayJobs are: created suspended (by the user or the webhook), they wait
in their queue; admission is one merge patch (placement, our record, unsuspend). kopf watches them (they
are few and change rarely; the RayJob hot path has its own watch).

- A **RayService** is an engine *service* (``Engine.submit_service``): its head and current replicas are
  charged, the rest up to ``maxReplicas`` is reserved headroom that batch may borrow. The autoscaler's
  edits of ``workerGroupSpecs[].replicas`` are followed (``scale_service``): a scale-up is granted in the
  next cycle, and the RayJobs borrowing the headroom are suspended in that cycle (``Release`` writes their
  ``Preempted`` event, naming the service); a scale-down returns headroom at once. A change of the Ray
  cluster's shape is KubeRay's zero-downtime upgrade: both clusters are charged (``begin_upgrade``) until
  KubeRay's status shows the new cluster active (``finish_upgrade``). The gate is ``spec.suspend`` (KubeRay's
  RayService CRD has it) or, on older releases, ``spec.rayClusterConfig.suspend``: whichever the object sets.
- A **RayCluster** (``spec.suspend``, KubeRay >= 1.1) is a gang like a RayJob, charged its admitted size. An
  autoscaler scale-up beyond it is one more request, ``<uid>/scale-up-<n>``, that waits for quota with a
  reason (event + condition) and is charged once admitted; a scale-down releases those requests again.

The record of an admission (``rayqueue.io/admission``) carries what a restart needs: a RayService's granted
replicas per unit and its head's unit, a RayCluster's admitted size and scale-ups. ``restore`` counts
running objects into a rebuilt engine before the RayJobs, so that a job being preempted for a service is
restored as such (``Engine.restore_service``).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from rayqueue.queue.priority import UnknownPriorityClass
from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.decisions import Admit, Decision, Placement, Preempt, Reject
from rayqueue.scheduler.engine.services import ServiceError, ServiceSpec, ServiceState
from rayqueue.scheduler.operator.intake import Intake
from rayqueue.scheduler.operator.kube import ApiError, Conflict, NotFound, Resource
from rayqueue.scheduler.operator.rayjobs import (
    ADMISSION_ANNOTATION,
    CONDITION_ANNOTATION,
    PREEMPTION_ANNOTATION,
    _place_template,
    admission_record,
    condition,
    is_managed,
    job_uid,
    parse_time,
    preemption_record,
)
from rayqueue.scheduler.operator.state import OperatorState, object_ref
from rayqueue.scheduler.workloads.rayjob import PRIORITY_LABEL, QUEUE_LABEL
from rayqueue.scheduler.workloads.serving import (
    ClusterRequest,
    ServiceRequest,
    ServingRejected,
    raycluster_request,
    rayservice_request,
)

log = logging.getLogger("rayqueue.operator")

RAYSERVICES = Resource("ray.io", "v1", "rayservices", True, "RayService")
RAYCLUSTERS = Resource("ray.io", "v1", "rayclusters", True, "RayCluster")
SCALE_UP = "/scale-up-"  # a RayCluster's scale-up request: ``<cluster uid>/scale-up-<n>``


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _record(body: Mapping[str, Any]) -> dict[str, Any] | None:
    record = admission_record(body)
    if record is not None and record.get("uid") not in (None, job_uid(body)):
        return None  # copied from another object
    return record


def service_suspended(body: Mapping[str, Any]) -> bool:
    """The RayService's gate: top-level ``spec.suspend``, or ``spec.rayClusterConfig.suspend`` (older KubeRay)."""
    spec = body.get("spec") or {}
    cluster = spec.get("rayClusterConfig") or {}
    return spec.get("suspend") is True or (isinstance(cluster, Mapping) and cluster.get("suspend") is True)


def serving_suspended(body: Mapping[str, Any]) -> bool:
    """A RayService's or RayCluster's gate is closed (``spec.suspend``; a RayService's older field too)."""
    return service_suspended(body) if body.get("kind") == "RayService" else \
        (body.get("spec") or {}).get("suspend") is True


def cluster_suspended_confirmed(body: Mapping[str, Any]) -> bool:
    """KubeRay has stopped the RayCluster's pods: ``status.state: suspended`` (1.1) or the
    ``RayClusterSuspended`` condition (later releases); never started also holds nothing."""
    status = body.get("status") or {}
    if str(status.get("state") or "").lower() == "suspended" or not status.get("state"):
        return True
    return any(c.get("type") == "RayClusterSuspended" and c.get("status") == "True"
               for c in status.get("conditions") or [] if isinstance(c, Mapping))


def _spec_key(spec: ServiceSpec) -> tuple[Any, ...]:
    """What KubeRay's zero-downtime upgrade changes: the cluster's shape (replicas are the autoscaler's)."""
    return (tuple(sorted(spec.head.items())), tuple(sorted(spec.replica.items())), spec.min_replicas,
            spec.max_replicas, spec.head_pods, spec.replica_pods)


def _resources_json(res: Mapping[str, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(res.items())}


class Services:
    """The RayService and RayCluster front end; one of ``OperatorState.extensions``."""

    def __init__(self, state: OperatorState, intake: Intake) -> None:
        self.s = state
        self.intake = intake
        self.rayservices: dict[str, dict[str, Any]] = {}  # uid -> latest body seen
        self.rayclusters: dict[str, dict[str, Any]] = {}
        self.asked: dict[str, tuple[Any, ...]] = {}  # service uid -> the cluster shape it runs (spec key)
        self.upgrading: dict[str, str] = {}  # service uid -> the active cluster's name when the upgrade began
        self.announced: dict[str, tuple[str, str]] = {}  # uid -> (condition type, message) last told
        self.rejected: dict[str, int] = {}  # uid -> generation refused (not retried until it changes)
        self._listed: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
        self.refusals: list[tuple[str, str, str, str]] = []  # (uid, kind, reason, message): conditions to write

    # ================================================================ watch events (kopf)

    async def on_rayservice(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        body = dict(body)
        uid = job_uid(body)
        async with s.lock:
            if event_type == "DELETED":
                self.rayservices.pop(uid, None)
                self.forget(uid)
                if s.engine is not None and uid in s.engine.live_services:
                    s.engine.finish_service(uid)
                    s.status_dirty = True
            else:
                self.rayservices[uid] = body
                if s.engine is not None and s.tree is not None:
                    self.sync_service(body)
        s.wake.set()

    async def on_raycluster(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        body = dict(body)
        uid = job_uid(body)
        async with s.lock:
            if event_type == "DELETED":
                self.rayclusters.pop(uid, None)
                self.forget(uid)
                self.drop_cluster(uid)
            else:
                self.rayclusters[uid] = body
                if s.engine is not None and s.tree is not None:
                    self.sync_cluster(body)
        s.wake.set()

    def forget(self, uid: str) -> None:
        self.asked.pop(uid, None)
        self.upgrading.pop(uid, None)
        self.announced.pop(uid, None)
        self.rejected.pop(uid, None)

    # ================================================================ rebuild hooks (state.Extension)

    async def relist(self) -> None:
        self._listed = (await self.s.client.list(RAYSERVICES), await self.s.client.list(RAYCLUSTERS))

    def reset(self) -> None:
        services, clusters = self._listed or ([], [])
        self._listed = None
        self.rayservices = {job_uid(b): b for b in services}
        self.rayclusters = {job_uid(b): b for b in clusters}
        self.asked.clear()
        self.upgrading.clear()
        self.announced.clear()
        self.rejected.clear()

    def restore(self) -> None:
        """The engine was rebuilt: count every RayService and RayCluster into it, before the RayJobs."""
        self.asked.clear()
        self.upgrading.clear()
        for body in sorted(self.rayservices.values(), key=_created):
            self.sync_service(body)
        for body in sorted(self.rayclusters.values(), key=_created):
            self.sync_cluster(body)

    # ================================================================ RayService

    def _queue_priority(self, body: Mapping[str, Any], tree: QuotaTree) -> tuple[str, int]:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            leaf = tree.leaf_for(namespace=meta.get("namespace"), quota=labels.get(QUEUE_LABEL))
        except KeyError as exc:
            raise ServingRejected(str(exc.args[0]) if exc.args else str(exc)) from exc
        try:
            priority, _ = self.s.priorities.resolve(labels.get(PRIORITY_LABEL))
        except UnknownPriorityClass as exc:
            raise ServingRejected(f"label {PRIORITY_LABEL}: {exc} (create the PriorityClass or use an integer)") \
                from exc
        return leaf.name, priority

    def _service_request(self, body: Mapping[str, Any]) -> ServiceRequest | None:
        try:
            return rayservice_request(body)
        except ServingRejected as exc:
            self.reject(body, "InvalidRayService", str(exc))
            return None

    def sync_service(self, body: Mapping[str, Any]) -> None:
        """Make the engine agree with one RayService (idempotent, safe with stale events)."""
        s = self.s
        engine, tree = s.engine, s.tree
        assert engine is not None and tree is not None
        uid = job_uid(body)
        live = engine.live_services.get(uid)
        if not is_managed(body, tree):
            if live is not None:
                engine.finish_service(uid)
            return
        record = _record(body)
        suspended = service_suspended(body)
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if record is not None and not suspended:
            req = self._service_request(body)
            if req is None:
                return
            if live is None:  # running: a restart, or admitted by another instance
                self.restore_service(body, req, record)
                return
            if live.state == ServiceState.RUNNING:
                self.follow(body, req)
            return
        if not suspended:
            return  # running and never admitted by us (created before the webhook): not ours to count
        if live is not None and live.state == ServiceState.RUNNING:
            if record is None or float(record.get("admittedAtEpoch") or 0) + 1e-6 < (live.admitted_at or 0):
                return  # stale: a version from before our admission patch
            # Suspended by its owner while running (we never suspend a service): it frees everything
            # and queues again.
            engine.finish_service(uid)
            live = None
        if live is not None:
            req = self._service_request(body)
            if req is not None and _spec_key(req.spec) != self.asked.get(uid):
                engine.finish_service(uid)  # edited while it waits: queue the new shape
                live = None
            else:
                return
        if self.rejected.get(uid) == generation:
            return
        req = self._service_request(body)
        if req is None:
            return
        try:
            queue, priority = self._queue_priority(body, tree)
        except ServingRejected as exc:
            self.reject(body, "UnknownQueue" if "queue" in str(exc).lower() else "UnknownPriorityClass", str(exc))
            return
        svc = req.service(uid, queue, priority, _created_epoch(body, s.clock()))
        svc.name = _ref(body)
        try:
            reason = engine.submit_service(svc)
        except (ServiceError, ValueError) as exc:
            self.reject(body, "InvalidRayService", str(exc))
            return
        self.asked[uid] = _spec_key(req.spec)
        for note in svc.notes:
            s.events.post(dict(body), "RayService", "Note", note)
        if reason is not None:
            engine.live_services.pop(uid, None)
            self.reject(body, reason.code.value, reason.message)
            return
        s.status_dirty = True

    def restore_service(self, body: Mapping[str, Any], req: ServiceRequest, record: Mapping[str, Any]) -> None:
        s = self.s
        engine, tree = s.engine, s.tree
        assert engine is not None and tree is not None
        uid = job_uid(body)
        try:
            queue, priority = self._queue_priority(body, tree)
        except ServingRejected as exc:
            log.warning("cannot restore RayService %s: %s", _ref(body), exc)
            return
        svc = req.service(uid, queue, priority, _created_epoch(body, s.clock()))
        svc.name = _ref(body)
        by_unit = {str(k): int(v) for k, v in (record.get("byUnit") or {}).items()}
        granted = sum(by_unit.values())
        try:
            engine.restore_service(svc, granted, by_unit, float(record.get("admittedAtEpoch") or s.clock()),
                                   head_unit=record.get("unit"))
            self.asked[uid] = _spec_key(req.spec)
            if req.replicas != granted:
                engine.scale_service(uid, req.replicas)
        except (ServiceError, ValueError) as exc:
            log.warning("cannot restore RayService %s: %s", _ref(body), exc)
            return
        s.status_dirty = True

    def follow(self, body: Mapping[str, Any], req: ServiceRequest) -> None:
        """A running RayService changed: its replicas (the autoscaler), or its cluster's shape (an upgrade)."""
        s = self.s
        engine = s.engine
        assert engine is not None
        uid = job_uid(body)
        status = body.get("status") or {}
        active = str(((status.get("activeServiceStatus") or {}).get("rayClusterName")) or "")
        pending = str(((status.get("pendingServiceStatus") or {}).get("rayClusterName")) or "")
        key = _spec_key(req.spec)
        live = engine.live_services[uid]
        if uid in self.upgrading:
            if not pending and active != self.upgrading[uid]:
                # KubeRay switched traffic to the new cluster and deleted the old one.
                try:
                    engine.finish_upgrade(uid)
                except ServiceError as exc:  # never charged (it did not fit): the new shape replaces the old
                    log.info("%s: %s", _ref(body), exc)
                    engine.finish_service(uid)
                    self.upgrading.pop(uid, None)
                    self.asked.pop(uid, None)
                    self.restore_service(body, req, {"byUnit": {}, "admittedAtEpoch": live.admitted_at})
                    return
                self.upgrading.pop(uid, None)
                self.asked[uid] = key
                s.events.post(dict(body), "RayService", "UpgradeDone",
                              f"cluster {active or '?'} serves; the old cluster's quota is released")
                s.status_dirty = True
        elif key != self.asked.get(uid):
            try:
                engine.begin_upgrade(uid, copy.copy(req.spec), req.replicas)
            except ServiceError as exc:
                s.events.post(dict(body), "RayService", "UpgradeRejected", str(exc), "Warning")
                self.asked[uid] = key  # told once; the running cluster keeps its quota
                return
            self.upgrading[uid] = active
            self.asked[uid] = key
            s.status_dirty = True
        if live.replicas != req.replicas:
            engine.scale_service(uid, req.replicas)
            s.status_dirty = True

    # ================================================================ RayCluster

    def sync_cluster(self, body: Mapping[str, Any]) -> None:
        """Make the engine agree with one RayCluster (idempotent, safe with stale events)."""
        s = self.s
        engine, tree = s.engine, s.tree
        assert engine is not None and tree is not None
        uid = job_uid(body)
        if not is_managed(body, tree):
            self.drop_cluster(uid)
            return
        record = _record(body)
        suspend = (body.get("spec") or {}).get("suspend") is True
        base = engine.job(uid)
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if record is not None and not suspend:
            try:
                req = raycluster_request(body)
            except ServingRejected as exc:
                log.warning("cannot follow %s: %s", _ref(body), exc)
                return
            if base is None:
                self.restore_cluster(body, req, record)
            self.follow_cluster(body, req, record)
            return
        if record is not None and suspend and not cluster_suspended_confirmed(body):
            return  # being preempted: its quota is held until KubeRay has stopped its pods
        if not suspend:
            return  # running, never admitted by us
        if base is not None and base.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            if record is None or float(record.get("admittedAtEpoch") or 0) + 1e-6 < (base.admitted_at or 0):
                return  # stale: a version from before our admission patch
            # Stopped (preempted, or suspended by its owner): release every piece; it queues again at
            # the size it has now.
            self.drop_cluster(uid)
            base = None
        if base is not None or self.rejected.get(uid) == generation:
            return
        try:
            req = raycluster_request(body)
            queue, priority = self._queue_priority(body, tree)
        except ServingRejected as exc:
            self.reject(body, "InvalidRayCluster", str(exc))
            return
        w = req.workload(uid, queue, priority, _created_epoch(body, s.clock()))
        w.name = _ref(body)
        reject = engine.submit(w)
        if reject is not None:
            self.reject(body, reject.reason.code.value, reject.reason.message)
            return
        s.status_dirty = True

    def restore_cluster(self, body: Mapping[str, Any], req: ClusterRequest, record: Mapping[str, Any]) -> None:
        s = self.s
        engine, tree = s.engine, s.tree
        assert engine is not None and tree is not None
        uid = job_uid(body)
        try:
            queue, priority = self._queue_priority(body, tree)
        except ServingRejected as exc:
            log.warning("cannot restore %s: %s", _ref(body), exc)
            return
        at = float(record.get("admittedAtEpoch") or s.clock())
        w = req.workload(uid, queue, priority, _created_epoch(body, s.clock()))
        w.name = _ref(body)
        w.request = {str(k): int(v) for k, v in (record.get("total") or w.request).items()}
        w.pods = int(record.get("pods") or w.pods)
        engine.restore(w, record.get("unit"), at)
        for up in record.get("scaleUps") or []:
            piece = req.workload(str(up["uid"]), queue, priority, at)
            piece.name = f"{_ref(body)} scale-up"
            piece.request = {str(k): int(v) for k, v in (up.get("total") or {}).items()}
            piece.pods = int(up.get("pods") or 0)
            engine.restore(piece, up.get("unit"), float(up.get("admittedAtEpoch") or at))
        s.status_dirty = True

    def _pieces(self, uid: str) -> list[str]:
        """The scale-up requests of a cluster the engine holds, oldest first."""
        engine = self.s.engine
        assert engine is not None
        prefix = uid + SCALE_UP
        return sorted((w.uid for w in (*engine.admitted(), *engine.pending()) if w.uid.startswith(prefix)),
                      key=lambda u: int(u.rsplit("-", 1)[1]))

    def follow_cluster(self, body: Mapping[str, Any], req: ClusterRequest, record: Mapping[str, Any]) -> None:
        """A running RayCluster's size changed: a scale-up beyond what is admitted (and asked) becomes a
        request of its own; a scale-down releases the newest scale-up requests it no longer needs."""
        s = self.s
        engine = s.engine
        assert engine is not None
        uid = job_uid(body)
        base = engine.job(uid)
        if base is None or base.state != WorkloadState.ADMITTED:
            return
        held: dict[str, int] = dict(base.request)
        pods = base.pods
        pieces = [(p, engine.job(p)) for p in self._pieces(uid)]
        for _, v in pieces:
            if v is not None:
                for r, x in v.request.items():
                    held[r] = held.get(r, 0) + x
                pods += v.pods
        want = dict(req.total)
        # Release from the newest while what remains still covers the cluster's size.
        for p, v in reversed(pieces):
            if v is None:
                continue
            rest = {r: x - v.request.get(r, 0) for r, x in held.items()}
            if all(rest.get(r, 0) >= x for r, x in want.items()) and pods - v.pods >= req.pods:
                if v.state == WorkloadState.PENDING:
                    engine.cancel(p)
                else:
                    engine.finish(p)
                held, pods = rest, pods - v.pods
                s.status_dirty = True
        extra = {r: x - held.get(r, 0) for r, x in want.items() if x > held.get(r, 0)}
        extra_pods = max(0, req.pods - pods)
        if not extra and not extra_pods:
            return
        numbers = [int(p.rsplit("-", 1)[1]) for p in self._pieces(uid)]
        numbers += [int(str(u["uid"]).rsplit("-", 1)[1]) for u in record.get("scaleUps") or []]
        n = max(numbers, default=0) + 1
        w = engine.job(uid)
        assert w is not None
        from rayqueue.queue.workload import Workload

        piece = Workload(uid=f"{uid}{SCALE_UP}{n}", queue=w.queue, request=extra, pods=extra_pods,
                         priority=w.priority, submitted_at=s.clock(), name=f"{_ref(body)} scale-up {n}",
                         pod_request=dict(req.workload(uid, w.queue).pod_request or {}))
        reject = engine.submit(piece)
        if reject is not None:
            s.events.post(dict(body), "RayCluster", "ScaleUpRejected",
                          f"scale-up beyond the admitted size can never run: {reject.reason.message}", "Warning")
            return
        s.status_dirty = True

    def drop_cluster(self, uid: str) -> None:
        """Release a RayCluster and its scale-up requests (deleted, or stopped)."""
        s = self.s
        engine = s.engine
        if engine is None:
            return
        for p in [uid, *self._pieces(uid)]:
            w = engine.job(p)
            if w is None:
                continue
            if w.state == WorkloadState.PENDING:
                engine.cancel(p)
            else:
                engine.finish(p)
            s.status_dirty = True

    # ================================================================ after each cycle

    def owns(self, uid: str) -> bool:
        return uid.split(SCALE_UP, 1)[0] in self.rayclusters

    async def apply(self, d: Decision) -> bool:
        """Write a decision about a RayCluster (or one of its scale-ups); False: not ours."""
        uid = d.workload.uid
        base = uid.split(SCALE_UP, 1)[0]
        if base not in self.rayclusters:
            return False
        try:
            if isinstance(d, Admit):
                await self._admit_cluster(base, d)
            elif isinstance(d, Preempt):
                await self._preempt_cluster(base, d)
            elif isinstance(d, Reject):
                body = self.rayclusters.get(base)
                if body is not None:
                    self.reject(body, d.reason.code.value, d.reason.message)
        except (ApiError, TimeoutError, OSError) as exc:
            log.warning("could not apply %s to %s: %s", type(d).__name__, d.workload.display_name, exc)
            engine = self.s.engine
            w = engine.job(uid) if engine is not None else None
            if engine is not None and w is not None and w.state == WorkloadState.ADMITTED and isinstance(d, Admit):
                # Not written: undo it, and queue the cluster again later (a preemption is simply decided
                # again by a later cycle).
                engine.cancel(uid)
                asyncio.get_running_loop().call_later(self.s.config.retry_failed_after_s, self._resync, base)
        return True

    def _resync(self, uid: str) -> None:
        """Sync one object again (a write that failed): it is queued anew if it still waits."""
        s = self.s
        if s.engine is None or s.tree is None:
            return
        if uid in self.rayclusters:
            self.sync_cluster(self.rayclusters[uid])
        elif uid in self.rayservices:
            self.sync_service(self.rayservices[uid])
        s.wake.set()

    async def _admit_cluster(self, uid: str, d: Admit) -> None:
        s = self.s
        w, placement = d.workload, d.placement
        at = w.admitted_at or s.clock()
        for _ in range(6):
            body = self.rayclusters.get(uid)
            if body is None or s.engine is None or s.engine.current_state(w) != WorkloadState.ADMITTED:
                return
            record = _record(body) or {}
            meta = body["metadata"]
            if w.uid == uid:
                record = {"uid": uid, "queue": w.queue, "unit": placement.unit, "resource": placement.resource,
                          "admittedAtEpoch": at, "total": _resources_json(w.request), "pods": w.pods,
                          "scaleUps": [], "by": s.config.identity}
                patch: dict[str, Any] = {"spec": {"suspend": False, **_placed_cluster(body.get("spec") or {},
                                                                                       placement)}}
                said = f"admitted to unit {placement.unit} ({placement.resource}) from queue {w.queue}"
                reason = "Admitted"
            else:
                ups = [u for u in record.get("scaleUps") or [] if u.get("uid") != w.uid]
                ups.append({"uid": w.uid, "unit": placement.unit, "admittedAtEpoch": at,
                            "total": _resources_json(w.request), "pods": w.pods})
                record = {**record, "scaleUps": ups}
                patch = {}
                said = f"scale-up admitted: {_describe(w.request)} more on unit {placement.unit}"
                reason = "ScaleUpAdmitted"
            patch["metadata"] = {"resourceVersion": meta.get("resourceVersion"), "annotations": {
                ADMISSION_ANNOTATION: json.dumps(record, sort_keys=True), PREEMPTION_ANNOTATION: None,
                CONDITION_ANNOTATION: condition("Admitted", reason, said)}}
            try:
                new = await s.client.patch(RAYCLUSTERS, meta.get("namespace"), meta["name"], patch)
            except Conflict:
                fresh = await s.client.get(RAYCLUSTERS, meta.get("namespace"), meta["name"])
                self.rayclusters[uid] = fresh
                continue
            except NotFound:
                return
            self.rayclusters[uid] = new
            self.announced.pop(w.uid, None)
            s.events.post(new, "RayCluster", reason, said)
            return
        raise ApiError(409, f"{w.display_name}: the object kept changing; admission postponed")

    async def _preempt_cluster(self, uid: str, d: Preempt) -> None:
        s = self.s
        body = self.rayclusters.get(uid)
        if body is None or s.engine is None or s.engine.current_state(d.workload) != WorkloadState.PREEMPTING:
            return
        by = self.preemptor_name(d.preemptor)
        message = f"{d.reason.message} (to make room for {by}); quota is held until the cluster is suspended"
        meta = body["metadata"]
        patch = {"metadata": {"annotations": {
            CONDITION_ANNOTATION: condition("Preempted", d.reason.code.value, message),
            PREEMPTION_ANNOTATION: json.dumps({"for": d.preemptor, "reason": d.reason.code.value}, sort_keys=True)}},
            "spec": {"suspend": True}}
        try:
            self.rayclusters[uid] = await s.client.patch(RAYCLUSTERS, meta.get("namespace"), meta["name"], patch)
        except NotFound:
            return
        s.events.post(self.rayclusters[uid], "RayCluster", "Preempted", f"{d.reason.code.value}: {message}",
                      "Warning")

    def preemptor_name(self, uid: str) -> str:
        """Who a preemption makes room for, as users know it (``RayService ns/name``, a job's name)."""
        engine = self.s.engine
        view = engine.service(uid) if engine is not None else None
        if view is not None:
            return f"RayService {view.name}"
        job = engine.job(uid) if engine is not None else None
        return job.name if job is not None else uid

    async def after_cycle(self) -> None:
        """Carry the cycle's service grants to the API, and tell waiting services and clusters why."""
        s = self.s
        async with s.lock:
            engine = s.engine
            if engine is None:
                return
            grants = engine.service_grants()
            if grants:
                s.status_dirty = True  # the tree's status shows what the services now hold
            # (uid, the patch from the body, event reason, message, event type)
            writes: list[tuple[str, Callable[[Mapping[str, Any]], dict[str, Any]], str, str, str]] = []
            for g in grants:
                svc = g.service
                body = self.rayservices.get(svc.uid)
                if body is None or svc.cluster is None:
                    continue
                if g.first:
                    writes.append((svc.uid, functools.partial(self._service_admit_patch, svc=svc), "Admitted",
                                   f"admitted with {svc.cluster.granted} replicas (head on unit "
                                   f"{svc.cluster.head_unit}); {svc.reason.message if svc.reason else ''}",
                                   "Normal"))
                elif g.upgrade:
                    s.events.post(body, "RayService", "UpgradeAdmitted",
                                  "zero-downtime upgrade: both clusters are charged until the new one serves")
                else:
                    added = ", ".join(f"{n} on {u}" for u, n in sorted(g.added.items()))
                    writes.append((svc.uid, functools.partial(self._record_patch, svc=svc), "ScaledUp",
                                   f"scale-up granted: {g.replicas} replicas ({added})", "Normal"))
            for uid, live in engine.live_services.items():
                body = self.rayservices.get(uid)
                if body is None or live.cluster is None or any(w[0] == uid for w in writes):
                    continue
                record = _record(body) or {}
                if record.get("byUnit") != {k: v for k, v in live.cluster.by_unit.items() if v}:
                    writes.append((uid, functools.partial(self._record_patch, svc=live), "", "", ""))  # scale-down
            tell = self._announcements()
            refusals, self.refusals = self.refusals, []
        for uid, patch, reason, message, type_ in writes:
            written = await self._patch_service(uid, patch, reason, message, type_)
            if not written and reason == "Admitted":
                # The service was not unsuspended: undo its admission, and queue it again later.
                async with s.lock:
                    if s.engine is not None and uid in s.engine.live_services:
                        s.engine.finish_service(uid)
                        self.asked.pop(uid, None)
                asyncio.get_running_loop().call_later(s.config.retry_failed_after_s, self._resync, uid)
        for uid, kind, type_, code, message in tell:
            await self._tell(uid, kind, type_, code, message)
        for uid, kind, code, message in refusals:
            await self._tell(uid, kind, "Rejected", code, message, event=False)

    def _announcements(self) -> list[tuple[str, str, str, str, str]]:
        """(uid, kind, condition type, reason code, message) of each service or cluster whose wait changed."""
        engine = self.s.engine
        assert engine is not None
        out = []
        for view in engine.services():
            if view.reason is None:
                continue
            if view.state == ServiceState.PENDING:
                type_ = "Queued"
            elif view.state == ServiceState.RUNNING and "waits" in view.reason.message:
                type_ = "ScaleUpWaits"
            elif view.state == ServiceState.RUNNING and view.upgrading is False and \
                    view.uid in self.upgrading and "upgrade" in view.reason.message:
                type_ = "UpgradeWaits"
            else:
                self.announced.pop(view.uid, None)  # not waiting: the next wait is told again
                continue
            if self.announced.get(view.uid) != (type_, view.reason.message):
                self.announced[view.uid] = (type_, view.reason.message)
                out.append((view.uid, "RayService", type_, view.reason.code.value, view.reason.message))
        for w in engine.pending():
            base = w.uid.split(SCALE_UP, 1)[0]
            if base not in self.rayclusters:
                continue
            type_ = "ScaleUpWaits" if SCALE_UP in w.uid else "Queued"
            message = w.reason.message if w.reason else "queued"
            if type_ == "ScaleUpWaits":
                message = f"scale-up beyond the admitted size ({_describe(w.request)} more) waits: {message}"
            if self.announced.get(w.uid) != (type_, message):
                self.announced[w.uid] = (type_, message)
                out.append((base, "RayCluster", type_, w.reason.code.value if w.reason else "Queued", message))
        return out

    def _service_admit_patch(self, body: Mapping[str, Any], svc: Any) -> dict[str, Any]:
        """Unsuspend, placement (the head on its unit; workers may go to any unit, see ``_placed_cluster``),
        and our record."""
        spec = body.get("spec") or {}
        cluster = dict(spec.get("rayClusterConfig") or {})
        placements = self._service_placements(svc)
        patch_spec: dict[str, Any] = {"rayClusterConfig": _placed_cluster(cluster, *placements)}
        if spec.get("suspend") is True:
            patch_spec["suspend"] = False
        if cluster.get("suspend") is True:
            patch_spec["rayClusterConfig"]["suspend"] = False
        patch = self._record_patch(body, svc)
        patch["spec"] = patch_spec
        return patch

    def _service_placements(self, svc: Any) -> tuple[Placement, Placement | None]:
        """The head's unit's placement, and the workers' when every unit is the same one. With several
        units the replicas spill from one to the next as they scale (ECS, then ACS), which one pod
        template cannot pin: the workers get every unit's tolerations and no nodeSelector, and the
        cluster's ResourcePolicy scheduler places them in its units' order."""
        engine = self.s.engine
        assert engine is not None
        units = self.intake.units().units
        head = next((u for u in units if u.name == svc.cluster.head_unit), units[0])

        def placement(u: Any) -> Placement:
            return Placement(u.name, u.resource, u.node_selector, u.pod_labels, u.tolerations)

        if len(units) == 1:
            return placement(head), placement(head)
        tolerations: list[dict[str, Any]] = []
        for u in units:
            for t in u.tolerations:
                if t not in tolerations:
                    tolerations.append(dict(t))
        return placement(head), Placement("*", "*", {}, {}, tuple(tolerations))

    def _record_patch(self, body: Mapping[str, Any], svc: Any) -> dict[str, Any]:
        c = svc.cluster
        record = {"uid": svc.uid, "queue": svc.queue, "unit": c.head_unit,
                  "byUnit": {k: v for k, v in c.by_unit.items() if v}, "granted": c.granted,
                  "admittedAtEpoch": svc.admitted_at, "priority": svc.priority, "by": self.s.config.identity}
        message = svc.reason.message if svc.reason else f"running {c.granted} replicas"
        return {"metadata": {"annotations": {ADMISSION_ANNOTATION: json.dumps(record, sort_keys=True),
                                             CONDITION_ANNOTATION: condition("Admitted", "Admitted", message)}}}

    async def _patch_service(self, uid: str, build: Callable[[Mapping[str, Any]], dict[str, Any]], reason: str,
                             message: str, type_: str) -> bool:
        """Write ``build(body)`` under the body's resourceVersion (an admission replaces the worker list
        whole: an autoscaler's edit in between must not be lost), reading again on a conflict. False: not
        written (the object is gone, or the API kept refusing)."""
        s = self.s
        for _ in range(6):
            body = self.rayservices.get(uid)
            if body is None:
                return False
            meta = body["metadata"]
            patch = build(body)
            patch.setdefault("metadata", {})["resourceVersion"] = meta.get("resourceVersion")
            try:
                new = await s.client.patch(RAYSERVICES, meta.get("namespace"), meta["name"], patch)
            except Conflict:
                try:
                    fresh = await s.client.get(RAYSERVICES, meta.get("namespace"), meta["name"])
                except NotFound:
                    return False
                if uid in self.rayservices and job_uid(fresh) == uid:
                    self.rayservices[uid] = fresh
                continue
            except NotFound:
                return False
            except (ApiError, TimeoutError, OSError) as exc:
                log.warning("could not write RayService %s: %s", _ref(body), exc)
                return False
            if uid in self.rayservices:
                self.rayservices[uid] = new
            if reason:
                self.announced.pop(uid, None)
                s.events.post(new, "RayService", reason, message, type_ or "Normal")
            return True
        return False

    async def _tell(self, uid: str, kind: str, type_: str, code: str, message: str, event: bool = True) -> None:
        s = self.s
        body = (self.rayservices if kind == "RayService" else self.rayclusters).get(uid)
        if body is None:
            return
        if event:
            s.events.post(body, kind, type_, f"{code}: {message}", "Warning" if type_ != "Queued" else "Normal")
        meta = body["metadata"]
        res = RAYSERVICES if kind == "RayService" else RAYCLUSTERS
        try:
            await s.client.patch(res, meta.get("namespace"), meta["name"], {"metadata": {"annotations": {
                CONDITION_ANNOTATION: condition(type_, code, message)}}})
        except (ApiError, TimeoutError, OSError) as exc:
            log.info("could not write the condition of %s: %s", _ref(body), exc)

    def reject(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        s = self.s
        uid = job_uid(body)
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if self.rejected.get(uid) == generation:
            return
        self.rejected[uid] = generation
        kind = str(body.get("kind") or "RayService")
        s.events.post(dict(body), kind, "Rejected", f"{reason}: {message}", "Warning")
        self.announced[uid] = ("Rejected", message)
        self.refusals.append((uid, kind, reason, message))
        s.wake.set()  # the cycle's ``after_cycle`` writes the condition


def _placed_cluster(cluster: Mapping[str, Any], head: Placement, workers: Placement | None = None
                    ) -> dict[str, Any]:
    """The head and worker templates with placement (a merge patch of a Ray cluster spec: the worker list
    is replaced whole, so it is built from the object as read, under its resourceVersion)."""
    workers = workers if workers is not None else head
    out: dict[str, Any] = {"headGroupSpec": {"template": _place_template(
        (cluster.get("headGroupSpec") or {}).get("template"), head)}}
    groups = []
    for g in cluster.get("workerGroupSpecs") or []:
        g = dict(g)
        tpl = _place_template(g.get("template"), workers)
        if workers.unit == "*":  # no single unit: no unit label either
            tpl["metadata"]["labels"].pop("rayqueue.io/unit", None)
        g["template"] = tpl
        groups.append(g)
    if groups:
        out["workerGroupSpecs"] = groups
    return out


def _describe(res: Mapping[str, int]) -> str:
    from rayqueue.quota.quantity import describe

    return describe({r: v for r, v in res.items() if not r.startswith("kube-queue/")})


def _created(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def _created_epoch(body: Mapping[str, Any], now: float) -> float:
    return parse_time((body.get("metadata") or {}).get("creationTimestamp")) or now


__all__ = ["RAYCLUSTERS", "RAYSERVICES", "Services", "cluster_suspended_confirmed", "object_ref",
           "preemption_record", "service_suspended"]
