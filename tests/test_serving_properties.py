"""Invariants of services next to batch over random trees, services and job streams (hypothesis):
no scale-up within its reservation ever waits, no ``max`` is ever exceeded, and every node's usage is
the sum of what is admitted on it."""

from __future__ import annotations

from engine_helpers import engine, node, tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.quantity import CPU, GPU, MILLI
from rayqueue.scheduler.engine import Engine, Service, ServiceSpec, ServiceState
from rayqueue.scheduler.engine.decisions import Preempt

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

batch = st.tuples(st.just("batch"), st.integers(0, 3), st.integers(1, 6), st.integers(0, 3))
ops = st.lists(
    st.one_of(
        batch,
        batch,  # twice as likely: the headroom has to be lent before a scale-up can take it back
        st.tuples(st.just("finish"), st.integers(0, 40), st.just(0), st.just(0)),
        st.tuples(st.just("scale"), st.integers(0, 2), st.integers(0, 16), st.just(0)),
        st.tuples(st.just("confirm"), st.integers(0, 40), st.just(0), st.just(0)),
    ),
    min_size=10,
    max_size=60,
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Engine, list[str]]:
    total = draw(st.integers(6, 24))
    serve_min = draw(st.integers(1, total))
    batch_mins = [draw(st.integers(0, max(0, (total - serve_min) // 3))) for _ in range(3)]
    leaves = [node("serve", min={GPU: serve_min}, max={GPU: draw(st.integers(serve_min, total))})]
    for i, lo in enumerate(batch_mins):
        leaves.append(node(f"b{i}", min={GPU: lo}, max={GPU: draw(st.integers(max(lo, 1), total))},
                           attributes={"preemptionPolicy": draw(st.sampled_from(["Never", "LowerPriority"]))}))
    groups = [leaves[0], node("teams", min={GPU: sum(batch_mins)}, max={GPU: total}, children=leaves[1:])]
    e = engine(tree(node("root", min={GPU: total}, max={GPU: total}, children=groups)))
    uids = []
    for k in range(draw(st.integers(1, 3))):
        lo = draw(st.integers(0, 3))
        spec = ServiceSpec(head={CPU: 500, GPU: draw(st.sampled_from([0, 1000]))},
                           replica={GPU: draw(st.sampled_from([1000, 2000]))}, min_replicas=lo,
                           max_replicas=draw(st.integers(lo, lo + 8)), hot_reserve=draw(st.integers(0, 2)))
        svc = Service(uid=f"svc-{k}", queue="serve", spec=spec, replicas=lo, submitted_at=float(k))
        if e.submit_service(svc) is None:
            uids.append(svc.uid)
    return e, uids


def check(e: Engine, services: list[str]) -> None:
    used: dict[str, int] = {}
    leaves = {n.name: n for n in e.node_views()}

    def add(leaf: str, gpu: int) -> None:
        name: str | None = leaf
        while name is not None:
            used[name] = used.get(name, 0) + gpu
            name = leaves[name].parent

    for j in e.jobs():
        held = j.state == WorkloadState.ADMITTED or (
            j.state == WorkloadState.PREEMPTING and j.preempted_by not in services  # handed over: the service's now
        )
        if held:
            add(j.queue, j.request.get(GPU, 0))
    for v in e.services():
        if v.state == ServiceState.RUNNING:
            add(v.queue, v.used.get(GPU, 0) + v.hot.get(GPU, 0))
    for n in e.node_views():
        assert n.used.get(GPU, 0) == used.get(n.name, 0), (n.path, n.used, used.get(n.name))
        assert n.used.get(GPU, 0) <= n.max[GPU], (n.path, n.used, n.max)


@SETTINGS
@given(worlds(), ops)
def test_no_scale_up_within_its_reservation_waits_and_no_max_is_exceeded(world: tuple[Engine, list[str]],
                                                                         steps: list[tuple[str, int, int, int]]) -> None:
    e, services = world
    jobs: list[Workload] = []
    preempting: list[str] = []
    t = 0.0
    for kind, a, b, c in steps:
        t += 1.0
        if kind == "batch":
            w = Workload(uid=f"j{len(jobs)}", queue=f"b{a % 3}" if a < 3 else "serve", request={GPU: b * MILLI},
                         priority=c, submitted_at=t)
            if e.submit(w) is None:
                jobs.append(w)
        elif kind == "finish" and jobs:
            w = jobs[a % len(jobs)]
            if e.has_job(w.uid):
                e.finish(w.uid)
        elif kind == "scale" and services:
            uid = services[a % len(services)]
            if e.service(uid) is not None:
                e.scale_service(uid, b, now=t)
        elif kind == "confirm" and preempting:
            uid = preempting.pop(a % len(preempting))
            if e.has_job(uid):
                e.suspended(uid, t)
        decisions = e.schedule(t)
        preempting.extend(d.workload.uid for d in decisions if isinstance(d, Preempt))
        for uid in services:
            v = e.service(uid)
            if v is not None and v.state == ServiceState.RUNNING:
                target = min(max(v.replicas, v.min_replicas), v.max_replicas)
                assert v.granted == target, (uid, v.granted, target, v.reason)
                assert v.scale_waited_s == 0.0
        check(e, services)
