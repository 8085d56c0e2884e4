"""Recovery: the engine rebuilt from the store after a restart (or a crash), with Ray asked what ran.

Running Ray jobs are counted again as they were (``engine.restore``), with a preemption in progress
resumed rather than decided again; jobs Ray finished while we were away are closed; jobs admitted but
never submitted are released again under the same submission id, which Ray accepts at most once;
cancelled jobs whose end Ray never confirmed are stopped; pending jobs are queued again in submission
order.
"""

from __future__ import annotations

import asyncio

from rayqueue.queue.workload import Reason, ReasonCode, Workload
from rayqueue.quota.quantity import Resources
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.release import Release
from rayqueue.scheduler.service.state import REJECTED, ServiceError, ServiceState, requeue_row
from rayqueue.scheduler.service.store import JobRecord
from rayqueue.scheduler.workloads.rayjob import RayJobRejected, expected_duration


class Recovery:
    def __init__(self, s: ServiceState, release: Release) -> None:
        self.s = s
        self.release = release

    async def recover(self) -> None:
        """Rebuild the engine from the store's live jobs (call it holding the engine lock, once, at start)."""
        s = self.s
        rows = s.store.jobs(st.LIVE_STATES)
        missing = sorted({r.queue for r in rows} - set(s.engine.tree_view().leaves))
        if missing:
            raise ServiceError(
                f"the quota tree has no leaf {', '.join(missing)} but the store holds live jobs there; "
                "start with a tree that has these leaves (nothing was changed)"
            )
        selectors = {u.name: u.node_selector for u in s.engine.unit_views()}
        active = [r for r in rows if r.state in st.ACTIVE_STATES and r.submission_id]
        statuses = await asyncio.gather(
            *(asyncio.to_thread(s.ray.status, r.submission_id or "") for r in active), return_exceptions=True
        )
        for row, status in zip(active, statuses, strict=True):
            if isinstance(status, BaseException):
                raise ServiceError(f"cannot ask Ray about job {row.id}: {status}")
            sid = row.submission_id or ""
            if status is None and row.released:
                requeue_row(s.store, row, "Lost", f"Ray no longer knows submission {sid} (cluster restarted?)")
                continue
            if status is not None and status.terminal:
                if row.state == st.PREEMPTING and status.status == "STOPPED":
                    requeue_row(s.store, row, "Requeued", f"Ray stopped {sid} while rayqueue was down", preempted=True)
                    continue
                logs = await asyncio.to_thread(s.ray.logs, sid)
                s.active[row.id] = sid
                self.release.finalize(row.id, status, logs)
                continue
            if status is None and row.state == st.PREEMPTING:
                # Preempted before Ray ever had it: that preemption is complete, not to be decided again.
                requeue_row(s.store, row, "Requeued", f"preempted before Ray started {sid}; back in the queue",
                            preempted=True)
                continue
            # Running (or pending) in Ray, or admitted but maybe never submitted: count it, as it was. A job
            # being preempted stays so, for the job it was preempted for: one decision, one event, one count.
            w = self.workload(row)
            preempting = row.state == st.PREEMPTING
            reason = None
            if preempting and row.reason_code is not None and row.reason_code in ReasonCode.__members__.values():
                reason = Reason(ReasonCode(row.reason_code), row.reason or "being preempted (restored)")
            s.engine.restore(w, row.unit, row.admitted_at or s.clock(), preempted_by=row.preempted_by,
                             preempting=preempting, reason=reason)
            # a transition, not a bare record: the history row then shows the job's state and unit
            s.store.transition(row.id, "Reattached", f"counted again on unit {row.unit} after a restart")
            if status is None:
                node_selector = dict(selectors.get(row.unit or "", {}))
                s.releasing[row.id] = asyncio.create_task(self.release.release(row.id, sid, node_selector))
                continue
            if not row.released:
                s.store.transition(row.id, "Released", f"Ray has {sid} (found after a restart)", released=True)
            s.active[row.id] = sid
            if row.state == st.PREEMPTING:
                s.preempting.add(row.id)
                s.spawn(self.release.stop_in_ray(row.id, sid))
        for row in s.store.unsettled_cancelled():
            s.spawn(self.release.settle_cancelled(row.id, row.submission_id or ""))
        for row in s.store.jobs([st.PENDING]):
            if s.engine.has_job(row.id):
                continue
            w = self.workload(row)
            rejected = s.engine.submit(w)
            if rejected is not None:
                s.store.transition(
                    row.id,
                    "Rejected",
                    f"can never run under the current tree: {rejected.reason.message}",
                    state=REJECTED,
                    reason_code=rejected.reason.code.value,
                    reason=rejected.reason.message,
                    finished_at=s.clock(),
                )

    def interrupt_running(self, why: str) -> int:
        """The Ray cluster is going away with us (our own local head): requeue what ran on it."""
        count = 0
        for row in self.s.store.jobs(st.ACTIVE_STATES):
            requeue_row(self.s.store, row, "Interrupted",
                        f"{why}; requeued (attempt {row.attempt + 1} on the next start)")
            count += 1
        return count

    def workload(self, row: JobRecord) -> Workload:
        """The engine's job for a stored row."""
        try:
            pod_request: Resources | None = self.s.request(row).largest_pod
        except (RayJobRejected, ValueError):
            pod_request = None  # a manifest an older version accepted: its pods are not checked per node
        return Workload(
            uid=row.id,
            queue=row.queue,
            request=row.request_dict(),
            pods=row.pods,
            priority=row.priority,
            priority_class=row.priority_class,
            submitted_at=row.submitted_at,
            expected_duration=_expected_duration(row),
            name=row.name,
            pod_request=pod_request,
        )


def _expected_duration(row: JobRecord) -> float | None:
    try:
        return expected_duration(row.manifest_dict())
    except (RayJobRejected, ValueError):
        return None
