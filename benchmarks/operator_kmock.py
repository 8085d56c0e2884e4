"""Benchmark: the operator admitting RayJobs through a Kubernetes API (kmock) with a fake KubeRay.

Two processes, as in a cluster: the "cluster side" (kmock's API server emulator + the fake KubeRay that
runs each job for its runtime, and the submitter creating RayJobs) and the operator (kopf + engine).

Scenarios:
  burst (default)   N RayJobs (default 1,000) across Q queues (default 20) created at once; each queue
                    holds 10 one-CPU gangs at a time, every job runs 1 s, so the queues drain in waves.
                    Prints admissions/s and create-to-unsuspend latency p50/p99 (first wave = jobs that
                    fit at once: the operator's own latency; all jobs: including the wait for quota).
  --kueue-baseline  Kueue's published scalability "baseline" run in real time: 5 cohorts x 6 queues,
                    each queue nominal 20 CPU with borrowing limit 100; per queue 350 small (1 CPU,
                    200 ms, every 100 ms, priority 50), 100 medium (5 CPU, 500 ms, every 500 ms,
                    priority 100), 50 large (20 CPU, 1 s, every 1.2 s, priority 200). Prints wall time,
                    average time to admission per class and usage = CPU-seconds run / (quota x wall).
                    Kueue reports 351 s wall and 56% usage; the work needs ~66 s of the full quota.
                    --scale 0.2 runs a fifth of the jobs per queue (same arrival rates).

Figures (2-core machine shared with other work, 22 Nov 2026; runs vary by up to 2x; docs/operator.md
has the full table and the profile behind it):
  burst             32-65 admissions/s over 5 runs (was 14-26); the operator hears of a RayJob
                    0.2-0.5 s after its creation, p50 (was 10-16 s); CPU seconds: operator 15-18
                    (was 14-23), cluster side 17-20 (was 34-46).
  --scale 0.05      720 of 720 complete (one never did before); wall 25.5 s, usage 56.4%.
  --scale 0.5       7,500 of 7,500 complete; wall 166.4 s, usage 59.1%, 45.6 admissions/s;
                    average time to admission small 89.3 s, medium 65.1 s, large 58.2 s.
  full baseline     15,000 of 15,000 complete; wall 285.0 s, usage 51.6% (Kueue: 351 s, 56%),
                    52.9 admissions/s; average time to admission small 178.5 s, medium 136.8 s,
                    large 102.5 s (--only-baseline --max-wait 300; ~5 min on 1.76 cores). The arrivals
                    (~385 RayJobs/s at first) exceed what two shared cores sustain for kmock + fake
                    KubeRay + kopf + operator (~35 CPU-ms per RayJob), so waits measure the backlog.

What limits them: CPU in both processes (neither waits on the other), and the fake KubeRay's tick,
which stretches a 1 s job to 2-2.6 s of held quota under load. A real API server and KubeRay are far
cheaper per request; read these figures as a floor for the operator on this machine.

Since issue 14 (own RayJob watch, fewer writes; docs/operator.md has the step table): --scale 0.2
                    3,000 of 3,000 complete; operator 8.0 ms CPU per admission beside 20.1 ms per job for
                    the stand-in (load 14; 13.3 beside 14.7 before). The JSON reports both, and the
                    operator's requests by verb and kind.

Run:  .venv/bin/python benchmarks/operator_kmock.py [--jobs 1000 --queues 20] [--kueue-baseline]
      .venv/bin/python benchmarks/operator_kmock.py --only-baseline --scale 0.5 --max-wait 400
      .venv/bin/python benchmarks/operator_kmock.py --only-baseline --large-scale --max-wait 3000   # 50,000 jobs
      options: --default-gc (CPython's GC thresholds in the operator), --profile FILE (cProfile), --json FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The kmock API server and fake KubeRay are test code: they live in tests/, not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MAX_JOB_WAIT_S = 900.0


@dataclass
class JobSpec:
    namespace: str
    name: str
    cpu_milli: int  # the whole gang
    runtime: float
    priority: int
    arrival: float  # seconds after the start
    klass: str


def rayjob_body(job: JobSpec) -> dict[str, Any]:
    """Head + one worker, each half of the gang's CPU, HTTPMode (no submitter pod)."""
    half = f"{job.cpu_milli // 2}m"

    def pod(role: str) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": f"ray-{role}", "image": "rayproject/ray:2.46.0",
                                         "resources": {"requests": {"cpu": half, "memory": "512Mi"}}}]}}

    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": job.name, "namespace": job.namespace,
                     "labels": {"rayqueue.io/priority-class": str(job.priority)},
                     "annotations": {"rayqueue.test/runtime-seconds": str(job.runtime)}},
        "spec": {"entrypoint": "python job.py", "submissionMode": "HTTPMode", "suspend": True,
                 "shutdownAfterJobFinishes": True,
                 "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": pod("head")},
                                    "workerGroupSpecs": [{"groupName": "w", "replicas": 1, "minReplicas": 1,
                                                          "maxReplicas": 1, "rayStartParams": {},
                                                          "template": pod("worker")}]}},
    }


def tree_body(groups: dict[str, list[str]], leaf_min: str, leaf_max: str, group_cpu: str,
              root_cpu: str) -> dict[str, Any]:
    children = []
    for group, leaves in groups.items():
        kids = [{"name": q, "namespaces": [q], "min": {"cpu": leaf_min}, "max": {"cpu": leaf_max}}
                for q in leaves]
        children.append({"name": group, "min": {"cpu": group_cpu}, "max": {"cpu": group_cpu}, "children": kids})
    return {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree",
            "metadata": {"name": "elasticquotatree", "namespace": "kube-system"},
            "spec": {"root": {"name": "root", "min": {"cpu": root_cpu}, "max": {"cpu": root_cpu},
                              "children": children}}}


def burst_scenario(jobs: int, queues: int) -> tuple[dict[str, Any], list[JobSpec], float]:
    names = [f"team-{i:02d}" for i in range(queues)]
    tree = tree_body({"all": names}, "10", "10", str(10 * queues), str(10 * queues))
    specs = [JobSpec(names[i % queues], f"job-{i:05d}", 1000, 1.0, (i * 7) % 3, 0.0, "all")
             for i in range(jobs)]
    return tree, specs, 10.0 * queues


def kueue_baseline(scale: float, cohorts: int = 5, queues: int = 6,
                   per_queue: float = 1.0) -> tuple[dict[str, Any], list[JobSpec], float]:
    """Kueue's baseline (5 cohorts x 6 queues, 500 jobs a queue); with ``cohorts=10, queues=100,
    per_queue=0.1`` its "large-scale" shape (10 x 100 queues, 50 jobs a queue: 50,000 jobs)."""
    groups = {f"cohort-{c}": [f"c{c}-q{q}" for q in range(queues)] for c in range(cohorts)}
    tree = tree_body(groups, "20", "120", str(20 * queues), str(20 * queues * cohorts))
    specs: list[JobSpec] = []
    classes = [("small", 350 * per_queue, 1000, 0.2, 0.1, 50), ("medium", 100 * per_queue, 5000, 0.5, 0.5, 100),
               ("large", 50 * per_queue, 20000, 1.0, 1.2, 200)]
    for leaves in groups.values():
        for q in leaves:
            for klass, count, cpu, runtime, every, prio in classes:
                for i in range(max(1, int(count * scale))):
                    specs.append(JobSpec(q, f"{klass}-{i:04d}", cpu, runtime, prio, i * every, klass))
    return tree, specs, 20.0 * queues * cohorts


# ------------------------------------------------------------------------------------------ cluster side


def cluster_side(conn: Any, tree: dict[str, Any], specs: list[JobSpec], max_wait: float) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_cluster_main(conn, tree, specs, max_wait))


async def _cluster_main(conn: Any, tree: dict[str, Any], specs: list[JobSpec], max_wait: float) -> None:
    import kmock
    from kmock_cluster import RAYJOBS, TREES, Api, FakeApiServer, FakeKubeRay

    loop = asyncio.get_running_loop()
    created: dict[str, float] = {}
    create_took: dict[str, float] = {}
    unsuspended: dict[str, float] = {}

    def on_write(plural: str, namespace: str | None, name: str, data: Any) -> None:
        if plural == "rayjobs" and (data.get("spec") or {}).get("suspend") is False:
            unsuspended.setdefault(f"{namespace}/{name}", time.time())

    async with FakeApiServer() as server, kmock.Server(server):
        server.listeners.append(on_write)
        api = Api(server)
        await api.create(TREES, tree)
        conn.send(str(server.url).rstrip("/"))
        await loop.run_in_executor(None, conn.recv)  # "go": the operator is up
        async with FakeKubeRay(server, validate=False, tick=0.02, concurrency=32) as kuberay:
            sem = asyncio.Semaphore(32)
            start = time.time()

            async def submit(job: JobSpec) -> None:
                delay = start + job.arrival - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                async with sem:
                    key = f"{job.namespace}/{job.name}"
                    created[key] = time.time()
                    await api.create(RAYJOBS, rayjob_body(job))
                    create_took[key] = time.time() - created[key]

            submitters = asyncio.gather(*(submit(j) for j in specs))
            deadline = time.time() + max_wait + max(j.arrival for j in specs)
            while len(kuberay.finished_at) < len(specs) and time.time() < deadline:
                await asyncio.sleep(0.1)
            if time.time() >= deadline:
                submitters.cancel()
                print(f"stopped after --max-wait: {len(kuberay.finished_at)} of {len(specs)} jobs completed",
                      flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await submitters
            end = time.time()
            result = {
                "start": start, "end": end, "created": created, "unsuspended": unsuspended,
                "finished": dict(kuberay.finished_at), "ran_for": dict(kuberay.ran_for),
                "complete": len(kuberay.finished_at),
                "cluster_cpu_s": time.process_time(),
                "create_took": create_took,
            }
            conn.send(result)
            # Keep serving until the operator has stopped (else its watches retry a closed server).
            with contextlib.suppress(EOFError):
                await loop.run_in_executor(None, conn.recv)


# ------------------------------------------------------------------------------------------ operator side


async def run_operator(url: str, conn: Any, default_gc: bool = False, history_db: str | None = None) -> dict[str, Any]:
    from rayqueue.scheduler.engine import EngineConfig
    from rayqueue.scheduler.operator.controller import OperatorConfig
    from rayqueue.scheduler.operator.handlers import Operator
    from rayqueue.scheduler.operator.kube import Connection
    from rayqueue.scheduler.process import tune_gc

    if not default_gc:
        tune_gc()  # as the `rayqueue` command (hence `rayqueue operator`) does at start
    config = OperatorConfig(identity="bench", peering=None,
                            engine=EngineConfig(backoff_base_s=0.05, backoff_max_s=1.0),
                            history_url=f"sqlite:///{history_db}" if history_db else None)
    op = Operator(Connection(server=url), config)
    seen: dict[str, float] = {}
    original = op.controller.on_rayjob

    async def on_rayjob(event_type: str, body: Any) -> None:  # when the operator hears of each job
        seen.setdefault(f"{body['metadata'].get('namespace')}/{body['metadata']['name']}", time.time())
        await original(event_type, body)

    op.controller.on_rayjob = on_rayjob  # type: ignore[method-assign]
    op.start()
    await asyncio.wait_for(op.ready_flag.wait(), 30)
    while not op.controller.synced:
        await asyncio.sleep(0.05)
    cpu_at_go = time.process_time()  # start-up (imports, first list) is not per admission
    conn.send("go")
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
    result["seen"] = seen
    result["cycles"] = op.controller.cycles
    result["operator_cpu_s"] = time.process_time()
    result["operator_cpu_run_s"] = result["operator_cpu_s"] - cpu_at_go
    result["operator_requests"] = dict(op.client.calls)
    result["events_posted"] = op.controller.events.posted
    await op.stop()
    conn.send("bye")
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(name: str, specs: list[JobSpec], quota_cpu: float, r: dict[str, Any]) -> dict[str, Any]:
    by_key = {f"{j.namespace}/{j.name}": j for j in specs}
    lat = {k: r["unsuspended"][k] - r["created"][k] for k in r["unsuspended"] if k in r["created"]}
    first_create = min(r["created"].values())
    heard = [r["seen"][k] - r["created"][k] for k in r["seen"] if k in r["created"]]
    last_admit = max(r["unsuspended"].values()) if r["unsuspended"] else float("nan")
    last_finish = max(r["finished"].values()) if r["finished"] else float("nan")
    out: dict[str, Any] = {
        "scenario": name,
        "jobs": len(specs),
        "queues": len({j.namespace for j in specs}),
        "admitted": len(lat),
        "completed": r["complete"],
        "admit_all_s": last_admit - first_create,
        "admissions_per_s": len(lat) / (last_admit - first_create) if lat else 0.0,
        "latency_p50_s": pct(list(lat.values()), 0.5),
        "latency_p99_s": pct(list(lat.values()), 0.99),
        "wall_s": last_finish - first_create,
        "cycles": r["cycles"],
        "events_posted": r["events_posted"],
        "operator_cpu_s": r["operator_cpu_s"],
        "create_request_p99_s": pct(list(r["create_took"].values()), 0.99),
        "heard_p50_s": pct(heard, 0.5),
        "heard_p99_s": pct(heard, 0.99),
        "cluster_cpu_s": r["cluster_cpu_s"],
        # per admitted job, so that the two processes compare on a machine shared with other work
        "operator_cpu_run_s": r["operator_cpu_run_s"],
        "operator_cpu_ms_per_admission": r["operator_cpu_run_s"] * 1000 / max(1, len(lat)),
        "operator_requests": r["operator_requests"],
        "cluster_cpu_ms_per_job": r["cluster_cpu_s"] * 1000 / max(1, len(specs)),
    }
    cpu_seconds = sum(by_key[k].cpu_milli / 1000 * t for k, t in r["ran_for"].items() if k in by_key)
    out["usage"] = cpu_seconds / (quota_cpu * out["wall_s"]) if out["wall_s"] > 0 else 0.0
    out["work_at_full_quota_s"] = sum(j.cpu_milli / 1000 * j.runtime for j in specs) / quota_cpu
    classes = sorted({j.klass for j in specs})
    out["per_class"] = {
        c: {"jobs": sum(1 for j in specs if j.klass == c),
            "avg_time_to_admission_s": statistics.fmean(v for k, v in lat.items() if by_key[k].klass == c)
            if any(by_key[k].klass == c for k in lat) else float("nan"),
            "p99_time_to_admission_s": pct([v for k, v in lat.items() if by_key[k].klass == c], 0.99)}
        for c in classes
    }
    if name == "burst":
        # Jobs that fit at once (the first wave): the operator's own create-to-unsuspend latency.
        order = sorted(lat, key=lambda k: r["created"][k])
        wave = [lat[k] for k in order[: int(quota_cpu)]]
        out["first_wave_p50_s"] = pct(wave, 0.5)
        out["first_wave_p99_s"] = pct(wave, 0.99)
    return out


def run(name: str, tree: dict[str, Any], specs: list[JobSpec], quota_cpu: float,
        max_wait: float = MAX_JOB_WAIT_S, default_gc: bool = False, profile: str | None = None,
        history_db: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=cluster_side, args=(child, tree, specs, max_wait), daemon=True)
    proc.start()
    child.close()  # the child's copy only: if the cluster side dies, recv() raises EOFError, never hangs
    try:
        url = parent.recv()
        if profile:  # cProfile of the operator process (it slows it down: CPU figures are not comparable)
            import cProfile

            with cProfile.Profile() as prof:
                result = asyncio.run(run_operator(url, parent, default_gc, history_db))
            prof.dump_stats(profile)
        else:
            result = asyncio.run(run_operator(url, parent, default_gc, history_db))
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return report(name, specs, quota_cpu, result)


def print_report(out: dict[str, Any]) -> None:
    print(f"\n== {out['scenario']}: {out['jobs']} RayJobs across {out['queues']} queues ==")
    print(f"admitted {out['admitted']}, completed {out['completed']}, admission cycles {out['cycles']}, "
          f"events posted {out['events_posted']}")
    print(f"CPU seconds: operator {out['operator_cpu_s']:.1f}, API server + fake KubeRay + submitter "
          f"{out['cluster_cpu_s']:.1f}")
    print(f"operator requests: {', '.join(f'{k} {v}' for k, v in sorted(out['operator_requests'].items()))}")
    print(f"CPU per job: operator {out['operator_cpu_ms_per_admission']:.2f} ms per admission (from the first "
          f"RayJob on; {out['operator_cpu_s'] - out['operator_cpu_run_s']:.1f} s of start-up not counted), "
          f"stand-in API server + fake KubeRay + submitter {out['cluster_cpu_ms_per_job']:.2f} ms per job")
    print(f"create request p99 {out['create_request_p99_s'] * 1000:.0f} ms; "
          f"create-to-watch-event at the operator: p50 {out['heard_p50_s'] * 1000:.0f} ms, "
          f"p99 {out['heard_p99_s'] * 1000:.0f} ms")
    print(f"all admitted after {out['admit_all_s']:.2f} s: {out['admissions_per_s']:.1f} admissions/s")
    print(f"create-to-unsuspend (all jobs, incl. waiting for quota): p50 {out['latency_p50_s'] * 1000:.0f} ms, "
          f"p99 {out['latency_p99_s'] * 1000:.0f} ms")
    if "first_wave_p50_s" in out:
        print(f"create-to-unsuspend (first wave, quota free): p50 {out['first_wave_p50_s'] * 1000:.0f} ms, "
              f"p99 {out['first_wave_p99_s'] * 1000:.0f} ms")
    print(f"wall {out['wall_s']:.1f} s (the work alone needs {out['work_at_full_quota_s']:.1f} s of the full "
          f"quota); usage {out['usage'] * 100:.1f}%")
    for c, s in out["per_class"].items():
        print(f"  {c:7s} {s['jobs']:6d} jobs: average time to admission {s['avg_time_to_admission_s']:.2f} s, "
              f"p99 {s['p99_time_to_admission_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--history-db", help="the operator writes its SQL history to this SQLite file (as --history-db)")
    parser.add_argument("--kueue-baseline", action="store_true", help="also run Kueue's baseline (minutes)")
    parser.add_argument("--only-baseline", action="store_true", help="run only Kueue's baseline")
    parser.add_argument("--large-scale", action="store_true",
                        help="the baseline run in Kueue's large-scale shape instead: 10 cohorts x 100 queues, "
                             "50 jobs a queue (50,000 RayJobs; --scale still applies)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the baseline's jobs per queue")
    parser.add_argument("--max-wait", type=float, default=MAX_JOB_WAIT_S,
                        help="seconds after the last arrival to wait for completions")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--default-gc", action="store_true",
                        help="leave the operator process's GC at CPython's defaults (to measure the tuning)")
    parser.add_argument("--profile", help="write a cProfile of the operator process to this file")
    args = parser.parse_args()
    results = []
    if not args.only_baseline:
        tree, specs, quota = burst_scenario(args.jobs, args.queues)
        results.append(run("burst", tree, specs, quota, args.max_wait, args.default_gc, args.profile, args.history_db))
        print_report(results[-1])
    if args.kueue_baseline or args.only_baseline:
        tree, specs, quota = kueue_baseline(args.scale, 10, 100, 0.1) if args.large_scale else \
            kueue_baseline(args.scale)
        name = "kueue-large-scale" if args.large_scale else "kueue-baseline"
        results.append(run(name, tree, specs, quota, args.max_wait, args.default_gc, args.profile, args.history_db))
        print_report(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
