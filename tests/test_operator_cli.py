"""`rayqueue operator` as a real process against the kmock API server: admits, serves metrics, stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from operator_env import TREES, environment, eventually, rayjob, tree_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_rayqueue_operator_command_admits_and_serves_metrics() -> None:
    metrics_port = free_port()
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rayqueue.scheduler.cli", "operator", "--server", env.url, "--standalone",
            "--webhook-port", "0", "--metrics-port", str(metrics_port), "--identity", "cli-op",
            "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await env.create_job(rayjob("one", "team-a"))
            await env.create_job(rayjob("two", "team-a"))
            await eventually(lambda: env.running("team-a", "one"), what="one admitted")
            assert env.admission("team-a", "one")["by"] == "cli-op"
            assert not env.running("team-a", "two")  # 4 CPU > the queue's 2

            async def scrape() -> str:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    return await r.text()

            text = await scrape()
            assert 'rayqueue_admitted_workloads_total{queue="team-a",unit="default"} 1.0' in text
            assert "rayqueue_tree_valid 1.0" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_rayqueue_operator_without_any_api_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(tmp_path / "missing-kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rayqueue.scheduler.cli", "operator", "--standalone", "--webhook-port", "0",
        "--metrics-port", "0", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "rayqueue operator: no Kubernetes API to connect to" in err.decode()
    assert "Traceback" not in err.decode() + out.decode()


async def test_rayqueue_operator_records_history_and_serves_job_pages_on_its_port(tmp_path: Path) -> None:
    dashboard_port = free_port()
    db = tmp_path / "state" / "history.db"  # its folder does not exist yet: the command makes it
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rayqueue.scheduler.cli", "operator", "--server", env.url, "--standalone",
            "--webhook-port", "0", "--metrics-port", "0", "--dashboard-port", str(dashboard_port),
            "--history-db", str(db), "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await env.create_job(rayjob("one", "team-a"))
            await eventually(lambda: env.running("team-a", "one"), what="one admitted")
            uid = env.job("team-a", "one")["metadata"]["uid"]
            page = ""

            async def job_page() -> bool:
                nonlocal page
                try:
                    async with aiohttp.ClientSession() as s, \
                            s.get(f"http://127.0.0.1:{dashboard_port}/jobs/{uid}") as r:
                        page = await r.text()
                        return r.status == 200 and "admitted on unit default" in page
                except aiohttp.ClientError:
                    return False

            deadline = asyncio.get_running_loop().time() + 120
            while not await job_page():
                assert asyncio.get_running_loop().time() < deadline, f"no job page with the admission: {page[:500]}"
                await asyncio.sleep(0.1)
            assert db.exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_rayqueue_operator_with_a_history_db_it_cannot_open_says_so_in_one_line(tmp_path: Path) -> None:
    async with environment() as env:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rayqueue.scheduler.cli", "operator", "--server", env.url, "--standalone",
            "--webhook-port", "0", "--metrics-port", "0", "--history-db", str(tmp_path),  # a folder, not a file
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and f"--history-db sqlite:///{tmp_path}: cannot open it" in lines[0]
    assert "Traceback" not in err.decode() + out.decode()
