"""RayService and RayCluster manifests into engine requests (scheduler/workloads/serving.py), on
KubeRay's own samples and on manifests written for the case."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayqueue.quota.quantity import CPU, GPU
from rayqueue.scheduler.workloads.serving import (
    ServingRejected,
    raycluster_request,
    raycluster_scale_up,
    rayservice_request,
)

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "kuberay" / "serving-samples"


def documents(kind: str) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                out.append((path.name, doc))
    return out


def test_every_rayservice_sample_becomes_a_service_and_only_autoscaling_ones_reserve() -> None:
    samples = documents("RayService")
    assert len(samples) == 15
    reserving = []
    for name, doc in samples:
        req = rayservice_request(doc)
        assert req.spec.head, name
        if req.spec.max_replicas > req.replicas:
            reserving.append(name)
        else:
            assert any("nothing is reserved" in n for n in req.notes), name
    # Only one sample turns on enableInTreeAutoscaling: the others keep their size and reserve nothing.
    assert reserving == ["ray-service.incremental-upgrade.yaml"]


def test_every_raycluster_sample_is_charged_its_current_size() -> None:
    samples = documents("RayCluster")
    assert len(samples) >= 40
    for name, doc in samples:
        req = raycluster_request(doc)
        assert req.pods >= 1 and req.total, name


def gpu_service(**group: object) -> dict:
    worker = {"groupName": "gpu", "replicas": 2, "minReplicas": 1, "maxReplicas": 8,
              "template": {"spec": {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": 4}}}]}}}
    worker.update(group)
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "web", "namespace": "serve", "annotations": {"rayqueue.io/hot-reserve": "2"},
                     "labels": {"rayqueue.io/queue": "serve"}},
        "spec": {
            "serveConfigV2": "applications:\n- name: app\n  deployments:\n  - name: Model\n"
                             "    autoscaling_config: {min_replicas: 1, max_replicas: 6}\n"
                             "    ray_actor_options: {num_gpus: 1}\n",
            "rayClusterConfig": {
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {"template": {"spec": {"containers": [{"name": "h", "resources": {"requests": {"cpu": 2}}}]}}},
                "workerGroupSpecs": [worker],
            },
        },
    }


def test_a_rayservice_with_autoscaling_declares_its_replicas_bounds_and_hot_reserve() -> None:
    req = rayservice_request(gpu_service(numOfHosts=2))
    assert req.queue == "serve" and req.scaling_group == "gpu"
    assert req.spec.head == {CPU: 2000}
    assert req.spec.replica == {GPU: 2000, CPU: 8000} and req.spec.replica_pods == 2
    assert (req.spec.min_replicas, req.spec.max_replicas, req.spec.hot_reserve, req.replicas) == (1, 8, 2, 2)
    (d,) = req.deployments
    assert (d.application, d.name, d.min_replicas, d.max_replicas, d.per_replica[GPU]) == ("app", "Model", 1, 6, 1000)


def test_a_rayservice_scaled_to_its_maximum_keeps_its_shape() -> None:
    # The autoscaler raising replicas to maxReplicas is a scale-up, not a new cluster shape: the group
    # stays the service's scaling group (it was charged as a fixed head part, an upgrade, before).
    below, at_max = rayservice_request(gpu_service(replicas=2)), rayservice_request(gpu_service(replicas=8))
    assert at_max.scaling_group == "gpu" and at_max.replicas == 8
    assert (at_max.spec.head, at_max.spec.replica, at_max.spec.max_replicas) == \
        (below.spec.head, below.spec.replica, below.spec.max_replicas)


def test_a_rayservice_without_max_replicas_is_capped_by_the_quota_with_a_note() -> None:
    from engine_helpers import engine, node, tree

    from rayqueue.scheduler.engine import Service

    req = rayservice_request(gpu_service(maxReplicas=None))
    assert req.spec.max_replicas == 2**31 - 1
    e = engine(tree(node("root", min={GPU: 8}, max={GPU: 8}, children=[node("serve", min={GPU: 8}, max={GPU: 8})])))
    svc = req.service("web", "serve")
    assert isinstance(svc, Service) and svc.replicas == 2
    assert e.submit_service(svc) is None
    assert svc.spec.max_replicas == 8 and "capped at 8 replicas" in svc.notes[-1]


def test_a_raycluster_scale_up_beyond_what_was_admitted_is_the_difference() -> None:
    doc = gpu_service()["spec"]["rayClusterConfig"]
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "nb"}, "spec": doc}
    before = raycluster_request(manifest)
    assert before.total[GPU] == 2000 and before.pods == 3
    w = before.workload("nb", "batch")
    assert (w.request, w.pods, w.pod_request) == ({CPU: 2000 + 8000, GPU: 2000}, 3, {CPU: 4000, GPU: 1000})
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = 5
    after = raycluster_request(manifest)
    assert raycluster_scale_up(before, after) == ({GPU: 3000, CPU: 12000}, 3)
    assert raycluster_scale_up(after, before) is None


@pytest.mark.parametrize(("change", "message"), [
    ({"maxReplicas": -1}, "maxReplicas: -1 must not be negative"),
    ({"minReplicas": 9}, "minReplicas 9 is above maxReplicas 8"),
    ({"replicas": 2**31}, "larger than an int32 allows"),
    ({"numOfHosts": "2"}, "does not match the RayService CRD: spec.rayClusterConfig.workerGroupSpecs[0] "
                          "(group 'gpu').numOfHosts: '2' is not of type 'integer'"),
])
def test_bad_worker_groups_are_refused_with_one_line(change: dict, message: str) -> None:
    with pytest.raises(ServingRejected) as err:
        rayservice_request(gpu_service(**change))
    assert message in str(err.value) and "RayService serve/web" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["raycluster", "rayservice"])
def test_the_stored_schema_is_cut_from_kuberays_crd(kind: str) -> None:
    import json
    from importlib import resources

    from rayqueue.scheduler.workloads import rayjob_schema

    crd = yaml.safe_load((SAMPLES.parent / f"ray.io_{kind}s.yaml").read_text())
    stored = json.loads((resources.files("rayqueue.scheduler.workloads") / "schemas" / f"{kind}-v1.schema.json").read_text())
    assert json.loads(json.dumps(rayjob_schema.pruned_schema_from_crd(crd))) == stored


def test_a_field_of_the_wrong_type_is_refused_by_kuberays_schema_in_one_line() -> None:
    doc = gpu_service()
    doc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(ServingRejected) as err:
        rayservice_request(doc)
    text = str(err.value)
    assert ("does not match the RayService CRD: spec.rayClusterConfig.enableInTreeAutoscaling: 'yes' is not of type "
            "'boolean' (and 1 more)") in text
