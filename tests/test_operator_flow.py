"""The operator against kmock: admission order, borrowing and reclaim, placement, preemption, release."""

from __future__ import annotations

import pytest
from kmock_cluster import FINAL_ANNOTATION
from operator_env import (
    POLICIES,
    PRIORITY_CLASSES,
    TREES,
    environment,
    eventually,
    node,
    policy_manifest,
    rayjob,
    tree_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


async def test_priority_order_within_a_queue() -> None:
    async with environment(runtime=0.4) as env:
        # Never: the running job is not preempted (LowerPriority is the default), so the queue's order alone
        # decides who comes next
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2",
                                              attributes={"team-a": {"preemptionPolicy": "Never"}}))
        await env.create(PRIORITY_CLASSES, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                            "metadata": {"name": "urgent"}, "value": 1000})
        await env.start_operator()
        await env.create_job(rayjob("first", "team-a", runtime=0.6))
        await eventually(lambda: env.phase("team-a", "first") == "Running", what="first running")
        # The queue is full (2 CPU): three jobs wait, submitted low first.
        for name, prio in [("low", "1"), ("mid", "5"), ("high", "urgent")]:
            await env.create_job(rayjob(name, "team-a", priority=prio, runtime=0.2))
        await eventually(lambda: env.phase("team-a", "low") == "Complete", what="all done")
        started = {n: env.admission("team-a", n)["admittedAtEpoch"] for n in ("high", "mid", "low")}
        assert started["high"] < started["mid"] < started["low"]
        assert env.admission("team-a", "high")["priorityClass"] == "urgent"
        assert env.admission("team-a", "high")["priority"] == 1000
        # Users were told they queue, with a position, and later that they were admitted.
        queued = await eventually(lambda: env.events("low", "Queued"), what="Queued event")
        assert "position" in queued[0]["message"]
        await eventually(lambda: env.events("low", "Admitted"), what="Admitted event")
        # Nothing was started twice.
        for n in ("first", "high", "mid", "low"):
            assert env.unsuspend_count("team-a", n) == 1


async def test_borrowing_then_reclaim_across_teams() -> None:
    async with environment(runtime=30) as env:
        # Each team is guaranteed 4 CPU and may use up to 8; the cluster has 8.
        await env.create(TREES, tree_manifest({"team-a": ("4", "8"), "team-b": ("4", "8")},
                                              root_min="8", root_max="8"))
        await env.start_operator()
        for i in range(4):  # team-a borrows team-b's idle guarantee: 4 x 2 CPU = 8
            await env.create_job(rayjob(f"a{i}", "team-a", priority="1"))
        await eventually(lambda: all(env.running("team-a", f"a{i}") for i in range(4)), what="a borrowing")
        # team-b comes back: its job fits in its guarantee, so borrowed work is reclaimed.
        await env.create_job(rayjob("b0", "team-b", priority="1"))
        await eventually(lambda: env.running("team-b", "b0"), what="b0 admitted after reclaim")
        suspended = [i for i in range(4) if not env.running("team-a", f"a{i}")]
        assert len(suspended) == 1  # exactly one 2-CPU job gave way
        victim = f"a{suspended[0]}"
        await eventually(lambda: env.events(victim, "Preempted"), what="Preempted event")
        assert env.phase("team-a", victim) == "Suspended"
        assert env.condition("team-a", victim)["type"] in ("Preempted", "Queued")
        # The victim is back in its queue, waiting (not lost, not running).
        await eventually(lambda: env.condition("team-a", victim)["type"] == "Queued", what="victim requeued")


async def test_ecs_then_acs_placement_in_pod_templates() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("4", "16")}, root_min="4", root_max="16"))
        await env.create("v1/nodes", node("ecs-1", "4", {"node.alibabacloud.com/pool": "ecs"}))
        await env.create(POLICIES, policy_manifest([
            {"resource": "ecs", "nodeSelector": {"node.alibabacloud.com/pool": "ecs"}},
            {"resource": "acs", "nodeSelector": {"type": "virtual-kubelet"}, "max": 10,
             "podLabels": {"alibabacloud.com/compute-class": "performance"},
             "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists",
                              "effect": "NoSchedule"}]},
        ]))
        await env.start_operator()
        await env.create_job(rayjob("on-ecs", "team-a", cpu="2"))  # 4 CPU: fills the ECS node
        await eventually(lambda: env.running("team-a", "on-ecs"), what="on-ecs admitted")
        await env.create_job(rayjob("on-acs", "team-a", cpu="2"))  # no ECS room left: spills to ACS
        await eventually(lambda: env.running("team-a", "on-acs"), what="on-acs admitted")

        ecs = env.job("team-a", "on-ecs")["spec"]["rayClusterSpec"]
        acs = env.job("team-a", "on-acs")["spec"]["rayClusterSpec"]
        assert env.admission("team-a", "on-ecs")["unit"] == "ecs"
        assert env.admission("team-a", "on-acs")["unit"] == "acs"
        for template in (ecs["headGroupSpec"]["template"], ecs["workerGroupSpecs"][0]["template"]):
            assert template["spec"]["nodeSelector"] == {"node.alibabacloud.com/pool": "ecs"}
            assert template["metadata"]["labels"]["rayqueue.io/unit"] == "ecs"
        for template in (acs["headGroupSpec"]["template"], acs["workerGroupSpecs"][0]["template"]):
            assert template["spec"]["nodeSelector"] == {"type": "virtual-kubelet"}
            assert template["metadata"]["labels"]["alibabacloud.com/compute-class"] == "performance"
            assert {"key": "virtual-kubelet.io/provider", "operator": "Exists",
                    "effect": "NoSchedule"} in template["spec"]["tolerations"]
        # The containers the user wrote are untouched.
        assert acs["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["name"] == "ray-worker"
        admitted = await eventually(lambda: env.events("on-acs", "Admitted"), what="Admitted event")
        assert admitted[0]["message"].startswith("admitted to unit acs (acs)")


async def test_priority_preemption_waits_for_suspended_before_admitting() -> None:
    # KubeRay takes a while to suspend: the preemptor must not start before the victim is Suspended.
    async with environment(runtime=30, suspend_delay=0.5) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2",
                                              attributes={"team-a": {"preemptionPolicy": "LowerPriority"}}))
        await env.start_operator()
        await env.create_job(rayjob("victim", "team-a", priority="1"))
        await eventually(lambda: env.phase("team-a", "victim") == "Running", what="victim running")
        await env.create_job(rayjob("vip", "team-a", priority="100"))
        await eventually(lambda: env.phase("team-a", "victim") == "Suspending", what="victim suspending")
        assert not env.running("team-a", "vip")  # quota is still held by the stopping victim
        await eventually(lambda: env.running("team-a", "vip"), what="vip admitted")
        assert env.phase("team-a", "victim") == "Suspended"
        preempted = await eventually(lambda: env.events("victim", "Preempted"), what="Preempted event")
        assert "vip" in preempted[0]["message"]
        assert env.condition("team-a", "victim")["type"] in ("Preempted", "Queued")


async def test_job_preempted_before_kuberay_saw_its_admission_is_released() -> None:
    # Admitted and preempted again before KubeRay reconciled it: KubeRay finds it Suspended with
    # suspend: true and writes nothing more (no status change). Its quota must come back all the same
    # (it was held forever when "Suspended" had to be written for the current generation).
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2",
                                              attributes={"team-a": {"preemptionPolicy": "LowerPriority"}}))
        await env.start_operator()
        await env.create_job(rayjob("victim", "team-a", priority="1"))
        await eventually(lambda: env.phase("team-a", "victim") == "Suspended", what="victim Suspended")
        env.kuberay.paused = True
        await eventually(lambda: env.admission("team-a", "victim") and env.running("team-a", "victim"),
                         what="victim admitted (KubeRay has not seen it)")
        await env.create_job(rayjob("vip", "team-a", priority="100"))
        await eventually(lambda: env.events("victim", "Preempted"), what="victim preempted")
        assert not env.running("team-a", "victim") and env.phase("team-a", "victim") == "Suspended"
        env.kuberay.paused = False
        await eventually(lambda: env.running("team-a", "vip"), what="vip admitted on the released quota")
        await eventually(lambda: env.phase("team-a", "vip") == "Running", what="vip running")
        assert env.phase("team-a", "victim") == "Suspended"  # KubeRay never started the victim
        assert "team-a/victim" not in env.kuberay.unsuspended_at


async def test_validation_failed_releases_quota() -> None:
    async with environment(runtime=0.3) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator()
        await env.create_job(rayjob("broken", "team-a", annotations={FINAL_ANNOTATION: "ValidationFailed"}))
        await env.create_job(rayjob("next", "team-a"))
        await eventually(lambda: env.phase("team-a", "broken") == "ValidationFailed", what="validation failed")
        await eventually(lambda: env.running("team-a", "next"), what="next admitted after the release")


async def test_deleted_running_job_releases_quota() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator()
        await env.create_job(rayjob("one", "team-a"))
        await eventually(lambda: env.running("team-a", "one"), what="one admitted")
        await env.create_job(rayjob("two", "team-a"))
        await env.api.delete("ray.io/v1/rayjobs", "team-a", "one")
        await eventually(lambda: env.running("team-a", "two"), what="two admitted after delete")


async def test_tree_status_shows_used_and_requested() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator()
        await env.create_job(rayjob("one", "team-a"))
        await env.create_job(rayjob("two", "team-a"))

        def status() -> dict:
            tree = env.server.obj(TREES, "kube-system", "elasticquotatree")
            nodes = tree["status"]["nodes"]
            assert nodes["team-a"]["used"]["cpu"] == "2"
            assert nodes["team-a"]["requested"]["cpu"] == "2"
            assert nodes["root"]["admittedJobs"] == 1 and nodes["root"]["pendingJobs"] == 1
            return tree["status"]

        status_ = await eventually(status, what="tree status")
        assert status_["conditions"][0]["status"] == "True"
