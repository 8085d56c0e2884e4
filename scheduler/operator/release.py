"""Release: the scheduling loop and the writes that carry its decisions to the API.

An admission is one patch (placement + unsuspend + our record), a preemption one patch (suspend + why);
then events, the condition annotations of waiting and rejected jobs, and the ElasticQuotaTree's status,
written in the background. A decision that cannot be written is undone in the engine and retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from rayqueue.queue.workload import WorkloadState
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt, Reject
from rayqueue.scheduler.history import store as st
from rayqueue.scheduler.operator.history import Change
from rayqueue.scheduler.operator.intake import Intake
from rayqueue.scheduler.operator.kube import RAYJOBS, TREES, ApiError, Conflict, NotFound
from rayqueue.scheduler.operator.queries import Queries, merge_patch
from rayqueue.scheduler.operator.rayjobs import (
    CONDITION_ANNOTATION,
    JobState,
    admit_patch,
    condition,
    job_uid,
    observe,
    preempt_patch,
)
from rayqueue.scheduler.operator.state import ConditionWrite, OperatorState, ns_name

log = logging.getLogger("rayqueue.operator")


class Release:
    def __init__(self, state: OperatorState, intake: Intake, queries: Queries) -> None:
        self.s = state
        self.intake = intake
        self.queries = queries
        self._write_sem = asyncio.Semaphore(8)

    # ================================================================ the scheduling loop

    async def loop(self) -> None:
        s = self.s
        while True:
            timeout = None
            if s.engine is not None:
                at = s.engine.next_wakeup()
                if at is not None:
                    timeout = max(0.0, at - s.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.wake.wait(), timeout=timeout if timeout is not None else 30.0)
            await asyncio.sleep(s.config.debounce_s)
            s.wake.clear()
            if not s.leader or not s.synced:
                continue
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("admission cycle failed; retrying")
                await asyncio.sleep(1.0)
                s.wake.set()

    async def cycle(self) -> list[Decision]:
        """One admission cycle, its decisions applied (idempotently) before the next one starts.

        The engine is only touched under ``lock`` (short, no I/O), so watch events keep flowing while
        decisions are written; ``cycle_lock`` keeps cycles (and rebuilds) one at a time.
        """
        s = self.s
        async with s.cycle_lock:
            async with s.lock:
                engine = s.engine
                if engine is None:
                    return []
                started = time.perf_counter()
                decisions = engine.schedule(s.clock())
                s.cycles += 1
                s.metrics.cycles.inc()
            if decisions:
                sem = asyncio.Semaphore(s.config.apply_concurrency)

                async def apply(d: Decision) -> None:
                    async with sem:
                        await self.apply(d)

                await asyncio.gather(*(apply(d) for d in decisions))
                s.status_dirty = True
            for ext in s.extensions:
                await ext.after_cycle()
            self.queries.maybe_update_gauges()
            s.metrics.cycle_seconds.observe(time.perf_counter() - started)
            log.debug("cycle %d: %d decisions in %.3fs", s.cycles, len(decisions), time.perf_counter() - started)
        if s.status_dirty:
            s.write_wake.set()
        return decisions

    async def apply(self, d: Decision) -> None:
        try:
            for ext in self.s.extensions:
                if await ext.apply(d):
                    return
            if isinstance(d, Admit):
                await self.apply_admit(d)
            elif isinstance(d, Preempt):
                await self.apply_preempt(d)
            elif isinstance(d, Reject):
                body = self.s.jobs.get(d.workload.uid)
                if body is not None:
                    self.intake.reject(body, int(body["metadata"].get("generation") or 0),
                                       d.reason.code.value, d.reason.message, d.workload.queue)
        except ApiError as exc:
            log.warning("could not apply %s to %s: %s", type(d).__name__, d.workload.display_name, exc)
            self.give_back(d.workload.uid, str(exc))
        except (TimeoutError, OSError) as exc:
            log.warning("could not apply %s to %s: %s", type(d).__name__, d.workload.display_name, exc)
            self.give_back(d.workload.uid, str(exc))

    def give_back(self, uid: str, why: str) -> None:
        """A decision that could not be applied: undo it in the engine and try again later."""
        engine = self.s.engine
        w = engine.job(uid) if engine is not None else None
        if engine is None or w is None:
            return
        if w.state == WorkloadState.ADMITTED:
            engine.cancel(uid)
            loop = asyncio.get_running_loop()
            loop.call_later(self.s.config.retry_failed_after_s, self.retry_later, uid)
        # A preemption that could not be written is simply decided again by a later cycle.

    def retry_later(self, uid: str) -> None:
        s = self.s
        body = s.jobs.get(uid)
        if body is not None and s.engine is not None and not s.engine.has_job(uid):
            self.intake.sync_job(body)
            s.wake.set()

    async def apply_admit(self, d: Admit) -> None:
        s = self.s
        w, placement = d.workload, d.placement
        uid = w.uid
        admitted_at = w.admitted_at or s.clock()
        body = s.jobs.get(uid)
        for attempt in range(6):
            if s.engine is None or s.engine.current_state(w) != WorkloadState.ADMITTED:
                return  # deleted, finished or rebuilt while we were writing: nothing to admit any more
            if body is None or attempt > 0:
                try:
                    body = await s.client.get(RAYJOBS, *ns_name(w.name))
                except NotFound:
                    self.gone(uid)
                    return
                s.jobs[uid] = body
            obs = observe(body, s.tree)
            if obs.uid != uid or obs.state in (JobState.FINISHED, JobState.UNMANAGED):
                self.gone(uid)
                return
            if obs.state is JobState.ADMITTED and obs.record is not None and \
                    abs(float(obs.record.get("admittedAtEpoch", 0)) - admitted_at) < 1e-6:
                break  # already applied (an earlier attempt's answer was lost)
            patch = admit_patch(body, w, placement, admitted_at, by=s.config.identity)
            try:
                body = await s.client.patch(RAYJOBS, obs.namespace, obs.name, patch)
                s.wrote(uid, body)
                break
            except Conflict:
                s.metrics.conflicts.inc()
                continue
            except NotFound:
                self.gone(uid)
                return
        else:
            raise ApiError(409, f"{w.display_name}: the object kept changing; admission postponed")
        s.announced.pop(uid, None)
        s.pending_writes.pop(uid, None)
        waited = admitted_at - (w.submitted_at or admitted_at)
        s.metrics.admitted.labels(w.queue, placement.unit).inc()
        s.metrics.wait_seconds.labels(w.queue).observe(max(0.0, waited))
        message = (f"admitted to unit {placement.unit} ({placement.resource}) from queue {w.queue} "
                   f"after {waited:.1f}s; priority {w.priority}" + (f" ({w.priority_class})" if w.priority_class else ""))
        s.events.post(body, "RayJob", "Admitted", message)
        if s.history is not None and s.engine is not None:
            s.history_reasons.pop(uid, None)
            s.record(Change(uid, st.ADMITTED, admitted_at, message,
                            {"state": st.ADMITTED, "unit": placement.unit, "admitted_at": admitted_at,
                             "reason_code": None, "reason": None},
                            borrowed={str(r): int(v) for r, v in s.engine.borrowed_share(uid).items()}))

    async def apply_preempt(self, d: Preempt) -> None:
        s = self.s
        w = d.workload
        if s.engine is None or s.engine.current_state(w) != WorkloadState.PREEMPTING:
            return
        ns, name = ns_name(w.name)
        preemptor = s.engine.job(d.preemptor) if s.engine else None
        service = s.engine.service(d.preemptor) if preemptor is None and s.engine else None
        by = preemptor.name if preemptor is not None else f"RayService {service.name}" if service else d.preemptor
        message = f"{d.reason.message} (to make room for {by}); quota is held until the job is Suspended"
        try:
            body = await s.client.patch(RAYJOBS, ns, name, preempt_patch(d.reason.code.value, message, d.preemptor))
        except NotFound:
            self.gone(w.uid)
            return
        # not ``wrote``: the suspended object may already be Suspended (KubeRay never started it), and
        # that version, echoed by the watch, is what releases the quota
        s.jobs[w.uid] = body
        s.metrics.count_preemption(s.engine, w.queue, d.preemptor, d.reason.code.value)
        s.events.post(body, "RayJob", "Preempted", f"{d.reason.code.value}: {message}", "Warning")
        s.record(Change(w.uid, st.PREEMPTING, s.clock(), message,
                        {"state": st.PREEMPTING, "preempted_by": d.preemptor, "reason_code": d.reason.code.value},
                        reason_code=d.reason.code.value, by_job=d.preemptor, count_preemption=True))

    def gone(self, uid: str) -> None:
        s = self.s
        if s.engine is not None and s.engine.has_job(uid):
            s.engine.finish(uid)
        s.jobs.pop(uid, None)

    # ================================================================ telling users why

    def announce_pending(self) -> None:
        """Queued events (once per waiting episode) and a condition annotation when the reason changes.

        Only for jobs that waited ``announce_after_s``: a job admitted at once is told "Admitted" only,
        which spares the API server a write per job in a burst.
        """
        s = self.s
        engine = s.engine
        if engine is None:
            return
        horizon = s.clock() - s.config.announce_after_s
        for w in engine.pending():
            code = w.reason.code.value if w.reason else "Queued"
            if s.history is not None and w.reason is not None and s.history_reasons.get(w.uid) != code:
                # the history's ``Waiting`` events: every change of reason, at once (not announce_after_s)
                s.history_reasons[w.uid] = code
                s.record(Change(w.uid, st.WAITING, s.clock(), w.reason.message,
                                {"reason_code": code, "reason": w.reason.message}, reason_code=code))
            if s.announced.get(w.uid) == code:
                continue
            if (w.pending_since or w.submitted_at or 0.0) > horizon:
                continue
            first = w.uid not in s.announced
            s.announced[w.uid] = code
            ex = engine.explain(w.uid)
            message = f"{w.reason.message if w.reason else 'queued'}"
            position = ex.position
            if first:
                body = s.jobs.get(w.uid)
                if body is not None:
                    s.events.post(body, "RayJob", "Queued",
                                  f"queued in {w.queue} at position {position}: {message}")
            s.write_condition(w.uid, "Queued", code, message, position)

    async def writer(self) -> None:
        """Condition annotations of pending/rejected jobs and the tree's status, in the background."""
        s = self.s
        last_status = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.write_wake.wait(), timeout=max(0.05, s.config.announce_after_s / 2))
            s.write_wake.clear()
            if not s.leader or s.engine is None:
                continue
            async with s.lock:
                self.announce_pending()
                self.queries.maybe_update_gauges()  # also when no cycle runs: the last cycle's are not lost
            writes = self._due_writes()
            await asyncio.gather(*(self._write_limited(uid, item) for uid, item in writes.items()))
            now = time.monotonic()
            if s.status_dirty:
                wait = s.config.status_interval_s - (now - last_status)
                if wait > 0:
                    await asyncio.sleep(wait)
                s.status_dirty = False
                last_status = time.monotonic()
                try:
                    await self.write_tree_status()
                except Exception as exc:
                    log.warning("could not write the ElasticQuotaTree status: %s", exc)
                    s.status_dirty = True
                    s.write_wake.set()

    def _due_writes(self) -> dict[str, ConditionWrite]:
        """The condition writes to make now: each job's latest, unless its last was written less than
        ``condition_interval_s`` ago (then it waits in ``pending_writes``, overwritten by newer ones)."""
        s = self.s
        now = time.monotonic()
        horizon = now - s.config.condition_interval_s
        due: dict[str, ConditionWrite] = {}
        for uid, item in s.pending_writes.items():
            if s.condition_written.get(uid, -1e18) <= horizon:
                due[uid] = item
                s.condition_written[uid] = now
        for uid in due:
            del s.pending_writes[uid]
        if len(s.condition_written) > 4 * max(1024, len(s.jobs)):  # forget jobs long gone
            s.condition_written = {u: t for u, t in s.condition_written.items() if t > horizon}
        return due

    async def _write_limited(self, uid: str, item: ConditionWrite) -> None:
        async with self._write_sem:
            await self.write_one(uid, item)

    async def write_one(self, uid: str, item: ConditionWrite) -> None:
        s = self.s
        type_, reason, message, position = item
        for _ in range(3):
            body = s.jobs.get(uid)
            if body is None:
                return
            w = s.engine.job(uid) if s.engine else None
            if type_ == "Queued" and (w is None or w.state != WorkloadState.PENDING):
                return  # overtaken by an admission: its own patch wrote the condition
            meta = body["metadata"]
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                  "annotations": {CONDITION_ANNOTATION: condition(type_, reason, message,
                                                                                  position)}}}
            try:
                new = await s.client.patch(RAYJOBS, meta.get("namespace"), meta["name"], patch)
                if job_uid(new) == uid and uid in s.jobs:
                    s.wrote(uid, new)
                return
            except Conflict:
                s.metrics.conflicts.inc()
                try:
                    fresh = await s.client.get(RAYJOBS, meta.get("namespace"), meta["name"])
                except NotFound:
                    return
                if job_uid(fresh) == uid and uid in s.jobs:
                    s.jobs[uid] = fresh
            except NotFound:
                return
            except Exception as exc:
                log.warning("could not write the condition of %s: %s", meta.get("name"), exc)
                return

    async def write_tree_status(self) -> None:
        s = self.s
        target = s.tree_condition_target
        status = self.queries.tree_status()
        if s.tree_condition is not None:
            status["conditions"] = [s.tree_condition]
        if target is None or not status or status == s.last_status:
            return
        ns, name = target
        # A merge patch keeps every key it does not name: what the status showed before (our last write,
        # or what a previous instance wrote) and no longer has is deleted with a null.
        shown = s.last_status if s.last_status is not None else (s.tree_body or {}).get("status")
        try:
            await s.client.patch(TREES, ns, name, {"status": merge_patch(shown or {}, status)}, sub="status")
        except NotFound:
            return
        s.last_status = status
