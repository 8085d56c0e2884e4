"""A job's life from its events, as data the job page draws: phases, marks and resource-seconds.

Pure: the events come from the SQL log (oldest first), the clock from the caller. A phase is a span of
time the job spent one way (waiting under one reason code, holding quota on a unit, being stopped for a
preemption); a mark is an instant worth naming (released to Ray, running, preempted for whom, requeued,
finished).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Event kinds after which a job holds no quota and waits again.
REQUEUE_KINDS = frozenset({"Requeued", "Lost", "Interrupted"})
#: Event kinds that end a job for good.
FINAL_KINDS = frozenset({"Succeeded", "Failed", "Stopped", "Cancelled", "Rejected", "Deleted"})  # Deleted: the operator's
MARK_KINDS = frozenset({"Released", "Running", "Preempting", "Reattached"}) | REQUEUE_KINDS | FINAL_KINDS


@dataclass
class Phase:
    kind: str  # "waiting", "admitted", "preempting"
    start: float
    end: float
    label: str  # the reason code while waiting, the unit while admitted
    detail: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class Mark:
    at: float
    kind: str
    text: str


@dataclass
class Timeline:
    phases: list[Phase] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    #: resource -> resource-seconds (milli-units x seconds) held while admitted, all attempts together
    charged: dict[str, float] = field(default_factory=dict)
    #: the borrowed part of ``charged`` (held above the leaf's ``min`` at admission)
    borrowed: dict[str, float] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0

    def waited(self) -> list[tuple[str, float]]:
        """Seconds spent waiting under each reason code, in the order first met."""
        out: dict[str, float] = {}
        for p in self.phases:
            if p.kind == "waiting":
                out[p.label] = out.get(p.label, 0.0) + p.seconds
        return list(out.items())


def _resources(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def build(events: Iterable[Mapping[str, Any]], request: Mapping[str, int], now: float) -> Timeline:
    """The timeline of one job. ``now`` closes the phase of a job still alive."""
    t = Timeline()
    current: Phase | None = None
    borrowed: dict[str, int] = {}
    held_since: float | None = None
    first = True

    def close(at: float) -> None:
        nonlocal current, held_since
        if current is not None:
            current.end = max(current.start, at)
            t.phases.append(current)
            current = None
        if held_since is not None:
            seconds = max(0.0, at - held_since)
            for r, v in request.items():
                t.charged[r] = t.charged.get(r, 0.0) + v * seconds
            for r, v in borrowed.items():
                t.borrowed[r] = t.borrowed.get(r, 0.0) + v * seconds
            held_since = None

    ended = False
    for e in events:
        at, kind = float(e["at"]), str(e["kind"])
        message = str(e.get("message") or "")
        if first:
            t.start = at
            first = False
        t.end = max(t.end, at)
        if kind == "Submitted":
            current = Phase("waiting", at, at, "Queued", message)
        elif kind == "Waiting":
            code = str(e.get("reason_code") or "Waiting")
            if current is not None and current.kind == "waiting":
                if current.label == code:
                    continue  # the same reason again (e.g. after a restart): one phase
                close(at)
            current = Phase("waiting", at, at, code, message)
        elif kind == "Admitted":
            close(at)
            unit = str(e.get("unit") or "")
            borrowed = _resources(e.get("borrowed"))
            current = Phase("admitted", at, at, unit, message)
            held_since = at
            t.marks.append(Mark(at, kind, f"admitted on unit {unit}" if unit else "admitted"))
        elif kind == "Preempting":
            # still holding its quota until Ray confirms the stop
            if current is not None:
                current.end = at
                t.phases.append(current)
            by = e.get("by_job")
            current = Phase("preempting", at, at, str(e.get("reason_code") or "Preempted"), message)
            t.marks.append(Mark(at, kind, f"preempted for {by}: {message}" if by else f"preempted: {message}"))
        elif kind in REQUEUE_KINDS:
            close(at)
            current = Phase("waiting", at, at, "Requeued", message)
            t.marks.append(Mark(at, kind, message or kind.lower()))
        elif kind in FINAL_KINDS:
            close(at)
            ended = True
            t.marks.append(Mark(at, kind, message or kind))
        elif kind in MARK_KINDS:
            t.marks.append(Mark(at, kind, message or kind))
    if not ended:
        close(max(now, t.end))
        t.end = max(now, t.end)
    return t
