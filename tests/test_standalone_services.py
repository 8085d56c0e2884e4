"""Services in standalone mode end to end: a RayService's Serve application on a real local Ray cluster,
next to batch RayJobs, through the real service (SQLite store, Serve's REST API, Ray's Job API).

One Ray head for the module (with Serve on a port of its own); the load that makes Serve's autoscaler add
a replica comes from client threads, and every step waits for the event it needs (Serve's replicas, a
job's state), never for a duration.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standalone_env import HANG_GUARD_S, Gates, rayjob, rayservice, tree, wait_until

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.raycluster import LocalRayCluster, free_ports
from rayqueue.scheduler.service.rayjobs import RayJobs
from rayqueue.scheduler.service.serve_deploy import ServeApi, serve_target
from rayqueue.scheduler.service.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# serving is guaranteed its 2 GPUs; batch 1 and may use 3; the root holds 3: a batch job beyond batch's
# guarantee runs on the service's idle headroom.
TREE = tree(("serving", 2, 2), ("batch", 1, 3), root_min=3, root_max=3)


@pytest.fixture(scope="module")
def serve_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster.start(num_cpus=8, num_gpus=4, labels={"pool": "ecs"}, timeout=HANG_GUARD_S * 2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    g = Gates(tmp_path)
    yield g
    g.open_all()


class Load:
    """Client threads that keep ``concurrency`` requests in flight against a Serve route until stopped."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.ok = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop_event.is_set():
                try:
                    if http.get(self.url).status_code == 200:
                        self.ok += 1
                except httpx.HTTPError:
                    pass  # the proxy is starting: ask again

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture
async def make(ray_cluster: LocalRayCluster, serve_port: int, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Service] = []

    async def start(db: str | None = None) -> Service:
        svc = Service(
            Store(db or f"sqlite:///{tmp_path}/rq.db"),
            RayJobs(ray_cluster.url, auth_token=ray_cluster.auth_token),
            QuotaTree.from_yaml_text(TREE),
            config=ServiceConfig(poll_interval_s=0.1, capacity_interval_s=1.0, serve_http_port=serve_port),
            tree_yaml=TREE,
        )
        await svc.start()
        made.append(svc)
        return svc

    yield start
    for svc in made:
        if svc.started:
            await svc.stop()
        svc.store.close()


def serve_replicas(api: ServeApi) -> tuple[int, int] | None:
    try:
        return serve_target(api.applications(), ("predict", "Predictor"))
    except Exception:
        return None


async def test_a_burst_takes_back_the_lent_headroom_then_returns_it_and_survives_a_restart(
    make: Any, ray_cluster: LocalRayCluster, serve_port: int, gates: Gates, tmp_path: Path
) -> None:
    svc = await make()
    api = ServeApi(ray_cluster.url, auth_token=ray_cluster.auth_token)
    [web] = svc.submit_text(rayservice("web", min_replicas=1, max_replicas=2))
    assert web.state == "Running", web  # admitted at once: 1 replica charged, 1 reserved
    view = svc.serving.explain("web")
    assert (view["granted"], view["max_replicas"]) == (1, 2)
    assert "nvidia.com/gpu=1" in view["reserved"]
    # Serve runs the application with the minimum, deployed by the service
    await wait_until(lambda: serve_replicas(api) == (1, 1), HANG_GUARD_S, "Serve to run 1 replica")

    def job(name: str) -> str:
        [acc] = svc.submit_text(rayjob(name, gates.entrypoint(name), namespace="batch"))
        return acc.id

    inside, borrower = job("inside"), job("borrower")  # the second runs on the service's idle GPU
    for j in (inside, borrower):
        await wait_until(lambda j=j: svc.store.get(j).state == st.RUNNING, HANG_GUARD_S, f"{j} to run")
    reserved = next(n for n in svc.status()["nodes"] if n["name"] == "serving")["reserved"]
    assert reserved.get("nvidia.com/gpu") == 1000  # one replica's worth, lent to the borrower

    # A burst: Serve's autoscaler asks a second replica; the borrower is preempted for it in that cycle.
    with Load(f"http://127.0.0.1:{serve_port}/predict", concurrency=6):
        await wait_until(lambda: svc.engine.service(web.id).granted == 2, HANG_GUARD_S, "the scale-up's grant")
        assert svc.store.get(borrower).state in (st.PREEMPTING, st.PENDING)
        preempting = [e for e in svc.store.events(borrower) if e.kind == "Preempting"]
        assert len(preempting) == 1 and web.id in preempting[0].message
        assert svc.store.get(inside).state == st.RUNNING
        await wait_until(lambda: (serve_replicas(api) or (0, 0))[1] == 2, HANG_GUARD_S, "the 2nd replica to run")
    await wait_until(lambda: svc.store.get(borrower).state == st.PENDING, HANG_GUARD_S, "the borrower requeued")

    # The load is gone: Serve scales down, the headroom returns and the borrower runs again.
    await wait_until(lambda: svc.engine.service(web.id).granted == 1, HANG_GUARD_S, "the scale-down")
    await wait_until(lambda: svc.store.get(borrower).state == st.RUNNING, HANG_GUARD_S, "the borrower to run again")
    assert svc.store.get(borrower).attempt == 1

    # rayqueue restarts: the service is counted again from SQLite, as it was, without a new deployment.
    await svc.stop()
    again = await make(f"sqlite:///{tmp_path}/rq.db")
    back = again.engine.service(web.id)
    assert back is not None and back.granted == 1 and back.state.value == "Running"
    assert again.store.get(borrower).state == st.RUNNING and again.store.get(inside).state == st.RUNNING
    assert serve_replicas(api) == (1, 1)
    assert "Reattached" in [e.kind for e in again.store.events(web.id)]
    # ... and it still follows Serve: another burst preempts the borrower again.
    with Load(f"http://127.0.0.1:{serve_port}/predict", concurrency=6):
        await wait_until(lambda: again.engine.service(web.id).granted == 2, HANG_GUARD_S, "a grant after restart")
        await wait_until(lambda: again.store.get(borrower).preemptions == 2 or
                         again.store.get(borrower).state in (st.PREEMPTING, st.PENDING), HANG_GUARD_S,
                         "the borrower preempted again")
    api.close()
