"""`rayqueue status`, `jobs` and `history` fit the terminal and never cut a name short.

The tables are rendered by the real commands (typer's CliRunner, COLUMNS set as a terminal would) from a
real service (the example tree, the HTTP API over uvicorn, SQLite) whose Ray is a fake that accepts
jobs: rendering needs no Ray cluster.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from fake_ray import FakeRay
from standalone_env import rayjob
from typer.testing import CliRunner

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.cli import app as cli_app
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.store import Store

ROOT = Path(__file__).resolve().parents[1]
NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 96.0, "GPU": 16.0, "memory": 16314848 * 1024.0}}]
# Names as people write them: generateName suffixes, long model names; one queue per team leaf.
JOBS = [
    ("pytorch-image-classifier-finetune-7fk2p", "team-a-training", "high", 4),
    ("llama-3-70b-lora-sweep-batch-size-128", "team-a-training", None, 8),
    ("batch-inference-resnet152-nightly", "team-a-inference", "low", 2),
    ("hyperparameter-search-tpu-v6e-16", "team-b-research", "high", 16),
    ("text-summarizer-eval-2026-12-02", "team-b-batch", None, 1),
]


class AcceptingRay(FakeRay):
    address = "http://127.0.0.1:8265"


@pytest.fixture
async def service_url(tmp_path: Path) -> AsyncIterator[str]:
    text = (ROOT / "examples" / "tree.yaml").read_text()
    svc = Service(Store(f"sqlite:///{tmp_path}/t.db"), AcceptingRay(), QuotaTree.from_yaml_text(text),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), tree_yaml=text,
                  nodes=lambda _: NODES)
    await svc.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(svc), log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for name, namespace, priority, gpus in JOBS:
            svc.submit_text(rayjob(name, "python train.py", namespace=namespace, priority=priority, gpus=gpus))
        for _ in range(200):  # until every release reached the (fake) Ray
            await svc.poll_once()
            if not svc.state.releasing and not svc.state.background:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        await svc.stop()


async def render(url: str, width: int, *args: str) -> list[str]:
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, list(args),
                                     env={"RAYQUEUE_URL": url, "COLUMNS": str(width), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def assert_fits(lines: list[str], width: int) -> None:
    too_wide = [line for line in lines if len(line) > width]
    assert too_wide == [], f"{len(too_wide)} line(s) wider than {width}"
    assert not any("…" in line for line in lines), "\n".join(lines)  # nothing cut short


@pytest.mark.parametrize("width", [80, 120])
async def test_status_fits_and_names_every_node_whole(service_url: str, width: int) -> None:
    lines = await render(service_url, width, "status")
    assert_fits(lines, width)
    text = "\n".join(lines)
    for node in ("root", "team-a", "team-a-training", "team-a-inference", "team-b", "team-b-research",
                 "team-b-batch"):
        assert any(line.strip().split(" ")[0] == node for line in lines), node
    for resource in ("cpu", "memory", "nvidia.com/gpu", "kube-queue/max-jobs"):
        assert resource in text
    assert "15.6Gi" in text  # the unit's memory, readable


@pytest.mark.parametrize("width", [80, 120])
async def test_jobs_fits_and_names_every_job_and_queue_whole(service_url: str, width: int) -> None:
    lines = await render(service_url, width, "jobs")
    assert_fits(lines, width)
    text = "\n".join(lines)
    for name, queue, _, _ in JOBS:
        assert name in text and queue in text, name
    assert "Running" in text and "Pending" in text


@pytest.mark.parametrize("width", [80, 120])
async def test_history_fits_and_names_every_job_whole(service_url: str, width: int) -> None:
    lines = await render(service_url, width, "history")
    assert_fits(lines, width)
    text = "\n".join(lines)
    for name, _, _, _ in JOBS:
        assert name in text, name


def test_request_fits_80_columns_and_names_every_rayjob_and_group_whole() -> None:
    samples = sorted((ROOT / "data" / "kuberay" / "samples").glob("ray-job.*.yaml"))
    result = CliRunner().invoke(cli_app, ["request", "--pods", *map(str, samples)],
                                env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert result.exit_code in (0, 1), result.output  # 1: a sample on an existing cluster is not queued
    lines = [line for line in result.output.splitlines() if not line.startswith(("note: ", "REJECTED "))]  # prose
    assert_fits(lines, 80)
    text = result.output
    for name in ("pytorch-text-classifier-*", "rayjob-sample-*", "v6e-16-job", "rayjob-pytorch-mnist"):
        assert name in text, name
    for group in ("small-group", "tpu-group"):
        assert group in text, group
