"""Services in standalone mode: a RayService's Serve applications on the local Ray cluster, queued and
reserved like the operator's RayServices (docs/standalone.md "Services").

In standalone there is no KubeRay cluster to size: the Ray cluster is the local one, and a RayService is
its ``serveConfigV2``. The service the engine holds is built from the Serve deployments: the deployment
that autoscales is the service's replica (its ``ray_actor_options`` per replica, its
``autoscaling_config`` bounds); every other deployment is charged as the service's head (fixed ones at
their ``num_replicas``, a second autoscaling one at its ``max_replicas``).

The life of a service:

* ``rayqueue submit`` parses it beside the RayJobs of the same submission (all or nothing);
* when the engine admits it (a ``ServiceGrant`` with ``first``), every admitted service's applications are
  deployed with ONE ``PUT /api/serve/applications/`` on Ray's dashboard (Serve's REST API is declarative:
  applications left out of the body are deleted), each autoscaling deployment's ``max_replicas`` capped at
  the reservation the engine admitted (an unset or huge maximum is capped by the quota);
* the poll loop reads ``GET /api/serve/applications/``: a change of the scaling deployment's
  ``target_num_replicas`` (Serve's autoscaler) is fed to ``Engine.scale_service`` and an admission cycle
  runs at once, so the batch jobs that borrowed the headroom are preempted through the Job API (the
  existing preemption path) in the cycle that saw the scale-up; a scale-down returns the headroom at once;
* a restart rebuilds the engine from the ``services`` table (``restore_service``) before the jobs, so a
  job preempted for a service is restored as such; applications Serve lost are deployed again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Field, SQLModel, col, select

from rayqueue.queue.priority import UnknownPriorityClass
from rayqueue.quota.quantity import MAX_JOBS, Resources, describe
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.services import Service, ServiceError, ServiceView
from rayqueue.scheduler.service.intake import Accepted
from rayqueue.scheduler.service.rayjobs import RayUnavailable
from rayqueue.scheduler.service.serve_deploy import (
    ServeApi,
    StandaloneShape,
    capped_applications,
    serve_target,
    standalone_shape,
)
from rayqueue.scheduler.service.state import NotFound, ServiceState
from rayqueue.scheduler.service.state import ServiceError as ServiceStateError
from rayqueue.scheduler.workloads.rayjob import RayJobRejected
from rayqueue.scheduler.workloads.serving import (
    RAYSERVICE,
    ServiceRequest,
    rayservice_request,
)

log = logging.getLogger("rayqueue.service.serving")

# A service's states in the ``services`` table.
PENDING = "Pending"  # queued: waiting for its reservation
RUNNING = "Running"  # admitted: its applications are deployed to Serve
CANCELLED = "Cancelled"  # deleted by the user: its applications were removed from Serve
REJECTED = "Rejected"
LIVE = (PENDING, RUNNING)

class ServiceRecord(SQLModel, table=True):
    """One RayService in standalone: everything a restart needs to count it again as it was."""

    __tablename__ = "services"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    namespace: str | None = None
    queue: str
    priority: int = 0
    priority_class: str | None = None
    state: str = Field(default=PENDING, index=True)
    reason: str | None = None
    manifest: str = ""  # the RayService as JSON
    applications: str = "[]"  # the Serve application names it owns, as JSON
    replicas: int = 0  # what Serve's autoscaler asks (target_num_replicas of the scaling deployment)
    granted: int = 0  # replicas charged in quota
    by_unit: str = "{}"  # granted replicas per unit, as JSON
    head_unit: str | None = None
    submitted_at: float = 0.0
    admitted_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0  # batch jobs preempted for it


@dataclass
class PreparedService:
    where: str
    request: ServiceRequest
    shape: StandaloneShape
    manifest: dict[str, Any]
    priority: int
    priority_class: str | None


@dataclass
class AcceptedService:
    svc: Service
    row: ServiceRecord
    notes: list[str] = field(default_factory=list)


class Serving:
    """The standalone front end of services: intake, deployment to Serve, following its replicas,
    recovery. Shares the service's ``ServiceState``; ``cycle`` is one admission cycle (call it holding
    the engine lock)."""

    def __init__(self, s: ServiceState, cycle: Callable[[], Awaitable[None]], http_port: int = 8000) -> None:
        self.s = s
        self._cycle = cycle
        self.http_port = http_port
        # a stand-in Ray (the model tests') may have no token: Serve's API is then only built, not called
        self.api = ServeApi(s.ray.address, auth_token=getattr(s.ray, "auth_token", None))
        ServiceRecord.metadata.create_all(s.store.engine, tables=[ServiceRecord.__table__])  # type: ignore[attr-defined]
        self.shapes: dict[str, StandaloneShape] = {}
        self._deploying: asyncio.Task[None] | None = None
        self._dirty = False
        #: when Serve's target rose, per service (the benchmark's "replica increase" instant)
        self.scale_seen: dict[str, tuple[int, float]] = {}

    # ================================================================ intake

    def prepare(self, where: str, doc: dict[str, Any], priority: str | None) -> PreparedService:
        """Parse and check one RayService document (no engine, no store: any thread); raises
        ``RayJobRejected`` / ``UnknownPriorityClass`` with a one-line message."""
        req = rayservice_request(doc)
        shape = standalone_shape(req, doc)
        prio, prio_class = self.s.priorities.resolve(priority if priority is not None else req.priority_class)
        return PreparedService(where, req, shape, doc, prio, prio_class)

    def prepare_into(self, out: Any, where: str, doc: dict[str, Any], priority: str | None) -> None:
        """``prepare`` for ``Intake.prepare``: the service joins ``out.services``, or ``out`` is refused."""
        try:
            out.services.append(self.prepare(where, doc, priority))
        except RayJobRejected as exc:
            out.refuse(where, f"{where}: {exc.message}")
        except UnknownPriorityClass as exc:
            label = "--priority" if priority is not None else "label rayqueue.io/priority-class"
            out.refuse(where, f"{where}: RayService: {label}: {exc}")

    def accept(self, prepared: Any) -> list[AcceptedService]:
        """The engine's and the store's part of a submission's services (holding the engine lock); a
        refusal is added to ``prepared`` (the caller raises for the whole submission and ``undo``es)."""
        s = self.s
        out: list[AcceptedService] = []
        if not prepared.services:
            return out  # most submissions: no need to read which applications the live services own
        owned = self._owned_applications()
        for p in prepared.services:
            req = p.request
            where = p.where
            try:
                leaf = s.engine.leaf_for(namespace=req.namespace or "default", quota=prepared.queue or req.queue)
            except KeyError as exc:
                label = "--queue" if prepared.queue else ("label rayqueue.io/queue" if req.queue else "metadata.namespace")
                prepared.refuse(where, f"{where}: RayService {req.name}: {label}: {exc.args[0]}")
                continue
            apps = [str(a.get("name") or "default") for a in p.shape.applications]
            clash = [a for a in apps if a in owned]
            if clash:
                prepared.refuse(where, f"{where}: RayService {req.name}: spec.serveConfigV2: application "
                                       f"{clash[0]!r} already belongs to service {owned[clash[0]]} (one Serve "
                                       "application name per Ray cluster)")
                continue
            uid = self._new_id(req.name)
            svc = Service(uid=uid, queue=leaf, spec=dataclasses.replace(p.shape.spec), replicas=p.shape.replicas,
                          priority=p.priority, name=req.name, submitted_at=s.clock(),
                          notes=list(p.shape.notes))  # KubeRay's cluster notes do not apply here
            try:
                rejected = s.engine.submit_service(svc)
            except (UnknownQueue, DuplicateJob, ServiceError) as exc:
                prepared.refuse(where, f"{where}: RayService {req.name}: {exc}")
                continue
            if rejected is not None:
                prepared.refuse(where, f"{where}: RayService {req.name}: can never run in queue {leaf}: "
                                       f"{rejected.message}")
                continue
            row = ServiceRecord(id=uid, name=req.name, namespace=req.namespace, queue=leaf, priority=p.priority,
                                priority_class=p.priority_class, manifest=json.dumps(p.manifest),
                                applications=json.dumps(apps), replicas=svc.replicas, submitted_at=svc.submitted_at)
            for a in apps:
                owned[a] = uid
            self.shapes[uid] = p.shape
            out.append(AcceptedService(svc, row, list(svc.notes)))
        if not prepared.refused and out:
            with s.store.session() as db:
                for acc in out:
                    db.add(acc.row)
                db.commit()
            for acc in out:
                s.store.record(acc.svc.uid, "Submitted", f"service queued in {acc.svc.queue} with priority "
                                                         f"{acc.svc.priority}: {self._bounds(acc.svc)}")
                for note in acc.notes:
                    s.store.record(acc.svc.uid, "Note", note)
        return out

    def undo(self, accepted: list[AcceptedService]) -> None:
        """The rest of the submission was refused: these services leave the engine and the store."""
        s = self.s
        ids = [a.svc.uid for a in accepted]
        for uid in ids:
            if s.engine.service(uid) is not None:
                s.engine.finish_service(uid)
            self.shapes.pop(uid, None)
        with s.store.session() as db:
            for row in db.exec(select(ServiceRecord).where(col(ServiceRecord.id).in_(ids))):
                db.delete(row)
            db.commit()

    def answers(self, accepted: list[AcceptedService]) -> list[Accepted]:
        """What the submitter is told of each accepted service, as of a job."""
        out = []
        for a in accepted:
            view = self.s.engine.service(a.svc.uid)
            row = self.row(a.svc.uid)
            out.append(Accepted(
                id=a.svc.uid, name=a.svc.name, queue=a.svc.queue, priority=a.svc.priority,
                priority_class=row.priority_class if row else None, state=row.state if row else PENDING,
                position=None, reason=view.reason.message if view and view.reason else None,
                reason_code=view.reason.code.value if view and view.reason else None, notes=a.notes,
            ))
        return out

    # ================================================================ after each admission cycle

    def after_cycle(self) -> None:
        """The cycle's grants: admitted services are recorded and deployed, scale-ups recorded (on the
        event loop, holding the engine lock)."""
        s = self.s
        deploy = False
        now = s.clock()
        for g in s.engine.service_grants():
            uid = g.service.uid
            view = s.engine.service(uid)
            if view is None:
                continue
            fields: dict[str, Any] = {"granted": view.granted, "by_unit": json.dumps(view.by_unit),
                                      "preemptions": view.preemptions,
                                      "reason": view.reason.message if view.reason else None}
            if g.first:
                fields.update(state=RUNNING, admitted_at=now, head_unit=g.service.cluster.head_unit
                              if g.service.cluster is not None else None)
                deploy = True
                self._update(uid, "Admitted", f"admitted with {g.replicas} replicas; deploying its Serve "
                             f"applications (max_replicas capped at {view.max_replicas})", **fields)
            else:
                self._update(uid, "ScaledUp", f"granted {g.replicas} replicas (+{sum(g.added.values())} on "
                             f"{', '.join(sorted(g.added))})", **fields)
        if deploy:
            self.request_deploy()

    def request_deploy(self) -> None:
        """Deploy the full set of applications soon (one PUT at a time; a request during one runs after)."""
        self._dirty = True
        if self._deploying is None or self._deploying.done():
            self._deploying = asyncio.create_task(self._deploy_loop(), name="rayqueue-serve-deploy")
            self.s.background.add(self._deploying)
            self._deploying.add_done_callback(self.s.background.discard)

    def deploy_body(self) -> dict[str, Any]:
        """Every admitted service's applications, capped: the whole of what Serve should run."""
        apps: list[dict[str, Any]] = []
        for row in self.rows([RUNNING]):
            view = self.s.engine.service(row.id)
            shape = self.shape(row)
            cap = view.max_replicas if view is not None else shape.spec.max_replicas
            apps.extend(capped_applications(shape, cap))
        # One proxy, on the head: every node of a local cluster shares 127.0.0.1, so one port serves them all.
        return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": self.http_port},
                "applications": apps}

    async def _deploy_loop(self) -> None:
        delay = self.s.config.retry_base_s
        while self._dirty:
            self._dirty = False
            body = self.deploy_body()
            try:
                await asyncio.to_thread(self.api.deploy, body)
            except RayUnavailable as exc:
                log.warning("deploying Serve applications failed (%s); retrying in %.1fs", exc, delay)
                self._dirty = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.s.config.retry_max_s)

    # ================================================================ following Serve

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.config.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("following Serve failed")

    async def poll_once(self) -> None:
        """Read Serve's replicas once: feed the engine each service's target, and run a cycle at once when
        one grew (the borrowers are preempted in that cycle)."""
        s = self.s
        rows = self.rows([RUNNING])
        if not rows:
            return
        try:
            apps = await asyncio.to_thread(self.api.applications)
        except RayUnavailable:
            return  # ask again next time
        grew = False
        missing = False
        async with s.engine_lock:
            for row in rows:
                owned = json.loads(row.applications)
                if any(a not in apps for a in owned):
                    missing = True
                    continue
                shape = self.shape(row)
                if shape.scaling is None:
                    continue
                seen = serve_target(apps, shape.scaling)
                view = s.engine.service(row.id)
                if seen is None or view is None:
                    continue
                target = seen[0]
                if target == view.replicas:
                    continue
                s.engine.scale_service(row.id, target, s.clock())
                after = s.engine.service(row.id)
                granted = after.granted if after is not None else view.granted
                if target > view.replicas:
                    grew = True
                    self.scale_seen[row.id] = (target, time.monotonic())
                else:
                    s.wake()  # headroom returned: queued jobs may fit (the schedule loop's next cycle)
                self._update(row.id, "Scaled", f"Serve asks {target} replicas (was {view.replicas})",
                             replicas=target, granted=granted,
                             by_unit=json.dumps(after.by_unit if after is not None else view.by_unit))
            if grew:
                await self._cycle()  # grants the scale-up and preempts the borrowers, now
        if missing and (self._deploying is None or self._deploying.done()):
            self.request_deploy()  # Serve lost applications (a new Ray cluster): declare them again

    # ================================================================ restart

    def recover(self) -> None:
        """Count the admitted services again as they were, and queue the pending ones (holding the engine
        lock, before the jobs are restored: a job preempted for a service needs it)."""
        s = self.s
        rows = self.rows(LIVE)
        missing = sorted({r.queue for r in rows} - set(s.engine.tree_view().leaves))
        if missing:
            raise ServiceStateError(
                f"the quota tree has no leaf {', '.join(missing)} but the store holds live services there; "
                "start with a tree that has these leaves (nothing was changed)"
            )
        for row in rows:
            shape = self.shape(row)
            svc = Service(uid=row.id, queue=row.queue, spec=dataclasses.replace(shape.spec), replicas=row.replicas,
                          priority=row.priority, name=row.name, submitted_at=row.submitted_at)
            if row.state == RUNNING:
                by_unit = {str(k): int(v) for k, v in json.loads(row.by_unit).items()}
                s.engine.restore_service(svc, row.granted, by_unit, row.admitted_at or s.clock(), row.head_unit)
                # Serve keeps running while rayqueue is down; the poll deploys again what Serve lost.
                self._update(row.id, "Reattached", f"counted again with {row.granted} replicas after a restart")
                continue
            rejected = s.engine.submit_service(svc)
            if rejected is not None:
                self._update(row.id, "Rejected", f"can never run under the current tree: {rejected.message}",
                             state=REJECTED, finished_at=s.clock())

    def cancel(self, ref: str) -> ServiceRecord:
        """The user deletes a live service: its quota returns now, its applications leave Serve (the next
        PUT declares the others only). Call it holding the engine lock, on the event loop."""
        s = self.s
        row = self.find(ref)
        if row is None:
            raise NotFound(f"no service with id or name {ref!r}")
        if row.state not in LIVE:
            raise ServiceStateError(f"service {row.id} already ended ({row.state}); nothing to cancel")
        was = row.state
        if s.engine.service(row.id) is not None:
            s.engine.finish_service(row.id)
        self._update(row.id, "Cancelled", f"cancelled by the user while {was}", state=CANCELLED,
                     finished_at=s.clock(), granted=0, by_unit="{}")
        if was == RUNNING:
            self.request_deploy()
        s.wake()  # its quota and headroom are free: queued jobs may fit
        out = self.row(row.id)
        assert out is not None
        return out

    # ================================================================ reading

    def owns(self, ref: str) -> bool:
        return self.find(ref) is not None

    def find(self, ref: str) -> ServiceRecord | None:
        row = self.row(ref)
        if row is not None:
            return row
        with self.s.store.session() as db:
            rows = list(db.exec(select(ServiceRecord).where(ServiceRecord.name == ref)
                                .order_by(col(ServiceRecord.submitted_at))))
        live = [r for r in rows if r.state in LIVE]
        candidates = live or rows
        return candidates[-1] if candidates else None

    def explain(self, ref: str) -> dict[str, Any]:
        row = self.find(ref)
        if row is None:
            raise NotFound(f"no service with id or name {ref!r}")
        return self.view(row)

    def views(self) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.rows(None)]

    def view(self, row: ServiceRecord) -> dict[str, Any]:
        v: ServiceView | None = self.s.engine.service(row.id)
        out: dict[str, Any] = {
            "id": row.id, "name": row.name, "kind": RAYSERVICE, "queue": row.queue, "state": row.state,
            "priority": row.priority, "priority_class": row.priority_class,
            "applications": json.loads(row.applications), "replicas": row.replicas, "granted": row.granted,
            "submitted_at": row.submitted_at, "admitted_at": row.admitted_at, "finished_at": row.finished_at,
            "preemptions": row.preemptions, "reason": row.reason,
        }
        if v is not None:
            out.update(
                replicas=v.replicas, granted=v.granted, min_replicas=v.min_replicas, max_replicas=v.max_replicas,
                hot_reserve=v.hot_reserve, by_unit=v.by_unit, used=describe(_visible(v.used)),
                reserved=describe(_visible(v.reserved)), preemptions=v.preemptions,
                reason=v.reason.message if v.reason else row.reason,
                reason_code=v.reason.code.value if v.reason else None, scale_waited_s=v.scale_waited_s,
            )
        return out

    # ================================================================ rows

    def rows(self, states: tuple[str, ...] | list[str] | None) -> list[ServiceRecord]:
        with self.s.store.session() as db:
            query = select(ServiceRecord)
            if states is not None:
                query = query.where(col(ServiceRecord.state).in_(list(states)))
            return list(db.exec(query.order_by(col(ServiceRecord.submitted_at), col(ServiceRecord.id))))

    def row(self, uid: str) -> ServiceRecord | None:
        with self.s.store.session() as db:
            return db.get(ServiceRecord, uid)

    def shape(self, row: ServiceRecord) -> StandaloneShape:
        shape = self.shapes.get(row.id)
        if shape is None:
            manifest = json.loads(row.manifest)
            shape = self.shapes[row.id] = standalone_shape(rayservice_request(manifest), manifest)
        return shape

    def _update(self, uid: str, kind: str, message: str, **fields: Any) -> None:
        with self.s.store.session() as db:
            row = db.get(ServiceRecord, uid)
            if row is None:
                return
            for k, v in fields.items():
                setattr(row, k, v)
            db.add(row)
            db.commit()
        self.s.store.record(uid, kind, message, at=self.s.clock())

    def _owned_applications(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for row in self.rows(LIVE):
            for a in json.loads(row.applications):
                out[a] = row.id
        return out

    def _new_id(self, name: str) -> str:
        while True:
            candidate = f"{name}-{secrets.token_hex(3)}"
            if self.row(candidate) is None and self.s.store.get(candidate) is None:
                return candidate

    @staticmethod
    def _bounds(svc: Service) -> str:
        spec = svc.spec
        if not spec.replica:
            return "no deployment autoscales"
        return (f"{spec.min_replicas}..{spec.max_replicas} replicas of {describe(_visible(spec.replica))}"
                + (f", hot reserve {spec.hot_reserve}" if spec.hot_reserve else ""))


def _visible(res: Resources) -> Resources:
    return {r: v for r, v in res.items() if r != MAX_JOBS}
