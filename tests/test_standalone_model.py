"""Standalone mode without Ray: the release mapping, the store, the API's guards, and crash safety as an
invariant over random histories (a fake Ray that can "die" between accepting a job and answering)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import fake_ray
import httpx
import pytest
import yaml
from fake_ray import settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from rich.console import Console
from sqlalchemy import event as sa_event
from standalone_env import HANG_GUARD_S, rayjob, tree, wait_until
from typer.testing import CliRunner

from rayqueue.quota.quantity import GPU, MAX_JOBS
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.cli import app as cli_app
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig, ServiceError, SubmitError
from rayqueue.scheduler.service.raycluster import free_ports
from rayqueue.scheduler.service.rayjobs import submission_for
from rayqueue.scheduler.service.server import Runner, ServeOptions, is_loopback, load_priority_classes
from rayqueue.scheduler.service.store import Store, submission_id
from rayqueue.scheduler.service.tables import display_quantity, status_tables
from rayqueue.scheduler.workloads.rayjob import rayjob_request

TWO_TEAMS = tree(("team-a", 1, 3), ("team-b", 1, 3), root_min=2, root_max=3)
NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}]


# ------------------------------------------------------------------------------------ release mapping


def test_the_driver_reserves_the_head_pod_and_is_pinned_to_its_unit() -> None:
    manifest = yaml.safe_load(rayjob("train", "python train.py", gpus=2, runtime_env="env_vars: {A: '1'}\n"))
    manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1500m", "memory": "2Gi"}, "limits": {"nvidia.com/gpu": 1}}
    req = rayjob_request(manifest)
    sub = submission_for(req, "train-abc", job_id="train-abc", queue="team-a", unit="ecs",
                         node_selector={"pool": "ecs"})
    kwargs = sub.kwargs()
    assert kwargs["submission_id"] == "train-abc"
    assert kwargs["entrypoint"] == "python train.py"
    assert kwargs["runtime_env"] == {"env_vars": {"A": "1"}}
    assert kwargs["entrypoint_num_cpus"] == 1.5  # the head pod, not the gang
    assert kwargs["entrypoint_num_gpus"] == 1
    assert kwargs["entrypoint_memory"] == 2 * 2**30
    assert kwargs["entrypoint_label_selector"] == {"pool": "ecs"}
    assert kwargs["metadata"]["rayqueue.io/unit"] == "ecs"
    assert req.total[GPU] == 3000  # while the quota counts head + workers


def test_submission_ids_differ_per_attempt_so_ray_never_starts_one_twice() -> None:
    assert submission_id("job-1", 0) == "job-1"
    assert submission_id("job-1", 2) == "job-1-r2"


# ------------------------------------------------------------------------------------ store


def test_every_transition_is_an_event_row_in_the_same_transaction(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.add_jobs([st.JobRecord(id="j1", name="j", queue="team-a", submitted_at=1.0)])
    store.transition("j1", "Admitted", "on ecs", at=2.0, state=st.ADMITTED, unit="ecs")
    store.transition("j1", "Succeeded", "done", at=3.0, state=st.SUCCEEDED)
    reopened = Store(f"sqlite:///{tmp_path}/s.db")
    assert [(e.kind, e.state, e.at) for e in reopened.events("j1")] == [
        ("Submitted", st.PENDING, 1.0), ("Admitted", st.ADMITTED, 2.0), ("Succeeded", st.SUCCEEDED, 3.0)]
    assert reopened.get("j1").state == st.SUCCEEDED  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        reopened.transition("nope", "X")


def test_an_admission_takes_the_submission_id_of_the_jobs_current_attempt_with_its_event(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/a.db")
    store.add_jobs([st.JobRecord(id="j1", name="j", queue="team-a", submitted_at=1.0, attempt=2)])
    row = store.admit("j1", "on ecs", at=2.0, state=st.ADMITTED, unit="ecs", released=False)
    assert row is not None and row.submission_id == "j1-r2" and row.state == st.ADMITTED and row.unit == "ecs"
    again = Store(f"sqlite:///{tmp_path}/a.db").get("j1")
    assert again is not None and (again.submission_id, again.state, again.unit) == ("j1-r2", st.ADMITTED, "ecs")
    assert [(e.kind, e.state, e.unit, e.at) for e in store.events("j1")][-1] == ("Admitted", st.ADMITTED, "ecs", 2.0)
    assert store.admit("gone", "x", at=3.0, state=st.ADMITTED) is None
    assert store.transition_from("j1", st.PENDING, "Running", "no", at=4.0, state=st.RUNNING) is None
    ran = store.transition_from("j1", st.ADMITTED, "Running", "runs", at=5.0, state=st.RUNNING, running_at=5.0)
    assert ran is not None and ran.state == st.RUNNING and ran.submission_id == "j1-r2"
    assert [(e.kind, e.state) for e in store.events("j1")][-1] == ("Running", st.RUNNING)
    assert store.transition_from("j1", st.ADMITTED, "Running", "again", at=6.0, state=st.RUNNING) is None
    assert len(store.events("j1")) == 3  # Submitted, Admitted, Running: a refused change records nothing


# ------------------------------------------------------------------------------------ guards


def test_a_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ServiceError, match="--token"):
        Runner(ServeOptions(host="0.0.0.0", port=18999, state_dir=tmp_path)).check()
    Runner(ServeOptions(host="0.0.0.0", port=18999, token="s3cret", state_dir=tmp_path)).check()


def test_priority_classes_from_kubernetes_documents_or_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "pc.yaml"
    f.write_text("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: batch}\nvalue: 7\n")
    assert load_priority_classes(f).resolve("batch") == (7, "batch")
    f.write_text("gold: 10\nsilver: 5\n")
    assert load_priority_classes(f).resolve("silver") == (5, "silver")
    f.write_text("gold: high\n")
    with pytest.raises(ServiceError, match="gold"):
        load_priority_classes(f)


def test_cli_registers_the_service_commands_and_quota_apply() -> None:
    runner = CliRunner()
    out = runner.invoke(cli_app, ["--help"]).output
    for command in ("serve", "submit", "status", "jobs", "explain", "logs", "cancel", "history", "demo"):
        assert command in out
    assert "apply" in runner.invoke(cli_app, ["quota", "--help"]).output
    result = runner.invoke(cli_app, ["status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "no rayqueue service answers" in result.output


# ------------------------------------------------------------------------------------ a fake Ray


class Crash(BaseException):
    """The service process dies here (kill -9): nothing after this line of the service runs."""


class FakeRay(fake_ray.FakeRay):
    """Ray that keeps a new job pending, and can die with the service mid-submit."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[str] = []
        self.crash_next_submit = False

    def submit(self, sub: Any) -> bool:
        if sub.submission_id in self.jobs:
            return False
        self.jobs[sub.submission_id] = "PENDING"
        self.accepted.append(sub.submission_id)
        if self.crash_next_submit:
            self.crash_next_submit = False
            raise Crash  # Ray has the job, the service never heard back
        return True

    def logs(self, sid: str) -> str | None:
        return f"log of {sid}\n" if sid in self.jobs else None





async def _start(store: Store, ray: FakeRay) -> Service:
    svc = Service(store, ray, QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600),
                  tree_yaml=TWO_TEAMS, nodes=lambda _: NODES)
    await svc.start()
    await settle(svc)
    return svc


async def _crash(svc: Service) -> None:
    """Lose the process: its tasks vanish; no shutdown code runs."""
    for task in svc._tasks + list(svc.state.releasing.values()) + list(svc.state.background):
        task.cancel()
    await asyncio.sleep(0)


def _check(svc: Service, ray: FakeRay, accepted: set[str]) -> None:
    rows = {r.id: r for r in svc.store.jobs()}
    assert accepted <= set(rows), "an accepted job was lost"
    holding = [r for r in rows.values() if r.state in st.ACTIVE_STATES]
    for node in ("root", "team-a", "team-b"):
        expected = sum(r.request_dict().get(GPU, 0) for r in holding if node in ("root", r.queue))
        assert svc.engine.tree.nodes[node].usage.get(GPU, 0) == expected, f"{node} usage is not exact"
    assert svc.engine.tree.nodes["root"].usage.get(MAX_JOBS, 0) == 1000 * len(holding)
    assert len(ray.accepted) == len(set(ray.accepted)), "a submission id was started twice"
    for row in rows.values():
        if row.state in st.ACTIVE_STATES and row.released:
            assert row.submission_id in ray.jobs, f"{row.id} is counted but Ray does not have it"
    for job_id in rows:
        live = [sid for sid, s in ray.jobs.items() if s in ("PENDING", "RUNNING")
                and (sid == job_id or sid.startswith(f"{job_id}-r"))]
        assert len(live) <= 1, f"{job_id} runs twice in Ray: {live}"
    assert svc.engine.tree.nodes["root"].usage.get(GPU, 0) <= 3000
    for job_id, row in rows.items():
        attempts = [sid for sid in ray.accepted if sid == job_id or sid.startswith(f"{job_id}-r")]
        done = [sid for sid in attempts if ray.jobs.get(sid) in ("SUCCEEDED", "FAILED")]
        if done:
            assert attempts[-1] == done[0], f"{job_id} ran again after it ended in Ray"
            assert row.state in st.FINAL_STATES or row.state in st.ACTIVE_STATES


ACTIONS = ("submit", "submit", "submit", "run", "finish", "cancel", "crash", "crash_mid_release", "ray_lost")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=hs.lists(hs.tuples(hs.sampled_from(ACTIONS), hs.integers(0, 10**6)), min_size=5, max_size=30))
def test_crash_at_any_moment_loses_nothing_runs_nothing_twice_and_keeps_quota_exact(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    db = f"sqlite:///{tmp_path_factory.mktemp('crash')}/rq.db"

    async def scenario() -> None:
        store, ray = Store(db), FakeRay()
        svc = await _start(store, ray)
        accepted: set[str] = set()
        for action, seed in steps:
            rnd = random.Random(seed)
            if action == "submit":
                team = rnd.choice(["team-a", "team-b"])
                text = rayjob(f"j{seed % 97}", "python x.py", namespace=team, gpus=rnd.choice([1, 1, 2]),
                              priority=rnd.choice(["low", "normal", "high"]))
                accepted |= {a.id for a in svc.submit_text(text)}
            elif action == "run":
                pending = [sid for sid, s in ray.jobs.items() if s == "PENDING"]
                if pending:
                    ray.jobs[rnd.choice(pending)] = "RUNNING"
            elif action == "finish":
                running = [sid for sid, s in ray.jobs.items() if s == "RUNNING"]
                if running:
                    ray.jobs[rnd.choice(running)] = rnd.choice(["SUCCEEDED", "FAILED"])
            elif action == "ray_lost":  # the Ray cluster is replaced: it forgets every job
                ray.jobs.clear()
            elif action == "cancel":
                live = svc.store.jobs(st.LIVE_STATES)
                if live:
                    svc.cancel(rnd.choice(live).id)
            elif action in ("crash", "crash_mid_release"):
                ray.crash_next_submit = action == "crash_mid_release"
                if ray.crash_next_submit:
                    text = rayjob(f"m{seed % 97}", "python x.py", namespace="team-b", gpus=1)
                    accepted |= {a.id for a in svc.submit_text(text)}
                    await asyncio.sleep(0.01)
                await _crash(svc)
                ray.crash_next_submit = False
                for sid, state in list(ray.jobs.items()):  # Ray goes on while we are down
                    if state == "RUNNING" and rnd.random() < 0.5:
                        ray.jobs[sid] = "SUCCEEDED"
                    elif state == "PENDING" and rnd.random() < 0.5:
                        ray.jobs[sid] = "RUNNING"
                svc = await _start(Store(db), ray)
            await settle(svc)
            _check(svc, ray, accepted)
        await svc.stop()

    asyncio.run(scenario())


async def test_the_http_api_answers_with_problems_and_needs_the_token(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/api.db")
    svc = Service(store, FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS), nodes=lambda _: NODES)  # type: ignore[arg-type]
    await svc.start()
    try:
        app = create_app(svc, token="t0ken")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/v1/jobs")).status_code == 401
            auth = {"Authorization": "Bearer t0ken"}
            resp = await http.post("/v1/jobs", headers=auth, json={"yaml": "kind: RayJob\n", "source": "job.yaml"})
            assert resp.status_code == 422 and resp.json()["problems"]
            ok = await http.post("/v1/jobs", headers=auth, json={"yaml": rayjob("x", "python x.py")})
            assert ok.status_code == 201
            job = ok.json()["jobs"][0]
            assert job["state"] == st.ADMITTED and job["queue"] == "team-a" and job["unit"] == "default"
            assert (job["reason_code"], job["reason"]) == ("Admitted", "admitted to root/team-a on unit default")
            explained = (await http.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
            assert explained["unit"] == "default" and explained["submission_id"] == job["id"]
            assert (await http.get("/v1/jobs/nope", headers=auth)).status_code == 404
            schema = (await http.get("/openapi.json")).json()
            assert "/v1/jobs" in schema["paths"] and "/v1/quota" in schema["paths"]
    finally:
        await svc.stop()


async def test_a_job_cancelled_while_ray_is_being_asked_is_stopped_and_stays_cancelled(tmp_path: Path) -> None:
    import threading

    class SlowRay(FakeRay):
        def __init__(self) -> None:
            super().__init__()
            self.gate = threading.Event()
            self.entered = threading.Event()

        def submit(self, sub: Any) -> bool:
            self.entered.set()
            self.gate.wait(120)  # a hang guard: the test opens the gate
            return super().submit(sub)

    ray = SlowRay()
    svc = Service(Store(f"sqlite:///{tmp_path}/c.db"), ray, QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=0.01), nodes=lambda _: NODES)
    await svc.start()
    try:
        job = svc.submit_text(rayjob("slow", "python x.py"))[0].id
        assert svc.store.get(job).state == st.ADMITTED  # type: ignore[union-attr]
        await wait_until(ray.entered.is_set, 120, "the release to be inside Ray's submit_job call")
        svc.cancel(job)
        ray.gate.set()
        await wait_until(lambda: ray.jobs.get(job) == "STOPPED", 120, "Ray to stop what it took after the cancel")
        # the stop is settled (Ray's end recorded) and, polls later, the job is still the user's Cancelled
        await wait_until(lambda: "RayStopped" in [e.kind for e in svc.store.events(job)], 120, "the stop recorded")
        assert svc.store.get(job).state == st.CANCELLED  # type: ignore[union-attr]
        assert svc.engine.tree.nodes["root"].usage.get(GPU, 0) == 0
    finally:
        await svc.stop()


async def test_with_no_configuration_a_job_without_namespace_queues_in_the_default_leaf(tmp_path: Path) -> None:
    from rayqueue.scheduler.service.core import default_tree

    svc = Service(Store(f"sqlite:///{tmp_path}/d.db"), FakeRay(), default_tree(), nodes=lambda _: NODES)  # type: ignore[arg-type]
    await svc.start()
    try:
        accepted = svc.submit_text(rayjob("plain", "python x.py", namespace=None))
        assert accepted[0].queue == "default" and accepted[0].state == st.ADMITTED
    finally:
        await svc.stop()


async def test_a_restart_with_a_tree_that_lost_a_leaf_holding_jobs_refuses_to_start_and_changes_nothing(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/t.db"
    ray = FakeRay()
    svc = await _start(Store(db), ray)
    job = svc.submit_text(rayjob("b-job", "python x.py", namespace="team-b"))[0].id
    await settle(svc)
    await svc.stop()
    only_a = tree(("team-a", 1, 3), root_min=2, root_max=3)
    svc2 = Service(Store(db), ray, QuotaTree.from_yaml_text(only_a), nodes=lambda _: NODES)  # type: ignore[arg-type]
    with pytest.raises(ServiceError, match="no leaf team-b"):
        await svc2.start()
    row = Store(db).get(job)
    assert row is not None and row.state == st.ADMITTED and row.queue == "team-b"


async def test_serve_refuses_to_start_when_ray_does_not_answer(tmp_path: Path) -> None:
    from rayqueue.scheduler.service.raycluster import free_ports

    port = free_ports(1)[0]
    said: list[str] = []
    runner = Runner(ServeOptions(ray_address=f"127.0.0.1:{port}", db=f"sqlite:///{tmp_path}/r.db",
                                 port=free_ports(1)[0], state_dir=tmp_path, ray_wait_s=8, say=said.append))
    with pytest.raises(ServiceError, match="no alive node after 8s: its dashboard does not answer") as err:
        await runner.start()
    assert "check the address and port" in str(err.value) and "--ray-wait" in str(err.value)
    # it waited, and said what for, before giving up
    assert said and said[0].startswith(f"waiting for Ray at http://127.0.0.1:{port} to have an alive node (")
    assert said[0].endswith(" of 8s)")
    await runner.shutdown()


async def test_stop_right_after_a_wake_up_stops_every_loop(tmp_path: Path) -> None:
    """Python 3.11's wait_for could swallow this cancellation and keep the scheduling loop alive."""
    for i in range(5):
        svc = await _start(Store(f"sqlite:///{tmp_path}/w{i}.db"), FakeRay())
        tasks = list(svc._tasks)
        svc.submit_text(rayjob("w", "python x.py"))
        svc.wake()
        await asyncio.sleep(0)
        await svc.stop()  # a loop that swallowed its cancellation is still running after stop's own wait
        assert all(t.done() for t in tasks)


async def test_explain_gives_a_waiting_job_its_expected_start(tmp_path: Path) -> None:
    svc = Service(Store(f"sqlite:///{tmp_path}/e.db"), FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), nodes=lambda _: NODES)
    await svc.start()
    try:
        def timed(name: str, seconds: str) -> str:
            text = rayjob(name, "python x.py")
            return text.replace("metadata:\n", f'metadata:\n  annotations: {{rayqueue.io/expected-duration: "{seconds}"}}\n', 1)

        running = [svc.submit_text(timed(f"run{i}", "100"))[0] for i in range(3)]  # team-a's max is 3 GPUs
        waiting = svc.submit_text(timed("next", "5m"))[0]
        assert [r.state for r in running] == [st.ADMITTED] * 3 and waiting.state == st.PENDING
        started = min(svc.store.get(r.id).admitted_at for r in running)  # type: ignore[union-attr,type-var]
        info = svc.explain(waiting.id)
        assert info["position"] == 0 and info["reason_code"] == "QuotaMaxExceeded"
        assert info["expected_start"] == pytest.approx(started + 100, abs=1.0)
    finally:
        await svc.stop()


async def test_a_cancelled_running_job_keeps_its_log_and_a_crash_before_ray_stopped_it_stops_it_later(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/k.db"
    ray = FakeRay()
    svc = await _start(Store(db), ray)
    first = svc.submit_text(rayjob("first", "python x.py"))[0].id
    second = svc.submit_text(rayjob("second", "python x.py"))[0].id
    await settle(svc)
    ray.jobs[first] = ray.jobs[second] = "RUNNING"
    await settle(svc)

    svc.cancel(first)
    await settle(svc)
    row = svc.store.get(first)
    assert ray.jobs[first] == "STOPPED"
    assert row is not None and row.state == st.CANCELLED and row.ray_status == "STOPPED"
    assert row.logs == f"log of {first}\n"  # kept for `logs` once the Ray cluster is gone
    assert [e.kind for e in svc.store.events(first)][-2:] == ["Cancelled", "RayStopped"]

    # kill -9 right after the cancel was committed, before Ray was asked to stop the job
    svc.state.spawn = lambda coro: coro.close()  # type: ignore[method-assign]  # the stop never starts
    svc.cancel(second)
    await _crash(svc)
    assert ray.jobs[second] == "RUNNING" and svc.store.unsettled_cancelled()[0].id == second
    svc = await _start(Store(db), ray)  # the restart finds it and stops it in Ray
    await settle(svc)
    assert ray.jobs[second] == "STOPPED"
    assert svc.store.get(second).ray_status == "STOPPED"  # type: ignore[union-attr]
    assert svc.store.unsettled_cancelled() == []
    assert svc.engine.tree.nodes["root"].usage.get(GPU, 0) == 0
    await svc.stop()


async def test_quota_dry_run_names_the_running_jobs_it_would_put_over_max_or_make_borrowers(tmp_path: Path) -> None:
    svc = await _start(Store(f"sqlite:///{tmp_path}/q.db"), FakeRay())
    try:
        two = svc.submit_text(rayjob("two", "python x.py", gpus=2))[0].id
        other = svc.submit_text(rayjob("other", "python x.py", namespace="team-b"))[0].id
        await settle(svc)
        smaller = tree(("team-a", 0, 1), ("team-b", 1, 3), root_min=2, root_max=3)
        result = svc.apply_tree(smaller, dry_run=True)
        effects = "\n".join(result["effects"])
        assert f"! running jobs over the new max (nvidia.com/gpu) of root/team-a: {two}" in effects
        assert f"! running jobs that would borrow (nvidia.com/gpu; reclaimable) in root/team-a: {two}" in effects
        assert other not in effects  # team-b keeps its guarantee: nothing changes for its job
        assert svc.engine.tree.nodes["team-a"].max[GPU] == 3000  # a dry run changes nothing
        applied = svc.apply_tree(smaller)
        assert applied["applied"] and f"over the new max (nvidia.com/gpu) of root/team-a: {two}" in "\n".join(
            applied["effects"])
    finally:
        await svc.stop()


async def test_an_unknown_queue_lists_the_leaves_and_a_job_that_can_never_fit_names_its_document(
    tmp_path: Path,
) -> None:
    svc = await _start(Store(f"sqlite:///{tmp_path}/u.db"), FakeRay())
    try:
        with pytest.raises(SubmitError) as refused:
            svc.submit_text(rayjob("lost", "python x.py", queue="team-z"), source="jobs.yaml")
        assert refused.value.problems == [
            "jobs.yaml (document 0): RayJob lost: label rayqueue.io/queue: no leaf named 'team-z' in the quota tree "
            "(leaves: team-a, team-b)"]
        big = rayjob("ok", "python x.py") + "---\n" + rayjob("huge", "python x.py", gpus=4)
        with pytest.raises(SubmitError) as refused:
            svc.submit_text(big, source="two.yaml")
        assert len(refused.value.problems) == 1
        assert refused.value.problems[0].startswith("two.yaml (document 1): RayJob huge: can never run in queue team-a")
        assert svc.store.jobs() == []  # all or none: the fitting job was not accepted either
    finally:
        await svc.stop()


async def test_priority_preemption_stops_the_lower_job_in_ray_requeues_it_and_records_why(tmp_path: Path) -> None:
    one_gpu = """\
apiVersion: scheduling.sigs.k8s.io/v1beta1
kind: ElasticQuotaTree
metadata: {name: prio}
spec:
  root:
    name: root
    max: {nvidia.com/gpu: 1}
    children:
      - name: team-a
        namespaces: [team-a]
        max: {nvidia.com/gpu: 1}
        attributes: {preemptionPolicy: LowerPriority}
"""
    ray = FakeRay()
    svc = Service(Store(f"sqlite:///{tmp_path}/p.db"), ray, QuotaTree.from_yaml_text(one_gpu),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), nodes=lambda _: NODES)
    await svc.start()
    try:
        low = svc.submit_text(rayjob("low", "python x.py", priority="low"))[0].id
        await settle(svc)
        ray.jobs[low] = "RUNNING"
        await settle(svc)
        high = svc.submit_text(rayjob("high", "python x.py", priority="high"))[0].id
        assert svc.store.get(low).state == st.PREEMPTING  # type: ignore[union-attr]
        await settle(svc)  # Ray stops it; the poll sees STOPPED and requeues it
        await settle(svc)
        assert ray.jobs[low] == "STOPPED"
        row = svc.store.get(low)
        assert row is not None and row.state == st.PENDING and row.preemptions == 1
        kinds = [(e.kind, e.message) for e in svc.store.events(low)]
        assert kinds[-2][0] == "Preempting" and "preempted by higher-priority high (priority 1000 > 100)" in kinds[-2][1]
        assert kinds[-1][0] == "Requeued"
        assert svc.store.get(high).state == st.ADMITTED  # type: ignore[union-attr]
        assert svc.explain(low)["reason_code"] is not None and svc.explain(low)["position"] == 0
        svc.refresh_metrics()
        exposition = svc.metrics.exposition().decode()
        assert 'rayqueue_evicted_workloads_total{queue="team-a",reason="PreemptedByPriority"} 1.0' in exposition
    finally:
        await svc.stop()


async def test_the_status_poll_reads_no_row_of_a_job_already_known_running_and_follows_a_new_attempt(
    tmp_path: Path,
) -> None:
    """Following running jobs costs the store nothing once their Running is recorded (a row read per job per
    poll was most of the service's CPU with hundreds running); a job run again under a new submission id
    is still seen to run."""
    ray = FakeRay()
    svc = await _start(Store(f"sqlite:///{tmp_path}/poll.db"), ray)
    try:
        ids = [svc.submit_text(rayjob(f"j{i}", "python x.py", gpus=1))[0].id for i in range(3)]
        await settle(svc)
        for job in ids:
            ray.jobs[job] = "RUNNING"
        await svc.poll_once()
        assert [svc.store.get(j).state for j in ids] == [st.RUNNING] * 3  # type: ignore[union-attr]
        reads: list[str] = []
        for method in ("get", "transition", "transition_from"):
            def counted(job_id: str, *args: Any, _read: Any = getattr(svc.store, method), **kwargs: Any) -> Any:
                reads.append(job_id)
                return _read(job_id, *args, **kwargs)

            setattr(svc.store, method, counted)
        for _ in range(3):
            await svc.poll_once()
        assert reads == []
        del ray.jobs[ids[0]]  # the Ray cluster lost it: requeued, admitted again as a new attempt
        await svc.poll_once()
        await settle(svc)
        again = submission_id(ids[0], 1)
        assert svc.store.get(ids[0]).submission_id == again  # type: ignore[union-attr]
        ray.jobs[again] = "RUNNING"
        await svc.poll_once()
        assert svc.store.get(ids[0]).state == st.RUNNING  # type: ignore[union-attr]
    finally:
        await svc.stop()


async def test_a_gpu_job_on_a_ray_cluster_without_gpus_waits_naming_the_gpu_until_a_gpu_node_joins(
    tmp_path: Path,
) -> None:
    cpu_only = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 8.0, "memory": 2.0**34}}]
    nodes = list(cpu_only)
    svc = Service(Store(f"sqlite:///{tmp_path}/g.db"), FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  nodes=lambda _: nodes, config=ServiceConfig(capacity_interval_s=0.02))
    await svc.start()
    try:
        gpu = svc.submit_text(rayjob("gpu", "python x.py", gpus=1), source="gpu.yaml")[0]
        assert gpu.state == st.PENDING and gpu.reason_code == "NoCapacityInUnits"
        assert gpu.reason is not None and "default has no nvidia.com/gpu" in gpu.reason
        cpu_job = rayjob("cpu", "python x.py").replace("limits: {nvidia.com/gpu: 1}", "limits: {cpu: 1}")
        assert svc.submit_text(cpu_job)[0].state == st.ADMITTED  # what Ray has is still admitted
        # Ray gains a GPU node (an autoscaler, a node joining): the job that waited for it is admitted.
        nodes.append({"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 8.0, "GPU": 1.0, "memory": 2.0**34}})
        await wait_until(lambda: svc.store.get(gpu.id).state != st.PENDING,  # type: ignore[union-attr]
                         what="the GPU job to leave Pending once a GPU node joined")
    finally:
        await svc.stop()


async def test_a_worker_pod_larger_than_every_ray_node_is_refused_as_never_fitting(tmp_path: Path) -> None:
    two_small = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 8.0, "GPU": 2.0, "memory": 2.0**34}}
                 for _ in range(2)]
    svc = Service(Store(f"sqlite:///{tmp_path}/p.db"), FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  nodes=lambda _: two_small)
    await svc.start()
    try:
        # 4 GPUs in the cluster and 3 in team-a's quota, but a pod asking 3 would never find a node: it
        # must not hold quota while Ray cannot place it.
        wide = rayjob("wide", "python x.py", gpus=3)
        with pytest.raises(SubmitError) as refused:
            svc.submit_text(wide, source="wide.yaml")
        assert "a pod needs 3 nvidia.com/gpu, its largest node has 2" in refused.value.problems[0]
        assert svc.submit_text(rayjob("fits", "python x.py", gpus=2))[0].state == st.ADMITTED
    finally:
        await svc.stop()


# ------------------------------------------------------------------------------------ what a user sees


async def test_a_generate_name_job_gets_its_own_name_on_each_submit_and_keeps_it_after_a_restart(
    tmp_path: Path,
) -> None:
    manifest = rayjob("unused", "python x.py").replace("  name: unused\n", "  generateName: cpu-sample-\n")
    db = f"sqlite:///{tmp_path}/names.db"
    ray = FakeRay()
    svc = await _start(Store(db), ray)
    try:
        first, second = svc.submit_text(manifest)[0], svc.submit_text(manifest)[0]
        await settle(svc)
    finally:
        await svc.stop()
    generated = r"cpu-sample-[bcdfghjklmnpqrstvwxz2456789]{5}"  # Kubernetes' alphabet, 5 characters
    assert re.fullmatch(generated, first.name) and re.fullmatch(generated, second.name)
    assert first.name != second.name
    assert (first.id, second.id) == (first.name, second.name)  # the name is unique, so it is the id
    assert ray.accepted[0] == first.id  # Ray's submission carries it too
    restarted = await _start(Store(db), ray)
    try:
        views, _ = restarted.job_views()
        assert sorted(v["name"] for v in views) == sorted([first.name, second.name])
        explained = restarted.explain(first.name)
        assert (explained["id"], explained["name"]) == (first.id, first.name)
        assert restarted.store.get(first.id).manifest_dict()["metadata"]["name"] == first.name  # type: ignore[union-attr]
    finally:
        await restarted.stop()


async def test_jobs_and_history_show_the_newest_page_and_say_how_many_more_there_are(tmp_path: Path) -> None:
    import socket

    import uvicorn

    store = Store(f"sqlite:///{tmp_path}/paging.db")
    svc = await _start(store, FakeRay())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(svc), log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        names = [f"job{i:02}" for i in range(12)]
        ids = [svc.submit_text(rayjob(name, "python x.py", namespace="team-b"))[0].id for name in names]
        await settle(svc)
        all_events = len(store.events())

        statements: list[str] = []
        sa_event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        async with httpx.AsyncClient(base_url=url) as http:
            page = (await http.get("/v1/jobs", params={"limit": 5})).json()
            assert [j["id"] for j in page["jobs"]] == ids[7:] and page["total"] == 12
            back = (await http.get("/v1/jobs", params={"limit": 5, "offset": 5})).json()
            assert [j["id"] for j in back["jobs"]] == ids[2:7]
            assert len((await http.get("/v1/jobs")).json()["jobs"]) == 12  # no limit: all, as before
            events = (await http.get("/v1/history", params={"job": ids[0], "limit": 1})).json()
            assert [e["kind"] for e in events["events"]] == ["Released"] and events["total"] == 3
            schema = (await http.get("/openapi.json")).json()
        jobs_select = next(s for s in statements if "FROM jobs" in s and "count" not in s)
        assert "LIMIT" in jobs_select and "OFFSET" in jobs_select  # the store pages in SQL, not in Python
        for path in ("/v1/jobs", "/v1/history"):
            params = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
            assert params["limit"]["description"] and params["offset"]["description"]

        cli = CliRunner()
        env = {"RAYQUEUE_URL": url, "COLUMNS": "250"}
        out = (await asyncio.to_thread(cli.invoke, cli_app, ["jobs", "--limit", "4"], env=env)).output
        assert ids[-1] in out and ids[8] in out and ids[7] not in out
        assert "showing 4 of 12 jobs; 8 older not shown (--offset 4 for the next page, --limit 0 for all)" in out
        out = (await asyncio.to_thread(cli.invoke, cli_app, ["jobs"], env=env)).output
        assert all(i in out for i in ids) and "not shown" not in out  # under the default limit: all, no note
        skip = all_events - 4
        out = (await asyncio.to_thread(cli.invoke, cli_app, ["history", "-n", "3", "--offset", str(skip)], env=env)).output
        assert f"showing 3 of {all_events} events, after skipping the {skip} newest; 1 older not shown " \
               f"(--offset {skip + 3} for the next page" in out
    finally:
        server.should_exit = True
        await serving
        await svc.stop()


async def test_status_shows_ray_memory_readably_and_the_api_keeps_it_exact(tmp_path: Path) -> None:
    ray_memory = 16314848 * 1024  # bytes, as Ray reports a 15.6 GiB machine
    nodes = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 8.0, "GPU": 4.0, "memory": float(ray_memory)}}]
    svc = Service(Store(f"sqlite:///{tmp_path}/m.db"), FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                  nodes=lambda _: nodes)
    await svc.start()
    try:
        svc.submit_text(rayjob("x", "python x.py"))  # head + worker 128Mi each, submitter 200Mi: exact
        status = svc.status()
        assert status["units"][0]["capacity"]["memory"] == ray_memory * 1000  # JSON: exact milli-units
        console = Console(record=True, width=250)
        for table in status_tables(status):
            console.print(table)
        text = console.export_text()
        assert "memory=15.6Gi" in text and "16314848Ki" not in text
        assert "memory=456Mi" in text
    finally:
        await svc.stop()


@pytest.mark.parametrize(
    ("milli", "resource", "shown"),
    [
        (16314848 * 1024 * 1000, "memory", "15.6Gi"),
        (16 * 2**30 * 1000, "memory", "16Gi"),  # exact stays exact
        ((16 * 2**30 - 2**20) * 1000, "memory", "16.0Gi"),  # just under 16Gi never reads as a full 16Gi
        (3472 * 2**20 * 1000, "ephemeral-storage", "3.39Gi"),
        (512 * 1000, "memory", "512"),
        (2500, "cpu", "2500m"),
    ],
)
def test_table_quantities_are_approximate_for_bytes_only(milli: int, resource: str, shown: str) -> None:
    assert display_quantity(milli, resource) == shown


def test_a_store_written_before_the_preemption_columns_opens_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    from rayqueue.scheduler.service.store import JobRecord, Store

    url = f"sqlite:///{tmp_path}/old.db"
    old = Store(url)
    old.add_jobs([JobRecord(id="j1", name="j1", queue="team-a")])
    old.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # as an older version wrote it
        conn.execute("ALTER TABLE jobs DROP COLUMN preempted_by")
        conn.execute("ALTER TABLE events DROP COLUMN reason_code")
    store = Store(url)
    row = store.transition("j1", "Preempting", "for j2", state="Preempting", preempted_by="j2", reason_code="Reclaimed")
    assert row.preempted_by == "j2" and store.get("j1").name == "j1"  # type: ignore[union-attr]
    assert store.event_counts("Preempting") == {("team-a", "Reclaimed"): 1}
    store.close()


# ------------------------------------------------------------------------------------ kill -9 after the answer

SERVICE_PROCESS = """
import asyncio, sys
import uvicorn
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.rayjobs import RayStatus
from rayqueue.scheduler.service.store import Store

class Ray:  # Ray's API answered at once: every job accepted, then running
    address, auth_token = "stand-in://ray", None
    def submit(self, sub): return True
    def status(self, sid): return RayStatus("RUNNING")
    def statuses(self, sids): return {sid: RayStatus("RUNNING") for sid in sids}
    def stop(self, sid): pass
    def logs(self, sid): return ""
    def close(self): pass

async def main():
    db, port, tree = sys.argv[1], int(sys.argv[2]), sys.stdin.read()
    node = {"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}
    service = Service(Store(db), Ray(), QuotaTree.from_yaml_text(tree), config=ServiceConfig(poll_interval_s=0.05),
                      nodes=lambda _: [node])
    await service.start()
    await uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off")).serve()

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # a hang guard; the waits end at their event
def test_every_job_answered_as_accepted_survives_a_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    """The answer to a submission follows the commit of its rows (and of its admission): a service killed
    with SIGKILL the moment its last answer arrives has every job it answered for, in the state it said."""
    db = f"sqlite:///{tmp_path}/k.db"
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-c", SERVICE_PROCESS, db, str(port)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(TWO_TEAMS)
    proc.stdin.close()
    answered: dict[str, str] = {}
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the service exited"
            try:
                return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        asyncio.run(wait_until(up, what="the service to answer"))
        with httpx.Client(base_url=url, timeout=HANG_GUARD_S) as http:
            for i in range(8):  # 3 fit (team-a's max); the rest wait
                resp = http.post("/v1/jobs", json={"yaml": rayjob(f"k{i}", "python x.py", gpus=1)})
                assert resp.status_code == 201, resp.text
                job = resp.json()["jobs"][0]
                answered[job["id"]] = job["state"]
        os.kill(proc.pid, signal.SIGKILL)  # the moment the last answer is in
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(HANG_GUARD_S)
    assert sorted(answered.values()).count(st.ADMITTED) == 3
    store = Store(db)
    for job_id, state in answered.items():
        row = store.get(job_id)
        assert row is not None, f"{job_id} was answered for, then lost"
        if state == st.ADMITTED:
            assert row.state in st.ACTIVE_STATES and row.submission_id == job_id  # its admission too
        else:
            assert row.state == st.PENDING
        assert [e.kind for e in store.events(job_id)][0] == "Submitted"
