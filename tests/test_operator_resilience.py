"""Restart, two instances, API faults and bad objects: nothing admitted twice, nothing lost."""

from __future__ import annotations

import asyncio

import pytest
from kmock_cluster import PEERINGS, RAYJOBS
from operator_env import (
    PRIORITY_CLASSES,
    TREES,
    environment,
    eventually,
    rayjob,
    tree_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


async def test_restart_rebuilds_from_the_api_and_admits_nothing_twice() -> None:
    async with environment(runtime=1.5) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op1 = await env.start_operator(identity="op-1")
        await env.create_job(rayjob("a", "team-a"))
        await eventually(lambda: env.running("team-a", "a"), what="a admitted")
        await env.create_job(rayjob("b", "team-a"))
        await eventually(lambda: env.condition("team-a", "b") is not None, what="b queued")
        await op1.kill()

        await env.start_operator(identity="op-2")
        await eventually(lambda: env.phase("team-a", "a") == "Complete", what="a complete")
        await eventually(lambda: env.running("team-a", "b"), what="b admitted by the new instance")
        assert env.admission("team-a", "b")["by"] == "op-2"
        # a's quota was rebuilt from its annotation: b was admitted only once a had finished (the order of
        # the two events, not a sleep, so a busy machine cannot make it pass or fail by chance)
        assert env.admission("team-a", "b")["admittedAtEpoch"] >= env.kuberay.finished_at["team-a/a"]
        assert env.unsuspend_count("team-a", "a") == 1
        assert env.unsuspend_count("team-a", "b") == 1


async def test_crash_after_the_admission_patch_landed_but_before_its_answer() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op1 = await env.start_operator(identity="op-1")
        # The next admission patch is applied by the API server, but its answer never comes back.
        env.server.inject("PATCH", "rayjobs", status=504, timeout=30, after=True, subresource=None)
        await env.create_job(rayjob("a", "team-a"))
        await env.create_job(rayjob("b", "team-a"))
        await eventually(lambda: any(env.running("team-a", n) for n in ("a", "b")), what="one patch landed")
        await op1.kill()  # dies while waiting for the answer

        await env.start_operator(identity="op-2")
        await asyncio.sleep(1.0)
        running = [n for n in ("a", "b") if env.running("team-a", n)]
        assert len(running) == 1  # the landed admission is counted; the other job still waits
        assert env.unsuspend_count("team-a", running[0]) == 1
        assert env.admission("team-a", running[0])["by"] == "op-1"


async def test_two_instances_only_the_leader_admits_then_the_standby_takes_over() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("4", "4")}, root_min="4", root_max="4"))
        await env.create(PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                    "metadata": {"name": "rayqueue"}})
        leader = await env.start_operator(identity="op-high", peering="rayqueue", priority=10)
        await eventually(lambda: leader.controller.leader, what="op-high leads")
        standby = await env.start_operator(identity="op-low", peering="rayqueue", priority=5)
        await asyncio.sleep(0.5)
        assert leader.controller.leader and not standby.controller.leader
        await env.create_job(rayjob("a", "team-a"))
        await eventually(lambda: env.running("team-a", "a"), what="a admitted")
        assert env.admission("team-a", "a")["by"] == "op-high"

        await leader.kill()  # kopf's keep-alive removes it from the peering object on the way out
        await eventually(lambda: standby.controller.leader, what="op-low takes over")
        await env.create_job(rayjob("b", "team-a"))
        await eventually(lambda: env.running("team-a", "b"), what="b admitted by the new leader")
        assert env.admission("team-a", "b")["by"] == "op-low"
        await env.create_job(rayjob("c", "team-a"))  # 6 CPU > 4: a's usage was rebuilt, c waits
        await asyncio.sleep(0.5)
        assert not env.running("team-a", "c")
        assert env.unsuspend_count("team-a", "a") == 1


async def test_conflicts_server_errors_timeouts_and_dropped_watches() -> None:
    async with environment(runtime=0.3) as env:
        await env.create(TREES, tree_manifest({"team-a": ("4", "4"), "team-b": ("4", "4")},
                                              root_min="8", root_max="8"))
        op = await env.start_operator(timeout_s=0.5)
        env.server.inject("PATCH", "rayjobs", status=409, times=3, subresource=None)
        env.server.inject("PATCH", "rayjobs", status=500, times=3, subresource=None)
        env.server.inject("PATCH", "rayjobs", status=504, timeout=1.0, times=2, subresource=None)
        env.server.inject("GET", "rayjobs", status=503, times=2)
        names = [(f"team-{t}", f"{t}{i}") for t in "ab" for i in range(6)]
        for ns, name in names:
            await env.create_job(rayjob(name, ns))
            if name.endswith("2"):
                env.server.drop_watches()
        await eventually(lambda: all(env.phase(ns, n) == "Complete" for ns, n in names),
                         what="every job completes")
        for ns, name in names:
            assert env.unsuspend_count(ns, name) == 1, name
        assert all(f.hits == f.times for f in env.server.faults)
        retries = sum(s.value for m in op.metrics.api_retries.collect() for s in m.samples
                      if s.name.endswith("_total"))
        assert retries >= 5
        assert op.metrics.conflicts._value.get() >= 1


async def test_unknown_priority_class_is_rejected_until_it_exists() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator()
        await env.create_job(rayjob("typo", "team-a", priority="hihg"))
        rejected = await eventually(lambda: env.events("typo", "Rejected"), what="Rejected event")
        assert "hihg" in rejected[0]["message"] and "UnknownPriorityClass" in rejected[0]["message"]
        # The event and the condition annotation are written by separate background writers.
        condition = await eventually(lambda: env.condition("team-a", "typo"), what="Rejected condition")
        assert condition["type"] == "Rejected" and "hihg" in condition["message"]
        assert not env.running("team-a", "typo")
        await env.create(PRIORITY_CLASSES, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                            "metadata": {"name": "hihg"}, "value": 7})
        await eventually(lambda: env.running("team-a", "typo"), what="admitted once the class exists")


async def test_job_that_never_fits_is_rejected_and_does_not_block_its_queue() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "4")}, root_min="4", root_max="4"))
        await env.create(PRIORITY_CLASSES, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                            "metadata": {"name": "high"}, "value": 100})
        await env.start_operator()
        await env.create_job(rayjob("huge", "team-a", cpu="4", priority="high"))  # 8 CPU > max 4
        await env.create_job(rayjob("small", "team-a"))
        rejected = await eventually(lambda: env.events("huge", "Rejected"), what="huge rejected")
        assert "NeverFits" in rejected[0]["message"]
        assert "team-a" in rejected[0]["message"]
        await eventually(lambda: env.running("team-a", "small"), what="small admitted")
        assert not env.running("team-a", "huge")


async def test_invalid_tree_edit_is_refused_and_the_old_tree_keeps_working() -> None:
    async with environment(runtime=30) as env:
        tree = tree_manifest({"team-a": ("2", "4")}, root_min="4", root_max="4")
        await env.create(TREES, tree)
        await env.start_operator()
        await env.create_job(rayjob("one", "team-a"))
        await eventually(lambda: env.running("team-a", "one"), what="one admitted")
        # An edit that breaks a rule (min above max) is stored anyway (no webhook in this test).
        bad = {"spec": {"root": {**tree["spec"]["root"], "children": [
            {"name": "team-a", "namespaces": ["team-a"], "min": {"cpu": "6"}, "max": {"cpu": "1"}}]}}}
        await env.api.patch(TREES, "kube-system", "elasticquotatree", bad)
        invalid = await eventually(lambda: env.events("elasticquotatree", "InvalidTree"), what="InvalidTree")
        assert "team-a" in invalid[0]["message"] and "keeping the last good tree" in invalid[0]["message"]

        def condition_false() -> bool:
            status = env.server.obj(TREES, "kube-system", "elasticquotatree").get("status") or {}
            return any(c["status"] == "False" for c in status.get("conditions", []))

        await eventually(condition_false, what="tree status says invalid")
        # The old tree (team-a max 4) still admits a second 2-CPU job.
        await env.create_job(rayjob("two", "team-a"))
        await eventually(lambda: env.running("team-a", "two"), what="two admitted under the old tree")
        await env.create_job(rayjob("three", "team-a"))
        await asyncio.sleep(0.5)
        assert not env.running("team-a", "three")


async def test_rayjob_outside_managed_namespaces_is_left_alone() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator()
        await env.create_job(rayjob("free", "elsewhere", suspend=False))
        await env.create_job(rayjob("held", "elsewhere"))
        await asyncio.sleep(0.5)
        assert env.server.obj(RAYJOBS, "elsewhere", "held")["spec"]["suspend"] is True
        assert env.admission("elsewhere", "free") is None
        assert not env.events("held")


async def test_a_preemption_in_progress_at_a_restart_is_resumed_not_decided_again() -> None:
    # The operator dies after its suspend patch (with the preemption annotation) landed but before
    # KubeRay reported the victim Suspended: the new instance waits for that victim, picks no other,
    # posts no second event and counts nothing again.
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op1 = await env.start_operator(identity="op-1")
        await env.create_job(rayjob("victim", "team-a", priority="1"))
        await eventually(lambda: env.phase("team-a", "victim") == "Running", what="victim running")
        env.kuberay.paused = True  # KubeRay will not confirm the suspension for now
        await env.create_job(rayjob("vip", "team-a", priority="100"))
        await eventually(lambda: env.events("victim", "Preempted"), what="victim preempted")
        assert not env.running("team-a", "victim") and env.phase("team-a", "victim") == "Running"
        await op1.kill()

        op2 = await env.start_operator(identity="op-2")
        engine = await eventually(lambda: op2.controller.engine, what="op-2 rebuilt its engine")
        await eventually(lambda: "team-a/vip" in {w.name for w in engine.workloads.values()}
                         and op2.controller.cycles >= 2, what="op-2 ran cycles with vip queued")
        victim = next(w for w in engine.workloads.values() if w.name == "team-a/victim")
        assert victim.state == "Preempting"  # resumed as it was, for vip
        assert not env.running("team-a", "vip")  # its quota is still held by the stopping victim
        env.kuberay.paused = False
        await eventually(lambda: env.running("team-a", "vip"), what="vip admitted by op-2")
        assert env.admission("team-a", "vip")["by"] == "op-2"
        assert len(env.events("victim", "Preempted")) == 1  # decided once
        preempts = op2.controller.metrics.registry.get_sample_value(
            "rayqueue_operator_decisions_total", {"kind": "preempt", "queue": "team-a"})
        assert not preempts  # and not counted again by the new instance
