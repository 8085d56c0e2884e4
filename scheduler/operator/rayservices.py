"""The RayService follower: a RayService is an engine *service*, queued while suspended, then followed.

Its head and current replicas are charged; the rest up to ``maxReplicas`` is reserved headroom that batch
may borrow. The autoscaler's edits of ``workerGroupSpecs[].replicas`` are followed (``scale_service``), and
a change of the cluster's shape is KubeRay's zero-downtime upgrade (``begin_upgrade`` until KubeRay's status
shows the new cluster active, then ``finish_upgrade``). See ``services.py`` for the whole picture.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from rayqueue.scheduler.engine.decisions import Placement
from rayqueue.scheduler.engine.services import ServiceError, ServiceState
from rayqueue.scheduler.operator.kube import ApiError, Conflict, NotFound
from rayqueue.scheduler.operator.rayjobs import ADMISSION_ANNOTATION, CONDITION_ANNOTATION, condition, is_managed, job_uid
from rayqueue.scheduler.operator.serving_common import (
    RAYSERVICES,
    ServingBase,
    _created_epoch,
    _placed_cluster,
    _record,
    _ref,
    _spec_key,
    log,
    service_suspended,
)
from rayqueue.scheduler.workloads.serving import ServiceRequest, ServingRejected, rayservice_request


class RayServiceFollower(ServingBase):
    """Sync, restore and follow RayServices; build and write their admission patches."""

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
        engine = s.engine
        assert engine is not None
        uid = job_uid(body)
        restored = self._restored_queue(body)
        if restored is None:
            return
        queue, priority = restored
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
        return placement(head), Placement("*", "*", {}, {}, tolerations)

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
