"""Release to Ray: submitting admitted jobs, stopping preempted and cancelled ones, following them to
their end, and keeping the driver's log tail.

A release is retried while Ray is unreachable and never starts a job twice: its Ray submission id
(``job id`` + attempt) was committed with the admission, and Ray accepts an id once. A job's end is
committed before the engine releases its quota.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.rayjobs import RayStatus, RaySubmitRefused, RayUnavailable, submission_for
from rayqueue.scheduler.service.state import ServiceError, ServiceState, requeue_row
from rayqueue.scheduler.service.store import JobRecord

log = logging.getLogger("rayqueue.service")


class Release:
    def __init__(self, s: ServiceState, cycle: Callable[[], Awaitable[None]]) -> None:
        self.s = s
        #: one admission cycle (call it holding the engine lock): what a job's end leaves room for
        self._cycle = cycle

    async def release(self, job_id: str, sid: str, node_selector: dict[str, str], row: JobRecord | None = None) -> None:
        """Submit an admitted job to Ray; retried while Ray is unreachable, never twice (submission id).
        ``row``: the job's row as its admission committed it (else it is read)."""
        s = self.s
        try:
            if row is None:
                row = s.store.get(job_id)
            if row is None:
                return
            sub = submission_for(
                s.request(row), sid, job_id=job_id, queue=row.queue, unit=row.unit or "", node_selector=node_selector
            )
            delay = s.config.retry_base_s
            while True:
                if job_id in s.cancelled:
                    return
                started = time.perf_counter()
                try:
                    fresh = await asyncio.to_thread(s.ray.submit, sub)
                    break
                except RayUnavailable as exc:
                    log.warning("releasing %s: Ray unavailable (%s); retrying in %.1fs", job_id, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, s.config.retry_max_s)
                except RaySubmitRefused as exc:
                    async with s.engine_lock:
                        self.finalize(job_id, RayStatus("FAILED", f"Ray refused the job: {exc}"), logs=None)
                    return
            s.metrics.release_seconds.observe(time.perf_counter() - started)
            if job_id in s.cancelled:  # cancelled while Ray was being asked: stop what Ray started
                s.store.record(job_id, "Released", f"Ray took {sid} after the job was cancelled; stopping it")
                s.spawn(self.settle_cancelled(job_id, sid))
                return
            now = s.clock()
            s.store.transition(
                job_id,
                "Released",
                f"submitted to Ray as {sid}" + ("" if fresh else " (Ray already had it: not started twice)"),
                at=now,
                released=True,
                released_at=now,
            )
            s.active[job_id] = sid
            if job_id in s.preempting:
                s.spawn(self.stop_in_ray(job_id, sid))
        finally:
            s.releasing.pop(job_id, None)

    async def stop_in_ray(self, job_id: str, sid: str) -> None:
        delay = self.s.config.retry_base_s
        while True:
            try:
                await asyncio.to_thread(self.s.ray.stop, sid)
                return
            except RayUnavailable as exc:
                log.warning("stopping %s: Ray unavailable (%s); retrying in %.1fs", job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.s.config.retry_max_s)

    def cancel(self, row: JobRecord) -> JobRecord:
        """The user cancels a live job: it leaves the engine now; Ray is asked to stop it, if it has it."""
        s = self.s
        if row.state not in st.LIVE_STATES:
            raise ServiceError(f"job {row.id} already ended ({row.state}); nothing to cancel")
        was = row.state
        if s.engine.has_job(row.id):
            s.engine.cancel(row.id)
        sid = s.unfollow(row.id) or row.submission_id
        s.preempting.discard(row.id)
        s.cancelled.add(row.id)
        row = s.store.transition(
            row.id, "Cancelled", f"cancelled by the user while {was}", state=st.CANCELLED, finished_at=s.clock()
        )
        if was in st.ACTIVE_STATES and sid:
            s.spawn(self.settle_cancelled(row.id, sid))
        s.wake()
        return row

    async def settle_cancelled(self, job_id: str, sid: str) -> None:
        """A cancelled job Ray may still run: stop it, wait until Ray says it ended, and keep Ray's final
        status and the driver's log tail, so that `logs` and `history` still answer once Ray is gone."""
        s = self.s
        await self.stop_in_ray(job_id, sid)
        deadline = time.monotonic() + s.config.cancel_settle_s
        status: RayStatus | None = None
        while True:
            try:
                status = await asyncio.to_thread(s.ray.status, sid)
                if status is None or status.terminal:
                    break
            except RayUnavailable:
                pass  # ask again
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(s.config.poll_interval_s)
        if status is None:
            s.store.transition(job_id, "RayStopped", f"Ray has no submission {sid}: nothing ran",
                               ray_status=st.RAY_NOT_FOUND)
            return
        logs = None
        try:
            logs = await asyncio.to_thread(s.ray.logs, sid)
        except RayUnavailable:
            pass
        ended = status.terminal
        s.store.transition(
            job_id,
            "RayStopped" if ended else "RayStopping",
            f"Ray reports {sid} {status.status}" + ("" if ended else " after the stop request; asked again at the next start"),
            ray_status=status.status,
            ray_message=status.message,
            logs=logs[-s.config.log_tail_chars :] if logs else None,
        )
        if logs:
            self.keep_logs(job_id, st.CANCELLED, logs)

    async def snapshot_logs(self, job_id: str, sid: str, kind: str) -> None:
        """Keep the driver's log as it was when Ray stopped it (a preemption): the next attempt's log
        replaces it in Ray, and Ray forgets both with its cluster."""
        try:
            logs = await asyncio.to_thread(self.s.ray.logs, sid)
        except RayUnavailable:
            return
        if logs:
            self.keep_logs(job_id, kind, logs)

    def keep_logs(self, job_id: str, kind: str, logs: str) -> None:
        s = self.s
        row = s.store.get(job_id)
        s.store.add_log_snapshot(job_id, row.attempt if row else 0, kind, logs, s.config.log_tail_chars)

    # ---------------------------------------------------------------- following released jobs

    async def poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.config.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("following Ray jobs failed")

    async def poll_once(self) -> None:
        """Ask Ray about every followed job once; an admission cycle follows any end or requeue."""
        s = self.s
        followed = list(s.active.items())
        if not followed:
            return
        if len(followed) > 4:
            try:
                found = await asyncio.to_thread(s.ray.statuses, [sid for _, sid in followed])
            except RayUnavailable:
                return  # ask again next time
            results: list[RayStatus | None | BaseException] = [found.get(sid) for _, sid in followed]
        else:
            results = await asyncio.gather(
                *(asyncio.to_thread(s.ray.status, sid) for _, sid in followed), return_exceptions=True
            )
        changed = False
        started: list[tuple[str, str]] = []
        for (job_id, sid), result in zip(followed, results, strict=True):
            if isinstance(result, BaseException):
                continue  # Ray unreachable: ask again next time
            if isinstance(result, RayStatus) and result.status == "RUNNING" and sid in s.past_admitted:
                continue  # still running, as recorded: the common case, checked without a coroutine per job
            if s.active.get(job_id) != sid:
                continue  # cancelled or requeued meanwhile
            if isinstance(result, RayStatus) and result.status == "RUNNING":
                started.append((job_id, sid))  # recorded below, all in one transaction
                continue
            changed |= await self._observe(job_id, sid, result)
        if started:
            await self.record_starts(started)
        if changed:
            async with s.engine_lock:
                await self._cycle()

    async def _observe(self, job_id: str, sid: str, status: RayStatus | None) -> bool:
        s = self.s
        if status is None:
            if job_id in s.releasing:
                return False
            # Released, yet Ray does not know it: the Ray cluster was replaced. Run it again.
            async with s.engine_lock:
                self.requeue(job_id, "Lost", f"Ray no longer knows submission {sid} (cluster restarted?)")
            return True
        if status.status == "RUNNING":
            if sid not in s.past_admitted:
                await self.record_starts([(job_id, sid)])
            return False
        if not status.terminal:
            return False
        if job_id in s.preempting and status.status == "STOPPED":
            await self.snapshot_logs(job_id, sid, "Preempted")
            async with s.engine_lock:
                self.requeue(job_id, "Requeued", f"Ray stopped {sid}; back in the queue", preempted=True)
            return True
        logs = None
        try:
            logs = await asyncio.to_thread(s.ray.logs, sid)
        except RayUnavailable:
            pass
        async with s.engine_lock:
            if s.active.get(job_id) != sid:
                return False
            self.finalize(job_id, status, logs)
        return True

    async def record_starts(self, started: list[tuple[str, str]]) -> None:
        """Ray runs these ``(job id, submission id)``: ``Running``, in one transaction written off the event
        loop (a poll can see dozens of jobs start; one commit each, on the loop, held up the submissions)."""
        s = self.s
        now = s.clock()
        rows = await asyncio.to_thread(s.store.start_many, started, now)
        for (job_id, sid), row in zip(started, rows, strict=True):
            if row is not None:
                s.metrics.start_seconds.labels(queue=row.queue).observe(max(0.0, now - row.submitted_at))
            # Running now, or already past Admitted (being preempted): a row leaves Admitted once per
            # submission id (a new attempt gets a new one), so this job's row need not be read again.
            if s.active.get(job_id) == sid:
                s.past_admitted.add(sid)

    def finalize(self, job_id: str, status: RayStatus, logs: str | None) -> None:
        """Ray ended the job: commit its end and log tail, then release its quota."""
        s = self.s
        state = {"SUCCEEDED": st.SUCCEEDED, "FAILED": st.FAILED}.get(status.status, st.STOPPED)
        tail = logs[-s.config.log_tail_chars :] if logs else None
        row = s.store.transition(
            job_id,
            state,
            status.message or f"Ray reports {status.status}",
            state=state,
            finished_at=s.clock(),
            ray_status=status.status,
            ray_message=status.message,
            logs=tail,
        )
        if tail:
            s.store.add_log_snapshot(job_id, row.attempt, state, tail, s.config.log_tail_chars)
        s.unfollow(job_id)
        s.preempting.discard(job_id)
        if s.engine.has_job(job_id):
            s.engine.finish(job_id)
        s.metrics.finished.labels(queue=row.queue, state=state).inc()
        s.wake()

    def requeue(self, job_id: str, kind: str, message: str, preempted: bool = False) -> None:
        """The job stopped without ending (preempted, or lost with its Ray cluster): back to its queue."""
        s = self.s
        row = s.store.get(job_id)
        if row is None:
            return
        s.unfollow(job_id)
        s.preempting.discard(job_id)
        requeue_row(s.store, row, kind, message, preempted)
        if s.engine.has_job(job_id):
            s.engine.suspended(job_id, s.clock())
        s.wake()
