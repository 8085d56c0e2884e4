"""The operator's capacity against kmock: resources no Node has, policy edits, pods no Node can hold."""

from __future__ import annotations

from typing import Any

import pytest
from operator_env import POLICIES, TREES, environment, eventually, node, policy_manifest, rayjob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

GPU = "nvidia.com/gpu"
ECS = {"node.alibabacloud.com/pool": "ecs"}


def gpu_tree(max_gpu: str = "16") -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
        "kind": "ElasticQuotaTree",
        "metadata": {"name": "elasticquotatree", "namespace": "kube-system"},
        "spec": {"root": {"name": "root", "max": {GPU: max_gpu, "cpu": "64"}, "children": [
            {"name": "team-a", "namespaces": ["team-a"], "max": {GPU: max_gpu, "cpu": "64"}}]}},
    }


def gpu_node(name: str, gpus: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    body = node(name, "16", labels)
    body["status"]["allocatable"][GPU] = gpus
    return body


def gpu_job(name: str, gpus_per_worker: str, workers: int = 1) -> dict[str, Any]:
    body = rayjob(name, "team-a", cpu="1", workers=workers)
    worker = body["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["resources"]["limits"][GPU] = gpus_per_worker
    worker["resources"]["requests"][GPU] = gpus_per_worker
    return body


async def test_a_gpu_job_waits_on_a_cluster_whose_nodes_have_no_gpu() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, gpu_tree())
        await env.create("v1/nodes", node("cpu-1", "16"))
        await env.start_operator()
        await env.create_job(gpu_job("train", "1"))
        cond = await eventually(lambda: (c := env.condition("team-a", "train")) and c["reason"] != "Queued" and c,
                                what="a reason for waiting")
        assert cond["reason"] == "NoCapacityInUnits" and "default has no nvidia.com/gpu" in cond["message"]
        assert not env.running("team-a", "train")
        # A CPU job still runs beside it, and a GPU node joining lets the GPU job start.
        await env.create_job(rayjob("cpu", "team-a", cpu="1"))
        await eventually(lambda: env.running("team-a", "cpu"), what="the CPU job admitted")
        assert not env.running("team-a", "train")
        await env.create("v1/nodes", gpu_node("gpu-1", "8"))
        await eventually(lambda: env.running("team-a", "train"), what="the GPU job admitted once a GPU node joined")


async def test_a_policy_edit_keeps_the_ecs_unit_at_what_its_nodes_have() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, gpu_tree())
        await env.create("v1/nodes", node("ecs-1", "4", ECS))
        units = [{"resource": "ecs", "nodeSelector": ECS}, {"resource": "acs", "max": 10}]
        await env.create(POLICIES, policy_manifest(units))
        await env.start_operator()
        # The admin edits the policy (ACS may now take 20 pods).
        units[1]["max"] = 20
        await env.api.patch(POLICIES, "kube-system", "rayjobs", {"spec": {"units": units}})
        await eventually(lambda: env.events("rayjobs", "PolicyApplied"), what="the edit applied")
        await env.create_job(rayjob("first", "team-a", cpu="2"))  # 4 CPU: fills the ECS node
        await eventually(lambda: env.running("team-a", "first"), what="first admitted")
        await env.create_job(rayjob("second", "team-a", cpu="2"))
        await eventually(lambda: env.running("team-a", "second"), what="second admitted")
        assert env.admission("team-a", "first")["unit"] == "ecs"
        assert env.admission("team-a", "second")["unit"] == "acs"  # never beyond the ECS node's 4 CPU


async def test_a_worker_pod_larger_than_every_node_is_rejected_and_never_holds_quota() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, gpu_tree())
        for i in range(4):
            await env.create("v1/nodes", gpu_node(f"gpu-{i}", "2"))  # 8 GPUs, at most 2 per node
        await env.start_operator()
        await env.create_job(gpu_job("wide", "4"))
        cond = await eventually(lambda: env.condition("team-a", "wide"), what="a Rejected condition")
        assert cond["type"] == "Rejected" and cond["reason"] == "NeverFits"
        assert "a pod needs 4 nvidia.com/gpu, its largest node has 2" in cond["message"]
        assert not env.running("team-a", "wide")
        await env.create_job(gpu_job("narrow", "2", workers=2))  # the same 4 GPUs, 2 per pod: fits
        await eventually(lambda: env.running("team-a", "narrow"), what="narrow admitted")


async def test_usage_goes_back_to_zero_in_the_tree_status_and_the_gauge_when_jobs_end() -> None:
    async with environment(runtime=30) as env:
        tree = gpu_tree()
        await env.create(TREES, tree)
        await env.create("v1/nodes", gpu_node("gpu-1", "8"))
        op = await env.start_operator()
        await env.create_job(gpu_job("train", "2"))

        def used() -> dict[str, str]:
            return env.server.obj(TREES, "kube-system", "elasticquotatree")["status"]["nodes"]["team-a"]["used"]

        def gauge(resource: str) -> float | None:
            return op.metrics.registry.get_sample_value(
                "rayqueue_quota_resource_usage", {"quota_node": "team-a", "resource": resource})

        await eventually(lambda: used().get(GPU) == "2", what="the GPUs in use in the status")
        await eventually(lambda: gauge(GPU) == 2 and gauge("kube-queue/max-jobs") == 1, what="the usage gauges")
        assert gauge("memory") == 2 * 2**30  # head and worker, 1Gi each
        await env.api.delete("ray.io/v1/rayjobs", "team-a", "train")  # the team's work ends
        await eventually(lambda: used() == {GPU: "0", "cpu": "0"}, what="zero usage in the status")
        for resource in (GPU, "cpu", "memory", "kube-queue/max-jobs"):
            await eventually(lambda r=resource: gauge(r) == 0, what=f"the {resource} gauge back at 0")  # type: ignore[misc]
        assert op.metrics.registry.get_sample_value("rayqueue_admitted_active_workloads", {"queue": "team-a"}) == 0
