"""Durable state of the standalone service, every accepted job and every state change, in SQL; the operator
writes the same tables as its history (``scheduler/operator/history.py``).

SQLite under ``./.rayqueue/`` by default (WAL, one writer: the service), PostgreSQL by URL. A job row
holds everything needed to rebuild the engine after a crash (manifest, queue, resolved priority, unit,
attempt); an event row is written in the same transaction as every state change, so ``history`` is
exact after the fact.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Index, Table, Update, bindparam, func, text
from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

log = logging.getLogger("rayqueue.store")

# The service's own job states (the engine's are Pending / Admitted / Preempting only while alive).
PENDING = "Pending"
ADMITTED = "Admitted"  # admitted by the engine; being released to, or accepted by, Ray
RUNNING = "Running"  # Ray reports RUNNING
PREEMPTING = "Preempting"  # asked Ray to stop it; requeued once Ray confirms
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STOPPED = "Stopped"  # stopped from outside rayqueue (ray job stop)
CANCELLED = "Cancelled"

ACTIVE_STATES = (ADMITTED, RUNNING, PREEMPTING)
LIVE_STATES = (PENDING, *ACTIVE_STATES)
FINAL_STATES = (SUCCEEDED, FAILED, STOPPED, CANCELLED)
#: ``ray_status`` of a cancelled job whose submission Ray never had.
RAY_NOT_FOUND = "NOT_FOUND"
#: Ray statuses after which a job can no longer run in Ray.
RAY_SETTLED = ("SUCCEEDED", "FAILED", "STOPPED", RAY_NOT_FOUND)


#: What the history page's lists and charts read of a job, in both of its covering indexes (team first,
#: and end time first).
HISTORY_COLUMNS = ("queue", "finished_at", "state", "submitted_at", "first_admitted_at", "admitted_at", "id")


class JobRecord(SQLModel, table=True):
    __tablename__ = "jobs"
    # The dashboard's history page: one team's finished jobs in a time range, newest first; and a covering
    # index for its charts and deep pages, read without touching the rows (which hold manifests and logs).
    __table_args__ = (
        Index("ix_jobs_queue_finished_at", *HISTORY_COLUMNS),
        Index("ix_jobs_finished_at_covering", *HISTORY_COLUMNS[1::-1], *HISTORY_COLUMNS[2:]),
    )

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    namespace: str | None = None
    queue: str = Field(index=True)
    priority: int = 0
    priority_class: str | None = None
    state: str = Field(default=PENDING, index=True)
    reason_code: str | None = None
    reason: str | None = None
    unit: str | None = None
    attempt: int = 0  # bumped on every requeue: Ray never reuses a submission id
    submission_id: str | None = None
    released: bool = False  # Ray accepted the current submission id
    manifest: str = ""  # the RayJob as JSON
    request: str = "{}"  # the gang's total, milli-units, as JSON
    pods: int = 1
    submitted_at: float = Field(default=0.0, index=True)  # the history pages search by time
    admitted_at: float | None = None
    # the first admission (``admitted_at`` is the latest one, cleared on requeue): the wait a user had
    first_admitted_at: float | None = None
    released_at: float | None = None
    running_at: float | None = None
    finished_at: float | None = Field(default=None, index=True)
    ray_status: str | None = None
    ray_message: str | None = None
    preemptions: int = 0
    # While Preempting: the job it is preempted for, so a restart resumes that preemption (decided once).
    preempted_by: str | None = None
    logs: str | None = None  # the tail of the driver's log, kept once the job ends

    def manifest_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.manifest)
        return out

    def request_dict(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in json.loads(self.request).items()}


class EventRecord(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    at: float
    kind: str = Field(index=True)  # Submitted, Admitted, Released, Running, Preempting, Requeued, Succeeded, ...
    state: str | None = None
    unit: str | None = None
    message: str = ""
    reason_code: str | None = None  # the engine's reason, when the change came with one
    # the job another job was preempted for (``Preempting``): the dashboard's "preempted by whom"
    by_job: str | None = None
    # ``Admitted``: the part of the request borrowed (above the leaf's min) at admission, milli-units as JSON
    borrowed: str | None = None


#: Kinds of event that only record why a pending job waits (its reason code changed); not state changes.
WAITING = "Waiting"


class LogSnapshotRecord(SQLModel, table=True):
    """The tail of a driver's log captured when its Ray job ended or was preempted, readable after Ray has
    forgotten the job (capped by ``ServiceConfig.log_tail_chars``, pruned after the retention setting)."""

    __tablename__ = "log_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    attempt: int = 0
    at: float = Field(index=True)
    kind: str  # "Preempted", or the state it ended in (Succeeded, Failed, Stopped, Cancelled)
    text: str = ""


class SettingRecord(SQLModel, table=True):
    __tablename__ = "settings"

    key: str = Field(primary_key=True)
    value: str


JOBS: Table = SQLModel.metadata.tables["jobs"]
EVENTS: Table = SQLModel.metadata.tables["events"]
# Built once: SQLAlchemy compiles a statement once and caches it by the statement's structure, but making a
# new statement object (and its cache key) on every call cost more than running it.
GET_JOB = JOBS.select().where(JOBS.c.id == bindparam("job_id"))
ADD_EVENT = EVENTS.insert()
ADD_JOB = JOBS.insert()
_UPDATES: dict[tuple[str, ...], Update] = {}


def _update_of(fields: tuple[str, ...]) -> Update:
    """``UPDATE jobs SET <fields> WHERE id = :job_id``, one statement per set of fields (a handful)."""
    stmt = _UPDATES.get(fields)
    if stmt is None:
        stmt = JOBS.update().where(JOBS.c.id == bindparam("job_id")).values({f: bindparam(f"new_{f}") for f in fields})
        _UPDATES[fields] = stmt
    return stmt


class _Direct:
    """The hot path's statements (a submission, its admission, release and start: read a job, add jobs and
    events, update a job) compiled once for the store's dialect and run on the DBAPI cursor of the
    connection ``Store.writing`` began: the same SQL in the same transaction. SQLAlchemy's
    ``Connection.execute`` cost about 80 us a statement on top of SQLite's 20 us (execution context,
    cache key, result proxy), and a submission runs a dozen. Values go through the column types' own bind
    and result processors (SQLite's booleans come back as ``bool``), so any dialect works."""

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        self.job_columns = tuple(c.name for c in JOBS.columns)
        self._job_results = tuple(c.type.result_processor(dialect, None) for c in JOBS.columns)
        self.get_job = self.compile(GET_JOB)
        self.add_job = self.compile(JOBS.insert().inline(), self.job_columns)
        # the id is the database's to give (no RETURNING: the event's id is never read back)
        self.add_event = self.compile(EVENTS.insert().inline(), tuple(c.name for c in EVENTS.columns if c.name != "id"))
        self._updates: dict[tuple[str, ...], _Compiled] = {}

    def compile(self, stmt: Any, column_keys: tuple[str, ...] | None = None) -> _Compiled:
        compiled = stmt.compile(dialect=self.dialect, column_keys=list(column_keys) if column_keys else None)
        names = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
        binds = tuple((name, compiled.binds[name].type.bind_processor(self.dialect)) for name in names)
        return _Compiled(compiled.string, binds, bool(compiled.positional))

    def update(self, fields: tuple[str, ...]) -> _Compiled:
        stmt = self._updates.get(fields)
        if stmt is None:
            stmt = self._updates[fields] = self.compile(_update_of(fields))
        return stmt

    def job(self, values: Sequence[Any]) -> dict[str, Any]:
        """A ``jobs`` row as the cursor returned it (``GET_JOB``'s columns), by column name."""
        return {name: (proc(v) if proc is not None else v)
                for name, proc, v in zip(self.job_columns, self._job_results, values, strict=True)}


class _Compiled:
    """One statement's SQL in the driver's parameter style, and how to turn named values into its parameters."""

    __slots__ = ("sql", "binds", "positional")

    def __init__(self, sql: str, binds: tuple[tuple[str, Any], ...], positional: bool) -> None:
        self.sql = sql
        self.binds = binds
        self.positional = positional

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.positional:
            return [proc(values.get(n)) if proc is not None else values.get(n) for n, proc in self.binds]
        return {n: proc(values.get(n)) if proc is not None else values.get(n) for n, proc in self.binds}

    def run(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        cursor.execute(self.sql, self.params(values))
        return cursor

    def run_many(self, cursor: Any, rows: Iterable[Mapping[str, Any]]) -> None:
        cursor.executemany(self.sql, [self.params(v) for v in rows])


def _cursor(conn: Connection) -> Any:
    """A DBAPI cursor in ``conn``'s transaction."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def default_db_url(state_dir: str | Path = ".rayqueue") -> str:
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'rayqueue.db'}"


def submission_id(job_id: str, attempt: int) -> str:
    """The Ray submission id of one attempt: the job id itself first, ``<id>-r<n>`` after a requeue."""
    return job_id if attempt == 0 else f"{job_id}-r{attempt}"


#: Write transactions between two WAL checkpoints (a submission commits about four, of some ten pages each;
#: SQLite's own automatic checkpoint came every 1,000 pages).
CHECKPOINT_EVERY_COMMITS = 100
#: SQLite's default ``wal_autocheckpoint``.
SQLITE_AUTOCHECKPOINT_PAGES = 1000


class _Checkpointer:
    """SQLite's WAL checkpoints, run in a thread of their own so that no commit waits for one.

    Commits only append to the write-ahead log; a checkpoint copies the log back into the database file
    and syncs it, which took 10 to 20 ms, and SQLite ran it inside whichever commit took the log past
    1,000 pages: a submission's. Here, every ``CHECKPOINT_EVERY_COMMITS`` write transactions wake a
    thread that runs a PASSIVE checkpoint on its own connection (it waits for no reader or writer, and
    no writer waits for it). Durability is unchanged: a commit is in the log before it returns, as
    before. The thread starts at the first checkpoint due, so a store written little never has one."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.commits = 0
        self.due = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None

    def wrote(self) -> None:
        self.commits += 1
        if self.commits < CHECKPOINT_EVERY_COMMITS or self.stopped:
            return
        self.commits = 0
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="rayqueue-sqlite-checkpoint", daemon=True)
            self.thread.start()
        self.due.set()

    def checkpoint(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.stopped:
                return
            try:
                self.checkpoint()
            except Exception as exc:  # the next one catches up; commits never depend on it
                log.warning("SQLite WAL checkpoint failed: %s", exc)

    def stop(self) -> None:
        self.stopped = True
        self.due.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)


class Store:
    """All SQL access of the service; each method is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, connect_args=connect_args)
        if url.startswith("sqlite"):

            @sa_event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash (kill -9)
                # WAL checkpoints run in a thread of their own (_Checkpointer), not in whichever commit
                # passes 1,000 pages: one copies the log into the database and syncs both, and put 10 to
                # 20 ms on every 25th submission or so. SQLite's own stays as a backstop at 10x the log
                # (writes that bypass Store.writing, such as the services', are not counted there).
                cur.execute(f"PRAGMA wal_autocheckpoint={10 * SQLITE_AUTOCHECKPOINT_PAGES}")
                cur.close()

        self._write_lock = threading.Lock()
        self._direct = _Direct(self.engine.dialect)
        self._checkpoints: _Checkpointer | None = None
        if url.startswith("sqlite"):
            self._checkpoints = _Checkpointer(self.engine)
            weakref.finalize(self, self._checkpoints.stop)  # a store dropped without close() stops it too
        # The rows read with SQL expressions are built without the ORM (``_job``), and reading their
        # fields goes through the mapper's attributes, which exist only once the mappers are configured
        # (the ORM does it at its first query; a process whose first read is ``get`` has had none).
        configure_mappers()
        SQLModel.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A store written by an older version lacks the nullable columns added since: add them (no
        other schema change is ever made in place)."""
        inspector = sa_inspect(self.engine)
        with self.engine.begin() as conn:
            for table in SQLModel.metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name in present or not column.nullable:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                for index in table.indexes:  # indexes added since (create_all makes only new tables')
                    index.create(conn, checkfirst=True)

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
        self.engine.dispose()

    def _wrote(self) -> None:
        """A write transaction ended (call it holding the write lock)."""
        if self._checkpoints is not None:
            self._checkpoints.wrote()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One write transaction. The service writes from the event loop and from worker threads; SQLite
        lets one writer in at a time and makes the others poll for the lock with sleeps that grow from
        1 ms to 100 ms, which put tens of milliseconds on a submission whenever the status poll wrote at
        the same moment. Taking turns on an in-process lock instead wakes the next writer as soon as the
        last one commits."""
        with self._write_lock:
            try:
                with self.engine.begin() as conn:
                    yield conn
            finally:
                self._wrote()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def writing_session(self) -> Iterator[Session]:
        """An ORM session for writes off the hot path, taking its turn as :meth:`writing` does."""
        with self._write_lock:
            try:
                with Session(self.engine, expire_on_commit=False) as s:
                    yield s
            finally:
                self._wrote()

    # ------------------------------------------------------------------ jobs

    # The hot path (a submission, its admission, release and start) uses SQL expressions, not the ORM's
    # unit of work: the same statements and transactions, at a fraction of the CPU (the ORM's session,
    # identity map and flush were most of a submission's cost). Rows come back as detached ``JobRecord``s.

    def add_jobs(self, jobs: Iterable[JobRecord], at: float | None = None) -> None:
        """Accept jobs: their rows and a ``Submitted`` event each, all or nothing."""
        at = time.time() if at is None else at
        rows = [job.model_dump() for job in jobs]
        if not rows:
            return
        events = [
            {
                "job_id": row["id"],
                "at": row["submitted_at"] or at,
                "kind": "Submitted",
                "state": row["state"],
                "unit": None,
                "message": f"queued in {row['queue']} with priority {row['priority']}"
                + (f" ({row['priority_class']})" if row["priority_class"] else ""),
                "reason_code": None,
            }
            for row in rows
        ]
        d = self._direct
        with self.writing() as conn:
            cur = _cursor(conn)
            d.add_job.run_many(cur, rows)
            d.add_event.run_many(cur, events)

    def transition(self, job_id: str, kind: str, message: str = "", at: float | None = None, **fields: Any) -> JobRecord:
        """Update a job's fields and record the event in one transaction."""
        at = time.time() if at is None else at
        with self.writing() as conn:
            cur = _cursor(conn)
            row = self._read(cur, job_id)
            if row is None:
                raise KeyError(f"no job {job_id!r}")
            job = self._apply(cur, row, job_id, kind, message, at, fields)
        return job

    def _read(self, cursor: Any, job_id: str) -> dict[str, Any] | None:
        values = self._direct.get_job.run(cursor, {"job_id": job_id}).fetchone()
        return None if values is None else self._direct.job(values)

    def _apply(self, cursor: Any, row: dict[str, Any], job_id: str, kind: str, message: str, at: float,
               fields: dict[str, Any]) -> JobRecord:
        """Write ``fields`` to the job's row and record the event, in the caller's transaction."""
        borrowed = fields.pop("borrowed", None)  # the event's alone: the job row keeps no such field
        if fields.get("admitted_at") is not None and row["first_admitted_at"] is None:
            fields["first_admitted_at"] = fields["admitted_at"]
        d = self._direct
        if fields:
            names = tuple(sorted(fields))
            d.update(names).run(cursor, {"job_id": job_id, **{f"new_{f}": fields[f] for f in names}})
        job = JobRecord.model_construct(**{**row, **fields})
        d.add_event.run(cursor, {"job_id": job_id, "at": at, "kind": kind, "state": job.state, "unit": job.unit,
                                 "message": message, "reason_code": fields.get("reason_code"),
                                 "by_job": fields.get("preempted_by"), "borrowed": borrowed})
        return job

    def transition_from(
        self, job_id: str, only_from: str, kind: str, message: str, at: float, **fields: Any
    ) -> JobRecord | None:
        """:meth:`transition`, only if the job is in state ``only_from`` now (read and written in one
        transaction); None otherwise."""
        with self.writing() as conn:
            cur = _cursor(conn)
            row = self._read(cur, job_id)
            if row is None or row["state"] != only_from:
                return None
            return self._apply(cur, row, job_id, kind, message, at, fields)

    def start_many(self, started: Sequence[tuple[str, str]], at: float, **fields: Any) -> list[JobRecord | None]:
        """``Running`` for each ``(job id, Ray submission id)`` whose job is still ``Admitted`` under that
        submission id, all in one transaction (the status poll sees many jobs start at once); for each,
        its new row, or None where the job moved on meanwhile (cancelled, preempted, requeued)."""
        out: list[JobRecord | None] = []
        with self.writing() as conn:
            cur = _cursor(conn)
            for job_id, sid in started:
                row = self._read(cur, job_id)
                if row is None or row["state"] != ADMITTED or row["submission_id"] != sid:
                    out.append(None)
                    continue
                out.append(self._apply(cur, row, job_id, RUNNING, f"Ray runs {sid}", at,
                                       {**fields, "state": RUNNING, "running_at": at}))
        return out

    def admit(self, job_id: str, message: str, at: float, **fields: Any) -> JobRecord | None:
        """``Admitted``: the job's row gets ``fields`` and its next attempt's Ray submission id, read and
        written in one transaction; None if the job is gone."""
        with self.writing() as conn:
            cur = _cursor(conn)
            row = self._read(cur, job_id)
            if row is None:
                return None
            fields = {**fields, "submission_id": submission_id(job_id, row["attempt"])}
            return self._apply(cur, row, job_id, ADMITTED, message, at, fields)

    def record(self, job_id: str, kind: str, message: str = "", at: float | None = None) -> None:
        """An event that changes no field (e.g. the quota tree was applied)."""
        with self.writing() as conn:
            self._direct.add_event.run(_cursor(conn), {
                "job_id": job_id, "at": time.time() if at is None else at, "kind": kind, "state": None,
                "unit": None, "message": message, "reason_code": None})

    def add_events(self, events: Iterable[EventRecord]) -> None:
        """Events that change no job row (``Waiting``: a pending job's reason changed), in one transaction."""
        with self.writing_session() as s:
            s.add_all(list(events))
            s.commit()

    def add_log_snapshot(self, job_id: str, attempt: int, kind: str, text: str, cap: int,
                         at: float | None = None) -> None:
        """Keep the last ``cap`` characters of a driver's log (at preemption, or at the end)."""
        with self.writing_session() as s:
            s.add(LogSnapshotRecord(job_id=job_id, attempt=attempt, kind=kind, text=text[-cap:] if cap else "",
                                    at=time.time() if at is None else at))
            s.commit()

    def prune_log_snapshots(self, before: float) -> int:
        """Drop the log snapshots taken before ``before`` (the retention setting); how many went."""
        with self.writing_session() as s:
            rows = list(s.exec(select(LogSnapshotRecord).where(col(LogSnapshotRecord.at) < before)))
            for row in rows:
                s.delete(row)
            s.commit()
            return len(rows)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.engine.raw_connection()  # a pooled connection without SQLAlchemy's Connection around it
        try:
            row = self._read(raw.cursor(), job_id)
        finally:
            raw.close()
        return None if row is None else JobRecord.model_construct(**row)

    def by_name(self, name: str) -> list[JobRecord]:
        with self.session() as s:
            return list(s.exec(select(JobRecord).where(JobRecord.name == name).order_by(col(JobRecord.submitted_at))))

    def jobs(self, states: Iterable[str] | None = None, queue: str | None = None, limit: int | None = None) -> list[JobRecord]:
        with self.session() as s:
            query = select(JobRecord)
            if states is not None:
                query = query.where(col(JobRecord.state).in_(list(states)))
            if queue is not None:
                query = query.where(JobRecord.queue == queue)
            query = query.order_by(col(JobRecord.submitted_at), col(JobRecord.id))
            if limit is not None:
                query = query.limit(limit)
            return list(s.exec(query))

    def jobs_page(
        self, states: Iterable[str] | None = None, queue: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[JobRecord], int]:
        """The ``limit`` most recently submitted jobs after skipping the ``offset`` most recent ones,
        returned oldest first like ``jobs()``, and how many jobs match in all. The paging is SQL's
        (``LIMIT`` / ``OFFSET`` on the newest first), so a store with many finished jobs is never loaded whole."""
        with self.session() as s:
            query = select(JobRecord)
            counted = select(func.count()).select_from(JobRecord)
            if states is not None:
                query = query.where(col(JobRecord.state).in_(list(states)))
                counted = counted.where(col(JobRecord.state).in_(list(states)))
            if queue is not None:
                query = query.where(JobRecord.queue == queue)
                counted = counted.where(JobRecord.queue == queue)
            query = query.order_by(col(JobRecord.submitted_at).desc(), col(JobRecord.id).desc()).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            page = list(s.exec(query))
            page.reverse()
            return page, int(s.exec(counted).one())

    def unsettled_cancelled(self) -> list[JobRecord]:
        """Cancelled jobs that had a Ray submission whose end Ray has not confirmed yet (the service
        stopped, or crashed, between the cancel and Ray's answer): they may still run in Ray."""
        with self.session() as s:
            query = (
                select(JobRecord)
                .where(JobRecord.state == CANCELLED)
                .where(col(JobRecord.submission_id).is_not(None))
                .where(col(JobRecord.ray_status).is_(None) | col(JobRecord.ray_status).not_in(RAY_SETTLED))
            )
            return list(s.exec(query))

    def events(self, job_id: str | None = None) -> list[EventRecord]:
        """Every event (of one job), oldest first."""
        with self.session() as s:
            query = select(EventRecord)
            if job_id is not None:
                query = query.where(EventRecord.job_id == job_id)
            return list(s.exec(query.order_by(col(EventRecord.id))))

    def event_counts(self, kind: str) -> dict[tuple[str, str], int]:
        """How many events of one kind, per (the job's queue, the event's reason code or "")."""
        with self.session() as s:
            query = (
                select(JobRecord.queue, EventRecord.reason_code, func.count())
                .join(JobRecord, col(JobRecord.id) == col(EventRecord.job_id))
                .where(EventRecord.kind == kind)
                .group_by(col(JobRecord.queue), col(EventRecord.reason_code))
            )
            return {(queue, code or ""): int(n) for queue, code, n in s.exec(query)}

    def events_page(
        self, job_id: str | None = None, limit: int | None = None, offset: int = 0
    ) -> tuple[list[EventRecord], int]:
        """The ``limit`` newest events (of one job) after skipping the ``offset`` newest, returned oldest
        first like ``events()``, and how many there are in all; paged in SQL."""
        with self.session() as s:
            query = select(EventRecord)
            counted = select(func.count()).select_from(EventRecord)
            if job_id is not None:
                query = query.where(EventRecord.job_id == job_id)
                counted = counted.where(EventRecord.job_id == job_id)
            query = query.order_by(col(EventRecord.id).desc()).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            page = list(s.exec(query))
            page.reverse()
            return page, int(s.exec(counted).one())

    # ------------------------------------------------------------------ settings

    def get_setting(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(SettingRecord, key)
            return None if row is None else row.value

    def set_setting(self, key: str, value: str | None) -> None:
        with self._write_lock, self.session() as s:
            row = s.get(SettingRecord, key)
            if value is None:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(SettingRecord(key=key, value=value))
            else:
                row.value = value
                s.add(row)
            s.commit()
