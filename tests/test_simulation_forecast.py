"""forecast_starts: expected start times from an engine's current state, computed on a copy."""

from __future__ import annotations

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.capacity import NodeCapacity, apply_node_capacity
from rayqueue.scheduler.engine.decisions import Admit
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.workloads.resourcepolicy import Units

GPU = "nvidia.com/gpu"


def _engine(max_gpu: int = 4) -> Engine:
    tree = QuotaTree.from_dict(
        {
            "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
            "kind": "ElasticQuotaTree",
            "spec": {"root": {"name": "root", "children": [{"name": "q", "max": {GPU: max_gpu}}]}},
        }
    )
    return Engine(tree, Units.single({GPU: 8000}), clock=lambda: 0.0)


def _job(uid: str, gpus: int, duration: float | None, at: float) -> Workload:
    return Workload(uid=uid, queue="q", request={GPU: gpus * 1000}, submitted_at=at, expected_duration=duration, name=uid)


def test_pending_jobs_start_when_the_running_ones_are_expected_to_finish() -> None:
    engine = _engine()
    engine.submit(_job("run", 4, 10, 0))
    assert [type(d) for d in engine.schedule(0)] == [Admit]
    engine.submit(_job("a", 4, 5, 1))
    engine.submit(_job("b", 2, 5, 2))
    engine.submit(_job("c", 2, 3, 3))
    assert engine.schedule(4) == []
    # run ends at 10 -> a 10..15 -> b and c together at 15 (2 + 2 of max 4).
    assert forecast_starts(engine, 4) == {"a": 10, "b": 15, "c": 15}
    # The live engine is untouched: same states, same usage.
    assert engine.workloads["run"].state == WorkloadState.ADMITTED
    assert all(engine.workloads[u].state == WorkloadState.PENDING for u in "abc")
    assert engine.tree.leaves["q"].usage[GPU] == 4000


def test_unknown_duration_makes_what_waits_on_it_unknown() -> None:
    engine = _engine()
    engine.submit(_job("run", 4, None, 0))
    engine.schedule(0)
    engine.submit(_job("a", 1, 5, 1))
    engine.schedule(1)
    assert forecast_starts(engine, 1) == {"a": None}


def test_horizon_cuts_long_forecasts() -> None:
    engine = _engine()
    engine.submit(_job("run", 4, 1000, 0))
    engine.schedule(0)
    engine.submit(_job("a", 4, 5, 1))
    engine.schedule(1)
    assert forecast_starts(engine, 1, horizon_s=100) == {"a": None}
    assert forecast_starts(engine, 1) == {"a": 1000}


def test_a_large_backlog_is_forecast_exactly() -> None:
    # Its cost is measured by benchmarks, not here: a timed assertion only tests the machine's load.
    engine = _engine(max_gpu=8)
    for i in range(5000):
        engine.submit(_job(f"j{i:05d}", 1, 10, i * 0.001))
    engine.schedule(5)
    starts = forecast_starts(engine, 5)
    # 8 run at a time for 10 s each: job k (0-based, after the 8 running) starts at 15 + 10 * (k // 8).
    pending = sorted(u for u, s in starts.items())
    assert starts[pending[0]] == 15 and starts[pending[-1]] == 15 + 10 * ((len(pending) - 1) // 8)


def test_a_job_needing_what_no_node_has_gets_no_expected_start() -> None:
    # The unit is measured from its nodes, none of which has a GPU: the live engine keeps the GPU job
    # waiting for such nodes, and the copy the forecast runs must hold the same unit (a resource its
    # nodes lack is 0 there, not unbounded as in a policy's declared capacity).
    engine = _engine(max_gpu=8)
    apply_node_capacity(engine, [NodeCapacity("cpu-node", {}, {"cpu": 4000})])
    engine.submit(Workload(uid="gpu", queue="q", request={GPU: 1000}, submitted_at=0, expected_duration=5, name="gpu"))
    engine.submit(Workload(uid="cpu", queue="q", request={"cpu": 3000}, submitted_at=1, expected_duration=5, name="cpu"))
    engine.submit(Workload(uid="next", queue="q", request={"cpu": 2000}, submitted_at=2, expected_duration=5, name="next"))
    assert [d.workload.uid for d in engine.schedule(3) if isinstance(d, Admit)] == ["cpu"]
    assert engine.explain("gpu").state == WorkloadState.PENDING
    assert forecast_starts(engine, 3) == {"gpu": None, "next": 8}
