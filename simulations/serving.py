"""Services in a simulation: a request-rate series per service, a simple autoscaler, and what the
services lived through (scale-up waits, batch preemptions caused, headroom lent, ACS cost).

A scenario names a ``services`` file (``kind: ServiceTrace``): per service its queue, head and replica
resources, replica bounds, hot reserve, the requests per second one replica serves, and its load as
``[seconds, requests/s]`` steps. The autoscaler asks ``ceil(rate / perReplica)`` replicas, clamped into
``[minReplicas, maxReplicas]``, at every step. The scenario's ``serving`` picks how services meet batch:

- ``reservation``: the engine's service workloads (docs/admission.md, "Services next to batch"): the
  headroom up to ``maxReplicas`` is lent to batch and taken back when the service scales up;
- ``static``: a static split: the whole reservation is held (a hot reserve of ``maxReplicas``), never lent;
- ``none``: no reservation: the service holds its minimum, and every scale-up is a request that queues
  like a job (priority ``scaleUpPriority``) and waits for quota.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import GPU, MILLI, QuantityError, parse_resources
from rayqueue.scheduler.engine import Engine, Service, ServiceSpec, ServiceState
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt

ServingMode = Literal["reservation", "static", "none"]
INT32_MAX = 2**31 - 1


class ServiceLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    queue: str = Field(min_length=1, max_length=253)
    head: dict[str, str | int | float] = Field(default_factory=dict)
    replica: dict[str, str | int | float]
    minReplicas: int = Field(ge=0, le=INT32_MAX)
    maxReplicas: int = Field(ge=0, le=INT32_MAX)
    hotReserve: int = Field(default=0, ge=0, le=INT32_MAX)
    perReplica: float = Field(gt=0, allow_inf_nan=False, description="requests/s one replica serves")
    scaleUpPriority: int = Field(default=1000, ge=-(2**31), le=INT32_MAX)
    load: list[tuple[float, float]] = Field(min_length=1, max_length=100_000)

    @field_validator("load")
    @classmethod
    def _steps(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        last = -math.inf
        for i, (at, rate) in enumerate(value):
            if not (math.isfinite(at) and math.isfinite(rate)) or rate < 0 or at < 0:
                raise ValueError(f"load[{i}]: [{at}, {rate}] must be finite, non-negative [seconds, requests/s]")
            if at < last:
                raise ValueError(f"load[{i}]: {at} s comes before the step above it ({last} s)")
            last = at
        return value


class ServiceTrace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ServiceTrace"]
    services: list[ServiceLoad] = Field(min_length=1, max_length=1000)


def parse_service_trace(raw: Any, source: str) -> list[str] | ServiceTrace:
    """The trace, or its problems (one line each, naming the field)."""
    try:
        trace = ServiceTrace.model_validate(raw)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) if not isinstance(p, int) else f'[{p}]' for p in e['loc']).replace('.[', '[')}: {e['msg']}"
            for e in exc.errors()
        ]
    problems: list[str] = []
    names: set[str] = set()
    for i, s in enumerate(trace.services):
        where = f"services[{i}] ({s.name})"
        if s.name in names:
            problems.append(f"{where}: the name appears twice")
        names.add(s.name)
        if s.minReplicas > s.maxReplicas:
            problems.append(f"{where}: minReplicas {s.minReplicas} is above maxReplicas {s.maxReplicas}")
        for key in ("head", "replica"):
            try:
                parse_resources(getattr(s, key), field=f"{where}.{key}")
            except QuantityError as exc:
                problems.append(str(exc))
    return problems or trace


def _spec(s: ServiceLoad, mode: ServingMode) -> ServiceSpec:
    head = parse_resources(s.head, field="head")
    replica = parse_resources(s.replica, field="replica")
    if mode == "none":  # no reservation: the floor only
        return ServiceSpec(head=head, replica=replica, min_replicas=s.minReplicas, max_replicas=s.minReplicas)
    hot = s.maxReplicas if mode == "static" else s.hotReserve
    return ServiceSpec(head=head, replica=replica, min_replicas=s.minReplicas, max_replicas=s.maxReplicas,
                       hot_reserve=hot)


@dataclass(slots=True)
class ServiceRun:
    """What one service lived through in the run."""

    load: ServiceLoad
    uid: str
    step: int = 0
    target: int = 0
    # none mode: its scale-up requests (uid -> asked at) and the ones admitted, newest last
    asked: dict[str, float] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    waited_s: float = 0.0
    waits: int = 0  # scale-ups that did not start in the instant they were asked
    preemptions: int = 0
    lent_gpu_s: float = 0.0
    lent: int = 0  # milli-GPUs of its leaf's reserved headroom lent to batch since the last instant
    acs_gpu_s: float = 0.0
    acs_cost: float = 0.0
    replica_s: float = 0.0
    last_t: float = 0.0
    by_unit: dict[str, int] = field(default_factory=dict)
    rejected: str | None = None
    peak_target: int = 0
    served_peak: int = 0


class ServingTracker:
    """Drives the services of a run (the simulator calls it at each instant) and accounts for them."""

    def __init__(self, engine: Engine, trace: ServiceTrace, mode: ServingMode, prices: Mapping[str, float],
                 elastic: set[str]) -> None:
        self.engine = engine
        self.mode = mode
        self.prices = prices
        self.elastic = elastic
        self.runs: list[ServiceRun] = []
        self.by_increment: dict[str, ServiceRun] = {}
        self.steps: list[tuple[float, int, int]] = []  # (at, service index, step index)
        for k, s in enumerate(trace.services):
            run = ServiceRun(s, f"svc-{s.name}")
            self.runs.append(run)
            for i, (at, _rate) in enumerate(s.load):
                self.steps.append((at, k, i))
        heapq.heapify(self.steps)
        self.started = False
        self.unit_gpu: dict[tuple[int, str], int] = {}  # (service, unit) -> GPUs the simulator was told

    def start(self, now: float) -> None:
        self.started = True
        for run in self.runs:
            s = run.load
            svc = Service(uid=run.uid, queue=s.queue, spec=_spec(s, self.mode), replicas=s.minReplicas,
                          name=s.name, submitted_at=now, priority=s.scaleUpPriority)
            reason = self.engine.submit_service(svc)
            if reason is not None:
                run.rejected = str(reason)

    def next_change(self) -> float | None:
        return self.steps[0][0] if self.steps else None

    def apply(self, now: float) -> None:
        """The load steps due now: the autoscaler asks for its replicas."""
        if not self.started:
            self.start(now)
        while self.steps and self.steps[0][0] <= now:
            _, k, i = heapq.heappop(self.steps)
            run = self.runs[k]
            if run.rejected:
                continue
            s = run.load
            rate = s.load[i][1]
            target = min(max(math.ceil(rate / s.perReplica - 1e-9), s.minReplicas), s.maxReplicas)
            run.target = target
            run.peak_target = max(run.peak_target, target)
            if self.mode == "none":
                self.scale_by_requests(run, target, now)
            else:
                self.engine.scale_service(run.uid, target, now)

    def scale_by_requests(self, run: ServiceRun, target: int, now: float) -> None:
        s = run.load
        extra = target - s.minReplicas
        have = len(run.running) + len(run.asked)
        replica = parse_resources(s.replica, field="replica")
        while have < extra:
            uid = f"{run.uid}/+{len(self.by_increment)}"
            w = Workload(uid=uid, queue=s.queue, request=dict(replica), priority=s.scaleUpPriority, submitted_at=now,
                         name=f"{s.name} replica")
            if self.engine.submit(w) is not None:
                break
            self.by_increment[uid] = run
            run.asked[uid] = now
            have += 1
        while have > extra:  # pending requests go first, then the newest replicas
            if run.asked:
                uid = next(reversed(run.asked))
                del run.asked[uid]
            else:
                uid = run.running.pop()
            if self.engine.has_job(uid):
                self.engine.finish(uid)
            have -= 1

    def on_decision(self, d: Decision, now: float) -> bool:
        """A decision about a service's scale-up request (none mode); False when it is a batch job's."""
        run = self.by_increment.get(d.workload.uid)
        if run is None:
            if type(d) is Preempt and d.preemptor.startswith("svc-"):
                for r in self.runs:
                    if r.uid == d.preemptor:
                        r.preemptions += 1
            return False
        uid = d.workload.uid
        if type(d) is Admit and uid in run.asked:
            waited = now - run.asked.pop(uid)
            run.waited_s += waited
            run.waits += 1 if waited > 0 else 0
            run.running.append(uid)
        elif type(d) is Preempt and uid in run.running:
            run.running.remove(uid)
            run.asked[uid] = now  # back to waiting (the driver re-queues it)
        return True

    def observe(self, now: float) -> list[tuple[int, str, int]]:
        """After the instant's cycles: integrate what held since the last instant and return the
        services' GPU changes per unit as (service index, unit, delta milli-GPU)."""
        engine = self.engine
        # Lent: on a node of the service's path, what its reserved headroom has above the room left
        # (used + reserved - max), at most the reservation; the most over the path.
        lent_at: dict[str, int] = {}
        parent: dict[str, str | None] = {}
        if any(r.last_t < now for r in self.runs):
            for n in engine.node_views():
                parent[n.name] = n.parent
                limit = n.max.get(GPU)
                reserved = n.reserved.get(GPU, 0)
                if reserved and limit is not None:
                    lent_at[n.name] = max(0, min(reserved, n.used.get(GPU, 0) + reserved - limit))
        changes: list[tuple[int, str, int]] = []
        for k, run in enumerate(self.runs):
            dt = now - run.last_t
            if dt > 0:
                gpu_per = parse_resources(run.load.replica, field="replica").get(GPU, 0)
                for unit, replicas in run.by_unit.items():
                    if unit in self.elastic:
                        run.acs_gpu_s += replicas * gpu_per / MILLI * dt
                        run.acs_cost += replicas * gpu_per / MILLI * dt / 3600 * self.prices.get(unit, 0.0)
                run.replica_s += sum(run.by_unit.values()) * dt
                run.lent_gpu_s += run.lent / MILLI * dt
            run.last_t = now
            view = engine.service(run.uid)
            by_unit: dict[str, int] = {}
            if view is not None and view.state == ServiceState.RUNNING:
                by_unit = dict(view.by_unit)
            for uid in run.running:
                job = engine.job(uid)
                if job is not None and job.unit is not None:
                    by_unit[job.unit] = by_unit.get(job.unit, 0) + 1
            run.served_peak = max(run.served_peak, sum(by_unit.values()))
            gpu_per = parse_resources(run.load.replica, field="replica").get(GPU, 0)
            for unit in set(by_unit) | set(run.by_unit):
                delta = (by_unit.get(unit, 0) - run.by_unit.get(unit, 0)) * gpu_per
                if delta and view is not None:
                    changes.append((k, unit, delta))
            run.by_unit = by_unit
            lent = 0
            name: str | None = run.load.queue
            while name is not None and parent:
                lent = max(lent, lent_at.get(name, 0))
                name = parent.get(name)
            run.lent = lent
        return changes

    def summary(self, end: float) -> dict[str, Any]:
        self.observe(end)
        out: dict[str, Any] = {}
        for run in self.runs:
            view = self.engine.service(run.uid)
            waited = run.waited_s
            waits = run.waits
            if view is not None and self.mode != "none":
                waited = view.scale_waited_s
                if view.granted < min(max(view.replicas, view.min_replicas), view.max_replicas):
                    waits += 1
            pending = sum(end - at for at in run.asked.values())
            out[run.load.name] = {
                "mode": self.mode,
                "queue": run.load.queue,
                "rejected": run.rejected,
                "scale_up_wait_s": round(waited + pending, 3),
                "scale_ups_waiting_at_end": len(run.asked),
                "batch_preemptions": run.preemptions if self.mode == "none" else (view.preemptions if view else 0),
                "headroom_lent_gpu_hours": round(run.lent_gpu_s / 3600, 4),
                "acs_gpu_hours": round(run.acs_gpu_s / 3600, 4),
                "acs_cost": round(run.acs_cost, 4),
                "replica_hours": round(run.replica_s / 3600, 4),
                "peak_replicas_asked": run.peak_target,
                "peak_replicas_running": run.served_peak,
            }
        return out

