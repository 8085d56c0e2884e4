"""Read-only views of the engine for front ends: what they may read, as plain data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.scheduler.engine.state import EngineState


@dataclass(frozen=True, slots=True)
class Explanation:
    uid: str
    state: WorkloadState
    queue: str
    position: int | None
    pending_in_queue: int
    reason: Reason | None
    unit: str | None = None
    admitted_at: float | None = None
    expected_start: float | None = None


def explain(s: EngineState, uid: str) -> Explanation:
    w = s.get(uid)
    q = s.queues[w.queue]
    position = None
    reason = w.reason
    if w.state == WorkloadState.PENDING:
        position = q.position(w)
        head = q.head()
        if q.strategy == "StrictFIFO" and head is not None and head is not w:
            reason = Reason(
                ReasonCode.BLOCKED_BY_HEAD,
                f"queue {q.name} is StrictFIFO and its head {head.display_name} waits "
                f"({head.reason or 'not yet tried'})",
            )
    return Explanation(
        uid=w.uid,
        state=w.state,
        queue=w.queue,
        position=position,
        pending_in_queue=len(q),
        reason=reason,
        unit=w.unit,
        admitted_at=w.admitted_at,
    )


def pending(s: EngineState, queue: str | None = None) -> Iterable[Workload]:
    """Pending jobs in queue order (one queue, or every queue one after another)."""
    names = [queue] if queue else list(s.queues)
    for name in names:
        q = s.queues[name]
        for key in q.pending:
            yield q.jobs[key]


def admitted(s: EngineState) -> Iterable[Workload]:
    for q in s.queues.values():
        yield from q.admitted.values()
