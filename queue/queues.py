"""One queue per quota leaf, ordered by priority (high first), then submission time, then name.

A queue keeps every pending job in one sorted list (so a job's position is a O(log n) lookup, never a
scan) and the subset that may be tried now in another: a job that did not fit is *parked* until
something that could make it fit happens (see the wake-up index in the engine).
"""

from __future__ import annotations

from typing import Literal

from sortedcontainers import SortedList

from rayqueue.queue.workload import Workload

QueueingStrategy = Literal["StrictFIFO", "BestEffortFIFO"]
PreemptionPolicy = Literal["Never", "LowerPriority"]

OrderKey = tuple[int, float, str, int]


def order_key(w: Workload) -> OrderKey:
    return (-w.priority, w.submitted_at, w.display_name, w.seq)


def victim_key(w: Workload) -> tuple[int, float, int, str]:
    return (w.priority, -(w.admitted_at or 0.0), -w.seq, w.uid)


class LeafQueue:
    __slots__ = (
        "name", "strategy", "preemption", "pending", "ready", "parked", "admitted", "victim_order", "jobs", "heap_version",
    )

    def __init__(self, name: str, strategy: QueueingStrategy, preemption: PreemptionPolicy) -> None:
        self.name = name
        self.strategy: QueueingStrategy = strategy
        self.preemption: PreemptionPolicy = preemption
        self.pending: SortedList = SortedList()  # every pending job's key: positions
        self.ready: SortedList = SortedList()  # keys of pending jobs that may be tried now
        self.parked: set[str] = set()
        self.admitted: dict[str, Workload] = {}  # admitted or preempting, by uid
        # Admitted jobs in the order preemption takes them: lowest priority, then newest.
        self.victim_order: SortedList = SortedList()
        self.jobs: dict[OrderKey, Workload] = {}
        self.heap_version = 0

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, w: Workload) -> None:
        key = w.order = order_key(w)
        self.jobs[key] = w
        self.pending.add(key)
        self.ready.add(key)

    def remove(self, w: Workload) -> None:
        key = w.order
        del self.jobs[key]
        self.pending.remove(key)
        if w.uid in self.parked:
            self.parked.discard(w.uid)
        else:
            self.ready.remove(key)

    def park(self, w: Workload) -> None:
        self.ready.remove(w.order)
        self.parked.add(w.uid)

    def unpark(self, w: Workload) -> bool:
        if w.uid not in self.parked:
            return False
        self.parked.discard(w.uid)
        self.ready.add(w.order)
        return True

    def start(self, w: Workload) -> None:
        self.admitted[w.uid] = w
        self.victim_order.add(victim_key(w))

    def stop(self, w: Workload) -> None:
        if self.admitted.pop(w.uid, None) is not None:
            self.victim_order.remove(victim_key(w))

    def victims(self) -> list[Workload]:
        """Admitted (not already preempting) jobs, lowest priority and newest first."""
        admitted = self.admitted
        return [v for key in self.victim_order if (v := admitted[key[-1]]).state == "Admitted"]

    def candidate(self) -> Workload | None:
        """The job to try next: StrictFIFO only ever tries its head; BestEffortFIFO the first ready job."""
        if not self.ready:
            return None
        first_ready = self.ready[0]
        if self.strategy == "StrictFIFO" and self.pending[0] != first_ready:
            return None  # the head is parked and blocks everything behind it
        return self.jobs[first_ready]

    def head(self) -> Workload | None:
        return self.jobs[self.pending[0]] if self.pending else None

    def position(self, w: Workload) -> int:
        return int(self.pending.index(w.order))
