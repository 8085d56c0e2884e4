"""One queue per quota leaf, ordered by priority (high first), then submission time, then name.

A queue keeps every pending job in one sorted structure (so a job's position is a bisect and a sum over
its chunks, never a scan of the jobs) and the subset that may be tried now in a heap: a job that did not
fit is *parked* until something that could make it fit happens (see the wake-up index in the engine).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from typing import Any, Final, Literal

from rayqueue.queue.workload import Workload

# Library functions the hot path calls, as Final: mypyc keeps them in C statics instead of looking
# each one up in the module's globals dict at every call.
bisect_left: Final = bisect.bisect_left
insort: Final = bisect.insort
heappop: Final = heapq.heappop
heappush: Final = heapq.heappush

QueueingStrategy = Literal["StrictFIFO", "BestEffortFIFO"]
PreemptionPolicy = Literal["Never", "LowerPriority"]

# (-priority, submitted_at, name, seq, job). Typed as a plain tuple: mypyc would unbox a fixed-length
# tuple type into a C struct and box it again on every use, and the ready heap relies on the key's
# identity. The job rides last, never compared (seq is unique to it), so a key found in a heap or the
# sorted keys is its job without a lookup.
OrderKey = tuple[Any, ...]


def order_key(w: Workload) -> OrderKey:
    return (-w.priority, w.submitted_at, w.display_name, w.seq, w)


def job_of(key: OrderKey) -> Workload:
    """The job an order key was made for."""
    w: Workload = key[4]
    return w


VictimKey = tuple[int, float, int, str]

# Keys per chunk of ``SortedKeys`` before it splits in two.
CHUNK: Final = 512


class SortedKeys:
    """Distinct keys in ascending order, as sorted chunks of at most ``2 * CHUNK`` keys.

    Adding or removing a key bisects the chunks' last keys, then one chunk, and moves at most that
    chunk's tail: O(log n) comparisons however long a queue grows. The position of a key sums the
    lengths of the chunks before it (n / CHUNK of them), asked only by views. It replaces the
    sortedcontainers ``SortedList`` this queue used: the same layout, but compiled with the engine
    (that one is interpreted Python, and its ``remove`` alone was about 7% of a drain's time).
    """

    __slots__ = ("chunks", "lasts", "size")

    def __init__(self) -> None:
        self.chunks: list[list[OrderKey]] = []
        self.lasts: list[OrderKey] = []  # each chunk's last (largest) key
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[OrderKey]:
        for chunk in self.chunks:
            yield from chunk

    def first(self) -> OrderKey:
        return self.chunks[0][0]

    def add(self, key: OrderKey) -> None:
        chunks, lasts = self.chunks, self.lasts
        self.size += 1
        if not chunks:
            chunks.append([key])
            lasts.append(key)
            return
        c = bisect_left(lasts, key)
        if c == len(lasts):  # after every key: the end of the last chunk
            c -= 1
            chunk = chunks[c]
            chunk.append(key)
            lasts[c] = key
        else:
            chunk = chunks[c]
            insort(chunk, key)
        if len(chunk) > 2 * CHUNK:
            tail = chunk[CHUNK:]
            del chunk[CHUNK:]
            chunks.insert(c + 1, tail)
            lasts.insert(c, chunk[-1])

    def remove(self, key: OrderKey) -> None:
        """Remove ``key``; ValueError when it is not here."""
        chunks, lasts = self.chunks, self.lasts
        c = bisect_left(lasts, key)
        if c == len(lasts):
            raise ValueError(f"{key!r} is not in the queue")
        chunk = chunks[c]
        i = bisect_left(chunk, key)
        if chunk[i] != key:
            raise ValueError(f"{key!r} is not in the queue")
        del chunk[i]
        self.size -= 1
        if not chunk:
            del chunks[c]
            del lasts[c]
        elif i == len(chunk):
            lasts[c] = chunk[-1]

    def index(self, key: OrderKey) -> int:
        """How many keys come before ``key`` (which must be here)."""
        chunks = self.chunks
        c = bisect_left(self.lasts, key)
        before = 0
        for j in range(c):
            before += len(chunks[j])
        return before + bisect_left(chunks[c], key)


def victim_key(w: Workload) -> VictimKey:
    return (w.priority, -(w.admitted_at or 0.0), -w.seq, w.uid)


class LeafQueue:
    __slots__ = (
        "name", "strategy", "preemption", "pending", "ready", "parked", "admitted", "victim_order", "heap_version",
        "heap_key",
    )

    def __init__(self, name: str, strategy: QueueingStrategy, preemption: PreemptionPolicy) -> None:
        self.name = name
        self.strategy: QueueingStrategy = strategy
        self.preemption: PreemptionPolicy = preemption
        self.pending = SortedKeys()  # every pending job's key: positions
        # Pending jobs that may be tried now, as a heap of their keys: only the first is ever needed.
        # An entry whose job left (its ``order`` is no longer that key object) or parked is dropped when
        # it reaches the top.
        self.ready: list[OrderKey] = []
        self.parked: set[str] = set()
        self.admitted: dict[str, Workload] = {}  # admitted or preempting, by uid
        # Admitted jobs in the order preemption takes them: lowest priority, then newest. A plain sorted
        # list: a leaf runs few jobs next to the backlog it queues, and bisect + memmove beat a SortedList there.
        self.victim_order: list[VictimKey] = []
        self.heap_version = 0  # the engine's cross-queue heap: the version and key of the live entry
        self.heap_key: Any = None  # the live entry itself (the engine's ``state.Turn``), or None

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, w: Workload) -> None:
        key = w.order = order_key(w)
        self.pending.add(key)
        heappush(self.ready, key)

    def remove(self, w: Workload) -> None:
        self.pending.remove(w.order)
        self.parked.discard(w.uid)
        w.order = ()  # its heap entries are stale from now on (and the key no longer holds the job)

    def park(self, w: Workload) -> None:
        self.parked.add(w.uid)

    def unpark(self, w: Workload) -> bool:
        if w.uid not in self.parked:
            return False
        self.parked.discard(w.uid)
        heappush(self.ready, w.order)
        return True

    def start(self, w: Workload) -> None:
        self.admitted[w.uid] = w
        insort(self.victim_order, victim_key(w))

    def stop(self, w: Workload) -> None:
        if self.admitted.pop(w.uid, None) is not None:
            order = self.victim_order
            del order[bisect_left(order, victim_key(w))]

    def victims(self) -> list[Workload]:
        """Admitted (not already preempting) jobs, lowest priority and newest first."""
        admitted = self.admitted
        return [v for key in self.victim_order if (v := admitted[key[-1]]).state == "Admitted"]

    def candidate(self) -> Workload | None:
        """The job to try next: StrictFIFO only ever tries its head; BestEffortFIFO the first ready job."""
        ready, parked = self.ready, self.parked
        while ready:
            key = ready[0]
            w: Workload = key[4]
            if w.order is key and w.uid not in parked:
                break
            heappop(ready)
        else:
            return None
        if self.strategy == "StrictFIFO" and self.pending.first() != w.order:
            return None  # the head is parked and blocks everything behind it
        return w

    def head(self) -> Workload | None:
        return job_of(self.pending.first()) if len(self.pending) else None

    def position(self, w: Workload) -> int:
        return self.pending.index(w.order)
