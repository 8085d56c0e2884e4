"""Benchmark: services next to batch.

    .venv/bin/python benchmarks/serving_burst.py [--leaves 50] [--borrowers 5000] [--pending 10000] [--repeat 5]

1. Engine decision time of a scale-up: a service whose reserved headroom is all lent to ``--borrowers``
   one-GPU batch jobs spread over ``--leaves`` borrowing leaves, with ``--pending`` batch jobs waiting.
   Times ``scale_service`` + the ``schedule()`` that grants it (and preempts the borrowers it needs), for
   scale-ups of 1, 10 and 100 replicas, against a ``schedule()`` with nothing to do; fastest of ``--repeat``.
2. Batch throughput kept: the serving-burst scenario with a reservation, a static split and none: batch
   GPU-hours of finished work by hour 8 (the service's day), mean batch wait, the service's scale-up wait.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import CPU, GPU, MILLI
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig, Service, ServiceSpec
from rayqueue.scheduler.engine.decisions import Preempt
from rayqueue.scheduler.process import tune_gc
from rayqueue.simulations.config import load_scenario
from rayqueue.simulations.report import summarize
from rayqueue.simulations.simulator import simulate_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "serving-burst"


def build(leaves: int, borrowers: int, pending: int) -> Engine:
    total = borrowers + 200  # the service: head 0 GPU, min 0, max 200 replicas of 1 GPU
    teams = [{"name": f"t{i}", "min": {GPU: 0}, "max": {GPU: total}} for i in range(leaves)]
    tree = QuotaTree.from_dict({
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "metadata": {"name": "bench"},
        "spec": {"root": {"name": "root", "min": {GPU: total}, "max": {GPU: total}, "children": [
            {"name": "serve", "min": {GPU: 200}, "max": {GPU: total}}, *teams]}},
    })
    e = Engine(tree, config=EngineConfig(default_preemption="Never", backoff_base_s=0.0), clock=lambda: 0.0)
    spec = ServiceSpec(head={CPU: 1000}, replica={GPU: MILLI}, min_replicas=0, max_replicas=200)
    assert e.submit_service(Service(uid="web", queue="serve", spec=spec, replicas=0)) is None
    e.schedule(0.0)
    for k in range(borrowers + pending):
        e.submit(Workload(uid=f"j{k}", queue=f"t{k % leaves}", request={GPU: MILLI}, submitted_at=float(k)))
    e.schedule(1.0)
    return e


def time_scale_up(args: argparse.Namespace, replicas: int) -> tuple[float, int]:
    best, victims = float("inf"), 0
    for _ in range(args.repeat):
        e = build(args.leaves, args.borrowers, args.pending)
        started = time.perf_counter()
        e.scale_service("web", replicas, now=2.0)
        decisions = e.schedule(2.0)
        took = time.perf_counter() - started
        assert e.service("web").granted == replicas
        victims = sum(1 for d in decisions if isinstance(d, Preempt))
        best = min(best, took)
    return best, victims


def time_idle(args: argparse.Namespace) -> float:
    e = build(args.leaves, args.borrowers, args.pending)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        e.schedule(2.0)
        best = min(best, time.perf_counter() - started)
    return best


def batch_gpu_hours_by(result: object, horizon: float) -> float:
    total = 0.0
    for r in result.records:  # type: ignore[attr-defined]
        if r.status == "finished" and r.finish is not None and r.finish <= horizon:
            total += r.amount / MILLI * r.duration / 3600
    return total


def main() -> int:
    tune_gc()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=50)
    parser.add_argument("--borrowers", type=int, default=5000)
    parser.add_argument("--pending", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"Scale-up decision: {args.borrowers:,} borrowers in {args.leaves} leaves, {args.pending:,} pending, "
          f"fastest of {args.repeat}")
    idle = time_idle(args)
    print(f"  schedule() with nothing to do: {idle * 1e6:,.0f} us")
    for replicas in (1, 10, 100):
        took, victims = time_scale_up(args, replicas)
        print(f"  scale-up 0 -> {replicas:>3} replicas, {victims:>3} borrowers preempted: {took * 1e3:,.2f} ms "
              f"({took / replicas * 1e6:,.0f} us per replica)")
    print("Batch throughput kept (serving-burst, 8 h):")
    rows = []
    for mode, name in (("reservation", "scenario.yaml"), ("static", "scenario-static.yaml"), ("none", "scenario-none.yaml")):
        result = simulate_scenario(load_scenario(SCENARIO / name))
        s = summarize(result)
        chat = s["services"]["chat"]
        rows.append((mode, batch_gpu_hours_by(result, 8 * 3600), s["cluster"]["all_queues"]["wait_mean_s"],
                     chat["scale_up_wait_s"], chat["batch_preemptions"], chat["headroom_lent_gpu_hours"]))
    base = rows[0][1]
    for mode, gpu_h, wait, scale_wait, preempts, lent in rows:
        print(f"  {mode:<11} batch {gpu_h:6.1f} GPU-h done by hour 8 ({gpu_h / base:5.0%} of reservation's), "
              f"mean batch wait {wait / 60:5.1f} min; chat: scale-ups waited {scale_wait / 60:5.1f} min, "
              f"{preempts} batch preemptions, {lent:.1f} GPU-h lent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
