"""Invariants of the engine over random trees, policies and job streams (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from engine_helpers import Clock, engine, node, tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayqueue.queue.queues import order_key
from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.quantity import CPU, GPU, MILLI
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.decisions import Admit, Preempt, Reject
from rayqueue.scheduler.workloads.resourcepolicy import Unit, Units

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class World:
    engine: Engine
    leaves: list[str]
    strict: set[str]


@st.composite
def worlds(draw: st.DrawFn, flat: bool = False) -> World:
    n = draw(st.integers(2, 5))
    mins = [draw(st.integers(0, 6)) for _ in range(n)]
    total = sum(mins) or 1
    leaves = []
    strict: set[str] = set()
    for i, lo in enumerate(mins):
        hi = draw(st.integers(max(lo, 1), total + 4))
        strategy = draw(st.sampled_from(["StrictFIFO", "BestEffortFIFO"]))
        preemption = draw(st.sampled_from(["Never", "LowerPriority"]))
        if strategy == "StrictFIFO":
            strict.add(f"q{i}")
        leaves.append(
            node(
                f"q{i}",
                min={GPU: lo},
                max={GPU: hi, "kube-queue/max-jobs": draw(st.integers(1, 6))} if not flat else {GPU: hi},
                # Flat worlds keep priority preemption off: a job that preempted inside its own queue may
                # take room another queue's reclaim counted on in the same cycle (a known limit).
                attributes={"queueingStrategy": strategy, "preemptionPolicy": "Never" if flat else preemption},
            )
        )
    if draw(st.booleans()) and not flat:
        # A middle level: two groups under the root.
        half = n // 2
        left, right = leaves[:half], leaves[half:]
        children = [
            node("left", min={GPU: sum(mins[:half])}, max={GPU: total + 2}, children=left),
            node("right", min={GPU: sum(mins[half:])}, children=right),
        ]
    else:
        children = leaves
    root_max = total + (0 if flat else draw(st.integers(0, 4)))
    t = tree(node("root", min={GPU: total}, max={GPU: root_max}, children=children))
    if flat:
        units = Units([Unit("ecs", "ecs", capacity={GPU: total * MILLI})])
    else:
        policy = draw(
            st.sampled_from(["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax", "LackResourceAndNoTerminating"])
        )
        units = Units(
            [
                Unit("ecs", "ecs", capacity={GPU: total * MILLI, CPU: draw(st.integers(4, 64)) * MILLI}),
                Unit("acs", "acs", capacity=None, max_pods=draw(st.integers(0, 8))),
            ],
            policy,
            timeout_s=5.0,
        )
    return World(engine(t, units, Clock()), [f"q{i}" for i in range(n)], strict)


def check_invariants(e: Engine) -> None:
    admitted = [w for w in e.workloads.values() if w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING)]
    for n in e.tree:
        for r, limit in n.max.items():
            assert n.usage.get(r, 0) <= limit, f"{n.path} {r} above max"
        for r, used in n.usage.items():
            expected = sum(w.request.get(r, 0) for w in admitted if n in e.tree.leaves[w.queue].lineage)
            assert used == expected, f"{n.path} {r} accounting drifted"
    for u in e.units.units:
        if u.capacity is not None:
            for r, cap in u.capacity.items():
                assert u.usage.get(r, 0) <= cap, f"unit {u.name} {r} above capacity"
        if u.max_pods is not None:
            assert u.pods <= u.max_pods, f"unit {u.name} above max pods"
        assert u.pods == sum(w.pods for w in admitted if w.unit == u.name)
        terminating = sum(w.pods for w in admitted if w.unit == u.name and w.state == WorkloadState.PREEMPTING)
        assert u.terminating_pods == terminating, f"unit {u.name} terminating pods drifted"


job_specs = st.lists(
    st.tuples(
        st.integers(0, 4),  # leaf index (mod n)
        st.integers(0, 5),  # gpus
        st.integers(0, 8),  # cpus
        st.integers(1, 4),  # pods
        st.integers(0, 3),  # priority
        st.integers(0, 3),  # finishes to apply after this submission
    ),
    min_size=1,
    max_size=40,
)


@SETTINGS
@given(world=worlds(), specs=job_specs, data=st.data())
def test_never_above_max_never_admitted_twice_strict_order_and_exact_accounting(
    world: World, specs: list[tuple[int, int, int, int, int, int]], data: st.DataObject
) -> None:
    e = world.engine
    clock: Clock = e.clock  # type: ignore[assignment]
    running: set[str] = set()
    for i, (leaf_i, gpus, cpus, pods, prio, finishes) in enumerate(specs):
        clock.t += 1.0
        w = Workload(
            uid=f"j{i}",
            queue=world.leaves[leaf_i % len(world.leaves)],
            request={GPU: gpus * MILLI, CPU: cpus * MILLI},
            pods=pods,
            priority=prio,
            submitted_at=clock.t,
        )
        rejection = e.submit(w)
        if rejection is not None:
            assert rejection.reason.code.value == "NeverFits"
        decisions = e.schedule(clock.t)
        admitted_now = {d.workload.uid for d in decisions if isinstance(d, Admit)}
        assert not any(isinstance(d, Preempt) and d.workload.uid in admitted_now for d in decisions), (
            "a job admitted and preempted in one cycle"
        )
        for d in decisions:
            uid = d.workload.uid
            if isinstance(d, Admit):
                assert uid not in running, f"{uid} admitted twice"
                running.add(uid)
                if d.workload.queue in world.strict:
                    q = e.queues[d.workload.queue]
                    assert all(key > order_key(d.workload) for key in q.pending), "StrictFIFO admitted out of order"
            elif isinstance(d, Preempt):
                assert uid in running
            elif isinstance(d, Reject):
                assert uid not in running
        check_invariants(e)
        for d in decisions:
            if isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
                running.discard(d.workload.uid)
        for _ in range(finishes):
            if running:
                uid = data.draw(st.sampled_from(sorted(running)))
                e.finish(uid)
                running.discard(uid)
        check_invariants(e)
    # Drain: everything still queued is eventually admitted exactly once, and usage returns to zero.
    for _ in range(200):
        clock.t += 10.0
        for d in e.schedule(clock.t):
            if isinstance(d, Admit):
                assert d.workload.uid not in running
                running.add(d.workload.uid)
            elif isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
                running.discard(d.workload.uid)
        for uid in sorted(running):
            e.finish(uid)
        running.clear()
        check_invariants(e)
        if not e.workloads:
            break
    assert not e.workloads, f"jobs left behind: {[(w.uid, str(w.reason)) for w in e.workloads.values()]}"
    assert all(v == 0 for n in e.tree for v in n.usage.values())


@SETTINGS
@given(world=worlds(flat=True), specs=job_specs, target=st.integers(0, 4), fill=st.booleans(), size=st.integers(1, 6))
def test_a_queue_below_its_min_gets_its_guaranteed_job_by_reclaim_alone(
    world: World, specs: list[tuple[int, int, int, int, int, int]], target: int, fill: bool, size: int
) -> None:
    # Jobs of 1 to 5 GPUs elsewhere, so borrowed work often comes in jobs coarser than what is borrowed:
    # a borrowing queue stays eligible while it borrows, so its last victim may leave it below its min.
    e = world.engine
    clock: Clock = e.clock  # type: ignore[assignment]
    leaf = e.tree.leaves[world.leaves[target % len(world.leaves)]]
    others = [name for name in world.leaves if name != leaf.name]
    stream = [(others[i % len(others)], 1 + gpus % 5, prio) for i, (_q, gpus, _c, _p, prio, _f) in enumerate(specs)]
    if fill:  # the other teams borrow everything they can first
        stream = [(others[i % len(others)], 1, 0) for i in range(2 * int(e.tree.root.max[GPU] / MILLI))] + stream
    for i, (queue, gpus, prio) in enumerate(stream):
        clock.t += 1.0
        e.submit(Workload(f"j{i}", queue, {GPU: gpus * MILLI}, 1, prio, submitted_at=clock.t))
        for d in e.schedule(clock.t):
            if isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
    guarantee = int(leaf.min.get(GPU, 0) / MILLI)
    if guarantee < 1:
        return  # a leaf without a guarantee has nothing to reclaim
    clock.t += 1.0
    request = {GPU: min(size, guarantee) * MILLI}  # any size within the queue's guarantee
    e.submit(Workload("guaranteed", leaf.name, request, 1, priority=0, submitted_at=clock.t))
    # Reclaim alone gives the guarantee back: no job finishes. Another queue's pending job that is also
    # within its own min (and of higher priority) may take reclaimed room first, as the cross-queue order
    # says; then the next round reclaims again. Each round admits at least one such job, so the rounds
    # are bounded by the jobs waiting.
    for _ in range(len(stream) + 2):
        for d in e.schedule(clock.t):  # admit, or plan a reclaim whose victims stop at once here
            if isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
        if e.workloads["guaranteed"].state == WorkloadState.ADMITTED:
            break
    assert e.workloads["guaranteed"].state == WorkloadState.ADMITTED, e.explain("guaranteed")
