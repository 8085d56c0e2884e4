"""The request of a KubeRay ``RayJob``: how many pods its gang has and what they ask for, in total.

This is the one place that turns a ``ray.io/v1`` RayJob manifest into a request; the standalone
service, the operator, the CLI and the simulator all call :func:`rayjob_request`.

The gang (see docs/rayjob-request.md):

* the head: 1 pod;
* every worker group: ``replicas x numOfHosts`` pods, ``replicas`` clamped into
  ``[minReplicas, maxReplicas]`` exactly as KubeRay does, 0 pods for a group with ``suspend: true``
  (later autoscaling up to ``maxReplicas`` is *not* requested);
* the submitter: in ``K8sJobMode`` (the default) one more pod, from ``submitterPodTemplate`` or
  KubeRay's default submitter (500m CPU / 200Mi); in ``SidecarMode`` no pod, but KubeRay's default
  submitter container joins the head pod; ``HTTPMode`` and ``InteractiveMode`` add nothing.

Per pod, as Kubernetes computes a pod's effective request: the sum over containers (a container's
limit stands in for a missing request), sidecar init containers (``restartPolicy: Always``) added to
that sum, the max of that and each ordinary init container (plus the sidecars started before it),
plus ``spec.overhead``.

Why one module of about 550 lines: it is the one place a RayJob becomes a request (the brief's "one
place for each fact"), and its parts (loading, the CRD check, names, worker groups, per-pod and
per-container requests) are steps of that one computation, each small and used nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

from rayqueue.quota.manifests import DocumentError, load_documents
from rayqueue.quota.quantity import (
    CPU,
    MEMORY,
    QuantityError,
    Resources,
    describe,
    parse_quantity,
    parse_resources,
)
from rayqueue.scheduler.workloads.resourcepolicy import parse_duration
from rayqueue.scheduler.workloads.schema_check import Check, compile_check

API_VERSION = "ray.io/v1"
KIND = "RayJob"

#: Label naming the quota leaf a RayJob queues in (else its namespace decides).
QUEUE_LABEL = "rayqueue.io/queue"
#: Label naming the priority class (a Kubernetes PriorityClass name, or an integer).
PRIORITY_LABEL = "rayqueue.io/priority-class"
#: Annotation: how long the job is expected to run (``3600``, ``45m``, ``1h30m``); feeds expected start
#: times. Without it, ``spec.activeDeadlineSeconds`` (an upper bound) is used, else the run time is unknown.
EXPECTED_DURATION_ANNOTATION = "rayqueue.io/expected-duration"

K8S_JOB_MODE = "K8sJobMode"
HTTP_MODE = "HTTPMode"
INTERACTIVE_MODE = "InteractiveMode"
SIDECAR_MODE = "SidecarMode"
SUBMISSION_MODES = (K8S_JOB_MODE, HTTP_MODE, INTERACTIVE_MODE, SIDECAR_MODE)

#: KubeRay's default submitter container requests (``GetDefaultSubmitterContainer``).
DEFAULT_SUBMITTER_REQUEST: Resources = {CPU: 500, MEMORY: 200 * 2**20 * 1000}

HEAD = "head"
WORKER = "worker"
SUBMITTER = "submitter"


class RayJobRejected(ValueError):
    """A manifest that cannot be queued; ``message`` says why in words a user can act on."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PodSet:
    """A group of identical pods of the gang: the head, one worker group, or the submitter."""

    name: str
    role: str  # head | worker | submitter
    count: int
    per_pod: Resources

    @property
    def total(self) -> Resources:
        return {r: v * self.count for r, v in self.per_pod.items()}


@dataclass(frozen=True, slots=True)
class RayJobRequest:
    """What a RayJob asks of the cluster: ``pods`` pods that together request ``total``."""

    name: str
    namespace: str | None
    pods: int
    total: Resources
    pod_sets: tuple[PodSet, ...]
    entrypoint: str | None
    runtime_env_yaml: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None
    priority_class: str | None = None
    submission_mode: str = K8S_JOB_MODE
    #: True when the manifest names itself with ``metadata.generateName`` (``name`` is the prefix).
    generate_name: bool = False
    #: ``spec.shutdownAfterJobFinishes`` as written (None when unset); KubeRay suspends only when true.
    shutdown_after_job_finishes: bool | None = None
    #: Things a user should know about how the request was counted (clamped replicas, ...).
    notes: tuple[str, ...] = ()
    #: Seconds the job is expected to run (annotation, else activeDeadlineSeconds), None when unknown.
    expected_duration: float | None = None

    def per_pod_requests(self) -> Iterator[Resources]:
        """Every pod's request, one by one (head first)."""
        for pod_set in self.pod_sets:
            for _ in range(pod_set.count):
                yield pod_set.per_pod

    @property
    def largest_pod(self) -> Resources:
        """Per resource, the most any one pod asks: a pod runs on one node, so some node must have this."""
        out: Resources = {}
        for pod_set in self.pod_sets:
            if pod_set.count <= 0:
                continue
            for r, v in pod_set.per_pod.items():
                if v > out.get(r, 0):
                    out[r] = v
        return out

    def summary(self) -> str:
        return f"{self.pods} pods: {describe(self.total)}"


# ------------------------------------------------------------------------------------------ loading


def load_rayjob_documents(text: str | bytes, source: str = "input") -> list[dict[str, Any]]:
    """The ``kind: RayJob`` documents of a multi-document YAML text.

    Other Kubernetes objects (ConfigMaps, Queues, ...) are skipped; a document that is not an object,
    or an object without ``kind``, and malformed YAML raise :class:`RayJobRejected` naming the
    document's index (0-based) in ``source``.
    """
    return [doc for _, doc in load_submission_documents(text, source) if doc.get("kind") == KIND]


def load_submission_documents(text: str | bytes, source: str = "input") -> list[tuple[int, dict[str, Any]]]:
    """Every non-empty document of a submission with its index, each checked to be an object with a kind.

    Loaded by the bounded loader (size, UTF-8, nesting, aliases; see ``rayqueue.quota.manifests``);
    every refusal is a :class:`RayJobRejected` of one line naming ``source``.
    """
    try:
        docs = load_documents(text, source)
    except DocumentError as exc:
        raise RayJobRejected(str(exc)) from exc
    out: list[tuple[int, dict[str, Any]]] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RayJobRejected(
                f"{source} (document {index}): expected a Kubernetes object (a mapping), "
                f"got {type(doc).__name__}"
            )
        kind = doc.get("kind")
        if not kind:
            raise RayJobRejected(f"{source} (document {index}): the object has no kind")
        out.append((index, doc))
    return out


# ------------------------------------------------------------------------------------------ schema

_SCHEMA_RESOURCE = "rayjob-v1.schema.json"


@cache
def rayjob_schema() -> dict[str, Any]:
    """The part of KubeRay's RayJob ``v1`` OpenAPI schema covering every field we read.

    Generated from the real CRD by :mod:`rayqueue.scheduler.workloads.rayjob_schema`; see that module.
    """
    text = (importlib_resources.files("rayqueue.scheduler.workloads") / "schemas" / _SCHEMA_RESOURCE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(rayjob_schema())


@cache
def _fast_check() -> Check | None:
    return compile_check(rayjob_schema())


def crd_violations(manifest: Mapping[str, Any]) -> list[str]:
    """Every place where ``manifest`` breaks the RayJob CRD's schema (required fields, types)."""
    fast = _fast_check()
    if fast is not None and fast(manifest):
        return []  # the common case, a valid RayJob, without jsonschema's interpretation of the schema
    validator = _validator()
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        where = _json_path(manifest, error.absolute_path) or "document"
        problems.append(f"{where}: {_schema_message(error)}")
    return problems


def validate_against_crd(manifest: Mapping[str, Any]) -> None:
    """Raise :class:`RayJobRejected` listing every schema violation of ``manifest``."""
    problems = crd_violations(manifest)
    if len(problems) == 1:
        raise RayJobRejected(f"{_ident(manifest)} does not match the RayJob CRD: {problems[0]}")
    if problems:
        raise RayJobRejected(
            f"{_ident(manifest)} does not match the RayJob CRD ({len(problems)} problem(s)):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _json_path(document: Any, path: Sequence[Any]) -> str:
    """``spec.rayClusterSpec.workerGroupSpecs[0] (group 'gpu').template...``: list items get their name."""
    out = ""
    node = document
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, Mapping):
                if node.get("groupName"):
                    out += f" (group {node['groupName']!r})"
                elif isinstance(node.get("name"), str):
                    out += f" (container {node['name']!r})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return out


def _schema_message(error: Any) -> str:
    if error.validator == "anyOf" and all("type" in s for s in error.validator_value):
        types = " or ".join(s["type"] for s in error.validator_value)
        hint = " (quote quantities such as '0.5')" if isinstance(error.instance, float) else ""
        return f"{error.instance!r} must be of type {types}{hint}"
    if error.validator == "pattern":
        return f"{error.instance!r} is not a Kubernetes quantity (e.g. 500m, 2, 40Gi)"
    return str(error.message)


# ------------------------------------------------------------------------------------------ request


def rayjob_request(manifest: Mapping[str, Any], *, validate: bool = True) -> RayJobRequest:
    """The gang a RayJob manifest asks for; raises :class:`RayJobRejected` when it cannot be queued."""
    if not isinstance(manifest, Mapping):
        raise RayJobRejected(f"expected a RayJob object (a mapping), got {type(manifest).__name__}")
    kind = manifest.get("kind")
    api_version = manifest.get("apiVersion")
    if kind != KIND:
        raise RayJobRejected(f"{_ident(manifest)}: kind is {kind!r}, expected {KIND!r}")
    if api_version != API_VERSION:
        raise RayJobRejected(
            f"{_ident(manifest)}: apiVersion is {api_version!r}, expected {API_VERSION!r} "
            "(older ray.io/v1alpha1 RayJobs must be converted first)"
        )
    if validate:
        validate_against_crd(manifest)
    meta = manifest.get("metadata") or {}
    ident = _ident(manifest)
    if not isinstance(meta, Mapping):
        raise RayJobRejected(f"{ident}: metadata must be an object")
    name = meta.get("name") or meta.get("generateName")
    if not name:
        raise RayJobRejected(f"{ident}: metadata.name (or metadata.generateName) is required")
    _check_names(meta, ident)
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise RayJobRejected(f"{ident}: spec is required")
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}

    if spec.get("clusterSelector"):
        selector = ", ".join(f"{k}={v}" for k, v in spec["clusterSelector"].items())
        raise RayJobRejected(
            f"{ident}: spec.clusterSelector ({selector}) runs the job on an existing RayCluster; it takes "
            "no new capacity and KubeRay cannot suspend it, so it is not queued (remove the "
            f"{QUEUE_LABEL} label to run it directly, or give it a rayClusterSpec to queue it)"
        )
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, Mapping):
        raise RayJobRejected(
            f"{ident}: spec.rayClusterSpec is required (the Ray cluster to create for the job)"
        )
    mode = spec.get("submissionMode") or K8S_JOB_MODE
    if mode not in SUBMISSION_MODES:
        raise RayJobRejected(
            f"{ident}: spec.submissionMode {mode!r} is not one of {', '.join(SUBMISSION_MODES)}"
        )

    notes: list[str] = []
    head = cluster.get("headGroupSpec")
    if not isinstance(head, Mapping):
        raise RayJobRejected(f"{ident}: spec.rayClusterSpec.headGroupSpec is required")
    head_pod = _pod_request(head.get("template"), f"{ident}: head group", "spec.rayClusterSpec.headGroupSpec")
    if mode == SIDECAR_MODE:
        head_pod = _add(head_pod, DEFAULT_SUBMITTER_REQUEST)
        notes.append("SidecarMode: KubeRay's submitter container (500m CPU, 200Mi) is counted in the head pod")
    pod_sets = [PodSet(HEAD, HEAD, 1, head_pod)]

    groups = cluster.get("workerGroupSpecs") or []
    seen: set[str] = set()
    for i, group in enumerate(groups):
        base = f"spec.rayClusterSpec.workerGroupSpecs[{i}]"
        if not isinstance(group, Mapping):
            raise RayJobRejected(f"{ident}: {base} must be an object")
        group_name = str(group.get("groupName") or f"group-{i}")
        if group_name in seen:
            raise RayJobRejected(f"{ident}: worker group {group_name!r} appears twice ({base}.groupName)")
        seen.add(group_name)
        count = _worker_pods(group, group_name, ident, base, notes)
        per_pod = _pod_request(group.get("template"), f"{ident}: worker group {group_name!r}", base)
        pod_sets.append(PodSet(group_name, WORKER, count, per_pod))

    if mode == K8S_JOB_MODE:
        template = spec.get("submitterPodTemplate")
        if template:
            submitter = _pod_request(template, f"{ident}: submitter", "spec")
        else:
            submitter = dict(DEFAULT_SUBMITTER_REQUEST)
        pod_sets.append(PodSet(SUBMITTER, SUBMITTER, 1, submitter))

    total: Resources = {}
    for pod_set in pod_sets:
        for r, v in pod_set.per_pod.items():
            total[r] = total.get(r, 0) + v * pod_set.count
    total = {r: v for r, v in total.items() if v}
    shutdown = spec.get("shutdownAfterJobFinishes")
    return RayJobRequest(
        name=str(name),
        namespace=meta.get("namespace"),
        pods=sum(p.count for p in pod_sets),
        total=total,
        pod_sets=tuple(pod_sets),
        entrypoint=spec.get("entrypoint"),
        runtime_env_yaml=spec.get("runtimeEnvYAML"),
        labels=labels,
        queue=labels.get(QUEUE_LABEL),
        priority_class=labels.get(PRIORITY_LABEL),
        submission_mode=mode,
        generate_name=not meta.get("name"),
        shutdown_after_job_finishes=shutdown if isinstance(shutdown, bool) else None,
        notes=tuple(notes),
        expected_duration=expected_duration(manifest),
    )


def expected_duration(manifest: Mapping[str, Any]) -> float | None:
    """Seconds a RayJob is expected to run: its annotation, else ``activeDeadlineSeconds``, else None."""
    spec = manifest.get("spec") or {}
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(EXPECTED_DURATION_ANNOTATION)
    if raw is not None:
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise RayJobRejected(
                f"RayJob {_ident(manifest)}: metadata.annotations.{EXPECTED_DURATION_ANNOTATION}: {exc}"
            ) from exc
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and not isinstance(deadline, bool) and deadline > 0:
        return float(deadline)
    return None


def _ident(manifest: Mapping[str, Any]) -> str:
    meta = manifest.get("metadata") if isinstance(manifest, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "<unnamed>")
    namespace = meta.get("namespace")
    # A hostile name may be megabytes long: the message names it, it does not repeat it.
    name = name if len(str(name)) <= 70 else f"{str(name)[:60]}...({len(str(name))} characters)"
    if namespace is not None and len(str(namespace)) > 70:
        namespace = f"{str(namespace)[:60]}..."
    kind = manifest.get("kind") or "object"
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


# Kubernetes object names: a DNS-1123 subdomain (names) or label (namespaces).
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
#: KubeRay's replicas, minReplicas, maxReplicas and numOfHosts are int32.
INT32_MAX = 2**31 - 1


def _check_names(meta: Mapping[str, Any], ident: str) -> None:
    """``metadata.name`` a DNS-1123 subdomain, ``generateName`` a prefix of one, ``namespace`` a DNS label."""
    for key in ("name", "generateName", "namespace"):
        value = meta.get(key)
        if value is None or (key == "generateName" and meta.get("name")):
            continue
        text = value if isinstance(value, str) else ""
        # As the API server does for a prefix: a trailing '-' is fine, the generated suffix follows it.
        checked = text[:-1] + "a" if key == "generateName" and text.endswith("-") else text
        if key == "namespace":
            ok, what, most = _DNS_LABEL_RE.match(checked) is not None, "DNS-1123 label", 63
        else:
            ok, what, most = _DNS_SUBDOMAIN_RE.match(checked) is not None, "DNS-1123 subdomain", 253
        if not ok or len(text) > most:
            shown = repr(value) if len(repr(value)) <= 70 else repr(value)[:67] + "..."
            raise RayJobRejected(
                f"{ident}: metadata.{key}: {shown} is not a valid {what} (at most {most} characters: lower-case "
                "letters, digits, '-'" + (" and '.'" if key != "namespace" else "") + ", starting and ending with a "
                "letter or digit)"
            )


def _int_field(group: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = group.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RayJobRejected(f"{where}.{key}: {shown} must be an integer")
    if value < 0:
        raise RayJobRejected(f"{where}.{key}: {value} must not be negative")
    if value > INT32_MAX:
        raise RayJobRejected(f"{where}.{key}: {value} is larger than an int32 allows ({INT32_MAX})")
    return value


def _worker_pods(group: Mapping[str, Any], name: str, ident: str, base: str, notes: list[str]) -> int:
    where = f"{ident}: worker group {name!r} ({base})"
    replicas_set = group.get("replicas") is not None
    replicas = _int_field(group, "replicas", 0, where)
    low = _int_field(group, "minReplicas", 0, where)
    high = _int_field(group, "maxReplicas", 2**31 - 1, where)
    hosts = _int_field(group, "numOfHosts", 1, where)
    if low > high:
        raise RayJobRejected(f"{where}: minReplicas {low} is above maxReplicas {high}")
    if group.get("suspend") is True:
        notes.append(f"worker group {name!r} is suspended: 0 pods")
        return 0
    wanted = min(max(replicas, low), high)
    if wanted != replicas:
        told = f"replicas {replicas}" if replicas_set else "replicas unset"
        notes.append(
            f"worker group {name!r}: {told} clamped to {wanted} by minReplicas {low} / maxReplicas {high}"
        )
    return wanted * hosts


def _pod_request(template: Any, who: str, base: str) -> Resources:
    """Kubernetes' effective request of one pod made from ``template`` (a PodTemplateSpec)."""
    if not isinstance(template, Mapping) or not isinstance(template.get("spec"), Mapping):
        raise RayJobRejected(f"{who}: {base}.template.spec is required")
    pod = template["spec"]
    where = f"{base}.template.spec"
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise RayJobRejected(f"{who}: {where}.containers must list at least one container")
    app: Resources = {}
    for i, c in enumerate(containers):
        app = _add(app, _container_request(c, who, f"{where}.containers[{i}]"))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for i, c in enumerate(pod.get("initContainers") or []):
        req = _container_request(c, who, f"{where}.initContainers[{i}]")
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, req)
            running = sidecars
        else:
            running = _add(req, sidecars)
        init_peak = _max(init_peak, running)
    effective = _max(_add(app, sidecars), init_peak)
    overhead = _resources(pod.get("overhead"), who, f"{where}.overhead", None)
    return _add(effective, overhead)


def _container_request(container: Any, who: str, where: str) -> Resources:
    if not isinstance(container, Mapping):
        raise RayJobRejected(f"{who}: {where} must be an object")
    cname = container.get("name") or "<unnamed>"
    res = container.get("resources") or {}
    if not isinstance(res, Mapping):
        raise RayJobRejected(f"{who}, container {cname!r}: {where}.resources must be an object")
    requests = _resources(res.get("requests"), who, f"{where}.resources.requests", cname)
    limits = _resources(res.get("limits"), who, f"{where}.resources.limits", cname)
    for r, limit in limits.items():
        request = requests.get(r)
        if request is None:
            requests[r] = limit  # Kubernetes defaults a missing request to the limit
        elif request > limit:
            raise RayJobRejected(
                f"{who}, container {cname!r}: {where}.resources.requests.{r} is above its limit"
            )
    return requests


def _resources(raw: Any, who: str, where: str, container: str | None) -> Resources:
    in_container = f", container {container!r}" if container else ""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RayJobRejected(f"{who}{in_container}: {where} must be a mapping of resource to quantity")
    try:
        parsed = parse_resources(raw, field=where)
    except QuantityError as exc:
        raise RayJobRejected(f"{who}{in_container}: {exc}") from exc
    for r, v in parsed.items():
        if v < 0:
            raise RayJobRejected(f"{who}{in_container}: {where}.{r}: {raw[r]!r} must not be negative")
    return parsed


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for r, v in b.items():
        out[r] = out.get(r, 0) + v
    return out


def _max(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for r, v in b.items():
        if v > out.get(r, 0):
            out[r] = v
    return out


__all__ = [
    "API_VERSION",
    "DEFAULT_SUBMITTER_REQUEST",
    "KIND",
    "PRIORITY_LABEL",
    "QUEUE_LABEL",
    "SUBMISSION_MODES",
    "PodSet",
    "RayJobRejected",
    "RayJobRequest",
    "crd_violations",
    "load_rayjob_documents",
    "parse_quantity",
    "rayjob_request",
    "rayjob_schema",
    "validate_against_crd",
]
