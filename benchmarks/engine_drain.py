"""Admission engine throughput: drain a large backlog by admitting and completing jobs.

Input: a 10 x 10 x 10 quota tree (1,000 leaves), resources cpu / memory / nvidia.com/gpu /
kube-queue/max-jobs, an ECS unit (finite) and an ACS unit (elastic, capped by max pods), and N pending
jobs spread over the leaves. The drain repeats: one admission cycle, then the oldest running jobs
complete. Every attempt to admit a job is one decision (admitted, left waiting with a reason, or
preempting); the clocks cover only the engine's work (schedule + finish), never the set-up.

    python benchmarks/engine_drain.py                # 10,000 and 100,000 pending
    python benchmarks/engine_drain.py --pending 50000
    python benchmarks/engine_drain.py --default-gc   # CPython's default GC thresholds
    python benchmarks/engine_drain.py --repeat 3     # each size 3 times, the fastest run reported
    python benchmarks/engine_drain.py --interpreted  # the same engine run as plain Python, even if compiled

The rates are per second of the process's CPU time (``time.process_time``), with the wall time beside
it: on a shared machine other tenants stretch the wall time, not the CPU time this process spends. A
shared 2-core VM still varies from run to run (caches, frequency); the fastest of a few runs is the
figure least disturbed by other tenants (as ``timeit`` reports the best of its repeats).
"""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayqueue.quota.tree import QuotaTree
    from rayqueue.scheduler.workloads.resourcepolicy import Units

GI = 2**30


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Load rayqueue's modules from their ``.py`` files even where a compiled ``.so`` sits beside them
    (the import system prefers the extension): ``--interpreted`` runs the very same sources as Python."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("rayqueue.") or path is None:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            source = Path(entry) / f"{name}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None  # a package folder: the usual finders map it


def engine_build() -> str:
    import rayqueue.scheduler.engine.facade as engine_module

    if engine_module.__file__ and engine_module.__file__.endswith(".so"):
        return "compiled with mypyc"
    if any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        return "interpreted (--interpreted)"
    return "interpreted (run `make native` to compile)"


def build_tree(fanout: int = 10) -> QuotaTree:
    from rayqueue.quota.quantity import CPU, GPU, MAX_JOBS, MEMORY
    from rayqueue.quota.tree import QuotaTree

    def leaf(path: str) -> dict:
        return {
            "name": path,
            "min": {GPU: 4, CPU: 32, MEMORY: "128Gi"},
            "max": {GPU: 16, CPU: 128, MEMORY: "512Gi", MAX_JOBS: 8},
        }

    def mid(path: str, children: list[dict], scale: int) -> dict:
        return {
            "name": path,
            "min": {GPU: 4 * scale, CPU: 32 * scale, MEMORY: f"{128 * scale}Gi"},
            "max": {GPU: 6 * scale, CPU: 48 * scale, MEMORY: f"{192 * scale}Gi"},
            "children": children,
        }

    level1 = []
    for i in range(fanout):
        level2 = []
        for j in range(fanout):
            leaves = [leaf(f"q-{i}-{j}-{k}") for k in range(fanout)]
            level2.append(mid(f"g-{i}-{j}", leaves, fanout))
        level1.append(mid(f"d-{i}", level2, fanout * fanout))
    n = fanout**3
    root = {
        "name": "root",
        "min": {GPU: 4 * n, CPU: 32 * n, MEMORY: f"{128 * n}Gi"},
        "max": {GPU: 5 * n, CPU: 40 * n, MEMORY: f"{160 * n}Gi"},
        "children": level1,
    }
    return QuotaTree.from_dict(
        {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "spec": {"root": root}}
    )


def build_units(leaves: int) -> Units:
    from rayqueue.quota.quantity import CPU, GPU, MEMORY, MILLI
    from rayqueue.scheduler.workloads.resourcepolicy import Unit, Units

    ecs = Unit(
        "ecs",
        "ecs",
        capacity={GPU: 4 * leaves * MILLI, CPU: 32 * leaves * MILLI, MEMORY: 128 * leaves * GI * MILLI},
    )
    acs = Unit("acs", "acs", capacity=None, max_pods=leaves)
    return Units([ecs, acs], "LackResourceOrExceedMax")


def make_jobs(n: int, leaves: list[str], rng: random.Random) -> list:
    from rayqueue.queue.workload import Workload
    from rayqueue.quota.quantity import CPU, GPU, MEMORY, MILLI

    jobs = []
    for i in range(n):
        gpus = rng.choice((1, 1, 2, 4, 8))
        pods = max(1, gpus // 2) + 1  # head + workers
        jobs.append(
            Workload(
                uid=f"job-{i}",
                queue=rng.choice(leaves),
                request={GPU: gpus * MILLI, CPU: 8 * gpus * MILLI, MEMORY: 32 * gpus * GI * MILLI},
                pods=pods,
                priority=rng.choice((0, 0, 100, 1000)),
                submitted_at=float(i),
            )
        )
    return jobs


def drain(pending: int, seed: int = 7) -> dict[str, float]:
    from rayqueue.scheduler.engine import Engine, EngineConfig
    from rayqueue.scheduler.engine.decisions import Admit, Preempt

    rng = random.Random(seed)
    tree = build_tree()
    leaves = sorted(tree.leaves)
    engine = Engine(tree, build_units(len(leaves)), EngineConfig(), clock=lambda: 0.0)  # default config
    jobs = make_jobs(pending, leaves, rng)
    t0 = time.perf_counter()
    for w in jobs:
        engine.submit(w)
    submit_s = time.perf_counter() - t0

    running: deque[str] = deque()
    engine_s = 0.0  # wall
    engine_cpu = 0.0  # this process's CPU time
    finished = 0
    now = 0.0
    cycles = 0
    while finished < pending:
        now += 1.0
        c, t = time.process_time(), time.perf_counter()
        decisions = engine.schedule(now)
        for d in decisions:
            if isinstance(d, Admit):
                running.append(d.workload.uid)
            elif isinstance(d, Preempt):
                engine.suspended(d.workload.uid, now)
        engine_s += time.perf_counter() - t
        engine_cpu += time.process_time() - c
        cycles += 1
        if not running:
            wake = engine.next_wakeup()
            if wake is None:
                raise RuntimeError(f"stuck: {engine.stats}")
            now = max(now, wake - 1.0)  # only backed-off jobs remain: jump to when they may compete
            continue
        # The oldest tenth of running jobs completes before the next cycle.
        batch = max(1, len(running) // 10)
        c, t = time.process_time(), time.perf_counter()
        for _ in range(batch):
            uid = running.popleft()
            if uid in engine.workloads:
                engine.finish(uid)
                finished += 1
        engine_s += time.perf_counter() - t
        engine_cpu += time.process_time() - c
    stats = engine.stats
    assert all(not any(n.usage.get(r, 0) for r in n.usage) for n in tree), "usage must return to zero"
    return {
        "pending": pending,
        "decisions": stats.attempts,
        "admitted": stats.admitted,
        "preempted": stats.preempted,
        "cycles": cycles,
        "engine_s": engine_s,
        "engine_cpu_s": engine_cpu,
        "submit_us": submit_s / pending * 1e6,
        "decisions_per_s": stats.attempts / engine_cpu,
        "admissions_per_s": stats.admitted / engine_cpu,
        "us_per_decision": engine_cpu / stats.attempts * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", default="10000,100000", help="comma-separated backlog sizes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="run each size this many times; report the fastest")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's default GC thresholds instead of the ones the rayqueue command sets")
    parser.add_argument("--interpreted", action="store_true",
                        help="run the engine's Python sources even where compiled modules sit beside them")
    args = parser.parse_args()
    if args.interpreted:
        sys.meta_path.insert(0, _SourceOnly())  # before anything of rayqueue is imported
    from rayqueue.scheduler.process import tune_gc

    if not args.default_gc:
        tune_gc()
    sizes = [int(x) for x in args.pending.split(",")]
    build = engine_build()
    print("engine drain: 10x10x10 tree (1,000 leaves), cpu/memory/nvidia.com/gpu/max-jobs, ECS + ACS units")
    print(f"engine: {build}; GC thresholds {gc.get_threshold()}"
          + (" (CPython's default)" if args.default_gc else " (as the rayqueue command sets them)"))
    header = (
        f"{'pending':>8} {'decisions':>10} {'admitted':>9} {'cycles':>7} {'engine cpu s':>13} {'wall s':>7} "
        f"{'decisions/s':>12} {'admits/s':>9} {'us/decision':>12} {'submit us':>10}"
    )
    print("rates and us/decision are per second of CPU time (the wall time beside it includes other tenants)")
    if args.repeat > 1:
        print(f"each size run {args.repeat} times; the run with the least CPU time is shown")
    print(header)
    results = []
    for n in sizes:
        r = min((drain(n, args.seed) for _ in range(max(args.repeat, 1))), key=lambda x: x["engine_cpu_s"])
        results.append(r)
        print(
            f"{r['pending']:>8,} {r['decisions']:>10,} {r['admitted']:>9,} {r['cycles']:>7,} "
            f"{r['engine_cpu_s']:>13.2f} {r['engine_s']:>7.2f} "
            f"{r['decisions_per_s']:>12,.0f} {r['admissions_per_s']:>9,.0f} {r['us_per_decision']:>12.1f} "
            f"{r['submit_us']:>10.1f}"
        )
    if len(results) >= 2:
        ratio = results[-1]["us_per_decision"] / results[0]["us_per_decision"]
        print(
            f"cost per decision at {results[-1]['pending']:,} vs {results[0]['pending']:,} pending: {ratio:.2f}x "
            f"(target <= 1.5x); target >= 100,000 decisions/s of CPU time at 100,000 pending, compiled"
        )


if __name__ == "__main__":
    main()
