"""The standalone service's HTTP edge without Ray: hostile or huge bodies, bad query parameters, and an event
loop that keeps answering while a submission is parsed (proved by the order of events, not by timing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fake_ray
import httpx
import pytest
from standalone_env import rayjob, tree
from typer.testing import CliRunner

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.cli import app as cli_app
from rayqueue.scheduler.service import intake
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.raycluster import free_ports
from rayqueue.scheduler.service.store import Store

TWO_TEAMS = tree(("team-a", 1, 3), ("team-b", 1, 3), root_min=2, root_max=3)
NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}]
LIMIT = 64 * 1024


class FakeRay(fake_ray.FakeRay):
    """Accepts every job and keeps it pending: these tests are about the edge, not about running."""

    start_state = "PENDING"


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    service = Service(Store(f"sqlite:///{tmp_path}/edge.db"), FakeRay(), QuotaTree.from_yaml_text(TWO_TEAMS),  # type: ignore[arg-type]
                      config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600, max_body_bytes=LIMIT),
                      tree_yaml=TWO_TEAMS, nodes=lambda _: NODES)
    await service.start()
    yield service
    await service.stop()
    service.store.close()


@pytest.fixture
async def http(svc: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        yield client


async def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _one_line(resp: httpx.Response) -> str:
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    return detail


# ------------------------------------------------------------------------------------ off the event loop


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/quota"])
async def test_healthz_and_status_answer_while_a_submission_is_being_parsed(
    route: str, svc: Service, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser is held inside a submission until the test has its answers from /healthz and /v1/status:
    they can only come first if the parse runs off the event loop (on the loop, the parse would hold it
    until the gate's own time-out, and the submission would return before any answer)."""
    entered, gate = threading.Event(), threading.Event()
    parse: Any = intake.load_submission_documents if route == "/v1/jobs" else QuotaTree.from_yaml_text

    def held(text: str, source: str = "input") -> Any:
        entered.set()
        gate.wait(15)
        return parse(text, source)

    if route == "/v1/jobs":
        monkeypatch.setattr(intake, "load_submission_documents", held)
        body = {"yaml": rayjob("big", "python x.py")}
    else:
        monkeypatch.setattr(QuotaTree, "from_yaml_text", staticmethod(held))
        body = {"yaml": tree(("team-a", 1, 3), ("team-b", 1, 4), root_min=2, root_max=4)}
    submission = asyncio.create_task(http.post(route, json=body))
    await _until(entered.is_set, "the submission to reach the parser")
    events = []
    health = await http.get("/healthz")
    events.append(("healthz", submission.done()))
    status = await http.get("/v1/status")
    events.append(("status", submission.done()))
    gate.set()
    resp = await submission
    events.append(("submission", True))
    assert events == [("healthz", False), ("status", False), ("submission", True)]
    assert health.json()["ok"] is True and status.status_code == 200
    assert resp.status_code in (200, 201), resp.text


# ------------------------------------------------------------------------------------ sizes, depths, parameters


async def test_a_body_over_the_limit_is_refused_with_413_naming_the_limit_and_nothing_is_parsed(
    svc: Service, http: httpx.AsyncClient
) -> None:
    kept = await http.post("/v1/jobs", json={"yaml": rayjob("kept", "python x.py")})
    assert kept.status_code == 201
    padding = "# " + "x" * (LIMIT + 10) + "\n"
    resp = await http.post("/v1/jobs", json={"yaml": padding + rayjob("huge", "python x.py")})
    assert resp.status_code == 413
    assert f"over the limit of {LIMIT} bytes" in _one_line(resp)

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"yaml": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    resp = await http.post("/v1/jobs", content=streamed(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and str(LIMIT) in _one_line(resp)
    resp = await http.post("/v1/quota", json={"yaml": padding})
    assert resp.status_code == 413
    names = [j["name"] for j in (await http.get("/v1/jobs")).json()["jobs"]]
    assert names == ["kept"]


async def test_yaml_nested_past_the_parser_is_a_422_that_names_the_limit(
    svc: Service, http: httpx.AsyncClient
) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    resp = await http.post("/v1/jobs", json={"yaml": deep, "source": "deep.yaml"})
    assert resp.status_code == 422, resp.text
    assert "deep.yaml" in _one_line(resp)
    assert "nested deeper than 100 levels (the limit)" in resp.json()["problems"][0]
    resp = await http.post("/v1/quota", json={"yaml": "spec: " + deep})
    assert resp.status_code == 422, resp.text
    assert "nested deeper than 100 levels (the limit)" in resp.json()["problems"][0]
    assert (await http.get("/healthz")).json()["ok"] is True


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"offset": str(10**30)}, "query parameter offset: Input should be less than or equal to 1000000000"),
        ({"offset": "-1"}, "query parameter offset: Input should be greater than or equal to 0"),
        ({"limit": "0"}, "query parameter limit: Input should be greater than or equal to 1"),
        ({"limit": "ten"}, "query parameter limit: Input should be a valid integer"),
        ({"state": "Runnning"}, "query parameter state: 'Runnning' is not a job state (one of Pending,"),
    ],
)
async def test_query_parameters_are_checked_at_the_edge_with_a_one_line_422(
    svc: Service, http: httpx.AsyncClient, query: dict[str, str], needle: str
) -> None:
    for route in ("/v1/jobs", "/v1/history") if "state" not in query else ("/v1/jobs",):
        resp = await http.get(route, params=query)
        assert resp.status_code == 422, resp.text
        assert needle in _one_line(resp)


# ------------------------------------------------------------------------------------ the CLI


async def _serve_app(svc: Service) -> tuple[str, Any, asyncio.Task[None]]:
    import uvicorn

    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    await _until(lambda: server.started, "uvicorn to start")
    return f"http://127.0.0.1:{port}", server, task


async def test_submit_of_several_files_is_one_all_or_nothing_request_naming_each_refused_document(
    svc: Service, tmp_path: Path
) -> None:
    url, server, task = await _serve_app(svc)
    try:
        a, b, c = (tmp_path / f"{n}.yaml" for n in "abc")
        a.write_text(rayjob("one", "python x.py"))
        b.write_text(rayjob("two", "python x.py") + "---\n" + rayjob("three", "python x.py", queue="team-z"))
        c.write_text(rayjob("four", "python x.py", namespace="team-b"))
        cli = CliRunner()
        env = {"RAYQUEUE_URL": url, "COLUMNS": "300"}
        out = await asyncio.to_thread(cli.invoke, cli_app, ["submit", str(a), str(b)], env=env)
        assert out.exit_code == 2, out.output
        assert f"submission refused ({b} (document 1)); none of its documents was queued" in out.output
        assert "team-z" in out.output and "Traceback" not in out.output
        assert svc.store.jobs() == []  # a.yaml, although fine, was not queued either
        out = await asyncio.to_thread(cli.invoke, cli_app, ["submit", str(a), str(c)], env=env)
        assert out.exit_code == 0, out.output
        assert sorted(r.name for r in svc.store.jobs()) == ["four", "one"]
    finally:
        server.should_exit = True
        await task


async def test_explain_of_an_empty_job_reference_is_a_one_line_error(svc: Service) -> None:
    url, server, task = await _serve_app(svc)
    try:
        cli = CliRunner()
        for command in (["explain", ""], ["logs", " "], ["cancel", ""]):
            out = await asyncio.to_thread(cli.invoke, cli_app, command, env={"RAYQUEUE_URL": url})
            assert out.exit_code == 2, out.output
            assert out.output.strip() == "error: JOB is empty: give a job id or name (see `rayqueue jobs`)"
            assert out.exception is None or isinstance(out.exception, SystemExit)
        # a reference with a slash or a question mark reaches no other route: a plain one-line 404
        for ref in ("a/b", "x?offset=1"):
            out = await asyncio.to_thread(cli.invoke, cli_app, ["explain", ref], env={"RAYQUEUE_URL": url})
            assert out.exit_code == 1 and "error (404)" in out.output and "Traceback" not in out.output, out.output
    finally:
        server.should_exit = True
        await task
