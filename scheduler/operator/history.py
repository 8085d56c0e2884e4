"""The operator's SQL history: each RayJob's life written to the tables the service writes (``jobs``,
``events``; ``scheduler/history/store.py``), so that the dashboard's job and history pages work over it.

Recording is off the hot path: the event loop only appends to a queue; a worker thread drains it and writes
each batch in one transaction. A database that fails costs the history, never admission: the batch is
logged, counted (``rayqueue_history_write_errors_total``) and dropped. The operator has no driver logs (each
RayJob's Ray cluster holds them), so it writes no log snapshots.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam
from sqlalchemy.exc import SQLAlchemyError

from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import MAX_JOBS
from rayqueue.scheduler.history import store as st

log = logging.getLogger("rayqueue.operator.history")

#: At most this many records per transaction: a burst of thousands is written in a few commits.
BATCH = 500


@dataclass(slots=True)
class Submitted:
    """A RayJob first seen: its row and a ``Submitted`` event (only if the store does not know it yet, so
    a restarted operator keeps appending to the same timeline)."""

    job_id: str
    name: str
    namespace: str | None
    queue: str
    priority: int
    priority_class: str | None
    request: dict[str, int]
    pods: int
    at: float
    manifest: str = ""
    # restored running (admitted before the history was attached): where, and since when
    unit: str | None = None
    admitted_at: float | None = None


@dataclass(slots=True)
class Change:
    """An event on a known job, and the fields of its row it changes. ``only_live``: skip it if the job's
    row already has a final state (a deletion after the job finished)."""

    job_id: str
    kind: str
    at: float
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    reason_code: str | None = None
    by_job: str | None = None
    borrowed: dict[str, int] | None = None
    only_live: bool = False
    count_preemption: bool = False


Record = Submitted | Change
_STOP = object()


class HistoryError(Exception):
    """The history database cannot be opened at start (a wrong URL, a file that cannot be created)."""


class HistoryWriter:
    """Queue history records from the event loop; a daemon thread writes them in batches."""

    def __init__(self, url: str, on_error: Callable[[], None] | None = None) -> None:
        try:  # creates the tables (or adds missing columns) before the operator starts
            self.store = st.Store(url)
        except (SQLAlchemyError, OSError, ValueError, ImportError) as exc:  # ImportError: no driver (psycopg)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HistoryError(f"--history-db {url}: cannot open it as a history database: {first}") from None
        self.url = url
        self._on_error = on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rayqueue-history", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the event loop's side (no I/O)

    def record(self, item: Record) -> None:
        self._queue.put(item)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until what was queued so far is written (tests, shutdown); False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self.store.close()

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if isinstance(r, Submitted | Change)]
            if records:
                try:
                    with self.store.writing() as conn:
                        for r in records:
                            self._write(conn, r)
                except Exception as exc:  # the history is best effort: admission never waits on it
                    log.error("could not write %d history records to %s: %s", len(records), self.url, exc)
                    if self._on_error is not None:
                        self._on_error()
            for r in batch:
                if isinstance(r, threading.Event):
                    r.set()
            if any(r is _STOP for r in batch):
                return

    @staticmethod
    def _write(conn: Connection, r: Record) -> None:
        row = conn.execute(st.GET_JOB, {"job_id": r.job_id}).one_or_none()
        if isinstance(r, Submitted):
            if row is not None:
                return  # seen before this operator started: its timeline goes on
            running = r.admitted_at is not None
            job = st.JobRecord(id=r.job_id, name=r.name, namespace=r.namespace, queue=r.queue, priority=r.priority,
                               priority_class=r.priority_class, state=st.ADMITTED if running else st.PENDING,
                               request=json.dumps(r.request), pods=r.pods, submitted_at=r.at, manifest=r.manifest,
                               unit=r.unit, admitted_at=r.admitted_at, first_admitted_at=r.admitted_at)
            conn.execute(st.ADD_JOB, [job.model_dump()])
            conn.execute(st.ADD_EVENT, {
                "job_id": r.job_id, "at": r.at, "kind": "Submitted", "state": st.PENDING, "unit": None,
                "message": f"queued in {r.queue} with priority {r.priority}"
                           + (f" ({r.priority_class})" if r.priority_class else ""),
                "reason_code": None})
            if running:
                conn.execute(st.ADD_EVENT, {
                    "job_id": r.job_id, "at": r.admitted_at, "kind": st.ADMITTED, "state": st.ADMITTED,
                    "unit": r.unit, "message": "admitted before this history was recorded (its admission record)",
                    "reason_code": None})
            return
        if row is None:
            return  # a job this history never saw submitted (the store was attached later): nothing to extend
        if r.only_live and row.state in (*st.FINAL_STATES, "Rejected"):
            return
        fields = dict(r.fields)
        if fields.get("admitted_at") is not None and row.first_admitted_at is None:
            fields["first_admitted_at"] = fields["admitted_at"]
        if r.count_preemption:
            fields["preemptions"] = (row.preemptions or 0) + 1
        if fields:
            names = tuple(sorted(fields))
            conn.execute(st.JOBS.update().where(st.JOBS.c.id == bindparam("job_id"))
                         .values({f: bindparam(f"new_{f}") for f in names}),
                         {"job_id": r.job_id, **{f"new_{f}": fields[f] for f in names}})
        conn.execute(st.ADD_EVENT, {
            "job_id": r.job_id, "at": r.at, "kind": r.kind, "state": fields.get("state", row.state),
            "unit": fields.get("unit", row.unit), "message": r.message, "reason_code": r.reason_code,
            "by_job": r.by_job, "borrowed": json.dumps(r.borrowed) if r.borrowed is not None else None})



def submitted(w: Workload, namespace: str | None, unit: str | None = None,
              admitted_at: float | None = None) -> Submitted:
    """The record of a RayJob the engine just queued, or restored as running (``unit``, ``admitted_at``)."""
    return Submitted(job_id=w.uid, name=w.name.partition("/")[2] or w.name, namespace=namespace, queue=w.queue,
                     priority=w.priority, priority_class=w.priority_class,
                     request={str(r): int(v) for r, v in w.request.items() if r != MAX_JOBS}, pods=w.pods,
                     at=w.submitted_at, unit=unit, admitted_at=admitted_at)


def outcome(body: Mapping[str, Any]) -> tuple[str, str]:
    """A finished RayJob's final state in the history's words, and KubeRay's message."""
    status = body.get("status") or {}
    ok = status.get("jobStatus") == "SUCCEEDED" and status.get("jobDeploymentStatus") == "Complete"
    return (st.SUCCEEDED if ok else st.FAILED), str(status.get("message") or status.get("jobStatus") or "")
