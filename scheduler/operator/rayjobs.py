"""Pure translation between RayJob objects and the engine: no I/O, no kopf.

* which RayJobs are ours and in which state the API says they are (:func:`observe`);
* the ``Workload`` a RayJob becomes (:func:`workload_for`), using ``rayjob_request`` for the gang;
* the one merge patch that admits a job (:func:`admit_patch`), the one that preempts it
  (:func:`preempt_patch`), and the mutating webhook's patch (:func:`webhook_patch`).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.queue.workload import Workload
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.decisions import Placement
from rayqueue.scheduler.workloads.rayjob import PRIORITY_LABEL, QUEUE_LABEL, rayjob_request

ADMISSION_ANNOTATION = "rayqueue.io/admission"  # JSON: queue, unit, resource, priority, admittedAt, uid
CONDITION_ANNOTATION = "rayqueue.io/condition"  # JSON: type, reason, message, position, time
MUTATED_ANNOTATION = "rayqueue.io/mutated"  # what the webhook changed, for `kubectl describe`
# JSON: for (the preemptor's uid), reason. Written with the suspend patch, so a restart resumes the
# preemption in progress instead of deciding (and counting) it again; cleared by the next admission.
PREEMPTION_ANNOTATION = "rayqueue.io/preemption"
UNIT_LABEL = "rayqueue.io/unit"
FINISHED = frozenset({"Complete", "Failed", "ValidationFailed"})


class JobState(StrEnum):
    UNMANAGED = "Unmanaged"  # not in a managed namespace and no queue label, or started without us
    PENDING = "Pending"  # suspended, never admitted (or admitted before and suspended again)
    ADMITTED = "Admitted"  # carries our admission record and runs (suspend false)
    STOPPING = "Stopping"  # carries our record, suspend true, KubeRay not yet Suspended
    FINISHED = "Finished"  # Complete / Failed / ValidationFailed


@dataclass(frozen=True, slots=True)
class Observed:
    uid: str
    namespace: str
    name: str
    state: JobState
    record: dict[str, Any] | None
    generation: int
    resource_version: str | None


def job_uid(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def job_ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def admission_record(body: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(ADMISSION_ANNOTATION)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def is_managed(body: Mapping[str, Any], tree: QuotaTree | None) -> bool:
    """Ours when it names a queue, or its namespace maps to a leaf of the tree."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(QUEUE_LABEL):
        return True
    return tree is not None and meta.get("namespace") in tree.namespace_to_leaf


def observe(body: Mapping[str, Any], tree: QuotaTree | None) -> Observed:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    phase = status.get("jobDeploymentStatus") or ""
    record = admission_record(body)
    uid = job_uid(body)
    if record is not None and record.get("uid") not in (None, uid):
        record = None  # copied from another object (e.g. `kubectl get -o yaml | kubectl create`)
    suspend = bool(spec.get("suspend", False))
    if not is_managed(body, tree):
        state = JobState.UNMANAGED
    elif phase in FINISHED:
        state = JobState.FINISHED
    elif record is not None and not suspend:
        state = JobState.ADMITTED
    elif record is not None and suspend and phase not in ("Suspended", "", "New"):
        # KubeRay has not yet confirmed the suspend it was asked for. "Suspended" (or New) counts even when
        # KubeRay wrote it for an older spec (status.observedGeneration < generation): KubeRay writes its
        # status with the resourceVersion it read and leaves Suspended only through a status write
        # (New, Initializing) before it creates a Ray cluster, so an object that reads "suspend: true,
        # Suspended" holds nothing, and KubeRay writes nothing more for it. Waiting for a newer
        # "Suspended" held the quota forever when a job was admitted and preempted before KubeRay saw it.
        state = JobState.STOPPING
    elif suspend:
        state = JobState.PENDING
    else:
        state = JobState.UNMANAGED  # running and never admitted by us: created before the webhook
    return Observed(
        uid=uid,
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name")),
        state=state,
        record=record,
        generation=int(meta.get("generation") or 0),
        resource_version=meta.get("resourceVersion"),
    )


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class JobError(ValueError):
    """This RayJob cannot be queued; the message says why (posted as a Warning event)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


def workload_for(body: Mapping[str, Any], tree: QuotaTree, priorities: PriorityClasses,
                 now: float | None = None) -> Workload:
    """The engine's view of a RayJob; raises :class:`JobError` (bad spec, unknown queue or class)."""
    from rayqueue.queue.priority import UnknownPriorityClass
    from rayqueue.scheduler.workloads.rayjob import RayJobRejected

    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        req = rayjob_request(body, validate=False)
    except RayJobRejected as exc:
        raise JobError("InvalidRayJob", exc.message) from exc
    try:
        leaf = tree.leaf_for(namespace=meta.get("namespace"), quota=labels.get(QUEUE_LABEL))
    except KeyError as exc:
        raise JobError("UnknownQueue", str(exc.args[0]) if exc.args else str(exc)) from exc
    try:
        priority, class_name = priorities.resolve(labels.get(PRIORITY_LABEL))
    except UnknownPriorityClass as exc:
        raise JobError("UnknownPriorityClass",
                       f"label {PRIORITY_LABEL}: {exc} (create the PriorityClass or use an integer)") from exc
    submitted = parse_time(meta.get("creationTimestamp")) or (now if now is not None else time.time())
    return Workload(
        uid=job_uid(body),
        queue=leaf.name,
        request=dict(req.total),
        pods=req.pods,
        priority=priority,
        priority_class=class_name,
        submitted_at=submitted,
        expected_duration=req.expected_duration,
        name=job_ref(body),
        pod_request=req.largest_pod,
    )


def condition(type_: str, reason: str, message: str, position: int | None = None) -> str:
    data: dict[str, Any] = {"type": type_, "reason": reason, "message": message,
                            "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if position is not None:
        data["position"] = position
    return json.dumps(data, sort_keys=True)


def _place_template(template: Any, placement: Placement) -> dict[str, Any]:
    # Copies along the path that changes only (template, metadata, spec): the rest of the template (its
    # containers) is shared with ``body`` and never written; a deep copy per template was a tenth of an
    # admission's CPU.
    tpl: dict[str, Any] = dict(template) if isinstance(template, Mapping) else {}
    meta = tpl["metadata"] = dict(tpl.get("metadata") or {})
    labels = dict(meta.get("labels") or {})
    labels.update(placement.pod_labels)
    labels[UNIT_LABEL] = placement.unit
    meta["labels"] = labels
    spec = tpl["spec"] = dict(tpl.get("spec") or {})
    if placement.node_selector:
        selector = dict(spec.get("nodeSelector") or {})
        selector.update(placement.node_selector)
        spec["nodeSelector"] = selector
    if placement.tolerations:
        tolerations = list(spec.get("tolerations") or [])
        for t in placement.tolerations:
            if t not in tolerations:
                tolerations.append(dict(t))
        spec["tolerations"] = tolerations
    return tpl


def admit_patch(body: Mapping[str, Any], w: Workload, placement: Placement, admitted_at: float,
                by: str = "") -> dict[str, Any]:
    """One merge patch: placement into head/worker (and submitter) templates, our record, unsuspend.

    ``workerGroupSpecs`` is a list, which a merge patch replaces whole, so the patch carries the full list
    built from ``body`` and ``metadata.resourceVersion``: if the object changed since, the API answers
    409 and the controller re-reads it instead of overwriting someone's edit.
    """
    spec = body.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or {}
    head = cluster.get("headGroupSpec") or {}
    workers = cluster.get("workerGroupSpecs") or []
    record = {
        "uid": w.uid,
        "queue": w.queue,
        "unit": placement.unit,
        "resource": placement.resource,
        "priority": w.priority,
        "priorityClass": w.priority_class,
        "admittedAt": datetime.datetime.fromtimestamp(admitted_at, datetime.UTC).isoformat(),
        "admittedAtEpoch": admitted_at,
        "by": by,
    }
    new_workers = []
    for group in workers:
        g = dict(group)
        g["template"] = _place_template(group.get("template"), placement)
        new_workers.append(g)
    patch_spec: dict[str, Any] = {
        "suspend": False,
        "rayClusterSpec": {
            "headGroupSpec": {"template": _place_template(head.get("template"), placement)},
        },
    }
    if workers:
        patch_spec["rayClusterSpec"]["workerGroupSpecs"] = new_workers
    if spec.get("submitterPodTemplate"):
        patch_spec["submitterPodTemplate"] = _place_template(spec["submitterPodTemplate"], placement)
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "annotations": {
                ADMISSION_ANNOTATION: json.dumps(record, sort_keys=True),
                PREEMPTION_ANNOTATION: None,  # a preemption of an earlier admission is over
                CONDITION_ANNOTATION: condition(
                    "Admitted", "Admitted",
                    f"admitted to unit {placement.unit} ({placement.resource}) from queue {w.queue}"),
            },
        },
        "spec": patch_spec,
    }


def preempt_patch(reason_code: str, message: str, preemptor: str = "") -> dict[str, Any]:
    return {
        "metadata": {"annotations": {
            CONDITION_ANNOTATION: condition("Preempted", reason_code, message),
            PREEMPTION_ANNOTATION: json.dumps({"for": preemptor, "reason": reason_code}, sort_keys=True),
        }},
        "spec": {"suspend": True},
    }


def preemption_record(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Our preemption annotation (who the job is being preempted for, and why), or None."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(PREEMPTION_ANNOTATION)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def webhook_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the mutating webhook sets on a new RayJob in a managed namespace (empty: nothing to do)."""
    spec = body.get("spec") or {}
    changes: dict[str, Any] = {}
    if spec.get("clusterSelector"):
        return {}  # runs on an existing cluster: not queued, nothing to suspend
    if not spec.get("suspend"):
        changes["suspend"] = True
    if spec.get("shutdownAfterJobFinishes") is not True:
        changes["shutdownAfterJobFinishes"] = True
    return changes
