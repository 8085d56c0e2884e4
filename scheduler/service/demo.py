"""``rayqueue demo``: the standalone service on a local Ray cluster, with two teams sharing 4 GPUs.

It drives the real service over its HTTP API, exactly as a user would with ``rayqueue submit``:

1. team-a submits two jobs of 2 GPUs: the first fits its guarantee, the second *borrows* team-b's idle
   GPUs;
2. team-a submits a low-priority job, then a high-priority one: both wait, the later high one first;
3. team-b submits a job within its guarantee: the service *reclaims* it by stopping team-a's borrowed
   job in Ray and requeueing it;
4. everything runs to completion; the history (from SQL) shows the order.
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
    port = free_ports(1)[0]
    opts = ServeOptions(
        tree=demo_file("standalone-tree.yaml"),
        num_gpus=4,
        num_cpus=8,
        db=f"sqlite:///{db}",
        state_dir=state_dir,
        port=port,
        config=ServiceConfig(poll_interval_s=0.2),
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
