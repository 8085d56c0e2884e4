"""The web dashboard on a seeded store (history alone) and on a service with a fake Ray (live pages):
what a person reads on each page, the token rule, paging and bad input."""

from __future__ import annotations

import asyncio
import html as html_lib
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_seed import GPU, T0, seed_bulk, seeded_store
from fake_ray import FakeRay, settle
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from standalone_env import rayjob, tree

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.dashboard import charts, timeline
from rayqueue.scheduler.dashboard.history import History
from rayqueue.scheduler.dashboard.pages import Filters, history_app, mount
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.api import create_app
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.dashboard import ServiceLive, attach
from rayqueue.scheduler.service.store import Store

NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}]


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _text(html: str) -> str:
    """What a person reads: the page without its tags."""
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


# ------------------------------------------------------------------------------- history alone


async def test_a_job_page_tells_the_whole_life_of_a_preempted_job(tmp_path: Path) -> None:
    async with _client(history_app(seeded_store(tmp_path / "h.db"))) as http:
        page = await http.get("/jobs/train-a-1")
    assert page.status_code == 200
    seen = _text(page.text)
    assert "preempted for urgent-b-1: team-a borrows 4 nvidia.com/gpu above its min" in seen
    assert "admitted on unit ecs" in seen and "Ray stopped train-a-1; back in the queue" in seen
    assert "QuotaMaxExceeded 2m10s" in seen  # waited under that reason, for that long, after the requeue
    assert "nvidia.com/gpu 4, cpu 600m · 3 pods" in seen
    # 4 GPUs held 64 s (preempted) + 700 s; the first 64 s were borrowed (above team-a's min)
    assert "0.849 nvidia.com/gpu-h" in seen and "0.0711 nvidia.com/gpu-h" in seen
    assert "epoch 1 done stopping: SIGTERM" in seen and "Preempted · attempt 0" in seen  # the snapshot at preemption
    assert "final loss 0.01" in seen
    assert '<svg class="timeline"' in page.text and "phase-preempting" in page.text


def test_the_timeline_charges_each_attempt_and_its_borrowed_part() -> None:
    events = [
        {"at": 0, "kind": "Submitted"},
        {"at": 2, "kind": "Waiting", "reason_code": "QuotaMaxExceeded"},
        {"at": 10, "kind": "Admitted", "unit": "acs", "borrowed": json.dumps({GPU: 1000})},
        {"at": 30, "kind": "Preempting", "by_job": "other", "reason_code": "Reclaimed", "message": "reclaimed"},
        {"at": 40, "kind": "Requeued"},
        {"at": 50, "kind": "Admitted", "unit": "ecs"},
        {"at": 80, "kind": "Succeeded"},
    ]
    t = timeline.build(events, {GPU: 2000}, now=1000)
    assert [(p.kind, p.label, p.seconds) for p in t.phases] == [
        ("waiting", "Queued", 2), ("waiting", "QuotaMaxExceeded", 8), ("admitted", "acs", 20),
        ("preempting", "Reclaimed", 10), ("waiting", "Requeued", 10), ("admitted", "ecs", 30)]
    assert t.charged == {GPU: 2000 * (30 + 30)}
    assert t.borrowed == {GPU: 1000 * 30}
    assert t.waited() == [("Queued", 2), ("QuotaMaxExceeded", 8), ("Requeued", 10)]
    assert any(m.kind == "Preempting" and "preempted for other" in m.text for m in t.marks)


async def test_history_searches_by_team_outcome_and_time_and_pages_on_the_server(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bulk.db"
    store = Store(url)
    seed_bulk(store, 1000, teams=10)
    store.close()
    async with _client(history_app(url)) as http:
        everything = _text((await http.get("/history")).text)
        assert "1000 finished job(s) · page 1 of 20" in everything
        team = _text((await http.get("/history", params={"team": "team-03"})).text)
        assert "100 finished job(s)" in team and "team-04" not in team.split("preempted", 1)[1]
        failed = await http.get("/history", params={"outcome": "Failed"})
        rows = re.findall(r'<tr class="state-(\w+)">', failed.text)
        assert rows and set(rows) == {"failed"}
        window = _text((await http.get("/history", params={"since": "2025-11-25", "until": "2025-11-26"})).text)
        shown = int(re.search(r"(\d+) finished job", window).group(1))  # type: ignore[union-attr]
        assert 0 < shown < 1000
        page2 = await http.get("/history", params={"page": "2"})
        assert "page 2 of 20" in _text(page2.text) and page2.text.count('<tr class="state-') == 50
        assert "mean wait to admission, per team" in everything and "team-09" in everything
        bad = await http.get("/history", params={"since": "yesterday-ish"})
        assert bad.status_code == 400
        assert "history: since 'yesterday-ish' is not a time (YYYY-MM-DD" in _text(bad.text)
        assert (await http.get("/history", params={"outcome": "Exploded"})).status_code == 400
        assert (await http.get("/history", params={"page": "0"})).status_code == 400
        assert (await http.get("/jobs/no-such-job")).status_code == 404


async def test_history_alone_never_writes_to_the_database_it_reads(tmp_path: Path) -> None:
    url = seeded_store(tmp_path / "ro.db")
    history = History(url)
    with pytest.raises(OperationalError, match="readonly|read-only|query_only"), history.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))
    assert history.job("train-a-1") is not None
    async with _client(history_app(url)) as http:
        tree_page = _text((await http.get("/")).text)
    assert "history only (read-only)" in tree_page and "team-a" in tree_page  # the stored tree's limits


async def test_pages_follow_the_api_token_rule(tmp_path: Path) -> None:
    async with _client(history_app(seeded_store(tmp_path / "t.db"), token="s3cret")) as http:
        first = await http.get("/jobs/train-a-1")
        assert first.status_code == 303 and first.headers["location"].startswith("/login?next=%2Fjobs%2Ftrain-a-1")
        assert (await http.get("/static/dashboard.css")).status_code == 401
        ok = await http.get("/jobs/train-a-1", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        wrong = await http.get("/login", params={"token": "nope", "next": "/history"})
        assert wrong.status_code == 303
        assert (await http.get("/history")).status_code == 303  # a wrong cookie opens nothing
        http.cookies.clear()
        login = await http.get("/login", params={"token": "s3cret", "next": "/history"})
        assert login.status_code == 303 and login.headers["location"] == "/history"
        assert (await http.get("/history")).status_code == 200
        away = await http.get("/login", params={"token": "s3cret", "next": "//evil.example/"})
        assert away.headers["location"] == "/"  # never sends a person elsewhere


# ------------------------------------------------------------------------------- live, on a service


async def _service(tmp_path: Path, tree_yaml: str) -> Service:
    svc = Service(Store(f"sqlite:///{tmp_path}/live.db"), FakeRay(), QuotaTree.from_yaml_text(tree_yaml),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600), tree_yaml=tree_yaml,
                  nodes=lambda _: NODES)
    await svc.start()
    return svc


def _submit(svc: Service, name: str, priority: str = "normal", namespace: str = "team-a") -> str:
    accepted = svc.submit_text(rayjob(name, "python x.py", namespace=namespace, priority=priority))
    return accepted[0].id


async def test_a_waiting_job_shows_its_position_reason_and_expected_start_live(tmp_path: Path) -> None:
    svc = await _service(tmp_path, tree(("team-a", 1, 1), ("team-b", 1, 2), root_min=2, root_max=3,
                                        preemption="Never"))
    try:
        first = _submit(svc, "first")
        second, third = _submit(svc, "second"), _submit(svc, "third")
        await settle(svc)
        app = create_app(svc)
        live = ServiceLive(svc, "http://127.0.0.1:8265")  # not started: the test drives the reason recorder
        dash = live.pages = mount(app, History(engine=svc.store.engine), live)
        async with _client(app) as http:
            queue = await http.get("/queues/team-a")
            tree_html = (await http.get("/")).text
        tree_page = _text(tree_html)
        rows = re.findall(r'<tr class="state-pending" data-job="([^"]+)"><td class="pos">(\d+)</td>', queue.text)
        assert rows == [(second, "0"), (third, "1")]
        seen = _text(queue.text)
        assert "QuotaMaxExceeded root/team-a would use 2 of max 1 nvidia.com/gpu" in seen
        assert "unknown" in seen  # no expected duration on these jobs: the forecast says it cannot tell
        assert "1 pending" not in tree_page and "2 pending · 1 running" in tree_page
        assert 'href="/queues/team-a"' in tree_html  # a node links to its queue

        await live.record_reasons_once()
        await live.record_reasons_once()  # nothing changed: nothing recorded twice
        waits = [e for e in svc.store.events(second) if e.kind == st.WAITING]
        assert [e.reason_code for e in waits] == ["QuotaMaxExceeded"]

        # the rows stream: the first reading, then a new one once the first job ends and the second starts
        class Client:
            async def is_disconnected(self) -> bool:
                return False

        stream = dash._stream(Client(), Filters(team="team-a"))  # type: ignore[arg-type]
        assert (await anext(stream)).startswith("retry:")
        before = await anext(stream)
        assert before.startswith("event: rows\n") and f'data-job="{second}"><td class="pos">0' in before
        svc.ray.jobs[first] = "SUCCEEDED"  # type: ignore[attr-defined]
        await svc.poll_once()
        await settle(svc)
        live._cached = None
        after = await asyncio.wait_for(anext(stream), 30)
        assert f'data-job="{third}"><td class="pos">0' in after and f'data-job="{second}"><td class="pos"></td>' in after
        await stream.aclose()

        async with _client(app) as http:
            job = _text((await http.get(f"/jobs/{third}")).text)
            running = await http.get(f"/jobs/{second}")
        assert "Waiting at position 0 in team-a: QuotaMaxExceeded" in job
        assert f'href="http://127.0.0.1:8265/#/jobs/{second}"' in running.text  # Ray's dashboard while it lives
    finally:
        await svc.stop()
        svc.store.close()


async def test_preemption_keeps_the_log_and_says_who_preempted_and_the_borrowed_share(tmp_path: Path) -> None:
    svc = await _service(tmp_path, tree(("team-a", 1, 2), ("team-b", 1, 2), root_min=2, root_max=2))
    try:
        low = _submit(svc, "low", priority="low")
        borrower = _submit(svc, "borrower", priority="low")  # team-a above its min: borrowed
        await settle(svc)
        admitted = [e for e in svc.store.events(borrower) if e.kind == "Admitted"]
        assert json.loads(admitted[0].borrowed or "{}") == {GPU: 1000}
        assert json.loads([e for e in svc.store.events(low) if e.kind == "Admitted"][0].borrowed or "{}") == {}
        taker = _submit(svc, "taker", namespace="team-b")  # within team-b's min: reclaims the borrowed GPU
        await settle(svc)
        await svc.poll_once()
        await settle(svc)
        preempting = [e for e in svc.store.events(borrower) if e.kind == "Preempting"]
        assert preempting and preempting[0].by_job == taker and preempting[0].reason_code == "Reclaimed"
        assert svc.store.get(borrower).state == st.PENDING  # type: ignore[union-attr]
        app = create_app(svc)
        live = ServiceLive(svc)
        mount(app, History(engine=svc.store.engine), live)
        async with _client(app) as http:
            seen = _text((await http.get(f"/jobs/{borrower}")).text)
        assert f"preempted for {taker}" in seen
        assert "Preempted · attempt 0" in seen and f"driver output of {borrower}" in seen
    finally:
        await svc.stop()
        svc.store.close()


def test_an_older_store_gets_the_new_columns_and_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    Store(url).close()
    with Store(url).engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_queue_finished_at"))
        conn.execute(text("DROP TABLE log_snapshots"))
        conn.execute(text("ALTER TABLE events DROP COLUMN by_job"))
    store = Store(url)
    with store.engine.connect() as conn:
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(events)"))}
    assert "ix_jobs_queue_finished_at" in names and "ix_log_snapshots_job_id" in names and "by_job" in columns
    store.add_log_snapshot("j", 0, "Preempted", "x" * 100, cap=10, at=T0)
    assert store.prune_log_snapshots(T0 + 1) == 1
    store.close()


async def test_an_open_event_stream_ends_when_the_service_stops(tmp_path: Path) -> None:
    """A browser tab left open on a live page must not hold ``rayqueue serve`` up at its shutdown."""
    svc = await _service(tmp_path, tree(("team-a", 1, 1), root_min=1, root_max=1))
    try:
        app = create_app(svc)
        dash, live = attach(app, svc, None, None)

        class Tab:
            async def is_disconnected(self) -> bool:
                return False  # never closes by itself

        stream = dash._stream(Tab(), Filters())  # type: ignore[arg-type]
        await anext(stream)
        await anext(stream)  # the first rows

        async def drain() -> int:
            return len([chunk async for chunk in stream])

        reading = asyncio.ensure_future(drain())
        await live.stop()
        await asyncio.wait_for(reading, 30)  # ends at once rather than streaming for ever
    finally:
        await svc.stop()
        svc.store.close()


async def test_a_long_queue_lists_its_first_jobs_and_counts_the_rest(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from rayqueue.scheduler.service import dashboard as service_dashboard

    monkeypatch.setattr(service_dashboard, "SHOWN_PER_QUEUE", 3)
    svc = await _service(tmp_path, tree(("team-a", 1, 1), root_min=1, root_max=1))
    try:
        svc.submit_text("---\n".join(rayjob(f"j{i}", "python x.py", namespace="team-a") for i in range(8)))
        await settle(svc)
        app = create_app(svc)
        live = ServiceLive(svc)
        mount(app, History(engine=svc.store.engine), live)
        async with _client(app) as http:
            page = await http.get("/queues/team-a")
        positions = re.findall(r'<tr class="state-pending" data-job="[^"]+"><td class="pos">(\d+)</td>', page.text)
        assert positions == ["0", "1", "2"]
        assert "7 jobs pending; the first of each queue are listed" in _text(page.text)
    finally:
        await svc.stop()
        svc.store.close()


def test_rayqueue_dashboard_refuses_a_missing_or_foreign_database_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rayqueue.scheduler.cli import app as cli_app

    missing = CliRunner().invoke(cli_app, ["dashboard", "--db", str(tmp_path / "nope.db"), "--port", "0"])
    assert missing.exit_code == 2 and "no such file" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "nope.db").exists()  # nothing created where nothing was
    foreign = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    out = CliRunner().invoke(cli_app, ["dashboard", "--db", f"sqlite:///{foreign}", "--port", "0"])
    assert out.exit_code == 1 and "no such table: jobs" in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) <= 2


async def test_the_operator_serves_the_live_pages_from_its_engine() -> None:
    """The operator's pages: its engine's quota tree and queues, read-only, with no SQL history."""
    from types import SimpleNamespace

    from rayqueue.queue.workload import Workload
    from rayqueue.scheduler.engine import Engine
    from rayqueue.scheduler.operator.dashboard import dashboard_app

    now = float(int(time.time()))
    engine = Engine(QuotaTree.from_yaml_text(tree(("team-a", 1, 1), root_min=1, root_max=1)), clock=lambda: now)
    for i in range(3):
        engine.submit(Workload(uid=f"team-a/job-{i}", queue="team-a", request={GPU: 1000}, submitted_at=now + i,
                               name=f"job-{i}", expected_duration=600))
    engine.schedule(now)
    controller = SimpleNamespace(engine=engine, lock=asyncio.Lock(), clock=lambda: now, leader=True, history=None)
    async with _client(dashboard_app(controller)) as http:  # type: ignore[arg-type]
        queue = await http.get("/queues/team-a")
        tree_page = _text((await http.get("/")).text)
        job = await http.get("/jobs/team-a/job-1")
    rows = re.findall(r'<tr class="state-pending" data-job="([^"]+)"><td class="pos">(\d+)</td>', queue.text)
    assert rows == [("team-a/job-1", "0"), ("team-a/job-2", "1")]
    seen = _text(queue.text)
    # job-0 ends after its expected 600 s: job-1 is expected to start then, job-2 600 s later
    assert "QuotaMaxExceeded" in seen and charts.when(now + 600) in seen and charts.when(now + 1200) in seen
    assert "2 pending · 1 running" in tree_page
    assert job.status_code == 404 and "keeps no SQL history" in _text(job.text)
