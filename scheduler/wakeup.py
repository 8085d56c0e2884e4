"""Where parked jobs wait: one index per blocker (a quota node's max, a unit's capacity or pod cap).

Each blocker keeps its jobs in buckets by how much they need of the blocking resource, each bucket in
queue order. When room frees up, the best-ordered jobs whose needs add up to at most that room wake:
a release of 8 GPUs wakes the jobs that 8 GPUs can serve, highest priority first, never every job
that waits behind the same full node. That keeps a decision's cost independent of the backlog.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections.abc import Callable
from typing import Any

# ("node", name, resource) | ("unit", name, resource) | ("pods", name, "") | ("any", "", "")
BlockerKey = tuple[str, str, str]
ANY: BlockerKey = ("any", "", "")

OrderTuple = tuple[Any, ...]
Entry = tuple[OrderTuple, int, str]  # (queue order, park token, uid)


class _Blocker:
    """The distinct needs in ascending order (few: job sizes repeat) and, per need, a heap of entries."""

    __slots__ = ("needs", "buckets")

    def __init__(self) -> None:
        self.needs: list[int] = []
        self.buckets: dict[int, list[Entry]] = {}


class WakeIndex:
    def __init__(self, is_live: Callable[[str, int], bool]) -> None:
        self._blockers: dict[BlockerKey, _Blocker] = {}
        self._is_live = is_live

    def add(self, key: BlockerKey, need: int, order: OrderTuple, token: int, uid: str) -> None:
        blocker = self._blockers.get(key)
        if blocker is None:
            blocker = self._blockers[key] = _Blocker()
        bucket = blocker.buckets.get(need)
        if bucket is None:
            bucket = blocker.buckets[need] = []
            insort(blocker.needs, need)
        heapq.heappush(bucket, (order, token, uid))

    def pop_fitting(self, key: BlockerKey, room: float) -> list[tuple[str, int]]:
        """Remove and return (uid, token) of the best-ordered live jobs whose needs fit in ``room``."""
        blocker = self._blockers.get(key)
        if blocker is None or room < 0:
            return []
        woken: list[tuple[str, int]] = []
        budget = room
        needs, buckets, is_live = blocker.needs, blocker.buckets, self._is_live
        while True:
            best: Entry | None = None
            best_need = 0
            i = 0
            while i < len(needs) and needs[i] <= budget:
                need = needs[i]
                bucket = buckets[need]
                while bucket and not is_live(bucket[0][2], bucket[0][1]):
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
