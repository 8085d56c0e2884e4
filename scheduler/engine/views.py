"""Read-only views of the engine for front ends: what they may read, as plain data.

Front ends read jobs, queues, quota nodes and units through these (frozen snapshots, copied out), never
the engine's live ``workloads``, ``queues`` or a workload's mutable fields, so that what they rely on
stays small and the engine may change how it keeps its state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.queues import job_of
from rayqueue.queue.workload import Reason, ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import MAX_JOBS, Resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine.serving import reserved_by_node
from rayqueue.scheduler.engine.state import EngineState


@dataclass(frozen=True, slots=True)
class Explanation:
    uid: str
    state: WorkloadState
    queue: str
    position: int | None
    pending_in_queue: int
    reason: Reason | None
    unit: str | None = None
    admitted_at: float | None = None
    expected_start: float | None = None


def explain(s: EngineState, uid: str) -> Explanation:
    w = s.get(uid)
    q = s.queues[w.queue]
    position = None
    reason = w.reason
    if w.state == WorkloadState.PENDING:
        position = q.position(w)
        head = q.head()
        if q.strategy == "StrictFIFO" and head is not None and head is not w:
            reason = Reason(
                ReasonCode.BLOCKED_BY_HEAD,
                f"queue {q.name} is StrictFIFO and its head {head.display_name} waits "
                f"({head.reason or 'not yet tried'})",
            )
    return Explanation(
        uid=w.uid,
        state=w.state,
        queue=w.queue,
        position=position,
        pending_in_queue=len(q),
        reason=reason,
        unit=w.unit,
        admitted_at=w.admitted_at,
    )


def pending(s: EngineState, queue: str | None = None) -> Iterable[Workload]:
    """Pending jobs in queue order (one queue, or every queue one after another)."""
    names = [queue] if queue else list(s.queues)
    for name in names:
        q = s.queues[name]
        for key in q.pending:
            yield job_of(key)


def admitted(s: EngineState) -> Iterable[Workload]:
    for q in s.queues.values():
        yield from q.admitted.values()


@dataclass(frozen=True, slots=True)
class JobView:
    """One job the engine holds (pending, admitted or preempting)."""

    uid: str
    name: str
    queue: str
    state: WorkloadState
    reason: Reason | None
    priority: int
    submitted_at: float
    request: Resources  # as the engine counts it (``kube-queue/max-jobs`` included)
    pods: int
    unit: str | None
    admitted_at: float | None
    preempted_by: str | None
    preemptions: int
    priority_class: str | None = None


@dataclass(frozen=True, slots=True)
class QueueView:
    """One leaf's queue: its pending jobs in queue order and its admitted (or preempting) jobs."""

    name: str
    strategy: str
    preemption: str
    pending: tuple[str, ...]
    admitted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeView:
    """One quota node: its limits, what its jobs use and what it borrows (usage above ``min``)."""

    name: str
    path: str
    parent: str | None
    is_leaf: bool
    min: Resources
    max: Resources
    used: Resources
    borrowed: Resources  # on the tree's guaranteed resources only (see ``TreeView.guaranteed``)
    depth: int  # the root's is 0
    children: tuple[str, ...]  # in the tree's order
    # Services' headroom up to their maxReplicas beyond their hot reserve (the hot reserve is in
    # ``used``): batch may run on it only as borrowers a scale-up takes back.
    reserved: Resources = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TreeView:
    """The quota tree as a whole: its name, its leaves (one queue each) and what it guarantees."""

    name: str
    root: str
    leaves: tuple[str, ...]
    #: the resources some node has a ``min`` of: borrowing and reclaim speak only of these
    guaranteed: frozenset[str]


@dataclass(frozen=True, slots=True)
class UnitView:
    """One capacity unit of the ResourcePolicy (or the default pool)."""

    name: str
    resource: str
    capacity: Resources | None  # None: elastic, bounded only by ``max_pods``
    max_pods: int | None
    used: Resources
    pods: int
    description: str  # the capacity in words, as the engine's reasons name it
    node_selector: dict[str, str]  # where its pods go


def job_view(w: Workload) -> JobView:
    return JobView(
        uid=w.uid,
        name=w.display_name,
        queue=w.queue,
        state=w.state,
        reason=w.reason,
        priority=w.priority,
        submitted_at=w.submitted_at,
        request=dict(w.request),
        pods=w.pods,
        unit=w.unit,
        admitted_at=w.admitted_at,
        preempted_by=w.preempted_by,
        preemptions=w.preemptions,
        priority_class=w.priority_class,
    )


def job(s: EngineState, uid: str) -> JobView | None:
    """The job ``uid`` if the engine holds it (pending, admitted or preempting), else None."""
    w = s.workloads.get(uid)
    return job_view(w) if w is not None else None


def jobs(s: EngineState, state: WorkloadState | None = None) -> list[JobView]:
    """Every job the engine holds (or those in ``state``)."""
    return [job_view(w) for w in s.workloads.values() if state is None or w.state == state]


def counts(s: EngineState) -> dict[WorkloadState, int]:
    """How many jobs the engine holds in each state (pending, admitted, preempting)."""
    out: dict[WorkloadState, int] = {}
    for w in s.workloads.values():
        out[w.state] = out.get(w.state, 0) + 1
    return out


def queue_views(s: EngineState) -> list[QueueView]:
    """Every leaf's queue, in the tree's leaf order."""
    out: list[QueueView] = []
    for name, q in s.queues.items():
        out.append(QueueView(
            name=name,
            strategy=q.strategy,
            preemption=q.preemption,
            pending=tuple(job_of(key).uid for key in q.pending),
            admitted=tuple(q.admitted),
        ))
    return out


def node_views(s: EngineState) -> list[NodeView]:
    """Every quota node, root first (the tree's own order)."""
    return tree_node_views(s.tree, reserved_by_node(s) if s.services else {})


def tree_node_views(tree: QuotaTree, reserved: Mapping[str, Resources] | None = None) -> list[NodeView]:
    """Every node of ``tree`` (the engine's, or one it previews), root first; ``reserved``: services'
    headroom by node name."""
    reserved = reserved or {}
    out: list[NodeView] = []
    for node in tree:
        out.append(NodeView(
            name=node.name,
            path=node.path,
            parent=node.parent.name if node.parent is not None else None,
            is_leaf=node.is_leaf,
            min=dict(node.min),
            max=dict(node.max),
            used=node.usage,
            borrowed=tree.borrowed(node),
            depth=node.depth,
            children=tuple(c.name for c in node.children),
            reserved=reserved.get(node.name, {}),
        ))
    return out


def tree_view(s: EngineState) -> TreeView:
    tree = s.tree
    return TreeView(name=tree.name, root=tree.root.name, leaves=tuple(tree.leaves), guaranteed=tree.guaranteed)


def leaf_for(s: EngineState, namespace: str | None, quota: str | None) -> str:
    """The leaf (queue) a job maps to: an explicit quota name first, else its namespace. ``KeyError``
    saying why when there is none."""
    return s.tree.leaf_for(namespace=namespace, quota=quota).name


def tree_manifest(s: EngineState) -> dict[str, Any]:
    """The tree as an ``ElasticQuotaTree`` manifest (what was applied, without usage)."""
    return s.tree.to_dict()


def unit_views(s: EngineState) -> list[UnitView]:
    """Every unit, in the ResourcePolicy's order."""
    return [
        UnitView(
            name=u.name,
            resource=u.resource,
            capacity=dict(u.capacity) if u.capacity is not None else None,
            max_pods=u.max_pods,
            used=u.usage,
            pods=u.pods,
            description=u.describe_capacity(),
            node_selector=dict(u.node_selector),
        )
        for u in s.units.units
    ]


@dataclass(frozen=True, slots=True)
class UnitCapacityView:
    """What the capacity rule (``scheduler.engine.capacity``) reads of a unit: where its nodes are, what
    its policy declares, and the capacity it holds now."""

    name: str
    resource: str
    node_selector: Mapping[str, str]
    declared: Resources | None  # the ResourcePolicy's own figure, if any
    capacity: Resources | None
    largest: Resources | None
    complete: bool


def unit_capacity_views(s: EngineState) -> list[UnitCapacityView]:
    """Every unit's capacity inputs, in the ResourcePolicy's order."""
    return [
        UnitCapacityView(
            name=u.name,
            resource=u.resource,
            node_selector=dict(u.node_selector),
            declared=dict(u.declared) if u.declared is not None else None,
            capacity=dict(u.capacity) if u.capacity is not None else None,
            largest=dict(u.largest) if u.largest is not None else None,
            complete=u.complete,
        )
        for u in s.units.units
    ]


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """One leaf's queue in figures: what a status page shows per quota node without a view per job."""

    name: str
    pending: int
    admitted: int  # admitted or preempting: holding quota
    requested: Resources  # what its pending jobs request together


def queue_totals(s: EngineState) -> list[QueueTotals]:
    """Every leaf's queue in figures, in the tree's leaf order (no per-job copies: thousands may wait)."""
    out: list[QueueTotals] = []
    for name, q in s.queues.items():
        requested: dict[str, int] = {}
        for key in q.pending:
            for r, v in job_of(key).request.items():
                requested[r] = requested.get(r, 0) + v
        out.append(QueueTotals(name, len(q.pending), len(q.admitted), requested))
    return out


def borrowed_share(s: EngineState, uid: str) -> Resources:
    """The part of an admitted job's request its leaf holds above its ``min`` (what reclaim may take back)."""
    w = s.get(uid)
    lent = s.tree.borrowed(s.tree.leaves[w.queue])
    return {r: min(v, lent[r]) for r, v in w.request.items() if lent.get(r, 0) > 0 and r != MAX_JOBS}
