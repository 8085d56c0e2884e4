"""Where parked jobs wait: one index per blocker (a quota node's max, a unit's capacity or pod cap).

Each blocker keeps its jobs in buckets by how much they need of the blocking resource, each bucket in
queue order. When room frees up, the best-ordered jobs whose needs add up to at most that room wake:
a release of 8 GPUs wakes the jobs that 8 GPUs can serve, highest priority first, never every job
that waits behind the same full node. That keeps a decision's cost independent of the backlog.
"""

from __future__ import annotations

import heapq
from bisect import insort
from typing import Any

from rayqueue.queue.workload import Workload, WorkloadState

# ("node", name, resource) | ("unit", name, resource) | ("pods", name, "") | ("any", "", "")
BlockerKey = tuple[str, str, str]
ANY: BlockerKey = ("any", "", "")

OrderTuple = tuple[Any, ...]
Entry = tuple[OrderTuple, int, Workload]  # (queue order, park token, job): orders are unique, jobs never compared


class _Blocker:
    """The distinct needs in ascending order (few: job sizes repeat) and, per need, a heap of entries."""

    __slots__ = ("needs", "buckets")

    def __init__(self) -> None:
        self.needs: list[int] = []
        self.buckets: dict[int, list[Entry]] = {}


class WakeIndex:
    """An entry is live while its job is pending and parked under the same token (parking again, waking
    or leaving bumps the token): stale entries are dropped when they reach the front."""

    def __init__(self) -> None:
        self._blockers: dict[BlockerKey, _Blocker] = {}

    def add(self, key: BlockerKey, need: int, order: OrderTuple, token: int, w: Workload) -> None:
        blocker = self._blockers.get(key)
        if blocker is None:
            blocker = self._blockers[key] = _Blocker()
        bucket = blocker.buckets.get(need)
        if bucket is None:
            bucket = blocker.buckets[need] = []
            insort(blocker.needs, need)
        heapq.heappush(bucket, (order, token, w))

    def pop_fitting(self, key: BlockerKey, room: float) -> list[tuple[Workload, int]]:
        """Remove and return (job, token) of the best-ordered live jobs whose needs fit in ``room``."""
        blocker = self._blockers.get(key)
        if blocker is None or room < 0:
            return []
        woken: list[tuple[Workload, int]] = []
        budget = room
        needs, buckets = blocker.needs, blocker.buckets
        pending = WorkloadState.PENDING
        while True:
            best: Entry | None = None
            best_need = 0
            i = 0
            while i < len(needs) and needs[i] <= budget:
                need = needs[i]
                bucket = buckets[need]
                while bucket and (bucket[0][2].park_token != bucket[0][1] or bucket[0][2].state != pending):
                    heapq.heappop(bucket)
                if not bucket:
                    del buckets[need]
                    del needs[i]
                    continue
                head = bucket[0]
                if best is None or head[0] < best[0]:
                    best, best_need = head, need
                i += 1
            if best is None:
                break
            heapq.heappop(buckets[best_need])
            woken.append((best[2], best[1]))
            budget -= best_need
        if not needs:
            del self._blockers[key]
        return woken

    def __contains__(self, key: BlockerKey) -> bool:
        return key in self._blockers

    def keys(self) -> list[BlockerKey]:
        return list(self._blockers)

    def clear(self) -> None:
        self._blockers.clear()
