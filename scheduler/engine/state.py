"""The engine's shared state, its settings and counters, and the bookkeeping every part needs
(the cross-queue heap, one queue per leaf).
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from rayqueue.queue.queues import LeafQueue, PreemptionPolicy, QueueingStrategy
from rayqueue.queue.workload import Reason, Workload
from rayqueue.quota.quantity import MAX_JOBS, MILLI, Resources
from rayqueue.quota.tree import PREEMPTION_ATTRIBUTE, QUEUEING_ATTRIBUTE, QuotaNode, QuotaTree
from rayqueue.scheduler.engine.decisions import Placement
from rayqueue.scheduler.engine.units import Units
from rayqueue.scheduler.engine.wakeup import BlockerKey, WakeIndex, WakeOrder

# Library functions the hot path calls, as Final: mypyc keeps them in C statics instead of looking
# each one up in the module's globals dict at every call.
heappush: Final = heapq.heappush


@dataclass(slots=True)
class EngineConfig:
    default_queueing: QueueingStrategy = "BestEffortFIFO"
    default_preemption: PreemptionPolicy = "LowerPriority"
    reclaim: bool = True
    # A job that is woken and still does not fit waits base * 2**(k-1) (capped) before it is tried
    # again; the first wake after it parks is never delayed.
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass(slots=True)
class EngineStats:
    """Counters a front end exports as metrics; ``attempts`` counts every admission decision."""

    attempts: int = 0
    admitted: int = 0
    parked: int = 0
    rejected: int = 0
    preempted: int = 0
    cycles: int = 0
    moved: int = 0  # parked jobs moved to another full blocker instead of being tried
    withdrawn: int = 0  # admissions taken back in the cycle that made them (see Engine._withdraw)


class Turn:
    """A queue's entry in the heap of queues: its candidate's order across queues, and which queue
    (an entry is live while its version is the queue's). A class rather than a tuple for the reason
    ``wakeup.Entry`` is one: compiled, ``__lt__`` compares the fields as C values."""

    __slots__ = ("outside", "negprio", "share", "submitted", "seq", "version", "queue")

    def __init__(self, outside: int, negprio: int, share: float, submitted: float, seq: int, version: int,
                 queue: str) -> None:
        self.outside = outside
        self.negprio = negprio
        self.share = share
        self.submitted = submitted
        self.seq = seq
        self.version = version
        self.queue = queue

    def __lt__(self, other: Turn) -> bool:
        """(within guarantee first, -priority, fair share, submission time, arrival)."""
        if self.outside != other.outside:
            return self.outside < other.outside
        if self.negprio != other.negprio:
            return self.negprio < other.negprio
        if self.share != other.share:
            return self.share < other.share
        if self.submitted != other.submitted:
            return self.submitted < other.submitted
        return self.seq < other.seq

    def same_order(self, outside: int, negprio: int, share: float, submitted: float, seq: int) -> bool:
        return (self.outside == outside and self.negprio == negprio and self.share == share
                and self.submitted == submitted and self.seq == seq)


class Outcome:
    """Why one attempt did not admit: the reason and what to wait on."""

    __slots__ = ("reason", "blockers", "retry_at", "alternatives")

    def __init__(self, reason: Reason, blockers: list[tuple[BlockerKey, int]], retry_at: float | None = None,
                 alternatives: bool = False) -> None:
        self.reason = reason
        self.blockers = blockers
        self.retry_at = retry_at
        # Quota blockers must all have room; unit blockers are alternatives (any unit with room will do).
        self.alternatives = alternatives


class EngineState:
    """What the engine knows, shared by its parts (``cycle``, ``placement``, ``preemption``, ``parking``, ...):
    each part holds this one object and the parts it calls, never a copy of a field."""

    def __init__(
        self,
        tree: QuotaTree,
        units: Units | None = None,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tree = tree
        self.units = units if units is not None else Units.single(None)
        self.config = config or EngineConfig()
        self.clock = clock
        self.workloads: dict[str, Workload] = {}
        self.queues: dict[str, LeafQueue] = {}
        self.seq = itertools.count(1)
        # Each queue that has a job to try, by that job's order across queues (see ``Turn``).
        self.heap: list[Turn] = []
        self.placements: dict[str, Placement] = {}  # per unit, shared by every job admitted there
        self.index = WakeIndex()
        self.dirty: set[BlockerKey] = set()  # blockers to look at in the next wake-up round
        self.dirty_nodes: set[str] = set()  # quota nodes released on since: each of their blockers
        # uid -> (its blockers, its wake order) while parked
        self.parked: dict[str, tuple[list[tuple[BlockerKey, int]], WakeOrder]] = {}
        # (when, seq, uid, park token, kind): kind RETRY tries the job then; REINDEX ends a backoff.
        self.timers: list[tuple[Any, ...]] = []
        self.now = 0.0  # the time of the latest cycle: backoff is measured against it
        self.epoch = 0  # bumped when the tree or the units change
        self.stats = EngineStats()
        self.borrowing: set[str] = set()  # leaves using more than their min: where reclaim looks
        self.leaf_borrowed: dict[str, Resources] = {}
        self.borrow_admissions = 0  # admissions into borrowing leaves: new work a reclaim could take
        # per preemptor waiting for reclaimed victims: the nodes whose room it counts on. A job that would
        # borrow below one of them is not admitted meanwhile, or it takes the room the reclaim frees
        # (and is reclaimed in turn while another borrower takes it: the guarantee never comes back).
        self.reclaim_holds: dict[str, tuple[str, ...]] = {}
        # The same holds by node: node name -> {holder uid: its place among the holds}, so that asking
        # whether a job's path is held looks at its few nodes, not at every hold. A hold is dropped
        # before its job may hold again, so each node's holders are in the order of their places.
        self.holders: dict[str, dict[str, int]] = {}
        self.hold_places = 0
        self.victim_leaves: set[str] = set()
        self.victim_leaf_count: dict[str, int] = {}
        # per node: what its borrowing leaves use in all, by resource slot (guaranteed resources only)
        self.reclaimable: dict[str, list[int]] = {}
        # Leaves whose borrowing changed since ``_reclaimable`` last took it in, and what it took in: the
        # sums are brought up to date only when a reclaim asks (admissions and releases far outnumber it).
        self.borrow_changed: set[str] = set()
        self.borrow_counted: dict[str, list[int]] = {}
        # uid -> how many of its admissions this cycle were withdrawn: schedule() drops those Admits.
        self.withdrawn: dict[str, int] = {}
        # preemptor uid -> victims restored as being preempted for it before it was submitted again
        self.restored_waits: dict[str, set[str]] = {}
        # Service workloads by uid (``services.Service``; see ``serving.py``): charged outside the queues.
        self.services: dict[str, Any] = {}
        self.leaf_order: list[str] = []
        self.leaf_span: dict[str, tuple[int, int]] = {}
        self.sync_queues()

    def offer(self, q: LeafQueue) -> None:
        """(Re)place the queue in the cross-queue heap under its current candidate's key; a queue whose
        live entry already has that key stays as it is (most releases do not change it)."""
        w = q.candidate()
        if w is None:
            q.heap_version += 1
            q.heap_key = None
            return
        leaf = self.tree.leaves[q.name]
        outside = 0 if self.tree.within_guarantee(leaf, w.demand) else 1
        share = self.tree.fair_share(leaf) if q.name in self.borrowing else 0.0
        order = w.order  # (-priority, submitted_at, name, seq, job)
        negprio: int = order[0]
        submitted: float = order[1]
        seq: int = order[3]
        live: Turn | None = q.heap_key
        if live is not None and live.same_order(outside, negprio, share, submitted, seq):
            return
        q.heap_version += 1
        turn = Turn(outside, negprio, share, submitted, seq, q.heap_version, q.name)
        q.heap_key = turn
        heappush(self.heap, turn)

    def hold(self, uid: str, nodes: tuple[str, ...]) -> None:
        """``uid`` waits for room reclaimed under ``nodes``: borrowers below them are held back."""
        self.unhold(uid)
        self.reclaim_holds[uid] = nodes
        self.hold_places += 1
        for name in nodes:
            at = self.holders.get(name)
            if at is None:
                at = self.holders[name] = {}
            at[uid] = self.hold_places

    def unhold(self, uid: str) -> bool:
        """Drop ``uid``'s hold; False when it held nothing."""
        nodes = self.reclaim_holds.pop(uid, None)
        if nodes is None:
            return False
        for name in nodes:
            at = self.holders.get(name)
            if at is not None:
                at.pop(uid, None)
                if not at:
                    del self.holders[name]
        return True

    def get(self, uid: str) -> Workload:
        try:
            return self.workloads[uid]
        except KeyError:
            raise KeyError(f"no job {uid!r} is pending or running") from None

    def unknown_queue_message(self, name: str) -> str:
        leaves = sorted(self.tree.leaves)
        shown = ", ".join(leaves[:10]) + (" ..." if len(leaves) > 10 else "")
        if name in self.tree.nodes:
            return f"queue {name!r} is not a leaf of the quota tree; jobs queue at leaves ({shown})"
        return f"unknown queue {name!r}: no leaf of the quota tree has that name (leaves: {shown})"

    def strategy(self, leaf: QuotaNode) -> tuple[QueueingStrategy, PreemptionPolicy]:
        strategy = leaf.attributes.get(QUEUEING_ATTRIBUTE, self.config.default_queueing)
        preemption = leaf.attributes.get(PREEMPTION_ATTRIBUTE, self.config.default_preemption)
        return strategy, preemption

    def sync_queues(self) -> None:
        """One queue per leaf of the current tree; existing queues keep their jobs."""
        # Leaves in depth-first order: every subtree's leaves are one contiguous span of this list.
        self.leaf_order = []
        self.leaf_span = {}
        stack: list[tuple[QuotaNode, bool]] = [(self.tree.root, False)]
        starts: dict[str, int] = {}
        while stack:
            node, done = stack.pop()
            if done:
                self.leaf_span[node.name] = (starts[node.name], len(self.leaf_order))
                continue
            starts[node.name] = len(self.leaf_order)
            if node.is_leaf:
                self.leaf_order.append(node.name)
                self.leaf_span[node.name] = (starts[node.name], len(self.leaf_order))
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.children))
        for name, leaf in self.tree.leaves.items():
            strategy, preemption = self.strategy(leaf)
            q = self.queues.get(name)
            if q is None:
                self.queues[name] = LeafQueue(name, strategy, preemption)
            else:
                q.strategy, q.preemption = strategy, preemption
        for name in list(self.queues):
            if name not in self.tree.leaves:
                del self.queues[name]


def engine_request(request: Resources) -> Resources:
    """The request as the engine counts it: every job counts one against ``kube-queue/max-jobs``, and
    resource names are interned (see ``quota.quantity``)."""
    out = {sys.intern(r): v for r, v in request.items()}
    if MAX_JOBS not in out:
        out[MAX_JOBS] = MILLI
    return out
