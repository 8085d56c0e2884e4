"""Benchmark: services next to batch in standalone mode, on a real local Ray cluster with Ray Serve.

    .venv/bin/python benchmarks/serving_standalone.py [--bursts 3] [--job-seconds 3] [--out figures.json]

The tree: serving is guaranteed 2 GPUs, batch 1 and may use 3, the root holds 3. A RayService (the demo's
Serve application, 1..2 replicas of 1 GPU) runs 1 replica and reserves 1; batch keeps 2 one-GPU jobs
queued at all times (each runs ``--job-seconds``), so one of them always borrows the reserved GPU. Then
``--bursts`` times: client threads raise the load until Serve's autoscaler asks a 2nd replica, and the
load stops once it runs.

Printed:
* scale-up latency: from the poll that saw Serve's target rise (the replica increase) to the engine's
  grant (the borrower preempted in that cycle), and to Serve reporting the new replica RUNNING;
* batch throughput kept: batch GPU-seconds held (admitted to end) and run (Ray RUNNING to end) over the
  window, against the most a static split (batch limited to its guarantee of 1 GPU, the service's 2nd
  GPU idle between bursts) could hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from standalone_env import Gates, rayjob, rayservice, tree  # noqa: E402

from rayqueue.quota.tree import QuotaTree  # noqa: E402
from rayqueue.scheduler.service import store as st  # noqa: E402
from rayqueue.scheduler.service.core import Service, ServiceConfig  # noqa: E402
from rayqueue.scheduler.service.raycluster import LocalRayCluster, free_ports  # noqa: E402
from rayqueue.scheduler.service.rayjobs import RayJobs  # noqa: E402
from rayqueue.scheduler.service.serve_deploy import ServeApi, serve_target  # noqa: E402
from rayqueue.scheduler.service.store import Store  # noqa: E402

TREE = tree(("serving", 2, 2), ("batch", 1, 3), root_min=3, root_max=3)


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        await asyncio.sleep(0.05)


def load(url: str, stop: threading.Event) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            try:
                http.get(url)
            except httpx.HTTPError:
                pass


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rq-bench-serve-"))
    gates = Gates(root)
    serve_port = free_ports(1)[0]
    cluster = LocalRayCluster.start(num_cpus=8, num_gpus=4, timeout=args.timeout)
    svc = Service(
        Store(f"sqlite:///{root}/rq.db"), RayJobs(cluster.url, auth_token=cluster.auth_token),
        QuotaTree.from_yaml_text(TREE),
        config=ServiceConfig(poll_interval_s=0.1, serve_http_port=serve_port), tree_yaml=TREE,
    )
    api = ServeApi(cluster.url, auth_token=cluster.auth_token)
    latencies: list[float] = []
    try:
        await svc.start()
        [web] = svc.submit_text(rayservice("web", downscale_delay_s=1.0))

        def replicas() -> tuple[int, int]:
            try:
                return serve_target(api.applications(), ("predict", "Predictor")) or (0, 0)
            except Exception:
                return (0, 0)

        await until(lambda: replicas() == (1, 1), args.timeout, "Serve's first replica")
        entry = f"{sys.executable} -c 'import time; time.sleep({args.job_seconds})'"
        submitted: list[str] = []

        def top_up() -> None:
            # keep two batch jobs waiting or running beyond what runs: one always borrows the headroom
            live = [j for j in submitted if svc.store.get(j).state in st.LIVE_STATES]  # type: ignore[union-attr]
            for _ in range(4 - len(live)):
                [acc] = svc.submit_text(rayjob(f"b{len(submitted)}", entry, namespace="batch"))
                submitted.append(acc.id)

        started = time.time()
        top_up()
        stop_feeding = asyncio.Event()

        async def feeder() -> None:
            while not stop_feeding.is_set():
                async with svc.engine_lock:
                    top_up()
                await asyncio.sleep(0.2)

        feeding = asyncio.create_task(feeder())
        url = f"http://127.0.0.1:{serve_port}/predict"
        for i in range(args.bursts):
            await until(lambda: svc.engine.service(web.id).granted == 1, args.timeout, "the scale-down")  # type: ignore[union-attr]
            await until(lambda: sum(svc.store.get(j).state == st.RUNNING for j in submitted) >= 2,  # type: ignore[union-attr]
                        args.timeout, "a batch job borrowing the headroom")
            stop = threading.Event()
            threads = [threading.Thread(target=load, args=(url, stop), daemon=True) for _ in range(6)]
            for t in threads:
                t.start()
            try:
                await until(lambda: svc.serving.scale_seen.get(web.id, (0, 0.0))[0] == 2 and
                            svc.serving.scale_seen[web.id][1] > 0, args.timeout, "Serve's target to rise")
                seen_at = svc.serving.scale_seen[web.id][1]
                await until(lambda: replicas()[1] >= 2, args.timeout, "the 2nd replica to run")
                latencies.append(time.monotonic() - seen_at)
                print(f"burst {i + 1}: target 2 seen -> replica running in {latencies[-1]:.2f}s", flush=True)
                svc.serving.scale_seen.pop(web.id, None)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
        stop_feeding.set()
        await feeding
        window = time.time() - started
        ends = ("Preempting", "Succeeded", "Failed", "Stopped")
        held = gpu_seconds(svc, submitted, "Admitted", ends, started)  # quota held (1 GPU a job)
        ran = gpu_seconds(svc, submitted, "Running", ends, started)  # Ray ran the driver
        preempted = sum(svc.store.get(j).preemptions for j in submitted)  # type: ignore[union-attr]
        # the engine's part: from the poll that saw Serve's target rise to the grant (same cycle)
        events = svc.store.events(web.id)
        decisions = [b.at - a.at for a, b in zip(events, events[1:], strict=False)
                     if a.kind == "Scaled" and b.kind == "ScaledUp"]
        static_split = 1.0 * window  # batch held to its guarantee, 1 GPU, the whole window at best
        return {
            "bursts": args.bursts,
            "scale_up_seen_to_running_s": latencies,
            "scale_up_seen_to_granted_s": decisions,
            "window_s": window,
            "batch_jobs": len(submitted),
            "batch_preemptions": preempted,
            "batch_gpu_seconds_held": held,
            "batch_gpu_seconds_running": ran,
            "static_split_batch_gpu_seconds_at_best": static_split,
            "batch_held_vs_static_split": held / static_split if static_split else None,
        }
    finally:
        gates.open_all()
        await svc.stop()
        svc.store.close()
        api.close()
        cluster.stop()


def gpu_seconds(svc: Service, jobs: list[str], start: str, ends: tuple[str, ...], since: float) -> float:
    """One GPU per job: the seconds from each ``start`` event to the next end, summed (open ones to now)."""
    total = 0.0
    for j in jobs:
        began: float | None = None
        for e in svc.store.events(j):
            if e.kind == start:
                began = max(e.at, since)
            elif began is not None and e.kind in ends:
                total += e.at - began
                began = None
        if began is not None:
            total += time.time() - began
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--job-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
