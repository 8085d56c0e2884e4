"""Read-only queries on the event log the service and the operator write (tables ``jobs``, ``events``,
``log_snapshots``; their models are in ``scheduler/history/store.py``).

The dashboard reads SQL itself, through SQLAlchemy Core, so that it imports no front end and works on
a copied database file with nothing else running (``rayqueue dashboard --db URL``). Every list is paged
in SQL and every search runs on an index (``jobs.finished_at``, ``(queue, finished_at)``,
``events.job_id``, ``events.kind``), so a store with 100,000 finished jobs answers in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, and_, cast, column, create_engine, func, select, table
from sqlalchemy import event as sa_event

#: The final states a finished job has (the service's words), plus a job refused by the engine.
OUTCOMES = ("Succeeded", "Failed", "Stopped", "Cancelled", "Rejected")
LIVE = ("Pending", "Admitted", "Running", "Preempting")
TREE_SETTING = "quota_tree_yaml"  # where the service keeps the applied tree's YAML

JOB_COLUMNS = (
    "id", "name", "namespace", "queue", "priority", "priority_class", "state", "reason_code", "reason", "unit",
    "attempt", "submission_id", "request", "pods", "submitted_at", "admitted_at", "first_admitted_at",
    "running_at", "finished_at", "ray_status", "ray_message", "preemptions", "preempted_by",
)
jobs = table("jobs", *(column(c) for c in (*JOB_COLUMNS, "logs", "manifest")))
events = table("events", *(column(c) for c in ("id", "job_id", "at", "kind", "state", "unit", "message",
                                               "reason_code", "by_job", "borrowed")))
snapshots = table("log_snapshots", *(column(c) for c in ("id", "job_id", "attempt", "at", "kind", "text")))
settings = table("settings", column("key"), column("value"))


@dataclass(frozen=True)
class Search:
    """The history page's filters: a team (queue), a time range on the end, an outcome, a name prefix."""

    team: str | None = None
    since: float | None = None
    until: float | None = None
    outcome: str | None = None
    name: str | None = None


class History:
    """Read-only access to one store. ``url``: any SQLAlchemy URL (SQLite file, PostgreSQL)."""

    def __init__(self, url: str | None = None, engine: Engine | None = None) -> None:
        if engine is None:
            if url is None:
                raise ValueError("History needs a database URL or an engine")
            connect_args: dict[str, Any] = {"check_same_thread": False} if url.startswith("sqlite") else {}
            engine = create_engine(url, connect_args=connect_args)
            if url.startswith("sqlite"):

                @sa_event.listens_for(engine, "connect")
                def _read_only(dbapi_conn: Any, _record: Any) -> None:
                    # a post-mortem reads a copy of someone's database: never write to it
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA query_only=ON")
                    cur.close()

        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def _all(self, query: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _scalar(self, query: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    # ------------------------------------------------------------------ one job

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._all(select(*(jobs.c[c] for c in JOB_COLUMNS)).where(jobs.c.id == job_id))
        return rows[0] if rows else None

    def manifest(self, job_id: str) -> str | None:
        out: str | None = self._scalar(select(jobs.c.manifest).where(jobs.c.id == job_id))
        return out

    def events(self, job_id: str, limit: int = 5000) -> list[dict[str, Any]]:
        """The job's events, oldest first (the newest ``limit``: a job requeued forever stays readable)."""
        newest = self._all(select(events).where(events.c.job_id == job_id).order_by(events.c.id.desc()).limit(limit))
        return newest[::-1]

    def log_snapshots(self, job_id: str) -> list[dict[str, Any]]:
        """Log tails captured at preemption and at the end, oldest first; the final tail the job row keeps
        (older stores wrote only that one) is added when no snapshot holds it."""
        found = self._all(select(snapshots).where(snapshots.c.job_id == job_id).order_by(snapshots.c.id))
        final = self._all(select(jobs.c.logs, jobs.c.state, jobs.c.finished_at, jobs.c.attempt)
                          .where(jobs.c.id == job_id))
        if final and final[0]["logs"] and not any(s["text"] == final[0]["logs"] for s in found):
            row = final[0]
            found.append({"id": None, "job_id": job_id, "attempt": row["attempt"], "at": row["finished_at"],
                          "kind": row["state"], "text": row["logs"]})
        return found

    # ------------------------------------------------------------------ lists

    def live_jobs(self, queue: str | None = None, states: Sequence[str] = LIVE, limit: int = 500) -> list[dict[str, Any]]:
        query = select(*(jobs.c[c] for c in JOB_COLUMNS)).where(jobs.c.state.in_(list(states)))
        if queue:
            query = query.where(jobs.c.queue == queue)
        return self._all(query.order_by(jobs.c.submitted_at, jobs.c.id).limit(limit))

    def _where(self, s: Search) -> Any:
        cond: list[Any] = [jobs.c.finished_at.is_not(None)]
        if s.team:
            cond.append(jobs.c.queue == s.team)
        if s.since is not None:
            cond.append(jobs.c.finished_at >= s.since)
        if s.until is not None:
            cond.append(jobs.c.finished_at < s.until)
        if s.outcome:
            cond.append(jobs.c.state == s.outcome)
        if s.name:
            # a prefix as a range: it runs on the index of names (LIKE would not, case-insensitive in SQLite)
            cond.append(jobs.c.name >= s.name)
            cond.append(jobs.c.name < s.name + "\U0010ffff")
        return and_(*cond)

    def finished(self, s: Search, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Finished jobs matching ``s``, newest end first, one page; and how many match in all."""
        where = self._where(s)
        # the page's ids first, from the covering index alone (a deep OFFSET then skips index entries,
        # not rows), then those rows
        ids = (select(jobs.c.id).where(where).order_by(jobs.c.finished_at.desc(), jobs.c.id.desc())
               .limit(limit).offset(offset))
        page = self._all(select(*(jobs.c[c] for c in JOB_COLUMNS)).where(jobs.c.id.in_(ids.scalar_subquery()))
                         .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc()))
        total = int(self._scalar(select(func.count()).select_from(jobs).where(where)) or 0)
        return page, total

    def teams(self) -> list[str]:
        return [r["queue"] for r in self._all(select(jobs.c.queue).distinct().order_by(jobs.c.queue))]

    def time_range(self) -> tuple[float | None, float | None]:
        with self.engine.connect() as conn:
            # from the first submission (a job's preemptions and wait come before its end); each bound is
            # one step on its index
            lo = conn.execute(select(func.min(jobs.c.submitted_at))).scalar()
            hi = conn.execute(select(func.max(jobs.c.finished_at))).scalar()
        return lo, hi

    # ------------------------------------------------------------------ charts

    def wait_by_team(self, s: Search, start: float, bucket: float) -> list[dict[str, Any]]:
        """Per team and time bucket (by the job's end): jobs, mean and max wait from submission to first
        admission (seconds)."""
        index = cast((jobs.c.finished_at - start) / bucket, Integer)
        admitted = func.coalesce(jobs.c.first_admitted_at, jobs.c.admitted_at)
        wait = admitted - jobs.c.submitted_at
        query = (
            select(jobs.c.queue.label("team"), index.label("bucket"), func.count().label("jobs"),
                   func.avg(wait).label("mean_wait"), func.max(wait).label("max_wait"))
            .where(self._where(s)).where(admitted.is_not(None))
            .group_by(jobs.c.queue, index)
        )
        return self._all(query)

    def preemptions_by_team(self, s: Search, start: float, bucket: float) -> list[dict[str, Any]]:
        """Per team (the preempted job's) and time bucket (of the preemption): how many preemptions."""
        index = cast((events.c.at - start) / bucket, Integer)
        cond: list[Any] = [events.c.kind == "Preempting"]
        if s.since is not None:
            cond.append(events.c.at >= s.since)
        if s.until is not None:
            cond.append(events.c.at < s.until)
        if s.team:
            cond.append(jobs.c.queue == s.team)
        query = (
            select(jobs.c.queue.label("team"), index.label("bucket"), func.count().label("preemptions"))
            .select_from(events.join(jobs, jobs.c.id == events.c.job_id))
            .where(and_(*cond)).group_by(jobs.c.queue, index)
        )
        return self._all(query)

    def stored_tree(self) -> str | None:
        out: str | None = self._scalar(select(settings.c.value).where(settings.c.key == TREE_SETTING))
        return out

    def ping(self) -> None:
        """Raise (SQLAlchemyError) unless this is a rayqueue store: its tables answer."""
        with self.engine.connect() as conn:
            conn.execute(select(jobs.c.id).limit(1))
            conn.execute(select(events.c.id).limit(1))

