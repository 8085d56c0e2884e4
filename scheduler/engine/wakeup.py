"""Where parked jobs wait: one index per blocker (a quota node's max, a unit's capacity or pod cap).

Each blocker keeps its jobs in buckets by how much they need of the blocking resource, each bucket in
queue order. When room frees up, the best-ordered jobs whose needs add up to at most that room wake:
a release of 8 GPUs wakes the jobs that 8 GPUs can serve, highest priority first, never every job
that waits behind the same full node. That keeps a decision's cost independent of the backlog.
"""

from __future__ import annotations

import heapq
from bisect import insort

from rayqueue.queue.workload import Workload, WorkloadState

# ("node", name, resource) | ("unit", name, resource) | ("pods", name, "") | ("terminating", unit, "") | ("any", "", "")
BlockerKey = tuple[str, str, str]
ANY: BlockerKey = ("any", "", "")

# How parked jobs wake: within guarantee first, then priority, submission time, name, arrival.
WakeOrder = tuple[int, int, float, str, int]
# The wake order, the park token, the job: one flat tuple, so a heap comparison is one tuple comparison.
# Orders are unique (arrival is), so jobs are never compared.
Entry = tuple[int, int, float, str, int, int, Workload]


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
        self._by_node: dict[str, set[BlockerKey]] = {}  # quota node name -> its blockers with jobs

    def add(self, key: BlockerKey, need: int, order: WakeOrder, token: int, w: Workload) -> None:
        blocker = self._blockers.get(key)
        if blocker is None:
            blocker = self._blockers[key] = _Blocker()
            if key[0] == "node":
                keys = self._by_node.get(key[1])
                if keys is None:
                    keys = self._by_node[key[1]] = set()
                keys.add(key)
        bucket = blocker.buckets.get(need)
        if bucket is None:
            bucket = blocker.buckets[need] = []
            insort(blocker.needs, need)
        heapq.heappush(bucket, (order[0], order[1], order[2], order[3], order[4], token, w))

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
                while bucket and (bucket[0][6].park_token != bucket[0][5] or bucket[0][6].state != pending):
                    heapq.heappop(bucket)
                if not bucket:
                    del buckets[need]
                    del needs[i]
                    continue
                head = bucket[0]
                if best is None or head < best:
                    best, best_need = head, need
                i += 1
            if best is None:
                break
            heapq.heappop(buckets[best_need])
            woken.append((best[6], best[5]))
            budget -= best_need
        if not needs:
            del self._blockers[key]
            if key[0] == "node":
                keys = self._by_node[key[1]]
                keys.discard(key)
                if not keys:
                    del self._by_node[key[1]]
        return woken

    def __contains__(self, key: BlockerKey) -> bool:
        return key in self._blockers

    def node_keys(self, name: str) -> set[BlockerKey] | None:
        """The blockers of quota node ``name`` that hold jobs (None when there are none)."""
        return self._by_node.get(name)

    def clear(self) -> None:
        self._blockers.clear()
        self._by_node.clear()
