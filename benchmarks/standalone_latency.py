"""Standalone mode latency: submit-to-running through the real service on a real Ray cluster.

Input: a local Ray head (started here), the service in this process behind its HTTP API, a quota tree
whose one leaf admits ``--concurrency`` jobs of 1 GPU at a time, and ``--jobs`` RayJobs (head + one
1-GPU worker) whose driver sleeps ``--seconds``. All jobs are submitted at once over HTTP, so the
first ``--concurrency`` start at once and the rest queue and start as others finish.

It prints, as p50 / p95 / max over the jobs each applies to:

* submit -> admitted: the service's admission decision (immediately admitted jobs);
* admitted -> released: the Ray Job Submission ``submit_job`` call (Ray's API, not ours);
* released -> running: Ray's own job start (runtime env, driver process), seen by our status poll;
* submit -> running: what a user waits for a job that is admitted at once, and for all jobs;
* Ray end -> next admitted: how long a finished job's quota takes to reach the next job (our poll +
  cycle), Ray's ``end_time`` being the reference.

    python benchmarks/standalone_latency.py
    python benchmarks/standalone_latency.py --jobs 40 --concurrency 8 --poll 0.1 --out latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rayqueue.scheduler.service.core import ServiceConfig
from rayqueue.scheduler.service.raycluster import LocalRayCluster, free_ports
from rayqueue.scheduler.service.server import Runner, ServeOptions

TREE = """\
apiVersion: scheduling.sigs.k8s.io/v1beta1
kind: ElasticQuotaTree
metadata: {{name: bench}}
spec:
  root:
    name: root
    max: {{nvidia.com/gpu: {n}}}
    children:
      - {{name: bench, namespaces: [bench], max: {{nvidia.com/gpu: {n}}}}}
"""

JOB = """\
apiVersion: ray.io/v1
kind: RayJob
metadata: {{name: job-{i:03d}, namespace: bench}}
spec:
  entrypoint: {python} -c "import time; time.sleep({seconds})"
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
            - name: head
              image: rayproject/ray:2.52.0
              resources: {{requests: {{cpu: 100m, memory: 128Mi}}}}
    workerGroupSpecs:
      - groupName: gpu
        replicas: 1
        rayStartParams: {{}}
        template:
          spec:
            containers:
              - name: worker
                image: rayproject/ray:2.52.0
                resources: {{limits: {{nvidia.com/gpu: 1}}}}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def row(label: str, values: list[float]) -> dict[str, Any]:
    out = {"metric": label, "n": len(values)}
    if values:
        out.update(p50=pct(values, 0.5), p95=pct(values, 0.95), max=max(values), mean=statistics.fmean(values))
    return out


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    started = time.monotonic()
    cluster = await asyncio.to_thread(LocalRayCluster.start, num_cpus=8, num_gpus=args.concurrency)
    print(f"local Ray head up in {time.monotonic() - started:.1f}s at {cluster.url}")
    state = Path(tempfile.mkdtemp(prefix="rq-bench-"))
    tree_file = state / "tree.yaml"
    tree_file.write_text(TREE.format(n=args.concurrency))
    port = free_ports(1)[0]
    runner = Runner(ServeOptions(tree=tree_file, ray_address=cluster.url, ray_token=cluster.auth_token,
                                 db=f"sqlite:///{state}/bench.db",
                                 state_dir=state, port=port, config=ServiceConfig(poll_interval_s=args.poll)))
    try:
        await runner.start()
        await runner.serve_in_background()
        assert runner.service is not None
        async with httpx.AsyncClient(base_url=runner.url, timeout=60) as http:
            ids: list[str] = []
            for i in range(args.jobs):
                text = JOB.format(i=i, python=sys.executable, seconds=args.seconds)
                resp = await http.post("/v1/jobs", json={"yaml": text})
                resp.raise_for_status()
                ids.append(resp.json()["jobs"][0]["id"])
            deadline = time.monotonic() + args.timeout
            while True:
                jobs = (await http.get("/v1/jobs")).json()["jobs"]
                if all(j["state"] in ("Succeeded", "Failed") for j in jobs):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("jobs did not finish in time")
                await asyncio.sleep(0.2)
            events = (await http.get("/v1/history")).json()["events"]
        failed = [j["id"] for j in jobs if j["state"] != "Succeeded"]
        ray = runner.service.ray
        ray_end = {}
        for j in jobs:
            info = await asyncio.to_thread(ray._c().get_job_info, j["id"])
            ray_end[j["id"]] = info.end_time / 1000.0
    finally:
        await runner.shutdown()
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(state, ignore_errors=True)  # the run's SQLite file: its figures are printed (and --out)

    at: dict[tuple[str, str], float] = {}
    for e in events:
        at.setdefault((e["job"], e["kind"]), e["at"])
    immediate = [j for j in ids if at[(j, "Admitted")] - at[(j, "Submitted")] < 0.5]
    queued = [j for j in ids if j not in immediate]
    ends = sorted(ray_end.values())
    # the Ray end time that freed the quota each queued job took: the latest end before its admission
    hand_over = []
    for j in queued:
        before = [t for t in ends if t <= at[(j, "Admitted")]]
        if before:
            hand_over.append(at[(j, "Admitted")] - before[-1])
    rows = [
        row("submit -> admitted (admitted at once)", [at[(j, "Admitted")] - at[(j, "Submitted")] for j in immediate]),
        row("admitted -> released (Ray submit_job)", [at[(j, "Released")] - at[(j, "Admitted")] for j in ids]),
        row("released -> running (Ray's job start)", [at[(j, "Running")] - at[(j, "Released")] for j in ids]),
        row("submit -> running (admitted at once)", [at[(j, "Running")] - at[(j, "Submitted")] for j in immediate]),
        row("submit -> running (all jobs)", [at[(j, "Running")] - at[(j, "Submitted")] for j in ids]),
        row("Ray end -> next admitted (queued jobs)", hand_over),
    ]
    print(f"\n{args.jobs} jobs, {args.concurrency} at a time, driver {args.seconds}s, status poll {args.poll}s, "
          f"{os.cpu_count()} cores; failed: {len(failed)}")
    print(f"{'metric':<42} {'n':>3} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
    for r in rows:
        if r["n"]:
            print(f"{r['metric']:<42} {r['n']:>3} {r['p50']:>8.3f} {r['p95']:>8.3f} {r['max']:>8.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs the quota admits at a time")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each driver runs")
    parser.add_argument("--poll", type=float, default=0.2, help="the service's Ray status poll interval")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    if args.out:
        args.out.write_text(json.dumps({"input": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
