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
