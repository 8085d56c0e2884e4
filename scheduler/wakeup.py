"""Where parked jobs wait: one index per blocker (a quota node's max, a unit's capacity or pod cap).

Each blocker keeps its jobs in buckets by how much they need of the blocking resource, each bucket in
queue order. When room frees up, the best-ordered jobs whose needs add up to at most that room wake:
a release of 8 GPUs wakes the jobs that 8 GPUs can serve, highest priority first, never every job
that waits behind the same full node. That keeps a decision's cost independent of the backlog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList

# ("node", name, resource) | ("unit", name, resource) | ("pods", name, "") | ("any", "", "")
BlockerKey = tuple[str, str, str]
ANY: BlockerKey = ("any", "", "")

OrderTuple = tuple[Any, ...]
Entry = tuple[OrderTuple, int, str]  # (queue order, park token, uid)


class _Blocker:
    __slots__ = ("needs", "buckets")

    def __init__(self) -> None:
        self.needs: SortedList = SortedList()
        self.buckets: dict[int, SortedList] = {}


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
            bucket = blocker.buckets[need] = SortedList()
            blocker.needs.add(need)
        bucket.add((order, token, uid))

    def pop_fitting(self, key: BlockerKey, room: float) -> list[tuple[str, int]]:
        """Remove and return (uid, token) of the best-ordered live jobs whose needs fit in ``room``."""
        blocker = self._blockers.get(key)
        if blocker is None or room < 0:
            return []
        woken: list[tuple[str, int]] = []
        budget = room
        while True:
            best: Entry | None = None
            best_need = 0
            for need in list(blocker.needs.irange(maximum=budget)):
                bucket = blocker.buckets[need]
                while bucket and not self._is_live(bucket[0][2], bucket[0][1]):
                    bucket.pop(0)
                if not bucket:
                    del blocker.buckets[need]
                    blocker.needs.remove(need)
                    continue
                head = bucket[0]
                if best is None or head[0] < best[0]:
                    best, best_need = head, need
            if best is None:
                break
            blocker.buckets[best_need].pop(0)
            woken.append((best[2], best[1]))
            budget -= best_need
        if not blocker.needs:
            del self._blockers[key]
        return woken

    def __contains__(self, key: BlockerKey) -> bool:
        return key in self._blockers

    def keys(self) -> list[BlockerKey]:
        return list(self._blockers)

    def clear(self) -> None:
        self._blockers.clear()
