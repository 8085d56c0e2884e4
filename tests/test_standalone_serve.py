"""``rayqueue serve`` as a user runs it: its own local Ray head, killed with SIGKILL mid-run, restarted,
driven with the CLI, then stopped cleanly (which stops the Ray head it started).

A module of its own so that it never runs beside the shared Ray cluster of test_standalone.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standalone_env import HANG_GUARD_S, Gates, rayjob, tree, wait_http, wait_until
from typer.testing import CliRunner

from rayqueue.quota.quantity import GPU
from rayqueue.scheduler.cli import app as cli_app
from rayqueue.scheduler.service.raycluster import dashboard_alive, free_ports, head_processes
from rayqueue.scheduler.service.store import Store

# a hang guard only: each test starts Ray (minutes on a busy machine); every wait below ends at its event
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BAD_INPUTS = Path(__file__).parent / "bad_inputs"


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    return Gates(tmp_path)


def _serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rayqueue.scheduler.cli", "serve", *args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


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
        wait_http(url, proc, log)
        ids = []
        for name in ("one", "two", "three"):
            resp = httpx.post(f"{url}/v1/jobs", json={"yaml": rayjob(name, gates.entrypoint(name))}, timeout=30)
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["jobs"][0]["id"])
        one, two, three = ids

        def states() -> dict[str, str]:
            return {j["id"]: j["state"] for j in httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]}

        asyncio.run(wait_until(lambda: states()[one] == states()[two] == "Running", what="two running jobs"))
        assert states()[three] == "Pending"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(HANG_GUARD_S)

        ray_info = json.loads(Store(f"sqlite:///{tmp_path / 'state' / 'rayqueue.db'}").get_setting("local_ray") or "{}")
        assert ray_info, "the service records the Ray head it started"
        # Ray listens beyond loopback: the head it started refuses anyone without its token
        assert httpx.get(f"{ray_info['dashboard_url']}/api/jobs/", timeout=10).status_code == 401
        assert dashboard_alive(ray_info["dashboard_url"], token=ray_info["auth_token"])
        proc = _serve(args, log)
        wait_http(url, proc, log)
        # the console says it found the head the killed run left, and uses it
        assert f"re-using the local Ray head a previous run left at {ray_info['dashboard_url']}" in log.read_text()
        after = httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]
        assert {j["id"]: j["state"] for j in after} == {one: "Running", two: "Running", three: "Pending"}
        status = httpx.get(f"{url}/v1/status", timeout=10).json()
        root = next(n for n in status["nodes"] if n["name"] == "root")
        assert root["usage"][GPU] == 2000 and root["running"] == 2 and root["pending"] == 1
        assert status["ray"] == ray_info["dashboard_url"]  # re-attached to the same Ray head

        gates.open("one")
        asyncio.run(wait_until(lambda: states()[three] == "Running", what="the third job to start"))
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
                proc.wait(HANG_GUARD_S)
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # a clean stop also stops the Ray head it started
        try:
            proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_head_a_killed_service_left_that_no_longer_answers_is_stopped_and_replaced(tmp_path: Path) -> None:
    """kill -9 the service, then freeze every process of its Ray head (SIGSTOP: they exist but never answer).
    The next start waits for it (--ray-reattach-wait), stops it, says so, and runs on a new head."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    args = ["--num-gpus", "1", "--num-cpus", "2", "--port", str(port), "--state-dir", str(tmp_path / "state"),
            "--ray-reattach-wait", "5"]
    log = tmp_path / "serve.log"
    proc = _serve(args, log)
    frozen: list[int] = []
    try:
        wait_http(url, proc, log)
        old = httpx.get(f"{url}/v1/status", timeout=30).json()["ray"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(HANG_GUARD_S)
        info = json.loads(Store(f"sqlite:///{tmp_path / 'state' / 'rayqueue.db'}").get_setting("local_ray") or "{}")
        frozen = head_processes(info["temp_dir"])
        assert frozen, "the killed service's Ray head is still running"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

        proc = _serve(args, log)
        wait_http(url, proc, log)
        text = log.read_text()
        assert f"stopped the local Ray head a previous run left at {old}: it did not answer within 5s" in text, text
        assert not head_processes(info["temp_dir"])  # every process of the frozen head is gone
        new = httpx.get(f"{url}/v1/status", timeout=30).json()["ray"]
        assert new != old and dashboard_alive(new, timeout=30, token=json.loads(
            Store(f"sqlite:///{tmp_path / 'state' / 'rayqueue.db'}").get_setting("local_ray") or "{}")["auth_token"])
    finally:
        for pid in frozen:  # never leave a frozen process behind, whatever failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _corpus(kind: str) -> list[tuple[str, bytes, str]]:
    """(name, bytes, expected substring) of every tests/bad_inputs/<kind>/<name>.<ext> with its .expect."""
    out = []
    for expect in sorted((BAD_INPUTS / kind).glob("*.expect")):
        for body in sorted(expect.parent.glob(expect.stem + ".*")):
            if body.suffix != ".expect":
                out.append((body.name, body.read_bytes(), expect.read_text().strip()))
    return out


def _json_body(fields: dict[str, str], raw: bytes) -> tuple[bytes, str | None]:
    """The JSON body carrying ``raw`` as its "yaml" field, and what the service must answer instead of the
    corpus's text, if anything. Bytes that are not UTF-8 cannot be a JSON string: they go into the body as
    they are (as a client with a broken encoder would send them), and the edge refuses the body itself."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        head = json.dumps(fields)[:-1].encode()
        return head + b', "yaml": "' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"}', "request body is not valid JSON"
    body = json.dumps({**fields, "yaml": text}).encode()
    # A corpus file bigger than the service's body limit never reaches the loader: the edge refuses it.
    return body, ("request body over the limit" if len(body) > 4 * 2**20 else None)


def _raw_post(port: int, path: str, head: dict[str, str], chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """POST by hand: send ``chunks`` until the server answers (or closes); the answer and the bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    return answer, sent


def test_hostile_and_bad_inputs_over_http_leave_a_memory_bounded_service_answering_with_nothing_lost(
    tmp_path: Path, gates: Gates
) -> None:
    """A real `rayqueue serve`, its address space capped once its Ray head runs: every bad tree and RayJob of
    tests/bad_inputs, bodies nested 20,000 deep, a 50 MB body (by Content-Length and streamed) and paging
    numbers past SQLite's integers each get a 4xx with a one-line message; meanwhile a big valid submission
    does not stop /healthz, and afterwards the service still answers and still has every accepted job."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    tree_file = tmp_path / "tree.yaml"
    tree_file.write_text(tree(("team-a", 0, 1), root_max=1))
    log = tmp_path / "serve.log"
    proc = _serve(["--tree", str(tree_file), "--num-gpus", "1", "--num-cpus", "2", "--port", str(port),
                   "--state-dir", str(tmp_path / "state")], log)
    try:
        wait_http(url, proc, log)
        # The cap is set now, on the service alone: Ray's processes (started already) keep their own limits.
        size = int(next(line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                        if line.startswith("VmSize:"))) * 1024
        cap = size + 3 * 2**30
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (cap, cap))
        http = httpx.Client(base_url=url, timeout=HANG_GUARD_S)
        first = http.post("/v1/jobs", json={"yaml": rayjob("first", gates.entrypoint("first"))})
        assert first.status_code == 201, first.text

        def refused(resp: httpx.Response, expect: str, what: str) -> None:
            assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.text[:500])
            body = resp.json()
            lines = [body["detail"], *(body.get("problems") or [])]
            assert all(isinstance(x, str) and "\n" not in x and "Traceback" not in x for x in lines), (what, lines)
            assert expect in " ".join(lines), (what, expect, lines)

        trees, jobs = _corpus("tree"), _corpus("rayjob")
        assert trees and jobs
        json_head = {"Content-Type": "application/json"}
        for route, corpus in (("/v1/quota", trees), ("/v1/jobs", jobs)):
            for name, raw, expect in corpus:
                body, instead = _json_body({"source": name} if route == "/v1/jobs" else {}, raw)
                refused(http.post(route, content=body, headers=json_head), instead or expect, name)
        deep = "[" * 20_000 + "]" * 20_000
        refused(http.post("/v1/jobs", json={"yaml": deep, "source": "deep.yaml"}), "nested deeper", "deep job")
        refused(http.post("/v1/quota", json={"yaml": deep}), "nested deeper", "deep tree")
        refused(http.get("/v1/jobs", params={"offset": 10**30}), "query parameter offset", "offset")
        refused(http.get("/v1/history", params={"limit": 10**30}), "query parameter limit", "limit")

        # 50 MB: refused on its Content-Length before the body is sent, and as a stream once past the limit
        fifty = 50 * 2**20
        answer, sent = _raw_post(port, "/v1/jobs", {"Content-Type": "application/json",
                                                    "Content-Length": str(fifty)},
                                 (b"x" * 2**20 for _ in range(50)))
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 4194304 bytes" in answer, answer[:300]
        assert sent < fifty
        answer, sent = _raw_post(port, "/v1/quota", {"Content-Type": "application/json",
                                                     "Transfer-Encoding": "chunked"},
                                 (b"100000\r\n" + b"x" * 2**20 + b"\r\n" for _ in range(50)))
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer, answer[:300]
        assert sent < fifty

        # a big valid submission (1,000 RayJobs, ~1 MB) parses off the event loop: /healthz answers meanwhile
        many = "---\n".join(rayjob(f"many-{i}", "python x.py") for i in range(1000))
        result: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
            f"{url}/v1/jobs", json={"yaml": many, "source": "many.yaml"}, timeout=HANG_GUARD_S)))
        worker.start()
        answered_meanwhile = 0
        while worker.is_alive():
            if httpx.get(f"{url}/healthz", timeout=HANG_GUARD_S).json()["ok"] and worker.is_alive():
                answered_meanwhile += 1
        worker.join()
        assert result["r"].status_code == 201, result["r"].text[:500]
        assert answered_meanwhile >= 1

        # still answering, nothing accepted lost, and memory stayed bounded
        assert http.get("/healthz").json()["ok"] is True
        listed = http.get("/v1/jobs", params={"limit": 5000}).json()
        assert listed["total"] == 1001 and first.json()["jobs"][0]["id"] in {j["id"] for j in listed["jobs"]}
        assert http.get("/v1/status").status_code == 200
        peak = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
        assert int(peak.split()[1]) < 2 * 2**20, peak  # peak resident memory under 2 GiB (in KiB)
        assert proc.poll() is None
    finally:
        _stop(proc)
        gates.open_all()
    assert proc.returncode == 0, log.read_text()[-3000:]
