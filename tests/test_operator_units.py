"""Pure parts of the operator: how RayJobs are read and patched, leadership, the CRD check itself."""

from __future__ import annotations

import datetime
import json
from typing import Any

from kmock_cluster import crd_violations
from operator_env import rayjob, tree_manifest

from rayqueue.queue.workload import Workload
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.decisions import Placement
from rayqueue.scheduler.operator.controller import Controller, OperatorConfig
from rayqueue.scheduler.operator.kube import Connection, KubeClient
from rayqueue.scheduler.operator.rayjobs import (
    ADMISSION_ANNOTATION,
    JobState,
    admit_patch,
    observe,
    webhook_patch,
)

TREE = QuotaTree.from_dict(tree_manifest({"team-a": ("2", "4")}, root_min="4", root_max="4"))


def merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def with_meta(body: dict[str, Any], **meta: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    body["metadata"].update({"uid": "u-1", "resourceVersion": "7", "generation": 1, **meta})
    return body


def test_observe_states() -> None:
    job = with_meta(rayjob("j", "team-a"))
    assert observe(job, TREE).state is JobState.PENDING
    assert observe(with_meta(rayjob("j", "elsewhere")), TREE).state is JobState.UNMANAGED
    running_unmanaged = with_meta(rayjob("j", "team-a", suspend=False))
    assert observe(running_unmanaged, TREE).state is JobState.UNMANAGED  # not started by us
    record = json.dumps({"uid": "u-1", "unit": "default", "admittedAtEpoch": 5.0})
    admitted = with_meta(rayjob("j", "team-a", suspend=False, annotations={ADMISSION_ANNOTATION: record}))
    assert observe(admitted, TREE).state is JobState.ADMITTED
    stopping = with_meta(rayjob("j", "team-a", annotations={ADMISSION_ANNOTATION: record}))
    stopping["status"] = {"jobDeploymentStatus": "Running"}
    assert observe(stopping, TREE).state is JobState.STOPPING
    stopping["status"] = {"jobDeploymentStatus": "Suspending", "observedGeneration": 3}
    stopping["metadata"]["generation"] = 3
    assert observe(stopping, TREE).state is JobState.STOPPING
    stopping["status"] = {"jobDeploymentStatus": "Suspended", "observedGeneration": 3}
    assert observe(stopping, TREE).state is JobState.PENDING
    # Admitted (generation 2) and suspended again (3) before KubeRay saw it: its "Suspended" is from
    # generation 1 and KubeRay will write nothing more; it holds nothing, so it is pending again.
    stopping["status"] = {"jobDeploymentStatus": "Suspended", "observedGeneration": 1}
    assert observe(stopping, TREE).state is JobState.PENDING
    stopping["status"] = {"jobDeploymentStatus": "ValidationFailed"}
    assert observe(stopping, TREE).state is JobState.FINISHED
    # A record copied from another object (another uid) is not ours.
    copied = with_meta(rayjob("j", "team-a", suspend=False, annotations={ADMISSION_ANNOTATION: record}), uid="u-2")
    assert observe(copied, TREE).state is JobState.UNMANAGED


def test_admit_patch_places_every_template_and_keeps_the_crd_valid() -> None:
    job = with_meta(rayjob("j", "team-a", workers=2))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"].append(
        json.loads(json.dumps(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])) | {"groupName": "more"})
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["tolerations"] = [
        {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}]
    w = Workload(uid="u-1", queue="team-a", request={"cpu": 2000}, priority=5, name="team-a/j")
    toleration = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
    placement = Placement(unit="acs", resource="acs", node_selector={"type": "virtual-kubelet"},
                          pod_labels={"alibabacloud.com/compute-class": "performance"}, tolerations=[toleration])
    admitted_at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    patch = admit_patch(job, w, placement, admitted_at, by="op-1")
    assert patch["metadata"]["resourceVersion"] == "7"  # conditional: a concurrent edit gets a 409
    result = merge(job, patch)
    assert result["spec"]["suspend"] is False
    cluster = result["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert len(templates) == 3
    for t in templates:
        assert t["spec"]["nodeSelector"] == {"type": "virtual-kubelet"}
        assert toleration in t["spec"]["tolerations"]
        assert t["metadata"]["labels"]["rayqueue.io/unit"] == "acs"
        assert t["spec"]["containers"]  # untouched
    assert {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"} in \
        cluster["headGroupSpec"]["template"]["spec"]["tolerations"]  # the user's own toleration stays
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["workers", "more"]
    record = json.loads(result["metadata"]["annotations"][ADMISSION_ANNOTATION])
    assert record == {"uid": "u-1", "queue": "team-a", "unit": "acs", "resource": "acs", "priority": 5,
                      "priorityClass": None, "admittedAt": "2026-01-01T00:00:00+00:00",
                      "admittedAtEpoch": admitted_at, "by": "op-1"}
    assert crd_violations(result) == []


def test_crd_check_catches_fields_an_api_server_would_prune() -> None:
    job = with_meta(rayjob("j", "team-a"))
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["nodeSelectr"] = {"a": "b"}
    job["status"] = {"jobDeploymentStatus": "Running", "phase": "x"}
    problems = crd_violations(job)
    assert any("nodeSelectr" in p for p in problems) and any("phase" in p for p in problems)


def test_webhook_patch() -> None:
    assert webhook_patch(rayjob("j", "a", suspend=None, shutdown=None)) == {
        "suspend": True, "shutdownAfterJobFinishes": True}
    assert webhook_patch(rayjob("j", "a")) == {}
    selector = rayjob("j", "a", suspend=None)
    selector["spec"]["clusterSelector"] = {"ray.io/cluster": "shared"}
    assert webhook_patch(selector) == {}


def test_leadership_follows_kopf_priorities() -> None:
    ctl = Controller(KubeClient(Connection(server="http://unused")), OperatorConfig(identity="me", priority=5))
    now = datetime.datetime.now(datetime.UTC)
    fresh, stale = now.isoformat(), (now - datetime.timedelta(seconds=120)).isoformat()

    def peering(**peers: tuple[int, str]) -> dict[str, Any]:
        return {"status": {k: {"priority": p, "lifetime": 60, "lastseen": t} for k, (p, t) in peers.items()}}

    assert ctl.is_leader(None)
    assert ctl.is_leader(peering(me=(5, fresh), low=(1, fresh)))
    assert not ctl.is_leader(peering(me=(5, fresh), high=(9, fresh)))
    assert not ctl.is_leader(peering(me=(5, fresh), twin=(5, fresh)))  # kopf pauses both on a tie
    assert ctl.is_leader(peering(me=(5, fresh), high=(9, stale)))  # a dead peer does not count
