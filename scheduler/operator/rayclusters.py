"""The RayCluster gate: a RayCluster (``spec.suspend``, KubeRay >= 1.1) is a gang like a RayJob.

It is charged its admitted size. An autoscaler scale-up beyond it is one more request,
``<uid>/scale-up-<n>``, that waits for quota and is charged once admitted; a scale-down releases those
requests again. The engine's decisions about clusters are written here (``apply``). See ``services.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt, Reject
from rayqueue.scheduler.operator.kube import ApiError, Conflict, NotFound
from rayqueue.scheduler.operator.rayjobs import (
    ADMISSION_ANNOTATION,
    CONDITION_ANNOTATION,
    PREEMPTION_ANNOTATION,
    condition,
    is_managed,
    job_uid,
)
from rayqueue.scheduler.operator.serving_common import (
    RAYCLUSTERS,
    SCALE_UP,
    ServingBase,
    _created_epoch,
    _describe,
    _placed_cluster,
    _record,
    _ref,
    _resources_json,
    cluster_suspended_confirmed,
    log,
)
from rayqueue.scheduler.workloads.serving import ClusterRequest, ServingRejected, raycluster_request


class RayClusterGate(ServingBase):
    """Sync, restore and follow RayClusters and their scale-ups; write the engine's decisions about them."""

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
        engine = s.engine
        assert engine is not None
        uid = job_uid(body)
        restored = self._restored_queue(body)
        if restored is None:
            return
        queue, priority = restored
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
