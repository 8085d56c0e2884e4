"""The operator writes the SQL history the dashboard reads: each RayJob's timeline, across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from operator_env import RAYJOBS, TREES, Env, environment, eventually, rayjob, tree_manifest
from sqlalchemy import create_engine, text

from rayqueue.scheduler.operator.dashboard import dashboard_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


def events_of(url: str, job_id: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, state, unit, by_job, reason_code, borrowed FROM events "
                                     "WHERE job_id = :j ORDER BY id"), {"j": job_id})
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def job_row(url: str, job_id: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM jobs WHERE id = :j"), {"j": job_id}).one()._mapping)
    finally:
        engine.dispose()


def uid(env: Env, namespace: str, name: str) -> str:
    return str(env.job(namespace, name)["metadata"]["uid"])


async def test_history_of_admitted_preempted_and_finished_jobs_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    async with environment(runtime=60) as env:
        # Each team is guaranteed 2 CPU and may borrow up to 4; the cluster has 4.
        await env.create(TREES, tree_manifest({"team-a": ("2", "4"), "team-b": ("2", "4")},
                                              root_min="4", root_max="4"))
        op = await env.start_operator(history_url=url)
        await env.create_job(rayjob("quick", "team-a", runtime=0.3))
        await eventually(lambda: env.phase("team-a", "quick") == "Complete", what="quick finished")
        for name in ("a1", "a2"):  # 2 CPU each: team-a borrows team-b's idle guarantee
            await env.create_job(rayjob(name, "team-a"))
        await eventually(lambda: env.running("team-a", "a1") and env.running("team-a", "a2"), what="a borrowing")
        await env.create_job(rayjob("b1", "team-b"))  # team-b reclaims its guarantee
        await eventually(lambda: env.running("team-b", "b1"), what="b1 admitted after reclaim")
        victim = next(n for n in ("a1", "a2") if not env.running("team-a", n))
        victim_uid, b1_uid, quick_uid = uid(env, "team-a", victim), uid(env, "team-b", "b1"), uid(env, "team-a", "quick")
        history = op.controller.state.history
        assert history is not None

        def requeued() -> bool:
            history.flush()
            return "Requeued" in [e["kind"] for e in events_of(url, victim_uid)]

        await eventually(requeued, what="the victim's requeue recorded")

        quick = events_of(url, quick_uid)
        assert [e["kind"] for e in quick] == ["Submitted", "Admitted", "Succeeded"]
        assert quick[1]["unit"] and job_row(url, quick_uid)["state"] == "Succeeded"
        kinds = [e["kind"] for e in events_of(url, victim_uid)]
        assert kinds[0] == "Submitted"
        assert kinds.index("Admitted") < kinds.index("Preempting") < kinds.index("Requeued")
        preempting = next(e for e in events_of(url, victim_uid) if e["kind"] == "Preempting")
        assert preempting["by_job"] == b1_uid and preempting["reason_code"]
        # the victim borrowed team-b's guarantee when it was admitted (one of the two a jobs did)
        borrowed = [e["borrowed"] for n in ("a1", "a2") for e in events_of(url, uid(env, "team-a", n))
                    if e["kind"] == "Admitted"]
        assert any(b and b != "{}" for b in borrowed)
        assert job_row(url, victim_uid)["preemptions"] == 1

        # The job page over that history shows the preemption and who caused it.
        client = TestClient(dashboard_app(op.controller))
        page = client.get(f"/jobs/{victim_uid}")
        assert page.status_code == 200, page.text
        assert "Preempting" in page.text and f"/jobs/{b1_uid}" in page.text
        assert "keeps no driver logs" in page.text
        assert client.get(f"/jobs/{quick_uid}").status_code == 200
        assert "quick" in client.get("/history").text

        # A restarted operator appends to the same history: no second Submitted, new jobs recorded.
        await op.stop()
        env.operators.remove(op)
        op2 = await env.start_operator(identity="op-2", history_url=url)
        await env.api.delete(RAYJOBS, "team-b", "b1")  # makes room for the next job, and ends b1's timeline
        await env.create_job(rayjob("late", "team-b", runtime=0.3))
        await eventually(lambda: env.phase("team-b", "late") == "Complete", what="late finished")
        late_uid = uid(env, "team-b", "late")
        history2 = op2.controller.state.history
        assert history2 is not None

        def late_done() -> bool:
            history2.flush()
            return "Succeeded" in [e["kind"] for e in events_of(url, late_uid)]

        await eventually(late_done, what="late recorded by the restarted operator")
        for job_id in (victim_uid, b1_uid, quick_uid):
            assert [e["kind"] for e in events_of(url, job_id)].count("Submitted") == 1
        assert [e["kind"] for e in events_of(url, quick_uid)].count("Succeeded") == 1
        assert events_of(url, b1_uid)[-1]["kind"] == "Deleted" and job_row(url, b1_uid)["state"] == "Cancelled"


async def test_a_broken_history_database_never_stops_admission(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    async with environment(runtime=60) as env:
        await env.create(TREES, tree_manifest({"team-a": ("4", "4")}, root_min="4", root_max="4"))
        op = await env.start_operator(history_url=url)
        engine = create_engine(url)
        with engine.begin() as conn:  # the database breaks under the operator: every write now fails
            conn.execute(text("DROP TABLE events"))
        engine.dispose()
        await env.create_job(rayjob("one", "team-a"))
        await env.create_job(rayjob("two", "team-a"))
        await eventually(lambda: env.running("team-a", "one") and env.running("team-a", "two"), what="both admitted")
        registry = op.controller.metrics.registry

        def counted() -> bool:
            assert op.controller.history is not None
            op.controller.history.flush()
            return (registry.get_sample_value("rayqueue_history_write_errors_total") or 0) >= 1

        await eventually(counted, what="the failed history writes counted")


async def test_a_history_attached_later_records_running_jobs_as_admitted_and_waiting_ones_with_reasons(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    async with environment(runtime=60) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op = await env.start_operator()  # no history yet
        await env.create_job(rayjob("early", "team-a"))
        await eventually(lambda: env.running("team-a", "early"), what="early admitted")
        await op.stop()
        env.operators.remove(op)
        op2 = await env.start_operator(identity="op-2", history_url=url)
        await env.create_job(rayjob("blocked", "team-a"))  # the queue is full: it waits
        early, blocked = uid(env, "team-a", "early"), uid(env, "team-a", "blocked")
        history = op2.controller.history
        assert history is not None

        def recorded() -> bool:
            history.flush()
            return "Waiting" in [e["kind"] for e in events_of(url, blocked)]

        await eventually(recorded, what="the blocked job's reason recorded")
        row = job_row(url, early)
        assert row["state"] == "Admitted" and row["unit"] == env.admission("team-a", "early")["unit"]
        assert [e["kind"] for e in events_of(url, early)] == ["Submitted", "Admitted"]
        waiting = [e for e in events_of(url, blocked) if e["kind"] == "Waiting"]
        assert waiting[0]["reason_code"] and job_row(url, blocked)["reason_code"] == waiting[-1]["reason_code"]
