"""``rayqueue serve`` as a user runs it: its own local Ray head, killed with SIGKILL mid-run, restarted,
driven with the CLI, then stopped cleanly (which stops the Ray head it started).

A module of its own so that it never runs beside the shared Ray cluster of test_standalone.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from standalone_env import Gates, rayjob, tree, wait_until
from typer.testing import CliRunner

from rayqueue.quota.quantity import GPU
from rayqueue.scheduler.cli import app as cli_app
from rayqueue.scheduler.service.raycluster import dashboard_alive, free_ports
from rayqueue.scheduler.service.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    return Gates(tmp_path)


def _serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rayqueue.scheduler.cli", "serve", *args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json().get("ok"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"serve did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def test_kill_9_the_service_with_its_own_ray_then_restart(tmp_path: Path, gates: Gates) -> None:
    """The default set-up (a local Ray head the service starts), killed with SIGKILL mid-run."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    tree_file = tmp_path / "tree.yaml"
    tree_file.write_text(tree(("team-a", 0, 2), root_max=2))
    args = ["--tree", str(tree_file), "--num-gpus", "2", "--num-cpus", "4", "--port", str(port),
            "--state-dir", str(tmp_path / "state"), "--poll-interval", "0.1"]
    log = tmp_path / "serve.log"
    proc = _serve(args, log)
    ray_info = None
    try:
        _wait_http(url, proc, log)
        ids = []
        for name in ("one", "two", "three"):
            resp = httpx.post(f"{url}/v1/jobs", json={"yaml": rayjob(name, gates.entrypoint(name))}, timeout=30)
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["jobs"][0]["id"])
        one, two, three = ids

        def states() -> dict[str, str]:
            return {j["id"]: j["state"] for j in httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]}

        asyncio.run(wait_until(lambda: states()[one] == states()[two] == "Running", 60, "two running jobs"))
        assert states()[three] == "Pending"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        ray_info = json.loads(Store(f"sqlite:///{tmp_path / 'state' / 'rayqueue.db'}").get_setting("local_ray") or "{}")
        assert ray_info, "the service records the Ray head it started"
        # Ray listens beyond loopback: the head it started refuses anyone without its token
        assert httpx.get(f"{ray_info['dashboard_url']}/api/jobs/", timeout=10).status_code == 401
        assert dashboard_alive(ray_info["dashboard_url"], token=ray_info["auth_token"])
        proc = _serve(args, log)
        _wait_http(url, proc, log)
        after = httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]
        assert {j["id"]: j["state"] for j in after} == {one: "Running", two: "Running", three: "Pending"}
        status = httpx.get(f"{url}/v1/status", timeout=10).json()
        root = next(n for n in status["nodes"] if n["name"] == "root")
        assert root["usage"][GPU] == 2000 and root["running"] == 2 and root["pending"] == 1
        assert status["ray"] == ray_info["dashboard_url"]  # re-attached to the same Ray head

        gates.open("one")
        asyncio.run(wait_until(lambda: states()[three] == "Running", 60, "the third job to start"))
        assert states()[one] == "Succeeded"
        history = httpx.get(f"{url}/v1/history", params={"job": one}, timeout=10).json()["events"]
        assert [e["kind"] for e in history].count("Released") == 1  # submitted to Ray exactly once
        assert "Reattached" in [e["kind"] for e in history]

        # the CLI against the restarted service
        cli = CliRunner()
        env = {"RAYQUEUE_URL": url, "COLUMNS": "200"}
        out = cli.invoke(cli_app, ["status"], env=env)
        assert out.exit_code == 0 and "team-a" in out.output and "2 / - / 2" in out.output, out.output
        out = cli.invoke(cli_app, ["explain", two], env=env)
        assert out.exit_code == 0 and "Running" in out.output and "unit      default" in out.output
        out = cli.invoke(cli_app, ["history", one], env=env)
        assert out.exit_code == 0 and "Reattached" in out.output and "Succeeded" in out.output
        out = cli.invoke(cli_app, ["logs", one], env=env)
        assert out.exit_code == 0 and "finished one" in out.output
        bad = tmp_path / "bad.yaml"
        bad.write_text(rayjob("bad", "x", namespace="team-a").replace("team-a", "team-q"))
        out = cli.invoke(cli_app, ["submit", str(bad)], env=env)
        assert out.exit_code == 2 and "team-q" in out.output
        good = tmp_path / "good.yaml"
        good.write_text(rayjob("four", gates.entrypoint("four")))
        out = cli.invoke(cli_app, ["submit", str(good)], env=env)
        assert out.exit_code == 0 and "Pending, position 0 in queue team-a - QuotaMaxExceeded: " in out.output, out.output
        out = cli.invoke(cli_app, ["cancel", "four"], env=env)
        assert out.exit_code == 0 and "Cancelled" in out.output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a clean stop also stops the Ray head it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        gates.open_all()
    assert proc.returncode == 0, log.read_text()[-3000:]
    if ray_info:
        assert not dashboard_alive(ray_info["dashboard_url"], timeout=1)
        assert not Path(ray_info["temp_dir"]).exists()
    # the job that ran on the stopped head is requeued for the next start, with the reason in its history
    store = Store(f"sqlite:///{tmp_path / 'state' / 'rayqueue.db'}")
    by_name = {r.name: r for r in store.jobs()}
    assert by_name["one"].state == "Succeeded" and by_name["four"].state == "Cancelled"
    for name in ("two", "three"):  # still running when SIGTERM came
        assert by_name[name].state == "Pending" and by_name[name].attempt == 1
        assert [e.kind for e in store.events(by_name[name].id)][-1] == "Interrupted"
    assert store.get_setting("local_ray") is None
