"""The standalone service's own cost per submission (issue 14: submit to admitted <= 5 ms at p50): the
store work a submission and the status poll do, counted in transactions and statements rather than timed,
so that the figures of ``benchmarks/standalone_latency.py --overhead`` cannot quietly slide back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fake_ray import FakeRay, settle
from standalone_env import HANG_GUARD_S, rayjob, tree

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.history.store import _Checkpointer
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.core import Service, ServiceConfig
from rayqueue.scheduler.service.store import Store

TEAM = tree(("team-a", 8, 8), root_min=8, root_max=8)
NODES = [{"state": "ALIVE", "labels": {}, "resources_total": {"CPU": 64.0, "GPU": 8.0, "memory": 2.0**36}}]


class PendingRay(FakeRay):
    """Ray accepts each job but has not started it yet (a test starts it by hand)."""

    start_state = "PENDING"


async def _start(store: Store, ray: FakeRay) -> Service:
    svc = Service(store, ray, QuotaTree.from_yaml_text(TEAM),  # type: ignore[arg-type]
                  config=ServiceConfig(poll_interval_s=3600, capacity_interval_s=3600),
                  tree_yaml=TEAM, nodes=lambda _: NODES)
    await svc.start()
    await settle(svc)
    return svc


def count_writes(store: Store) -> list[int]:
    """Counts the store's write transactions from now on (one element per ``Store.writing``)."""
    seen: list[int] = []
    writing = store.writing

    @contextmanager
    def counted() -> Iterator[Any]:
        seen.append(1)
        with writing() as conn:
            yield conn

    store.writing = counted  # type: ignore[method-assign]
    return seen


async def test_jobs_seen_running_in_one_poll_are_recorded_in_one_transaction(tmp_path: Path) -> None:
    ray = PendingRay()
    svc = await _start(Store(f"sqlite:///{tmp_path}/s.db"), ray)
    try:
        ids = [svc.submit_text(rayjob(f"j{i}", "python x.py", gpus=1))[0].id for i in range(5)]
        await settle(svc)
        assert all(svc.store.get(j).state == st.ADMITTED for j in ids)  # type: ignore[union-attr]
        for j in ids:
            ray.jobs[j] = "RUNNING"
        writes = count_writes(svc.store)
        await svc.poll_once()
        assert [svc.store.get(j).state for j in ids] == [st.RUNNING] * 5  # type: ignore[union-attr]
        assert len(writes) == 1  # one commit for the five starts, not one each
        for j in ids:
            assert [e.kind for e in svc.store.events(j)][-1] == "Running"
    finally:
        await svc.stop()


def test_a_start_is_recorded_only_for_a_job_still_admitted_under_that_submission(tmp_path: Path) -> None:
    """The poll's starts are written after a hop to a worker thread: a job cancelled, preempted or run again
    under a new submission id meanwhile keeps its state."""
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.add_jobs([st.JobRecord(id=j, name=j, queue="team-a", submitted_at=1.0) for j in ("a", "b", "c")])
    for j in ("a", "b", "c"):
        store.admit(j, "admitted", at=2.0, state=st.ADMITTED, unit="ecs", admitted_at=2.0, released=False)
    store.transition("b", "Cancelled", "cancelled by the user", at=2.5, state=st.CANCELLED)
    rows = store.start_many([("a", "a"), ("b", "b"), ("c", "c-r1")], at=3.0)
    assert rows[0] is not None and rows[0].state == st.RUNNING and rows[0].running_at == 3.0
    assert rows[1:] == [None, None]
    assert [store.get(j).state for j in ("a", "b", "c")] == [st.RUNNING, st.CANCELLED, st.ADMITTED]  # type: ignore[union-attr]
    assert [e.kind for e in store.events("c")] == ["Submitted", "Admitted"]
    reopened = Store(f"sqlite:///{tmp_path}/s.db")  # committed, not only in this connection
    assert reopened.get("a").state == st.RUNNING  # type: ignore[union-attr]
    assert reopened.get("a").released is False  # type: ignore[union-attr]  # a bool again, read raw from SQLite


def test_no_commit_runs_a_wal_checkpoint_the_store_runs_them_in_a_thread(tmp_path: Path,
                                                                          monkeypatch: Any) -> None:
    """A WAL checkpoint (copy the log into the database file, sync both) took 10 to 20 ms, and SQLite ran
    it inside whichever commit passed 1,000 pages of log: a submission's. With the store's checkpoint
    thread held, the log grows past that and the database file is not touched by any commit; let go,
    the thread copies the log in."""
    gate = threading.Event()
    ran: list[str] = []
    checkpoint = _Checkpointer.checkpoint

    def held(self: _Checkpointer) -> None:
        gate.wait(HANG_GUARD_S)
        ran.append(threading.current_thread().name)
        checkpoint(self)

    monkeypatch.setattr(_Checkpointer, "checkpoint", held)
    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    try:
        size = db.stat().st_size
        manifest = "x" * 20_000  # five pages or so a job
        for i in range(300):  # about 1,500 pages of log
            store.add_jobs([st.JobRecord(id=f"j{i}", name=f"j{i}", queue="team-a", manifest=manifest, submitted_at=1.0)])
        assert Path(f"{db}-wal").stat().st_size > 4 * 1000 * 4096  # past SQLite's own checkpoint point
        assert db.stat().st_size == size  # no commit copied the log into the database
        gate.set()
        deadline = time.monotonic() + HANG_GUARD_S
        while db.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stat().st_size > size
        assert ran and all(name == "rayqueue-sqlite-checkpoint" for name in ran)
        assert len(store.jobs()) == 300
    finally:
        gate.set()
        store.close()
