"""The requests of KubeRay ``RayService`` and ``RayCluster`` manifests (and of a RayService's Serve
applications), validated as hostile input like RayJobs: every refusal is one line naming the object, the
field and the limit.

Counted as KubeRay counts them (the brief's "Serving workloads"): a worker group's current size is
``replicas`` (default 0) clamped into ``[minReplicas, maxReplicas]`` (defaults 0 and int32 max), times
``numOfHosts``; a suspended group counts 0. A RayService is a *service* (``ServiceSpec``): its head, one
replica of its autoscaling worker group, and the bounds that group moves within. Without
``enableInTreeAutoscaling`` KubeRay never resizes a group, so the maximum is the current size and nothing
is reserved. A RayCluster is a gang like a RayJob, charged its current size; an autoscaler scale-up
beyond what was admitted is a request of its own (:func:`raycluster_scale_up`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

from rayqueue.queue.workload import Workload
from rayqueue.quota.manifests import DocumentError, load_documents
from rayqueue.quota.quantity import CPU, GPU, MILLI, QuantityError, Resources, parse_quantity
from rayqueue.scheduler.engine.services import Service, ServiceSpec
from rayqueue.scheduler.workloads.rayjob import (
    API_VERSION,
    INT32_MAX,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    RayJobRejected,
    _check_names,
    _ident,
    _int_field,
    _json_path,
    _pod_request,
    _schema_message,
)
from rayqueue.scheduler.workloads.schema_check import Check, compile_check

RAYSERVICE = "RayService"
RAYCLUSTER = "RayCluster"
#: Annotation on a RayService: replicas' worth kept idle for bursts, never lent to batch (an integer).
HOT_RESERVE_ANNOTATION = "rayqueue.io/hot-reserve"
#: serveConfigV2 is a YAML document inside a string: bounded like every other document.
MAX_SERVE_CONFIG_BYTES = 1 << 20


class ServingRejected(RayJobRejected):
    """A RayService or RayCluster that cannot be queued: one line naming the object, field and limit."""


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    name: str
    per_replica: Resources  # one replica: ``numOfHosts`` pods
    pods_per_replica: int
    replicas: int  # current, clamped
    min_replicas: int
    max_replicas: int
    suspended: bool


@dataclass(frozen=True, slots=True)
class ServeDeployment:
    """One deployment of a Serve application (``serveConfigV2``), as its autoscaler sees it."""

    application: str
    name: str
    min_replicas: int
    max_replicas: int
    per_replica: Resources  # ``ray_actor_options``: num_cpus, num_gpus (Ray's logical resources)


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """A Ray cluster's head and worker groups, as KubeRay sizes them."""

    head: Resources
    groups: tuple[WorkerGroup, ...]
    autoscaling: bool

    @property
    def total(self) -> Resources:
        out = dict(self.head)
        for g in self.groups:
            if not g.suspended:
                for r, v in g.per_replica.items():
                    out[r] = out.get(r, 0) + v * g.replicas
        return {r: v for r, v in out.items() if v}

    @property
    def pods(self) -> int:
        return 1 + sum(g.replicas * g.pods_per_replica for g in self.groups if not g.suspended)


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """What a RayService asks the engine for: a ``ServiceSpec`` and its current replicas."""

    name: str
    namespace: str | None
    queue: str | None
    priority_class: str | None
    spec: ServiceSpec
    replicas: int
    scaling_group: str | None  # the worker group whose replicas are the service's (None: none scales)
    deployments: tuple[ServeDeployment, ...]
    notes: tuple[str, ...] = field(default=())

    def service(self, uid: str, queue: str, priority: int = 0, submitted_at: float = 0.0) -> Service:
        """The engine's service for it (``Engine.submit_service``); a fresh spec each call."""
        spec = ServiceSpec(
            head=dict(self.spec.head), replica=dict(self.spec.replica), min_replicas=self.spec.min_replicas,
            max_replicas=self.spec.max_replicas, hot_reserve=self.spec.hot_reserve, head_pods=self.spec.head_pods,
            replica_pods=self.spec.replica_pods,
        )
        return Service(uid=uid, queue=queue, spec=spec, replicas=self.replicas, priority=priority, name=self.name,
                       submitted_at=submitted_at, notes=list(self.notes))


@dataclass(frozen=True, slots=True)
class ClusterRequest:
    """What a RayCluster asks: a gang charged its current size."""

    name: str
    namespace: str | None
    queue: str | None
    priority_class: str | None
    shape: ClusterShape
    suspend: bool

    @property
    def total(self) -> Resources:
        return self.shape.total

    @property
    def pods(self) -> int:
        return self.shape.pods

    def workload(self, uid: str, queue: str, priority: int = 0, submitted_at: float = 0.0) -> Workload:
        """The engine's gang for it (``Engine.submit``), as a RayJob's: its current size."""
        largest: Resources = dict(self.shape.head)
        for g in self.shape.groups:
            for r, v in g.per_replica.items():
                largest[r] = max(largest.get(r, 0), v // g.pods_per_replica)
        return Workload(uid=uid, queue=queue, request=dict(self.total), pods=self.pods, priority=priority,
                        submitted_at=submitted_at, name=self.name, pod_request=largest)


@cache
def _validator(kind: str) -> Any:
    """KubeRay's CRD schema of ``kind``, cut to the fields read here (see ``rayjob_schema``)."""
    import jsonschema

    name = f"{kind.lower()}-v1.schema.json"
    text = (importlib_resources.files("rayqueue.scheduler.workloads") / "schemas" / name).read_text()
    return jsonschema.Draft7Validator(json.loads(text))


@cache
def _fast_check(kind: str) -> Check | None:
    return compile_check(_validator(kind).schema)


def crd_violations(manifest: Mapping[str, Any], kind: str) -> list[str]:
    """Every place where ``manifest`` breaks KubeRay's ``kind`` CRD (RayCluster or RayService)."""
    fast = _fast_check(kind)
    if fast is not None and fast(manifest):
        return []  # valid: jsonschema (which writes the messages) is only needed for a refusal
    errors = sorted(_validator(kind).iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_json_path(manifest, e.absolute_path) or 'document'}: {_schema_message(e)}" for e in errors]


def _without_nulls(value: Any) -> Any:
    """A copy without null mapping values (recursion bounded by the loader's nesting limit)."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _object(manifest: Any, kind: str) -> tuple[str, Mapping[str, Any], Mapping[str, Any]]:
    if not isinstance(manifest, Mapping):
        raise ServingRejected(f"expected a {kind} object (a mapping), got {type(manifest).__name__}")
    ident = _ident(manifest)
    if manifest.get("kind") != kind:
        raise ServingRejected(f"{ident}: kind is {manifest.get('kind')!r}, expected {kind!r}")
    if manifest.get("apiVersion") != API_VERSION:
        raise ServingRejected(f"{ident}: apiVersion is {manifest.get('apiVersion')!r}, expected {API_VERSION!r}")
    # The API server drops a null field that the schema does not make nullable before it validates
    # (KubeRay's own samples hold ``metadata:`` with nothing under it): so do we.
    problems = crd_violations(_without_nulls(manifest), kind)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ServingRejected(f"{ident} does not match the {kind} CRD: {problems[0]}{more}")
    meta = manifest.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise ServingRejected(f"{ident}: metadata must be an object")
    if not (meta.get("name") or meta.get("generateName")):
        raise ServingRejected(f"{ident}: metadata.name (or metadata.generateName) is required")
    try:
        _check_names(meta, ident)
    except RayJobRejected as exc:
        raise ServingRejected(str(exc)) from exc
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise ServingRejected(f"{ident}: spec is required")
    return ident, meta, spec


def _labels(meta: Mapping[str, Any], ident: str) -> dict[str, str]:
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ServingRejected(f"{ident}: metadata.labels must be a mapping")
    return {str(k): str(v) for k, v in labels.items()}


def cluster_shape(cluster: Any, ident: str, base: str) -> ClusterShape:
    """The head and worker groups of a RayCluster spec (``base`` names where it sits in the object)."""
    if not isinstance(cluster, Mapping):
        raise ServingRejected(f"{ident}: {base} is required (the Ray cluster)")
    try:
        head = cluster.get("headGroupSpec")
        if not isinstance(head, Mapping):
            raise ServingRejected(f"{ident}: {base}.headGroupSpec is required")
        head_pod = _pod_request(head.get("template"), f"{ident}: head group", f"{base}.headGroupSpec")
        autoscaling = cluster.get("enableInTreeAutoscaling")
        if autoscaling is not None and not isinstance(autoscaling, bool):
            raise ServingRejected(f"{ident}: {base}.enableInTreeAutoscaling: {autoscaling!r} must be true or false")
        groups_raw = cluster.get("workerGroupSpecs") or []
        if not isinstance(groups_raw, list):
            raise ServingRejected(f"{ident}: {base}.workerGroupSpecs must be a list")
        groups: list[WorkerGroup] = []
        seen: set[str] = set()
        for i, g in enumerate(groups_raw):
            where_base = f"{base}.workerGroupSpecs[{i}]"
            if not isinstance(g, Mapping):
                raise ServingRejected(f"{ident}: {where_base} must be an object")
            name = str(g.get("groupName") or f"group-{i}")[:63]
            if name in seen:
                raise ServingRejected(f"{ident}: worker group {name!r} appears twice ({where_base}.groupName)")
            seen.add(name)
            where = f"{ident}: worker group {name!r} ({where_base})"
            replicas = _int_field(g, "replicas", 0, where)
            low = _int_field(g, "minReplicas", 0, where)
            high = _int_field(g, "maxReplicas", INT32_MAX, where)
            hosts = _int_field(g, "numOfHosts", 1, where)
            if low > high:
                raise ServingRejected(f"{where}: minReplicas {low} is above maxReplicas {high}")
            if hosts < 1:
                raise ServingRejected(f"{where}.numOfHosts: 0 must be at least 1")
            pod = _pod_request(g.get("template"), f"{ident}: worker group {name!r}", where_base)
            groups.append(WorkerGroup(
                name=name,
                per_replica={r: v * hosts for r, v in pod.items() if v},
                pods_per_replica=hosts,
                replicas=min(max(replicas, low), high),
                min_replicas=low,
                max_replicas=high,
                suspended=g.get("suspend") is True,
            ))
    except ServingRejected:
        raise
    except RayJobRejected as exc:
        raise ServingRejected(str(exc)) from exc
    return ClusterShape({r: v for r, v in head_pod.items() if v}, tuple(groups), autoscaling is True)


def rayservice_request(manifest: Any) -> ServiceRequest:
    """The service a RayService asks for; raises :class:`ServingRejected` (one line) when it cannot be queued."""
    ident, meta, spec = _object(manifest, RAYSERVICE)
    labels = _labels(meta, ident)
    shape = cluster_shape(spec.get("rayClusterConfig"), ident, "spec.rayClusterConfig")
    notes: list[str] = []
    # A group can scale when its bounds leave room, wherever its replicas stand now (at its maximum too).
    scaling = [g for g in shape.groups if shape.autoscaling and not g.suspended and g.max_replicas > g.min_replicas]
    fixed: Resources = dict(shape.head)
    fixed_pods = 1
    chosen = scaling[0] if scaling else None
    for g in shape.groups:
        if g is chosen or g.suspended:
            continue
        # A group that never scales is charged its size; a second scaling group its maximum (only one
        # group's replicas are the service's replicas).
        n = g.max_replicas if g in scaling else g.replicas
        if g in scaling:
            notes.append(f"worker group {g.name!r} also autoscales: charged at its maxReplicas {n}")
        for r, v in g.per_replica.items():
            fixed[r] = fixed.get(r, 0) + v * n
        fixed_pods += n * g.pods_per_replica
    if chosen is None:
        if not shape.autoscaling:
            notes.append("enableInTreeAutoscaling is off: KubeRay never resizes a group, nothing is reserved")
        spec_out = ServiceSpec(head=fixed, replica={}, min_replicas=0, max_replicas=0, head_pods=fixed_pods)
        replicas = 0
    else:
        if chosen.max_replicas == INT32_MAX:
            notes.append(f"worker group {chosen.name!r} has no maxReplicas: the reservation is capped by the quota")
        hot = _hot_reserve(meta, ident)
        spec_out = ServiceSpec(
            head=fixed, replica=dict(chosen.per_replica), min_replicas=chosen.min_replicas,
            max_replicas=chosen.max_replicas, hot_reserve=hot, head_pods=fixed_pods,
            replica_pods=chosen.pods_per_replica,
        )
        replicas = chosen.replicas
    return ServiceRequest(
        name=str(meta.get("name") or meta.get("generateName")),
        namespace=meta.get("namespace"),
        queue=labels.get(QUEUE_LABEL),
        priority_class=labels.get(PRIORITY_LABEL),
        spec=spec_out,
        replicas=replicas,
        scaling_group=chosen.name if chosen is not None else None,
        deployments=serve_deployments(spec.get("serveConfigV2"), ident),
        notes=tuple(notes),
    )


def raycluster_request(manifest: Any) -> ClusterRequest:
    """The gang a RayCluster asks for (its current size); raises :class:`ServingRejected`."""
    ident, meta, spec = _object(manifest, RAYCLUSTER)
    labels = _labels(meta, ident)
    suspend = spec.get("suspend")
    if suspend is not None and not isinstance(suspend, bool):
        raise ServingRejected(f"{ident}: spec.suspend: {suspend!r} must be true or false")
    shape = cluster_shape(spec, ident, "spec")
    return ClusterRequest(
        name=str(meta.get("name") or meta.get("generateName")),
        namespace=meta.get("namespace"),
        queue=labels.get(QUEUE_LABEL),
        priority_class=labels.get(PRIORITY_LABEL),
        shape=shape,
        suspend=suspend is True,
    )


def raycluster_scale_up(admitted: ClusterRequest, now: ClusterRequest) -> tuple[Resources, int] | None:
    """What a RayCluster's autoscaler asks beyond its admitted size (resources, pods), as one more gang
    to queue (uid ``<cluster>/scale-up-<n>``); None when it asks no more than was admitted."""
    extra = {r: v - admitted.total.get(r, 0) for r, v in now.total.items()}
    pods = now.pods - admitted.pods
    extra = {r: v for r, v in extra.items() if v > 0}
    if not extra and pods <= 0:
        return None
    return extra, max(pods, 0)


def serve_deployments(raw: Any, ident: str) -> tuple[ServeDeployment, ...]:
    """The deployments of ``serveConfigV2`` with their replica bounds (``autoscaling_config``, else
    ``num_replicas`` fixed) and per-replica resources (``ray_actor_options``)."""
    if raw is None:
        return ()
    field_name = "spec.serveConfigV2"
    if not isinstance(raw, str):
        raise ServingRejected(f"{ident}: {field_name} must be a string holding YAML (got {type(raw).__name__})")
    if len(raw.encode("utf-8", "replace")) > MAX_SERVE_CONFIG_BYTES:
        raise ServingRejected(f"{ident}: {field_name} is larger than the limit of {MAX_SERVE_CONFIG_BYTES:,} bytes")
    try:
        docs = load_documents(raw, f"{ident} {field_name}")
    except DocumentError as exc:
        raise ServingRejected(str(exc)) from exc
    docs = [d for d in docs if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise ServingRejected(f"{ident}: {field_name} must hold one mapping with 'applications'")
    apps = docs[0].get("applications") or []
    if not isinstance(apps, list):
        raise ServingRejected(f"{ident}: {field_name}: applications must be a list")
    out: list[ServeDeployment] = []
    for i, app in enumerate(apps):
        if not isinstance(app, Mapping):
            raise ServingRejected(f"{ident}: {field_name}: applications[{i}] must be a mapping")
        app_name = str(app.get("name") or f"app-{i}")[:63]
        deployments = app.get("deployments") or []
        if not isinstance(deployments, list):
            raise ServingRejected(f"{ident}: {field_name}: applications[{i}].deployments must be a list")
        for j, d in enumerate(deployments):
            where = f"{field_name}: applications[{i}].deployments[{j}]"
            if not isinstance(d, Mapping):
                raise ServingRejected(f"{ident}: {where} must be a mapping")
            out.append(_deployment(d, app_name, ident, where))
    return tuple(out)


def _deployment(d: Mapping[str, Any], app: str, ident: str, where: str) -> ServeDeployment:
    name = str(d.get("name") or "<unnamed>")[:63]
    auto = d.get("autoscaling_config")
    num = d.get("num_replicas", 1)
    if auto is not None:
        if not isinstance(auto, Mapping):
            raise ServingRejected(f"{ident}: {where}.autoscaling_config must be a mapping")
        low = _serve_int(auto, "min_replicas", 1, ident, f"{where}.autoscaling_config")
        high = _serve_int(auto, "max_replicas", 1, ident, f"{where}.autoscaling_config")
        if low > high:
            raise ServingRejected(f"{ident}: {where}.autoscaling_config: min_replicas {low} is above max_replicas {high}")
    elif num == "auto":
        low, high = 1, 100  # Ray Serve's defaults for num_replicas: auto
    else:
        low = high = _serve_int(d, "num_replicas", 1, ident, where)
    options = d.get("ray_actor_options") or {}
    if not isinstance(options, Mapping):
        raise ServingRejected(f"{ident}: {where}.ray_actor_options must be a mapping")
    per: Resources = {}
    for key, resource in (("num_cpus", CPU), ("num_gpus", GPU)):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ServingRejected(f"{ident}: {where}.ray_actor_options.{key}: {value!r} must be a number")
        try:
            per[resource] = parse_quantity(value, field=f"{where}.ray_actor_options.{key}")
        except QuantityError as exc:
            raise ServingRejected(f"{ident}: {exc}") from exc
        if per[resource] < 0:
            raise ServingRejected(f"{ident}: {where}.ray_actor_options.{key}: {value!r} must not be negative")
    if CPU not in per:
        per[CPU] = MILLI  # Ray's default for an actor that names no CPUs is 1 to schedule, 0 to run
    return ServeDeployment(app, name, low, high, {r: v for r, v in per.items() if v})


def _serve_int(m: Mapping[str, Any], key: str, default: int, ident: str, where: str) -> int:
    value = m.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ServingRejected(f"{ident}: {where}.{key}: {shown} must be an integer")
    if value < 0 or value > INT32_MAX:
        raise ServingRejected(f"{ident}: {where}.{key}: {value} must be between 0 and {INT32_MAX}")
    return value


def _hot_reserve(meta: Mapping[str, Any], ident: str) -> int:
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise ServingRejected(f"{ident}: metadata.annotations must be a mapping")
    raw = annotations.get(HOT_RESERVE_ANNOTATION)
    if raw is None:
        return 0
    text = str(raw)
    if not text.isdigit() or int(text) > INT32_MAX:
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
        raise ServingRejected(
            f"{ident}: metadata.annotations.{HOT_RESERVE_ANNOTATION}: {shown} must be a whole number of replicas "
            f"(0 to {INT32_MAX})"
        )
    return int(text)
