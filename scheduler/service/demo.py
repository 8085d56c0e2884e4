"""``rayqueue demo``: the standalone service on a local Ray cluster, with two teams sharing 4 GPUs.

It drives the real service over its HTTP API, exactly as a user would with ``rayqueue submit``:

1. team-a submits two jobs of 2 GPUs: the first fits its guarantee, the second *borrows* team-b's idle
   GPUs;
2. team-a submits a low-priority job, then a high-priority one: both wait, the later high one first;
3. team-b submits a job within its guarantee: the service *reclaims* it by stopping team-a's borrowed
   job in Ray and requeueing it;
4. everything runs to completion; the history (from SQL) shows the order;
5. team-b runs a service (a RayService: a small CPU-only Ray Serve application, 1..2 replicas of 1 GPU,
   1 charged and 1 reserved) and team-a a 3-GPU job that borrows the reserved GPU; a client raises the
   load, Serve's autoscaler asks a second replica, the borrowing job is preempted in that cycle, and the
   service's latency (p50/p99, before and during the burst) holds; the load ends, the replica goes, the
   job runs again and finishes.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from rayqueue.scheduler.service.core import ServiceConfig
from rayqueue.scheduler.service.raycluster import free_ports
from rayqueue.scheduler.service.server import Runner, ServeOptions
from rayqueue.scheduler.service.tables import history_table, jobs_table, status_tables

FINAL = ("Succeeded", "Failed", "Stopped", "Cancelled", "Rejected")
EVENT_STYLE = {
    "Submitted": "yellow",
    "Admitted": "cyan",
    "Running": "green",
    "Preempting": "bold magenta",
    "Requeued": "magenta",
    "Succeeded": "bold green",
    "Failed": "bold red",
}


def demo_file(name: str) -> Path:
    return Path(str(resources.files("rayqueue.scheduler") / "demo" / name))


def run_demo(keep_state: bool = False, timeout_s: float = 300.0) -> int:
    return asyncio.run(_demo(keep_state, timeout_s))


async def _demo(keep_state: bool, timeout_s: float) -> int:
    console = Console(highlight=False)
    state_dir = Path(".rayqueue")
    state_dir.mkdir(exist_ok=True)
    db = state_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    port, serve_port = free_ports(2)
    opts = ServeOptions(
        tree=demo_file("standalone-tree.yaml"),
        num_gpus=4,
        num_cpus=8,
        db=f"sqlite:///{db}",
        state_dir=state_dir,
        port=port,
        config=ServiceConfig(poll_interval_s=0.2, serve_http_port=serve_port),
    )
    runner = Runner(opts)
    console.rule("[bold]rayqueue demo: two teams share 4 GPUs on a local Ray cluster")
    console.print(
        "quota tree: root min=max 4 GPUs; team-a and team-b are each guaranteed 2 (min) and may use 4 (max).\n"
        "The RayJobs are KubeRay samples (head + a GPU worker group of 2 x 1 GPU) whose entrypoints run on CPU."
    )
    started = time.monotonic()
    ok = False
    try:
        with console.status("starting a local Ray head on 127.0.0.1 (4 logical GPUs) and the service..."):
            await runner.start()
            await runner.serve_in_background()
        ray_at = runner.service.ray.address if runner.service else "?"
        console.print(f"service at [bold]{runner.url}[/] (API docs {runner.url}/docs), Ray at {ray_at}")
        async with httpx.AsyncClient(base_url=runner.url, timeout=30) as http:
            follower = _Follower(http, console)

            async def submit(file: str, note: str) -> None:
                text = demo_file(file).read_text()
                resp = await http.post("/v1/jobs", json={"yaml": text, "source": file})
                resp.raise_for_status()
                for job in resp.json()["jobs"]:
                    pos = "" if job["position"] is None else f" position {job['position']}"
                    console.print(
                        f"  [bold]submit[/] {job['id']:<18} {job['queue']} prio={job['priority_class']:<6} "
                        f"-> {job['state']}{pos}: {job['reason'] or ''}  [dim]({note})[/]"
                    )

            console.rule("1. team-a submits two 2-GPU jobs: one in its guarantee, one borrowing team-b's")
            await submit("standalone-train.yaml", "fits team-a's guarantee")
            await submit("standalone-tune.yaml", "team-b is idle: borrow its 2 GPUs")
            console.rule("2. team-a submits a low-priority job, then a high-priority one: both wait")
            await submit("standalone-batch.yaml", "quota full")
            await submit("standalone-urgent.yaml", "later, but high priority: first in line")
            for table in status_tables((await http.get("/v1/status")).json()):
                console.print(table)
            console.rule("3. wait until Ray runs them, then team-b wants its guarantee back")
            await follower.until(lambda jobs: sum(j["state"] == "Running" for j in jobs) >= 2, 120)
            await submit("standalone-infer.yaml", "within team-b's guarantee: reclaim from team-a")
            console.rule("4. follow every state change until all jobs finish")
            await follower.until(lambda jobs: all(j["state"] in FINAL for j in jobs), timeout_s)
            jobs = (await http.get("/v1/jobs")).json()["jobs"]
            events = (await http.get("/v1/history")).json()["events"]
            console.print(jobs_table(jobs, "jobs at the end"))
            console.print(history_table([e for e in events if e["kind"] in ("Admitted", "Preempting", "Requeued")],
                                        "admissions and preemptions, from the SQL history"))
            ok = _summary(console, jobs, events)
            console.rule("5. team-b's service reserves a burst replica; team-a borrows it; a burst takes it back")
            ok = await _burst(http, console, follower, submit, serve_port, timeout_s) and ok
    except TimeoutError:
        console.print("[bold red]the demo timed out[/]")
    finally:
        with console.status("stopping the service and its Ray head..."):
            await runner.shutdown()
        if not keep_state:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
    took = time.monotonic() - started
    console.print(f"demo {'finished' if ok else 'FAILED'} in {took:.0f}s; Ray stopped, nothing left running")
    return 0 if ok else 1


class _Follower:
    """Prints each new history event as it happens."""

    def __init__(self, http: httpx.AsyncClient, console: Console) -> None:
        self.http = http
        self.console = console
        self.seen = 0
        self.t0 = time.time()

    async def poll(self) -> list[dict[str, Any]]:
        events = (await self.http.get("/v1/history")).json()["events"]
        for e in events[self.seen :]:
            if e["kind"] in ("Released",):
                continue
            style = EVENT_STYLE.get(e["kind"], "white")
            self.console.print(
                f"  {e['at'] - self.t0:6.1f}s [{style}]{e['kind']:<10}[/] {e['job']:<18} {e['message']}",
                soft_wrap=True,
            )
        self.seen = len(events)
        jobs: list[dict[str, Any]] = (await self.http.get("/v1/jobs")).json()["jobs"]
        return jobs

    async def until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            jobs = await self.poll()
            if done(jobs):
                return
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.3)


def _summary(console: Console, jobs: list[dict[str, Any]], events: list[dict[str, Any]]) -> bool:
    by_name = {j["name"]: j for j in jobs}
    admitted = [e for e in events if e["kind"] == "Admitted"]
    order = [next(j["name"] for j in jobs if j["id"] == e["job"]) for e in admitted]
    checks = [
        ("every job succeeded", all(j["state"] == "Succeeded" for j in jobs)),
        ("a-tune borrowed team-b's idle GPUs",
         any("borrowing" in e["message"] for e in admitted if e["job"] == by_name["a-tune"]["id"])),
        ("team-b reclaimed its guarantee: a-tune was preempted and requeued", by_name["a-tune"]["preemptions"] >= 1),
        ("a-urgent (high, submitted later) was admitted before a-batch (low)", order.index("a-urgent") < order.index("a-batch")),
    ]
    console.rule("what happened")
    console.print("admission order: " + " -> ".join(order))
    for text, passed in checks:
        console.print(f"  {'[green]yes[/]' if passed else '[red]NO[/]'}  {text}")
    return all(passed for _, passed in checks)


async def _burst(http: httpx.AsyncClient, console: Console, follower: _Follower, submit: Any, serve_port: int,
                 timeout_s: float) -> bool:
    """Step 5: a service's burst preempts the batch job that borrowed its reserved headroom."""

    async def service() -> dict[str, Any]:
        views = (await http.get("/v1/jobs")).json().get("services") or []
        return next(v for v in views if v["name"] == "b-web")

    async def job(name: str) -> dict[str, Any]:
        return next(j for j in (await http.get("/v1/jobs")).json()["jobs"] if j["name"] == name)

    await submit("standalone-web.yaml", "a service: 1 replica charged, 1 reserved for bursts")
    url = f"http://127.0.0.1:{serve_port}/predict"
    async with httpx.AsyncClient(timeout=60) as client:
        with console.status("waiting for Ray Serve to run b-web's application..."):
            await _until(lambda: _serves(client, url), timeout_s)
        await submit("standalone-sweep.yaml", "3 GPUs: team-a's 2 plus the GPU team-b's service reserves")
        with console.status("waiting for Ray to run a-sweep..."):
            await follower.until(lambda jobs: any(j["name"] == "a-sweep" and j["state"] == "Running" for j in jobs),
                                 timeout_s)
        before = await _latencies(client, url, concurrency=1, count=40)
        console.print(f"  quiet: 1 client,  p50 {_ms(before, 50)}  p99 {_ms(before, 99)}  ({len(before)} requests)")
        stop = asyncio.Event()
        burst: list[float] = []
        load = [asyncio.create_task(_load(client, url, stop, burst)) for _ in range(6)]
        try:
            await _until(lambda: _granted(service, 2), timeout_s)
            console.print("  burst: 6 clients; Serve asked a 2nd replica and rayqueue granted it:")
            await follower.until(lambda jobs: any(j["name"] == "a-sweep" and j["preemptions"] >= 1 for j in jobs),
                                 timeout_s)
            during = len(burst)
            await _until(lambda: _enough(burst, during + 80), timeout_s)
        finally:
            stop.set()
            await asyncio.gather(*load)
    after = burst[during:]
    # Printed, not checked: on a busy machine the figures vary; the point is the 2nd replica's effect.
    console.print(f"  burst, 2 replicas: p50 {_ms(after, 50)}  p99 {_ms(after, 99)}  ({len(after)} requests); "
                  f"whole burst, the wait for the 2nd replica included: p99 {_ms(burst, 99)}")
    with console.status("the load is gone: waiting for Serve to scale down and a-sweep to finish..."):
        await _until(lambda: _granted(service, 1), timeout_s)
        await follower.until(lambda jobs: all(j["state"] in FINAL for j in jobs), timeout_s)
    web, sweep = await service(), await job("a-sweep")
    checks = [
        ("b-web was admitted with 1 replica and 1 reserved, and scaled to 2 in the burst", web["state"] == "Running"),
        ("a-sweep borrowed the reserved GPU and was preempted for b-web's scale-up", sweep["preemptions"] >= 1),
        ("a-sweep ran again after the scale-down and succeeded", sweep["state"] == "Succeeded"),
    ]
    for text, passed in checks:
        console.print(f"  {'[green]yes[/]' if passed else '[red]NO[/]'}  {text}")
    return all(passed for _, passed in checks)


async def _serves(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def _granted(service: Any, n: int) -> bool:
    return bool((await service())["granted"] == n)


async def _enough(samples: list[float], n: int) -> bool:
    return len(samples) >= n


async def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.2)


async def _latencies(client: httpx.AsyncClient, url: str, concurrency: int, count: int) -> list[float]:
    out: list[float] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_load(client, url, stop, out, count)) for _ in range(concurrency)]
    await asyncio.gather(*tasks)
    return out


async def _load(client: httpx.AsyncClient, url: str, stop: asyncio.Event, out: list[float],
                count: int | None = None) -> None:
    """Requests one after another until ``stop`` (or ``count`` in ``out``), each latency appended."""
    while not stop.is_set() and (count is None or len(out) < count):
        started = time.perf_counter()
        try:
            resp = await client.get(url)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            out.append(time.perf_counter() - started)


def _pct(samples: list[float], p: float) -> float:
    if not samples:
        return float("inf")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def _ms(samples: list[float], p: float) -> str:
    return f"{_pct(samples, p) * 1000:.0f} ms"
