"""The admission cycle: the engine decides, and each decision is made durable before it reaches Ray.

An ``Admit`` commits the job's ``Admitted`` row (unit, attempt, Ray submission id) and only then starts
the release task; a ``Preempt`` commits ``Preempting`` (and the job it is for, so a restart resumes it
rather than deciding again) before Ray is asked to stop the victim; a ``Reject`` ends the job. The
engine's cycle and the admissions' and rejections' commits run in one worker thread (one hand-over
between threads per cycle, not one per step), the preemptions on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from rayqueue.scheduler.engine.decisions import Admit, Preempt, Reject
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.release import Release
from rayqueue.scheduler.service.state import REJECTED, ServiceState
from rayqueue.scheduler.service.store import JobRecord

log = logging.getLogger("rayqueue.service")


#: What a cycle decided, once its store writes are committed: each admission with its row (to release
#: it), and the preemptions, which are applied on the event loop (see ``Admission.decide``).
Decided = list[tuple[Admit, JobRecord] | Preempt]


class Admission:
    def __init__(self, s: ServiceState, release: Release) -> None:
        self.s = s
        self.release = release
        #: called after each cycle's decisions are applied (services take their grants: serving.py)
        self.after_apply: Callable[[], None] | None = None

    def run_cycle(self) -> None:
        """One admission cycle on the calling thread (the event loop's, holding the engine lock)."""
        started = time.perf_counter()
        self.dispatch(self.decide())
        self.s.metrics.cycles.inc()
        self.s.metrics.cycle_seconds.observe(time.perf_counter() - started)

    async def cycle(self) -> None:
        """One admission cycle, the engine's part and its store writes in a worker thread (call it holding
        the engine lock): a cycle over thousands of pending jobs must not stall the event loop."""
        started = time.perf_counter()
        self.dispatch(await asyncio.to_thread(self.decide))
        self.s.metrics.cycles.inc()
        self.s.metrics.cycle_seconds.observe(time.perf_counter() - started)

    def decide(self) -> Decided:
        """The engine's cycle, with the ``Admitted`` and ``Rejected`` rows committed; call it holding the
        engine lock, on any thread (it touches no asyncio object, nor anything the event loop changes
        without the lock: a job being admitted or rejected was pending, so nothing follows it yet).
        Preemptions are only returned: their victims may be being released on the event loop right now,
        and ``dispatch`` applies them there, in one step with what the release task sees."""
        out: Decided = []
        for d in self.s.engine.schedule(self.s.clock()):
            try:
                if isinstance(d, Admit):
                    row = self._record_admit(d)
                    if row is not None:
                        out.append((d, row))
                elif isinstance(d, Preempt):
                    out.append(d)
                elif isinstance(d, Reject):
                    self._on_reject(d)
            except Exception:  # one bad decision must not stop the others
                log.exception("applying %s failed", type(d).__name__)
        return out

    def dispatch(self, decided: Decided) -> None:
        """On the event loop: release the admitted jobs to Ray, apply the preemptions."""
        for item in decided:
            try:
                if isinstance(item, Preempt):
                    self._on_preempt(item)
                else:
                    d, row = item
                    self.s.releasing[row.id] = asyncio.create_task(
                        self.release.release(row.id, row.submission_id or "", d.placement.node_selector, row))
            except Exception:
                log.exception("applying %s failed", type(item).__name__)
        if self.after_apply is not None:
            self.after_apply()

    def _record_admit(self, d: Admit) -> JobRecord | None:
        s = self.s
        w = d.workload
        now = s.clock()
        row = s.store.admit(
            w.uid,
            w.reason.message if w.reason else f"admitted on unit {d.placement.unit}",
            at=now,
            state=st.ADMITTED,
            unit=d.placement.unit,
            admitted_at=now,
            released=False,
            reason_code=w.reason.code.value if w.reason else None,
            reason=w.reason.message if w.reason else None,
            borrowed=json.dumps(s.engine.borrowed_share(w.uid)),
        )
        if row is None:
            return None
        s.metrics.admitted.labels(queue=w.queue, unit=d.placement.unit).inc()
        s.metrics.wait_seconds.labels(queue=w.queue).observe(max(0.0, now - row.submitted_at))
        return row

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
        s.metrics.count_preemption(s.engine, w.queue, d.preemptor, d.reason.code.value)
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
