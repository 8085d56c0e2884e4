"""Services in standalone mode without a Ray cluster: the real service, SQLite, a stand-in for Ray's Job
API and one for Serve's REST API. What needs no real Ray is checked here (bad input, the deployed body,
the scale-up's preemption in one cycle); tests/test_standalone_services.py runs it on Ray.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fake_ray import FakeRay, settle
from standalone_env import rayjob, rayservice, tree

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.core import Service, ServiceConfig, SubmitError

TREE = tree(("serving", 2, 2), ("batch", 1, 3), root_min=3, root_max=3)
NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}]





class FakeServe:
    """Serve's REST API as the service uses it: what was PUT, and the targets its autoscaler asks."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.target: dict[str, int] = {}

    def deploy(self, body: dict[str, Any]) -> None:
        self.bodies.append(copy.deepcopy(body))

    def applications(self) -> dict[str, Any]:
        if not self.bodies:
            return {}
        out = {}
        for app in self.bodies[-1]["applications"]:
            deps = {}
            for d in app["deployments"]:
                low = d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
                n = self.target.get(app["name"], low)
                deps[d["name"]] = {"target_num_replicas": n, "replicas": [{"state": "RUNNING"}] * n}
            out[app["name"]] = {"deployments": deps}
        return out

    def close(self) -> None:
        pass


async def start(tmp_path: Path) -> tuple[Service, FakeRay, FakeServe]:
    from rayqueue.scheduler.service.store import Store

    ray, serve = FakeRay(), FakeServe()
    svc = Service(Store(f"sqlite:///{tmp_path}/s.db"), ray, QuotaTree.from_yaml_text(TREE),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), tree_yaml=TREE,
                  nodes=lambda _: NODES)
    svc.serving.api = serve  # type: ignore[assignment]
    await svc.start()
    return svc, ray, serve


async def test_a_burst_preempts_the_borrower_in_the_cycle_that_saw_it_and_a_scale_down_returns_it(
    tmp_path: Path,
) -> None:
    svc, ray, serve = await start(tmp_path)
    try:
        [web] = svc.submit_text(rayservice("web", min_replicas=1, max_replicas=2))
        inside = svc.submit_text(rayjob("inside", "python x.py", namespace="batch"))[0].id
        borrower = svc.submit_text(rayjob("borrower", "python x.py", namespace="batch"))[0].id
        await settle(svc)
        assert serve.bodies, "the admitted service was deployed"
        assert [a["name"] for a in serve.bodies[-1]["applications"]] == ["predict"]
        assert svc.store.get(borrower).state == st.RUNNING  # on the service's reserved GPU

        serve.target["predict"] = 2  # Serve's autoscaler asks a second replica
        await svc.serving.poll_once()
        assert svc.engine.service(web.id).granted == 2  # granted in the cycle the poll ran
        assert svc.store.get(borrower).state == st.PREEMPTING
        assert svc.store.get(inside).state == st.RUNNING
        await settle(svc)
        assert svc.store.get(borrower).state == st.PENDING
        assert svc.serving.explain("web")["preemptions"] == 1
        # `rayqueue history web`: the service's own events, by name as by id.
        events, total = svc.history("web")
        assert [e["kind"] for e in events][:2] == ["Submitted", "Admitted"] and total == len(events)
        assert {e["job"] for e in events} == {web.id}
        assert svc.history(web.id) == (events, total)
        metrics = svc.state.metrics.exposition().decode()
        assert 'rayqueue_preempted_workloads_total{preempting_queue="serving",reason="Reclaimed"} 1.0' in metrics

        serve.target["predict"] = 1  # the load is gone: the replica returns to headroom
        await svc.serving.poll_once()
        assert svc.engine.service(web.id).granted == 1
        async with svc.engine_lock:
            await svc.admission.cycle()
        assert svc.store.get(borrower).state in (st.ADMITTED, st.RUNNING)  # admitted again, a new attempt
        assert svc.store.get(borrower).attempt == 1
    finally:
        await svc.stop()


async def test_an_unset_max_is_capped_by_the_quota_in_what_serve_is_given(tmp_path: Path) -> None:
    svc, _ray, serve = await start(tmp_path)
    try:
        [web] = svc.submit_text(rayservice("web", min_replicas=1, max_replicas=2**31 - 1))
        assert any("capped at 2 replicas" in n for n in web.notes)
        await settle(svc)
        [deployment] = serve.bodies[-1]["applications"][0]["deployments"]
        assert deployment["autoscaling_config"]["max_replicas"] == 2
        status = svc.status()
        assert [s["name"] for s in status["services"]] == ["web"]
    finally:
        await svc.stop()


async def test_bad_services_are_refused_in_one_line_and_nothing_of_the_submission_is_queued(tmp_path: Path) -> None:
    svc, _ray, _serve = await start(tmp_path)
    try:
        no_serve = rayservice("plain").split("  serveConfigV2:")[0] + "  rayClusterConfig:" + \
            rayservice("plain").split("  rayClusterConfig:")[1]
        with pytest.raises(SubmitError) as err:
            svc.submit_text(rayjob("j", "python x.py", namespace="batch") + "---\n" + no_serve)
        assert any("RayService plain" in p and "serveConfigV2" in p for p in err.value.problems)
        assert svc.store.jobs() == [] and svc.serving.rows(None) == []

        svc.submit_text(rayservice("first"))
        with pytest.raises(SubmitError) as err:
            svc.submit_text(rayservice("second"))
        [problem] = err.value.problems
        assert "application 'predict' already belongs to service first-" in problem and "\n" not in problem
        assert [r.name for r in svc.serving.rows(None)] == ["first"]
    finally:
        await svc.stop()


async def test_a_restart_counts_the_service_again_before_the_jobs(tmp_path: Path) -> None:
    svc, ray, serve = await start(tmp_path)
    [web] = svc.submit_text(rayservice("web", min_replicas=1, max_replicas=2))
    svc.submit_text(rayjob("inside", "python x.py", namespace="batch"))
    borrower = svc.submit_text(rayjob("borrower", "python x.py", namespace="batch"))[0].id
    await settle(svc)
    serve.target["predict"] = 2
    await svc.serving.poll_once()
    assert svc.store.get(borrower).state == st.PREEMPTING
    ray.jobs = {sid: ("RUNNING" if s == "STOPPED" else s) for sid, s in ray.jobs.items()}  # not stopped yet
    await svc.stop()
    from rayqueue.scheduler.service.store import Store

    again = Service(Store(svc.store.url), ray, QuotaTree.from_yaml_text(TREE),  # type: ignore[arg-type]
                    config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), tree_yaml=TREE,
                    nodes=lambda _: NODES)
    again.serving.api = serve  # type: ignore[assignment]
    await again.start()
    try:
        back = again.engine.service(web.id)
        assert back is not None and back.granted == 2
        # the preemption resumes, for the service: the borrower holds no quota of its own
        assert again.store.get(borrower).state == st.PREEMPTING
        assert again.engine.tree.nodes["root"].usage.get("nvidia.com/gpu", 0) == 3000
    finally:
        await again.stop()
