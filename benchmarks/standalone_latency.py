"""Standalone mode latency: the service's own overhead per submission, and submit-to-running on real Ray.

``--overhead``: the service's OWN cost, Ray excluded (issue 14's goal: submit to admitted <= 5 ms at p50).
The service runs in this process behind its real HTTP API (uvicorn, FastAPI) and SQLite store (WAL, the
same durability settings as ``rayqueue serve``); Ray is a stand-in that accepts every submission at once
and reports every job RUNNING, so what is measured is ours: HTTP, parsing, the engine, the SQL commits,
the release bookkeeping and the status poll. A client in another process submits ``--jobs`` one-job
RayJobs one after another (after ``--warmup`` unmeasured ones), all admitted at once. It prints p50 / p99 /
max of:

* arrival -> admitted: from the request reaching the ASGI app to the ``Admitted`` row committed;
* arrival -> answered: to the HTTP answer's first byte (it says ``Admitted``);
* client round trip: what the submitting process waits (connection kept alive);

and the service process's CPU time per submission (user + system, every thread, the poll loop and the
release tasks included), beside the wall time, since other work shares the machine.

    python benchmarks/standalone_latency.py --overhead [--jobs 500] [--warmup 50] [--rounds 3] [--out overhead.json]

Each of ``--rounds`` rounds starts a fresh service and store; the figure is the round with the lowest
p50 (as in ``engine_drain.py``: on a shared machine the fastest round is the one least disturbed), and
every round is printed, with the machine's load average.

Without ``--overhead``: submit-to-running through the real service on a real Ray cluster.

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
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.process import tune_gc
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.raycluster import LocalRayCluster, free_ports
from rayqueue.scheduler.service.rayjobs import RayStatus
from rayqueue.scheduler.service.server import Runner, ServeOptions
from rayqueue.scheduler.service.store import Store

#: The goal (issue 14): the service's own overhead from submit to admitted, at p50.
OVERHEAD_GOAL_S = 0.005

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
        out.update(p50=pct(values, 0.5), p95=pct(values, 0.95), p99=pct(values, 0.99), max=max(values),
                   mean=statistics.fmean(values))
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


# ------------------------------------------------------------------------------ --overhead

OVERHEAD_TREE = """\
apiVersion: scheduling.sigs.k8s.io/v1beta1
kind: ElasticQuotaTree
metadata: {name: bench}
spec:
  root:
    name: root
    children:
      - {name: bench, namespaces: [bench]}
"""

CPU_JOB = """\
apiVersion: ray.io/v1
kind: RayJob
metadata: {{name: job-{i:05d}, namespace: bench}}
spec:
  entrypoint: python -c "print(1)"
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
      - groupName: cpu
        replicas: 1
        rayStartParams: {{}}
        template:
          spec:
            containers:
              - name: worker
                image: rayproject/ray:2.52.0
                resources: {{requests: {{cpu: "1", memory: 1Gi}}}}
"""

#: One Ray node far larger than the jobs: every submission is admitted at once.
BIG_NODE = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 1e6, "memory": 2.0**60}}]


class StandInRay:
    """Ray's Job Submission API answered at once: every job is accepted and then RUNNING."""

    address = "stand-in://ray"
    auth_token = None

    def __init__(self) -> None:
        self.jobs: set[str] = set()

    def submit(self, sub: Any) -> bool:
        fresh = sub.submission_id not in self.jobs
        self.jobs.add(sub.submission_id)
        return fresh

    def status(self, sid: str) -> RayStatus | None:
        return RayStatus("RUNNING") if sid in self.jobs else None

    def statuses(self, sids: list[str]) -> dict[str, RayStatus | None]:
        return {sid: self.status(sid) for sid in sids}

    def stop(self, sid: str) -> None:
        pass

    def logs(self, sid: str) -> str | None:
        return ""

    def close(self) -> None:
        pass


class Timed:
    """ASGI wrapper: when each ``POST /v1/jobs`` reached the app and when its answer started."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.arrived: list[float] = []
        self.answered: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/jobs":
            await self.app(scope, receive, send)
            return
        self.arrived.append(time.perf_counter())

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answered.append(time.perf_counter())
            await send(message)

        await self.app(scope, receive, timed_send)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def client(url: str, jobs: int, warmup: int) -> None:
    """The submitting process: one job per request, one after another; prints each (id, state, seconds)."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(warmup + jobs):
            started = time.perf_counter()
            resp = http.post("/v1/jobs", json={"yaml": CPU_JOB.format(i=i)})
            took = time.perf_counter() - started
            resp.raise_for_status()
            job = resp.json()["jobs"][0]
            out.append({"id": job["id"], "state": job["state"], "s": took})
    print(json.dumps(out))


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds, each with a fresh service and store; the figure is the round with the lowest
    p50, the one least disturbed by other work on a shared machine (every round is printed)."""
    rounds = []
    for k in range(args.rounds):
        print(f"round {k + 1} of {args.rounds} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        rounds.append(await overhead_round(args))
    best = min(rounds, key=lambda r: r["rows"][0]["p50"])
    p50 = best["rows"][0]["p50"]
    print(f"\nbest of {args.rounds} rounds: p50 arrival -> admitted {p50 * 1e3:.2f} ms, p99 "
          f"{best['rows'][0]['p99'] * 1e3:.2f} ms, service CPU {best['cpu_per_submission_s'] * 1e3:.2f} ms per "
          f"submission; goal p50 <= {OVERHEAD_GOAL_S * 1e3:.0f} ms: " + ("met" if p50 <= OVERHEAD_GOAL_S else "NOT met"))
    return {"best": best, "rounds": rounds, "goal_p50_s": OVERHEAD_GOAL_S, "goal_met": p50 <= OVERHEAD_GOAL_S,
            "load_average": os.getloadavg()}


async def overhead_round(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from rayqueue.scheduler.service.api import create_app

    state = Path(tempfile.mkdtemp(prefix="rq-overhead-"))
    store = Store(f"sqlite:///{state}/bench.db")
    service = Service(store, StandInRay(), QuotaTree.from_yaml_text(OVERHEAD_TREE),  # type: ignore[arg-type]
                      config=ServiceConfig(poll_interval_s=args.poll), nodes=lambda _: BIG_NODE)
    # When each job's Admitted row is committed, whichever store method writes it (Store.admit; before it
    # existed, Store.transition: kept so that an older version can be measured the same way).
    admitted: dict[str, float] = {}
    admit, transition = getattr(store, "admit", None), store.transition

    def timed_admit(job_id: str, *a: Any, **kw: Any) -> Any:
        assert admit is not None
        row = admit(job_id, *a, **kw)
        admitted[job_id] = time.perf_counter()
        return row

    def timed_transition(job_id: str, kind: str, *a: Any, **kw: Any) -> Any:
        row = transition(job_id, kind, *a, **kw)
        if kind == "Admitted":
            admitted[job_id] = time.perf_counter()
        return row

    if admit is not None:
        store.admit = timed_admit  # type: ignore[method-assign]
    store.transition = timed_transition  # type: ignore[method-assign]
    await service.start()
    app = Timed(create_app(service))
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", f"http://127.0.0.1:{port}", "--jobs", str(args.jobs),
            "--warmup", str(args.warmup), stdout=asyncio.subprocess.PIPE)
        # The warm-up ends when its last answer is out; CPU and wall time count from there.
        while len(app.answered) < args.warmup:
            await asyncio.sleep(0.001)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        out, _ = await proc.communicate()
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        if proc.returncode != 0:
            raise RuntimeError(f"the client failed (exit {proc.returncode})")
    finally:
        server.should_exit = True
        await serving
        await service.stop()
        store.close()
        shutil.rmtree(state, ignore_errors=True)
    answers = json.loads(out)[args.warmup:]
    arrived, answered = app.arrived[args.warmup:], app.answered[args.warmup:]
    not_admitted = [a["id"] for a in answers if a["state"] != "Admitted"]
    if not_admitted:
        raise RuntimeError(f"{len(not_admitted)} jobs were not admitted at once, e.g. {not_admitted[:3]}")
    rows = [
        row("arrival -> admitted (committed)", [admitted[a["id"]] - t for a, t in zip(answers, arrived, strict=True)]),
        row("arrival -> answered", [b - t for t, b in zip(arrived, answered, strict=True)]),
        row("client round trip", [a["s"] for a in answers]),
    ]
    n = len(answers)
    p50 = rows[0]["p50"]
    print(f"service overhead, Ray excluded: {n} submissions one after another (+{args.warmup} warm-up), "
          f"one job each, all admitted at once; status poll {args.poll}s; {os.cpu_count()} cores")
    print(f"{'metric':<34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['metric']:<34} {r['n']:>5} {r['p50'] * 1e3:>8.2f} {r['p99'] * 1e3:>8.2f} {r['max'] * 1e3:>8.2f}")
    print(f"service CPU per submission: {cpu / n * 1e3:.2f} ms (user + system, every thread; "
          f"{cpu:.2f} s CPU in {wall:.2f} s wall for {n} submissions)")
    return {"rows": rows, "cpu_per_submission_s": cpu / n, "cpu_s": cpu, "wall_s": wall, "submissions": n,
            "p50_s": p50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs the quota admits at a time")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each driver runs")
    parser.add_argument("--poll", type=float, default=0.2, help="the service's Ray status poll interval")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--overhead", action="store_true", help="the service's own overhead, Ray excluded")
    parser.add_argument("--warmup", type=int, default=50, help="--overhead: unmeasured submissions first")
    parser.add_argument("--rounds", type=int, default=3, help="--overhead: rounds; the best one is the figure")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # --overhead's submitting process
    args = parser.parse_args()
    if args.client:
        client(args.client, args.jobs, args.warmup)
        return
    if args.overhead:
        tune_gc()  # as `rayqueue serve` does
        if "--jobs" not in sys.argv:
            args.jobs = 500
        figures: Any = asyncio.run(overhead(args))
    else:
        figures = asyncio.run(run(args))
    if args.out:
        args.out.write_text(json.dumps({"input": vars(args) | {"out": str(args.out)}, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
