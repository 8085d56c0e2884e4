"""The standalone service's side of the dashboard: its live source, and the bookkeeping the pages need
that the admission path does not do itself (a pending job's reason history, log retention).

The pages themselves are ``scheduler.dashboard``; this module only reads the service's engine (under its
lock, in a worker thread) and writes to its store.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import FastAPI

from rayqueue.queue.workload import WorkloadState
from rayqueue.quota.quantity import MAX_JOBS
from rayqueue.scheduler.dashboard.history import History
from rayqueue.scheduler.dashboard.live import HeldJob, LiveSnapshot, PendingJob
from rayqueue.scheduler.dashboard.pages import Dashboard, mount
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.core import Service
from rayqueue.scheduler.service.queries import status_view

log = logging.getLogger("rayqueue.service.dashboard")

#: A live page is read at most this often; every viewer (and every event stream) shares the reading.
SNAPSHOT_TTL_S = 1.0
#: Beyond this many pending jobs, a refresh skips the forecast (each one simulates the whole backlog).
FORECAST_LIMIT = 2000
#: A forecast is reused this long (seconds): a viewer's refresh must not keep the engine busy.
FORECAST_TTL_S = 10.0
#: The queue page shows each queue's first jobs; the rest are counted (a backlog of 100,000 is not a table).
SHOWN_PER_QUEUE = 200
#: How often pending jobs' reasons are compared with the last recorded ones (at least; a big backlog
#: is read less often, so that the scan never takes more than a tenth of the engine's time).
REASON_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0


class ServiceLive:
    """The dashboard's :class:`~rayqueue.scheduler.dashboard.live.LiveSource` over a running service."""

    def __init__(self, service: Service, ray_dashboard_url: str | None = None) -> None:
        self.service = service
        self.pages: Dashboard | None = None  # closed by ``stop``, which ends its event streams
        self.ray_dashboard_url = ray_dashboard_url
        self._cached: LiveSnapshot | None = None
        self._lock = asyncio.Lock()
        self._reasons: dict[str, str] = {}  # pending job -> the reason code last recorded
        self._task: asyncio.Task[None] | None = None
        self._starts: tuple[float, dict[str, float | None]] | None = None  # (when, the last forecast)

    def ray_job_url(self, submission_id: str) -> str | None:
        return f"{self.ray_dashboard_url}/#/jobs/{submission_id}" if self.ray_dashboard_url else None

    async def snapshot(self) -> LiveSnapshot:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._cached.taken_at > SNAPSHOT_TTL_S:
                self._cached = await self.service.locked(self._read)
            return self._cached

    def _read(self) -> LiveSnapshot:
        """One reading of the engine (a worker thread holding the engine lock)."""
        engine = self.service.engine
        pending: list[PendingJob] = []
        counts: dict[str, int] = {}
        for q in engine.queue_views():
            counts[q.name] = len(q.pending)
            for uid in q.pending[:SHOWN_PER_QUEUE]:
                info = engine.explain(uid)
                job = engine.job(uid)
                if job is None:
                    continue
                pending.append(PendingJob(
                    id=uid, name=job.name, queue=job.queue, priority=job.priority,
                    priority_class=self._priority_class(uid), position=info.position,
                    reason_code=info.reason.code.value if info.reason else None,
                    reason=info.reason.message if info.reason else None,
                    expected_start=None, submitted_at=job.submitted_at,
                ))
        forecast = sum(counts.values()) <= FORECAST_LIMIT
        if forecast and pending:
            # the forecast simulates the whole backlog: at most every FORECAST_TTL_S, not at every reading
            if self._starts is None or time.monotonic() - self._starts[0] > FORECAST_TTL_S:
                self._starts = (time.monotonic(), forecast_starts(engine, self.service.state.clock()))
            starts = self._starts[1]
            for p in pending:
                p.expected_start = starts.get(p.id)
        held = [
            HeldJob(id=j.uid, queue=j.queue, unit=j.unit, request={r: v for r, v in j.request.items() if r != MAX_JOBS},
                    preempting=j.state == WorkloadState.PREEMPTING)
            for j in engine.jobs() if j.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING)
        ]
        return LiveSnapshot(taken_at=time.monotonic(), status=status_view(engine, self.service.ray.address),
                            pending=pending, held=held, forecast=forecast, pending_counts=counts)

    def _priority_class(self, uid: str) -> str | None:
        w = self.service.engine.job(uid)
        return w.priority_class if w is not None else None

    # ------------------------------------------------------------------ reason history

    def reason_changes(self) -> list[st.EventRecord]:
        """A ``Waiting`` event for every pending job whose reason code changed since the last look (a worker
        thread holding the engine lock). The reason is the one ``explain`` gives (``BlockedByHead`` too)."""
        engine = self.service.engine
        now = self.service.state.clock()
        seen: dict[str, str] = {}
        out: list[st.EventRecord] = []
        for q in engine.queue_views():
            for uid in q.pending:
                reason = engine.explain(uid).reason
                if reason is None:
                    continue
                code = reason.code.value
                seen[uid] = code
                if self._reasons.get(uid) != code:
                    out.append(st.EventRecord(job_id=uid, at=now, kind=st.WAITING, state=st.PENDING,
                                              message=reason.message, reason_code=code))
        self._reasons = seen  # jobs no longer pending are forgotten: a requeue starts a fresh history
        return out

    async def record_reasons_once(self) -> float:
        """Record the reasons that changed; how long the scan took (seconds)."""
        started = time.perf_counter()
        changes = await self.service.locked(self.reason_changes)
        if changes:
            await asyncio.to_thread(self.service.store.add_events, changes)
        return time.perf_counter() - started

    async def _run(self) -> None:
        pruned = 0.0
        while True:
            try:
                took = await self.record_reasons_once()
                retention = self.service.config.log_retention_s
                if retention is not None and time.monotonic() - pruned > PRUNE_INTERVAL_S:
                    pruned = time.monotonic()
                    gone = await asyncio.to_thread(self.service.store.prune_log_snapshots, time.time() - retention)
                    if gone:
                        log.info("dropped %d log snapshots older than the retention (%.0f days)", gone,
                                 retention / 86400)
            except Exception:
                log.exception("recording pending jobs' reasons failed")
                took = 0.0
            await asyncio.sleep(max(REASON_INTERVAL_S, 10 * took))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rayqueue-dashboard")

    async def stop(self) -> None:
        if self.pages is not None:
            self.pages.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def attach(app: FastAPI, service: Service, token: str | None, ray_dashboard_url: str | None) -> tuple[Dashboard, ServiceLive]:
    """Mount the dashboard on the service's app and start its bookkeeping; ``ServiceLive.stop`` ends it."""
    live = ServiceLive(service, ray_dashboard_url)
    dash = live.pages = mount(app, History(engine=service.store.engine), live, token)
    live.start()
    return dash, live


__all__ = ["ServiceLive", "attach"]
