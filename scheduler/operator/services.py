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

The pieces: ``rayservices.py`` follows RayServices, ``rayclusters.py`` gates RayClusters and writes the
engine's decisions about them, ``serving_common.py`` holds what both share; this module joins them to the
watch, the rebuild hooks and the writes after each cycle.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Any

from rayqueue.scheduler.engine.services import ServiceState
from rayqueue.scheduler.operator.rayclusters import RayClusterGate
from rayqueue.scheduler.operator.rayjobs import job_uid, preemption_record
from rayqueue.scheduler.operator.rayservices import RayServiceFollower
from rayqueue.scheduler.operator.serving_common import (
    RAYCLUSTERS,
    RAYSERVICES,
    SCALE_UP,
    _created,
    _describe,
    _record,
    cluster_suspended_confirmed,
    service_suspended,
    serving_suspended,
)
from rayqueue.scheduler.operator.state import object_ref


class Services(RayServiceFollower, RayClusterGate):
    """The RayService and RayCluster front end; one of ``OperatorState.extensions``."""

    # Set in ``ServingBase.__init__``; repeated because mypy sees first-party imports as Any (the package
    # maps ``rayqueue.*`` onto these folders), so it would infer them from this class's assignments.
    _listed: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None
    refusals: list[tuple[str, str, str, str]]

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


__all__ = ["RAYCLUSTERS", "RAYSERVICES", "Services", "cluster_suspended_confirmed", "object_ref",
           "preemption_record", "service_suspended", "serving_suspended"]
