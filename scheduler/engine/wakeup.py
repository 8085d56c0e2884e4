"""Where parked jobs wait: one index per blocker (a quota node's max, a unit's capacity or pod cap).

Each blocker keeps its jobs in buckets by how much they need of the blocking resource, each bucket in
queue order. When room frees up, the best-ordered jobs whose needs add up to at most that room wake:
a release of 8 GPUs wakes the jobs that 8 GPUs can serve, highest priority first, never every job
that waits behind the same full node. That keeps a decision's cost independent of the backlog.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any, Final

from rayqueue.queue.workload import Workload, WorkloadState

# Library functions the hot path calls, as Final: mypyc keeps them in C statics instead of looking
# each one up in the module's globals dict at every call.
bisect_left: Final = bisect.bisect_left
heappop: Final = heapq.heappop
heappush: Final = heapq.heappush

# The tuples below are typed as plain tuples (``tuple[Any, ...]``), not by their fields: mypyc unboxes a
# fixed-length tuple type into a C struct on every read from a list, set or dict (a reference taken on
# each field) and boxes it into a new tuple on every store or hash. These keys live in sets and dicts,
# and are read far more often than their fields are.

# ("node", name, resource) | ("unit", name, resource) | ("pods", name, "") | ("terminating", unit, "") | ("any", "", "")
BlockerKey = tuple[Any, ...]
ANY: Final[BlockerKey] = ("any", "", "")

# How parked jobs wake: (within guarantee first, -priority, submission time, name, arrival).
WakeOrder = tuple[Any, ...]


class Entry:
    """A parked job in a blocker's bucket: its wake order's fields, its park token and the job.

    A class rather than a tuple because the buckets are heaps: compiled, ``__lt__`` compares the fields
    as C values, where a tuple comparison asked each pair of items for equality, then for order,
    each through Python's generic comparison (about a fifth of a drain's instructions went to
    comparing heap entries). Orders are unique (arrival is), so jobs are never compared."""

    __slots__ = ("outside", "negprio", "submitted", "name", "seq", "token", "job")

    def __init__(self, order: WakeOrder, token: int, job: Workload) -> None:
        self.outside: int = order[0]
        self.negprio: int = order[1]
        self.submitted: float = order[2]
        self.name: str = order[3]
        self.seq: int = order[4]
        self.token = token
        self.job = job

    def __lt__(self, other: Entry) -> bool:
        """The wake order: (within guarantee first, -priority, submission time, name, arrival)."""
        if self.outside != other.outside:
            return self.outside < other.outside
        if self.negprio != other.negprio:
            return self.negprio < other.negprio
        if self.submitted != other.submitted:
            return self.submitted < other.submitted
        if self.name != other.name:
            return self.name < other.name
        return self.seq < other.seq


class _Blocker:
    """The distinct needs in ascending order (few: job sizes repeat) and, at the same index, each need's
    heap of entries (lists side by side rather than a dict keyed by need: no int to box per lookup)."""

    __slots__ = ("needs", "buckets")

    def __init__(self) -> None:
        self.needs: list[int] = []
        self.buckets: list[list[Entry]] = []


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
                node: str = key[1]
                keys = self._by_node.get(node)
                if keys is None:
                    keys = self._by_node[node] = set()
                keys.add(key)
        needs = blocker.needs
        i = bisect_left(needs, need)
        if i == len(needs) or needs[i] != need:
            needs.insert(i, need)
            blocker.buckets.insert(i, [])
        heappush(blocker.buckets[i], Entry(order, token, w))

    def pop_fitting(self, key: BlockerKey, room: int | None) -> list[tuple[Workload, int]]:
        """Remove and return (job, token) of the best-ordered live jobs whose needs fit in ``room``
        (None: no bound, every live job)."""
        blocker = self._blockers.get(key)
        if blocker is None or (room is not None and room < 0):
            return []
        woken: list[tuple[Workload, int]] = []
        unbounded = room is None
        budget = 0 if room is None else room
        needs, buckets = blocker.needs, blocker.buckets
        pending = WorkloadState.PENDING
        while True:
            best: Entry | None = None
            best_i = -1
            i = 0
            while i < len(needs) and (unbounded or needs[i] <= budget):
                bucket = buckets[i]
                while bucket:
                    head = bucket[0]
                    job = head.job
                    if job.park_token == head.token and job.state == pending:
                        break
                    heappop(bucket)
                if not bucket:
                    del buckets[i]
                    del needs[i]
                    continue
                head = bucket[0]
                if best is None or head < best:
                    best, best_i = head, i
                i += 1
            if best is None:
                break
            heappop(buckets[best_i])
            woken.append((best.job, best.token))
            budget -= needs[best_i]
        if not needs:
            del self._blockers[key]
            if key[0] == "node":
                node: str = key[1]
                keys = self._by_node[node]
                keys.discard(key)
                if not keys:
                    del self._by_node[node]
        return woken

    def __contains__(self, key: BlockerKey) -> bool:
        return key in self._blockers

    def node_keys(self, name: str) -> set[BlockerKey] | None:
        """The blockers of quota node ``name`` that hold jobs (None when there are none)."""
        return self._by_node.get(name)

    def clear(self) -> None:
        self._blockers.clear()
        self._by_node.clear()
