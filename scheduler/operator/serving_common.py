"""What the RayService follower and the RayCluster gate share: the two resources, their gates, the record
of an admission, the placement of a Ray cluster's templates, and the state both keep (``ServingBase``: the
bodies seen, what was told, what was refused, and the one way a refusal or a wait is written).

See ``services.py`` for how the two kinds are queued; this module holds no watch and decides nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rayqueue.queue.priority import UnknownPriorityClass
from rayqueue.quota.quantity import describe
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.decisions import Placement
from rayqueue.scheduler.engine.services import ServiceSpec
from rayqueue.scheduler.operator.intake import Intake
from rayqueue.scheduler.operator.kube import ApiError, Resource
from rayqueue.scheduler.operator.rayjobs import (
    CONDITION_ANNOTATION,
    _place_template,
    admission_record,
    condition,
    job_uid,
    parse_time,
)
from rayqueue.scheduler.operator.state import OperatorState
from rayqueue.scheduler.workloads.rayjob import PRIORITY_LABEL, QUEUE_LABEL
from rayqueue.scheduler.workloads.serving import ServingRejected

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



class ServingBase:
    """The state the RayService follower and the RayCluster gate share, and the writes both make."""

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

    def forget(self, uid: str) -> None:
        self.asked.pop(uid, None)
        self.upgrading.pop(uid, None)
        self.announced.pop(uid, None)
        self.rejected.pop(uid, None)

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

    def _restored_queue(self, body: Mapping[str, Any]) -> tuple[str, int] | None:
        """The queue and priority of a running object counted back in; None (logged) if they no longer
        resolve: it keeps running, uncounted, as one never admitted by us."""
        assert self.s.tree is not None
        try:
            return self._queue_priority(body, self.s.tree)
        except ServingRejected as exc:
            log.warning("cannot restore %s %s: %s", body.get("kind") or "object", _ref(body), exc)
            return None

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

    def sync_service(self, body: Mapping[str, Any]) -> None:
        raise NotImplementedError  # RayServiceFollower

    def sync_cluster(self, body: Mapping[str, Any]) -> None:
        raise NotImplementedError  # RayClusterGate

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
    return describe({r: v for r, v in res.items() if not r.startswith("kube-queue/")})


def _created(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def _created_epoch(body: Mapping[str, Any], now: float) -> float:
    return parse_time((body.get("metadata") or {}).get("creationTimestamp")) or now
