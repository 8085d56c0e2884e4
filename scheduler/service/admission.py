"""The admission cycle: the engine decides, and each decision is made durable before it reaches Ray.

An ``Admit`` commits the job's ``Admitted`` row (unit, attempt, Ray submission id) and only then starts
the release task; a ``Preempt`` commits ``Preempting`` (and the job it is for, so a restart resumes it
rather than deciding again) before Ray is asked to stop the victim; a ``Reject`` ends the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from rayqueue.scheduler.engine.decisions import Admit, Preempt, Reject
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.release import Release
from rayqueue.scheduler.service.state import REJECTED, ServiceState
from rayqueue.scheduler.service.store import submission_id

log = logging.getLogger("rayqueue.service")


class Admission:
    def __init__(self, s: ServiceState, release: Release) -> None:
        self.s = s
        self.release = release
        #: called after each cycle's decisions are applied (services take their grants: serving.py)
        self.after_apply: Callable[[], None] | None = None

    def run_cycle(self) -> None:
        """One admission cycle on the calling thread (the event loop's, holding the engine lock)."""
        started = time.perf_counter()
        self.apply(self.s.engine.schedule(self.s.clock()))
        self.s.metrics.cycles.inc()
        self.s.metrics.cycle_seconds.observe(time.perf_counter() - started)

    async def cycle(self) -> None:
        """One admission cycle, the engine's part in a worker thread (call it holding the engine lock):
        a cycle over thousands of pending jobs must not stall the event loop."""
        started = time.perf_counter()
        decisions = await asyncio.to_thread(self.s.engine.schedule, self.s.clock())
        self.apply(decisions)  # creates release tasks: on the event loop
        self.s.metrics.cycles.inc()
        self.s.metrics.cycle_seconds.observe(time.perf_counter() - started)

    def apply(self, decisions: Sequence[Admit | Preempt | Reject]) -> None:
        for d in decisions:
            try:
                if isinstance(d, Admit):
                    self._on_admit(d)
                elif isinstance(d, Preempt):
                    self._on_preempt(d)
                elif isinstance(d, Reject):
                    self._on_reject(d)
            except Exception:  # one bad decision must not stop the others
                log.exception("applying %s failed", type(d).__name__)
        if self.after_apply is not None:
            self.after_apply()

    def _on_admit(self, d: Admit) -> None:
        s = self.s
        w = d.workload
        row = s.store.get(w.uid)
        if row is None:
            return
        now = s.clock()
        sid = submission_id(w.uid, row.attempt)
        s.store.transition(
            w.uid,
            "Admitted",
            w.reason.message if w.reason else f"admitted on unit {d.placement.unit}",
            at=now,
            state=st.ADMITTED,
            unit=d.placement.unit,
            admitted_at=now,
            submission_id=sid,
            released=False,
            reason_code=w.reason.code.value if w.reason else None,
            reason=w.reason.message if w.reason else None,
        )
        s.metrics.admitted.labels(queue=w.queue, unit=d.placement.unit).inc()
        s.metrics.wait_seconds.labels(queue=w.queue).observe(max(0.0, now - row.submitted_at))
        s.releasing[w.uid] = asyncio.create_task(self.release.release(w.uid, sid, d.placement.node_selector))

    def _on_preempt(self, d: Preempt) -> None:
        s = self.s
        w = d.workload
        row = s.store.transition(
            w.uid,
            "Preempting",
            f"{d.reason.message} (for {d.preemptor})",
            state=st.PREEMPTING,
            reason_code=d.reason.code.value,
            reason=d.reason.message,
            preempted_by=d.preemptor,  # a restart resumes this preemption instead of deciding it again
        )
        s.preempting.add(w.uid)
        s.metrics.evicted.labels(queue=w.queue, reason=d.reason.code.value).inc()
        preemptor = s.engine.job(d.preemptor)
        s.metrics.preempted.labels(preempting_queue=preemptor.queue if preemptor is not None else "",
                                   reason=d.reason.code.value).inc()
        if row.released and row.submission_id:
            s.active[w.uid] = row.submission_id
            s.spawn(self.release.stop_in_ray(w.uid, row.submission_id))
        # Not released yet: the release task sees the preemption and stops the job right after.

    def _on_reject(self, d: Reject) -> None:
        s = self.s
        w = d.workload
        if s.store.get(w.uid) is None:
            return
        s.metrics.rejected.labels(queue=w.queue, reason=d.reason.code.value).inc()
        s.store.transition(
            w.uid,
            "Rejected",
            d.reason.message,
            state=REJECTED,
            reason_code=d.reason.code.value,
            reason=d.reason.message,
            finished_at=s.clock(),
        )

    async def schedule_loop(self) -> None:
        s = self.s
        while True:
            async with s.engine_lock:
                wakeup = s.engine.next_wakeup()
            timeout = 5.0 if wakeup is None else min(5.0, max(0.0, wakeup - s.clock()))
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set, and the loop would then never stop.
            waiter = asyncio.ensure_future(s.wake_event.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()
            s.wake_event.clear()
            try:
                async with s.engine_lock:
                    await self.cycle()
            except Exception:
                log.exception("admission cycle failed")
