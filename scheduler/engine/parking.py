"""Parking and backoff: a job that does not fit waits in the wake-up index under what blocked it
(``wakeup.WakeIndex``) or on a timer, and only a release that leaves enough room wakes it.
"""

from __future__ import annotations

import heapq
from typing import Final

from rayqueue.queue.queues import LeafQueue
from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.quantity import NO_LIMIT, SLOTS
from rayqueue.scheduler.engine.state import EngineState, Outcome
from rayqueue.scheduler.engine.wakeup import ANY, BlockerKey, WakeOrder

# Library functions the hot path calls, as Final: mypyc keeps them in C statics instead of looking
# each one up in the module's globals dict at every call.
heappop: Final = heapq.heappop
heappush: Final = heapq.heappush

_RETRY: Final = 0
_REINDEX: Final = 1


class Parking:
    """Parked jobs: the wake-up index, backoff timers, and who wakes when room frees."""

    __slots__ = ("s",)

    def __init__(self, s: EngineState) -> None:
        self.s = s

    def park(self, w: Workload, q: LeafQueue, outcome: Outcome, now: float, backoff: bool) -> None:
        q.park(w)
        w.reason = outcome.reason
        w.park_token += 1
        token = w.park_token
        delay = 0.0
        if backoff:
            w.failures += 1
            if w.failures > 1 and self.s.config.backoff_base_s > 0:
                delay = min(self.s.config.backoff_base_s * 2 ** (w.failures - 2), self.s.config.backoff_max_s)
            w.retry_after = now + delay
        else:
            w.failures = 0
            w.retry_after = 0.0
        # Jobs within their guarantee wake first, as they go first across queues.
        within = 0 if self.s.tree.within_guarantee(self.s.tree.leaves[w.queue], w.demand) else 1
        # (within, -priority, submitted_at, name, seq): the queue's order key's fields, already boxed.
        queued = w.order
        order: WakeOrder = (within, queued[0], queued[1], queued[2], queued[3])
        blockers = outcome.blockers
        if not blockers and outcome.retry_at is None:
            blockers = [(ANY, 0)]  # nothing a release would signal: retry after any release
        if outcome.retry_at is not None:
            heappush(self.s.timers, (outcome.retry_at, w.seq, w.uid, token, _RETRY))
        self.s.parked[w.uid] = ([] if outcome.alternatives else blockers, order)
        if delay > 0:
            # Backing off: out of the wake-up index until the delay ends, so releases meanwhile neither
            # wake it nor count it against the room they free.
            heappush(self.s.timers, (w.retry_after, w.seq, w.uid, token, _REINDEX))
            return
        if outcome.alternatives:
            for key, need in blockers:  # any of them freeing may be enough
                self.s.index.add(key, need, order, token, w)
        elif blockers:
            # One live entry, under the first blocker; when that one frees, the others are checked first.
            key, need = blockers[0]
            self.s.index.add(key, need, order, token, w)

    def wake(self, w: Workload) -> None:
        q = self.s.queues.get(w.queue)
        if q is None or w.state != WorkloadState.PENDING or w.uid not in q.parked:
            return
        w.park_token += 1  # every other index entry of this parking is now stale
        self.s.parked.pop(w.uid, None)
        q.unpark(w)
        self.s.offer(q)

    def room(self, key: BlockerKey) -> int | None:
        """What is left at a blocker now (None: no bound there). An integer, as the needs it is held
        against: an int compared with a float (the infinity this used to return) takes CPython's slow path."""
        kind: str = key[0]
        name: str = key[1]
        r: str = key[2]
        if kind == "node":
            node = self.s.tree.nodes.get(name)
            i = SLOTS.index.get(r)
            if node is None or i is None or i >= len(node.used) or node.max_by_slot[i] == NO_LIMIT:
                return None
            return node.max_by_slot[i] - node.used[i]
        if kind == "unit":
            unit = self.s.units.by_name.get(name)
            cap = NO_LIMIT if unit is None else unit.capacity_of(r)
            if unit is None or cap == NO_LIMIT:
                return None
            return cap - unit.used_of(r)
        if kind == "pods":
            unit = self.s.units.by_name.get(name)
            if unit is None or unit.max_pods is None:
                return None
            return unit.max_pods - unit.pods
        if kind == "terminating":  # no room until the unit's last terminating pod is gone
            unit = self.s.units.by_name.get(name)
            return -1 if unit is not None and unit.terminating_pods else None
        return None

    def wake_dirty(self) -> None:
        if self.s.dirty_nodes:
            nodes, self.s.dirty_nodes = self.s.dirty_nodes, set()
            index, dirty = self.s.index, self.s.dirty
            for name in nodes:
                keys = index.node_keys(name)
                if keys is not None:
                    dirty.update(keys)
        dirty, self.s.dirty = self.s.dirty, set()
        for key in dirty:
            self.wake_blocker(key)

    def wake_blocker(self, key: BlockerKey) -> None:
        if key not in self.s.index:
            return
        woken = self.s.index.pop_fitting(key, self.room(key))
        if woken and key != ANY:
            self.s.dirty.add(key)
        for w, token in woken:
            self.wake_or_move(w, token, key)

    def end_backoff(self, w: Workload, token: int) -> None:
        """Back into the wake-up index; the blockers are looked at once this cycle, within their room."""
        parked = self.s.parked.get(w.uid)
        if parked is None or not parked[0]:  # unit alternatives (or nothing recorded): simply try again
            self.wake(w)
            return
        blockers, order = parked
        key, need = blockers[0]
        self.s.index.add(key, need, order, token, w)
        self.s.dirty.add(key)

    def wake_or_move(self, w: Workload, token: int, skip: BlockerKey | None = None) -> None:
        """Wake a parked job if every blocker it recorded has room; else move its one index entry to
        a blocker that still lacks room, without an attempt."""
        parked = self.s.parked.get(w.uid)
        if parked is None:
            self.wake(w)
            return
        blockers, order = parked
        for key, need in blockers:
            if key != skip and key != ANY and (room := self.room(key)) is not None and room < need:
                self.s.index.add(key, need, order, token, w)
                self.s.stats.moved += 1
                return
        self.wake(w)

    def fire_timers(self, now: float) -> None:
        self.s.now = now
        timers = self.s.timers
        while timers and timers[0][0] <= now:
            timer = heappop(timers)
            uid: str = timer[2]
            token: int = timer[3]
            kind: int = timer[4]
            w = self.s.workloads.get(uid)
            if w is None or w.park_token != token:
                continue
            if kind == _RETRY:
                self.wake(w)
            else:  # the backoff is over: woken now if its blockers have room, else back into the index
                self.end_backoff(w, token)

    def wake_all(self) -> None:
        self.s.epoch += 1
        self.s.index.clear()
        self.s.timers.clear()
        self.s.parked.clear()
        for q in self.s.queues.values():
            for uid in list(q.parked):
                w = self.s.workloads[uid]
                w.failures = 0
                w.retry_after = 0.0
                self.wake(w)
            self.s.offer(q)
