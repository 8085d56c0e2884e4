"""Standalone mode end to end: the real service, a real Ray cluster, RayJob manifests.

One Ray head is shared by the module (starting Ray costs seconds on a small machine); every test runs
its own service (own SQLite file) against it. The drivers are gate scripts that finish when the test
says so, so every ordering below is decided by the service, not by timing luck.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standalone_env import HANG_GUARD_S, Gates, rayjob, tree, wait_until

from rayqueue.quota.quantity import GPU
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.raycluster import LocalRayCluster, alive_nodes
from rayqueue.scheduler.service.rayjobs import RayJobs, submission_for
from rayqueue.scheduler.service.store import Store
from rayqueue.scheduler.workloads.resourcepolicy import load_resource_policy_text

# a hang guard only: the module fixture starts Ray (minutes on a busy machine) inside the first test's time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TWO_TEAMS = tree(("team-a", 1, 2), ("team-b", 1, 2), root_min=2, root_max=2)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster.start(num_cpus=8, num_gpus=4, labels={"pool": "ecs"})
    try:
        cluster.add_node({"pool": "acs"}, num_gpus=4, num_cpus=4)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    g = Gates(tmp_path)
    yield g
    g.open_all()  # no driver outlives its test


class Harness:
    def __init__(self, service: Service, gates: Gates) -> None:
        self.svc = service
        self.gates = gates
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t")

    def submit(self, name: str, **kw: Any) -> str:
        accepted = self.svc.submit_text(rayjob(name, self.gates.entrypoint(name), **kw))
        assert len(accepted) == 1
        return accepted[0].id

    def state(self, job_id: str) -> str:
        row = self.svc.store.get(job_id)
        assert row is not None
        return row.state

    async def until_state(self, job_id: str, *states: str, timeout: float = HANG_GUARD_S) -> None:
        await wait_until(lambda: self.state(job_id) in states, timeout, f"{job_id} to be {'/'.join(states)}")

    def gpu_usage(self, node: str = "root") -> int:
        return self.svc.engine.tree.nodes[node].usage.get(GPU, 0) // 1000

    def events(self, job_id: str) -> list[str]:
        return [e.kind for e in self.svc.store.events(job_id)]


@pytest.fixture
async def harness(ray_cluster: LocalRayCluster, gates: Gates, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Harness] = []

    async def make(tree_yaml: str = TWO_TEAMS, db: str | None = None, policy: str | None = None) -> Harness:
        store = Store(db or f"sqlite:///{tmp_path}/rq-{len(made)}.db")
        svc = Service(
            store,
            RayJobs(ray_cluster.url, auth_token=ray_cluster.auth_token),
            QuotaTree.from_yaml_text(tree_yaml),
            load_resource_policy_text(policy) if policy else None,
            config=ServiceConfig(poll_interval_s=0.1, capacity_interval_s=1.0),
            tree_yaml=tree_yaml,
        )
        await svc.start()
        h = Harness(svc, gates)
        made.append(h)
        return h

    yield make
    gates.open_all()
    for h in made:
        await h.svc.stop()
        await h.http.aclose()
        h.svc.store.close()


# ---------------------------------------------------------------------------------------- admission


async def test_a_quota_for_two_jobs_makes_the_third_wait_until_one_finishes(harness: Any) -> None:
    h = await harness(tree(("team-a", 0, 2), root_max=2))
    first, second, third = (h.submit(n) for n in ("first", "second", "third"))
    assert h.state(first) == h.state(second) == st.ADMITTED
    assert h.state(third) == st.PENDING
    why = h.svc.explain(third)
    assert why["reason_code"] == "QuotaMaxExceeded" and why["position"] == 0
    assert "would use 3 of max 2 nvidia.com/gpu" in why["reason"]
    await h.until_state(first, st.RUNNING)
    await h.until_state(second, st.RUNNING)
    assert h.state(third) == st.PENDING and h.gpu_usage() == 2

    h.gates.open("first")
    await h.until_state(first, st.SUCCEEDED)
    await h.until_state(third, st.RUNNING)  # admitted as soon as the quota came back, and Ray runs it
    assert h.gpu_usage() == 2
    row = h.svc.store.get(first)
    assert row is not None and row.logs is not None and "finished first" in row.logs  # kept for post-mortems

    h.gates.open("second")
    h.gates.open("third")
    await h.until_state(third, st.SUCCEEDED)
    await h.until_state(second, st.SUCCEEDED)
    assert h.gpu_usage() == 0
    assert h.events(third) == ["Submitted", "Admitted", "Released", "Running", "Succeeded"]

    metrics = (await h.http.get("/metrics")).text
    assert 'rayqueue_admitted_workloads_total{queue="team-a",unit="default"} 3.0' in metrics
    assert 'rayqueue_finished_workloads_total{queue="team-a",state="Succeeded"} 3.0' in metrics
    assert 'rayqueue_quota_resource_usage{quota_node="root",resource="nvidia.com/gpu"} 0.0' in metrics
    assert "rayqueue_admission_wait_time_seconds_count" in metrics


async def test_higher_priority_is_admitted_first_and_cancel_frees_quota(harness: Any) -> None:
    # Never: the running blocker is not preempted, so the queue's order decides who comes next
    h = await harness(tree(("team-a", 0, 1), root_max=1, preemption="Never"))
    blocker = h.submit("blocker")
    low = h.submit("low", priority="low")
    high = h.submit("high", priority="high")
    assert h.svc.explain(high)["position"] == 0 and h.svc.explain(low)["position"] == 1
    await h.until_state(blocker, st.RUNNING)

    h.gates.open("blocker")
    await h.until_state(high, st.ADMITTED, st.RUNNING)
    assert h.state(low) == st.PENDING

    # cancel: the pending job leaves its queue; the running one is stopped in Ray and frees its quota
    assert h.svc.cancel(low).state == st.CANCELLED
    await h.until_state(high, st.RUNNING)
    # Ray says RUNNING before the driver has printed anything: wait for the line the log check below needs
    await wait_until(lambda: "started high" in (h.svc.ray.logs(high) or ""), what="high's driver to start")
    resp = await h.http.post(f"/v1/jobs/{high}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == st.CANCELLED
    assert h.gpu_usage() == 0
    sid = h.svc.store.get(high).submission_id  # type: ignore[union-attr]
    await wait_until(lambda: h.svc.ray.status(sid).status == "STOPPED", what="Ray to stop the cancelled job")
    assert (await h.http.post(f"/v1/jobs/{high}/cancel")).status_code == 409
    # Ray's end and the driver's log are kept for the post-mortem
    await wait_until(lambda: h.svc.store.get(high).ray_status == "STOPPED", what="the stop to be recorded")  # type: ignore[union-attr]
    logs = (await h.http.get(f"/v1/jobs/{high}/logs")).json()
    assert logs["source"] == "store" and "started high" in logs["logs"]
    assert h.events(high)[-2:] == ["Cancelled", "RayStopped"]


async def test_borrowing_then_reclaim_stops_the_borrower_in_ray_and_requeues_it(harness: Any) -> None:
    h = await harness(TWO_TEAMS)
    a1 = h.submit("a1")
    a2 = h.submit("a2")  # team-b is idle: team-a borrows its guarantee
    admitted = h.svc.store.events(a2)[1]
    assert admitted.kind == "Admitted" and "borrowing nvidia.com/gpu=1" in admitted.message
    await h.until_state(a1, st.RUNNING)
    await h.until_state(a2, st.RUNNING)

    metrics = (await h.http.get("/metrics")).text
    assert 'rayqueue_quota_resource_borrowed{quota_node="team-a",resource="nvidia.com/gpu"} 1.0' in metrics
    b1 = h.submit("b1", namespace="team-b")  # within team-b's guarantee: reclaim
    assert h.state(a2) == st.PREEMPTING
    assert h.svc.explain(b1)["reason_code"] == "WaitingForReclaim"
    await h.until_state(b1, st.RUNNING)
    row = h.svc.store.get(a2)
    assert row is not None and row.state == st.PENDING and row.preemptions == 1 and row.attempt == 1
    assert h.events(a2)[-2:] == ["Preempting", "Requeued"]
    assert h.svc.ray.status(a2).status == "STOPPED"  # the first attempt really stopped in Ray
    preempting = h.svc.store.events(a2)[-2]
    assert preempting.message.startswith("preempted to return root/team-b its guarantee for b1")  # says why
    metrics = (await h.http.get("/metrics")).text
    assert 'rayqueue_evicted_workloads_total{queue="team-a",reason="Reclaimed"} 1.0' in metrics
    assert 'rayqueue_preempted_workloads_total{preempting_queue="team-b",reason="Reclaimed"} 1.0' in metrics
    assert 'rayqueue_workloads{queue="team-a",state="Pending"} 1.0' in metrics
    assert 'rayqueue_workloads{queue="team-b",state="Running"} 1.0' in metrics
    assert h.gpu_usage("team-a") == 1 and h.gpu_usage("team-b") == 1

    h.gates.open("b1")
    await h.until_state(a2, st.RUNNING)  # borrows again once team-b is idle, as a new Ray submission
    assert h.svc.store.get(a2).submission_id == f"{a2}-r1"  # type: ignore[union-attr]
    h.gates.open("a1")
    h.gates.open("a2")
    await h.until_state(a2, st.SUCCEEDED)
    await h.until_state(a1, st.SUCCEEDED)
    assert h.gpu_usage() == 0


ECS_THEN_ACS = """\
apiVersion: scheduling.alibabacloud.com/v1alpha1
kind: ResourcePolicy
metadata: {name: ecs-then-acs}
spec:
  units:
    - {resource: ecs, nodeSelector: {pool: ecs}}
    - {resource: acs, nodeSelector: {pool: acs}, max: 10}
"""


async def test_units_take_capacity_from_labelled_ray_nodes_and_jobs_are_pinned_to_their_unit(
    harness: Any, ray_cluster: LocalRayCluster
) -> None:
    h = await harness(tree(("team-a", 0, 9), root_max=9), policy=ECS_THEN_ACS)
    units = h.svc.engine.units.by_name
    assert units["ecs"].capacity[GPU] == 4000  # type: ignore[index]  # the head, started with pool=ecs
    assert units["acs"].capacity[GPU] == 4000  # type: ignore[index]  # the node started with pool=acs
    on_ecs = h.submit("on-ecs", gpus=4)
    spilled = h.submit("spilled", gpus=4)  # ecs is full: ACS
    assert h.svc.explain(on_ecs)["unit"] == "ecs" and h.svc.explain(spilled)["unit"] == "acs"
    third = h.submit("third", gpus=1)  # both units full: waits, although root allows it
    assert h.svc.explain(third)["reason_code"] == "NoCapacityInUnits"
    await h.until_state(on_ecs, st.RUNNING)
    await h.until_state(spilled, st.RUNNING)
    # each driver runs on a node of its own unit: Ray's label selector pins it
    nodes = alive_nodes(ray_cluster.url, token=ray_cluster.auth_token)
    node_pool = {n["node_id"]: n["labels"].get("pool") for n in nodes}
    client = h.svc.ray._c()
    assert node_pool[client.get_job_info(on_ecs).driver_node_id] == "ecs"
    assert node_pool[client.get_job_info(spilled).driver_node_id] == "acs"
    h.gates.open("spilled")
    await h.until_state(third, st.RUNNING)
    assert h.svc.explain(third)["unit"] == "acs"
    h.gates.open_all()
    await h.until_state(on_ecs, st.SUCCEEDED)


# ---------------------------------------------------------------------------------------- bad input


async def test_each_bad_input_gets_a_clear_error_and_loses_nothing(harness: Any) -> None:
    h = await harness(TWO_TEAMS)
    kept = h.submit("kept", gpus=2)
    waiting = h.submit("waiting", gpus=2)
    assert h.state(waiting) == st.PENDING

    async def refused(body: dict[str, Any], *needles: str) -> None:
        resp = await h.http.post("/v1/jobs", json=body)
        assert resp.status_code == 422, resp.text
        text = "\n".join(resp.json()["problems"])
        for needle in needles:
            assert needle in text, (needle, text)

    ok = rayjob("fine", h.gates.entrypoint("fine"))
    await refused({"yaml": "apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: x\n", "source": "bad.yaml"},
                  "bad.yaml", "malformed YAML", "line")
    await refused({"yaml": ok + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: code}\n"},
                  "document 1", "ConfigMap", "not a RayJob")
    await refused({"yaml": ok, "queue": "team-z"}, "--queue", "team-z")
    await refused({"yaml": rayjob("lost", "x", namespace="nowhere")}, "metadata.namespace", "nowhere")
    await refused({"yaml": ok, "priority": "urgent"}, "--priority", "unknown priority class 'urgent'")
    await refused({"yaml": rayjob("p", "x", priority="vip")}, "label rayqueue.io/priority-class", "'vip'")
    await refused({"yaml": rayjob("huge", "x", gpus=3)}, "huge", "never", "max of root/team-a is 2")
    await refused({"yaml": rayjob("noentry", "''")}, "spec.entrypoint is required")
    await refused({"yaml": rayjob("env", "x", runtime_env="- not a mapping\n")}, "spec.runtimeEnvYAML")
    # one bad document refuses the whole file: the good one is not half-accepted
    await refused({"yaml": ok + "---\n" + rayjob("huge", "x", gpus=3)}, "huge")
    assert [r.name for r in h.svc.store.jobs()].count("fine") == 0
    # --ignore-other-kinds runs a KubeRay sample file with its ConfigMap
    resp = await h.http.post("/v1/jobs", json={"yaml": ok + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
                                               "ignore_other_kinds": True})
    assert resp.status_code == 201 and resp.json()["jobs"][0]["name"] == "fine"

    # invalid tree edits: named node and field; nothing changes
    bad_tree = TWO_TEAMS.replace("{name: team-b, namespaces: [team-b], min: {nvidia.com/gpu: 1}",
                                 "{name: team-b, namespaces: [team-b], min: {nvidia.com/gpu: 5}")
    resp = await h.http.post("/v1/quota", json={"yaml": bad_tree})
    assert resp.status_code == 422
    assert any("root/team-b" in p and "min" in p for p in resp.json()["problems"])
    without_a = tree(("team-b", 1, 2), root_min=2, root_max=2)
    resp = await h.http.post("/v1/quota", json={"yaml": without_a})
    assert resp.status_code == 422 and "team-a" in "\n".join(resp.json()["problems"])
    resp = await h.http.post("/v1/quota", json={"yaml": "kind: [unclosed"})
    assert resp.status_code == 422 and "malformed YAML" in resp.json()["problems"][0]

    # nothing already accepted was lost
    assert h.state(kept) in (st.ADMITTED, st.RUNNING) and h.state(waiting) == st.PENDING
    assert h.svc.engine.tree.nodes["team-b"].max[GPU] == 2000
    names = {j["name"] for j in (await h.http.get("/v1/jobs")).json()["jobs"]}
    assert names == {"kept", "waiting", "fine"}


async def test_quota_apply_dry_run_reports_the_effect_then_applies_while_jobs_run(harness: Any) -> None:
    h = await harness(tree(("team-a", 0, 2), ("team-b", 0, 2), root_max=2))
    running = h.submit("running", gpus=2)
    waiting = h.submit("waiting-b", namespace="team-b")
    smaller = tree(("team-a", 0, 1), ("team-b", 0, 3), root_max=3)
    resp = await h.http.post("/v1/quota", json={"yaml": smaller, "dry_run": True})
    effects = "\n".join(resp.json()["effects"])
    assert resp.json()["applied"] is False
    assert "root/team-a max.nvidia.com/gpu: 2 -> 1" in effects
    assert "root/team-a uses 2 nvidia.com/gpu, over its new max 1" in effects
    assert f"running jobs over the new max (nvidia.com/gpu) of root/team-a: {running}" in effects
    assert h.svc.engine.tree.nodes["root"].max[GPU] == 2000  # a dry run changes nothing
    assert h.state(waiting) == st.PENDING

    resp = await h.http.post("/v1/quota", json={"yaml": smaller})
    assert resp.json()["applied"] is True
    assert h.state(running) in (st.ADMITTED, st.RUNNING)  # keeps running above its new max
    assert h.state(waiting) == st.ADMITTED  # the larger root admits the waiting job at once
    assert h.svc.store.get_setting("quota_tree_yaml") == smaller


# ---------------------------------------------------------------------------------------- crash safety


async def test_admitted_but_not_yet_released_job_is_submitted_once_after_a_crash(
    harness: Any, ray_cluster: LocalRayCluster, tmp_path: Path, gates: Gates
) -> None:
    """kill -9 between committing ``Admitted`` and Ray's answer: the restart submits with the same id."""
    db = f"sqlite:///{tmp_path}/crash.db"
    h = await harness(tree(("team-a", 0, 2), root_max=2), db=db)
    one = h.submit("one")
    two = h.submit("two")
    await h.until_state(one, st.RUNNING)
    await h.until_state(two, st.RUNNING)
    await h.svc.stop()
    # Rewind the rows to "admitted, release not confirmed", as if we died inside the release:
    # one's submission reached Ray (it runs), two's is forgotten by a fresh cluster-side id.
    for job_id in (one, two):
        row = h.svc.store.get(job_id)
        assert row is not None
        h.svc.store.transition(job_id, "Test", "rewound", state=st.ADMITTED, released=False,
                               submission_id=row.submission_id if job_id == one else f"{job_id}-x",
                               running_at=None)
    h2 = await harness(tree(("team-a", 0, 2), root_max=2), db=db)
    assert h2.gpu_usage() == 2  # both counted again, exactly
    await h2.until_state(one, st.RUNNING)
    await h2.until_state(two, st.RUNNING)
    assert any("found after a restart" in e.message for e in h2.svc.store.events(one))  # not submitted again
    ray = RayJobs(ray_cluster.url, auth_token=ray_cluster.auth_token)
    ids = [j.submission_id for j in ray._c().list_jobs()]
    assert ids.count(one) == 1 and ids.count(f"{two}-x") == 1
    # and had we asked Ray again, the submission id would have refused a second start
    row = h2.svc.store.get(one)
    assert row is not None
    again = submission_for(h2.svc.state.request(row), one, job_id=one, queue="team-a", unit="default")
    assert ray.submit(again) is False


async def test_a_preemption_in_progress_at_a_crash_is_resumed_not_decided_again(
    harness: Any, ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """Killed after committing ``Preempting`` but before Ray stopped the victim: the restart resumes that
    preemption (one event, one count, no second victim)."""
    db = f"sqlite:///{tmp_path}/preempt-crash.db"
    h = await harness(TWO_TEAMS, db=db)
    a1 = h.submit("a1")
    a2 = h.submit("a2")  # team-a borrows team-b's idle guarantee
    await h.until_state(a1, st.RUNNING)
    await h.until_state(a2, st.RUNNING)

    async def crashed_before_asking_ray(job_id: str, sid: str) -> None:
        return None

    h.svc.release.stop_in_ray = crashed_before_asking_ray  # type: ignore[method-assign]
    b1 = h.submit("b1", namespace="team-b")  # within team-b's guarantee: a2 is reclaimed
    assert h.state(a2) == st.PREEMPTING
    await h.svc.stop()  # the service dies here; Ray still runs the victim
    assert h.svc.ray.status(a2).status == "RUNNING"  # type: ignore[union-attr]

    h2 = await harness(TWO_TEAMS, db=db)
    await h2.until_state(b1, st.RUNNING)
    row = h2.svc.store.get(a2)
    assert row is not None and row.state == st.PENDING and row.preemptions == 1
    assert h2.svc.ray.status(a2).status == "STOPPED"
    assert h2.events(a2).count("Preempting") == 1  # decided once
    assert "Preempting" not in h2.events(a1) and h2.state(a1) == st.RUNNING  # no second victim
    metrics = (await h2.http.get("/metrics")).text
    assert 'rayqueue_evicted_workloads_total{queue="team-a",reason="Reclaimed"} 1.0' in metrics
