"""Preemption scenarios: Kueue's classical preemption as the brief adapts it.

The cases follow the table of Kueue's ``pkg/scheduler/preemption/preemption_test.go`` where it applies to
our semantics (a leaf is a ClusterQueue, its parent a cohort, ``min`` its nominal quota, ``max`` its
borrowing limit). Two differences are deliberate: candidates of the preemptor's own queue come first
(nearest in the tree; Kueue takes other queues' borrowed work first), and a reclaim takes borrowed work
of any priority (Kueue's ``reclaimWithinCohort: Any``).
"""

from __future__ import annotations

from engine_helpers import Clock, admitted, engine, job, node, preempted, tree

from rayqueue.queue.workload import ReasonCode, Workload, WorkloadState
from rayqueue.quota.quantity import GPU, MILLI
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.decisions import Preempt
from rayqueue.scheduler.workloads.resourcepolicy import Unit, Units


def one_queue(gpus: int = 6, policy: str = "LowerPriority") -> QuotaTree:
    return tree(node("root", children=[node("q", max={GPU: gpus}, attributes={"preemptionPolicy": policy})]))


def cohort(total: int = 12, policy: str = "LowerPriority", **extra_max: object) -> QuotaTree:
    """Two queues guaranteed half each, each allowed to borrow the rest (Kueue's cohort c1/c2)."""
    half = total // 2
    attrs = {"preemptionPolicy": policy}
    return tree(
        node(
            "root",
            min={GPU: total},
            max={GPU: total},
            children=[
                node("c1", min={GPU: half}, max={GPU: total}, attributes=attrs),
                node("c2", min={GPU: half}, max={GPU: total}, attributes=attrs),
            ],
        )
    )


def running(e: Engine, *jobs: Workload) -> None:
    """Admit each job in turn (one cycle each, so the later ones are the newer admissions)."""
    clock: Clock = e.clock  # type: ignore[assignment]
    for w in jobs:
        clock.t += 1.0
        w.submitted_at = clock.t
        e.submit(w)
        assert admitted(e.schedule()) == [w.uid], e.explain(w.uid)


def arrive(e: Engine, w: Workload) -> list[str]:
    """Submit the incoming job and run one cycle: the jobs it preempts."""
    clock: Clock = e.clock  # type: ignore[assignment]
    clock.t += 1.0
    w.submitted_at = clock.t
    e.submit(w)
    return sorted(preempted(e.schedule()))


# ---------------------------------------------------------------- inside the preemptor's own queue


def test_the_lowest_priority_job_of_the_queue_is_preempted() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 2, priority=-1), job("mid", "q", 2), job("high", "q", 2, priority=1))
    assert arrive(e, job("in", "q", 2, priority=1)) == ["low"]
    assert e.workloads["low"].reason.code == ReasonCode.PREEMPTED_BY_PRIORITY  # type: ignore[union-attr]
    assert e.explain("in").reason.code == ReasonCode.WAITING_FOR_PREEMPTION  # type: ignore[union-attr]


def test_several_lower_priority_jobs_are_preempted_when_one_is_not_enough() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 2, priority=-1), job("mid", "q", 2), job("high", "q", 2, priority=1))
    assert arrive(e, job("in", "q", 3, priority=1)) == ["low", "mid"]


def test_a_job_never_preempts_jobs_of_its_own_or_a_higher_priority() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 3, priority=-1), job("mid", "q", 3))
    assert arrive(e, job("in", "q", 1, priority=-1)) == []
    assert e.explain("in").reason.code == ReasonCode.QUOTA_MAX_EXCEEDED  # type: ignore[union-attr]


def test_nothing_is_preempted_when_the_lower_priority_jobs_are_not_enough() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 3, priority=-1), job("mid", "q", 3))
    assert arrive(e, job("in", "q", 4)) == []  # only "low" (3) is lower: 3 free of the 4 needed
    assert e.workloads["low"].state == WorkloadState.ADMITTED


def test_free_quota_counts_so_one_small_victim_is_enough() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 1, priority=-1), job("mid", "q", 1), job("high", "q", 3, priority=1))
    assert arrive(e, job("in", "q", 2, priority=1)) == ["low"]


def test_the_minimal_set_gives_back_a_lower_priority_victim_that_is_not_needed() -> None:
    e = engine(one_queue())
    running(e, job("low", "q", 1, priority=-1), job("mid", "q", 2), job("high", "q", 3, priority=1))
    # "low" is taken first (1 free: not enough), then "mid" (3 free); without "low" 2 are free: enough.
    assert arrive(e, job("in", "q", 2, priority=1)) == ["mid"]
    assert e.workloads["low"].state == WorkloadState.ADMITTED


def test_only_jobs_holding_what_the_preemptor_lacks_are_preempted() -> None:
    e = engine(tree(node("root", children=[node("q", max={GPU: 4, "cpu": 16})])))
    running(e, job("low-cpu", "q", 0, priority=-1, cpu=4), job("mid", "q", 2), job("high", "q", 2, priority=1))
    assert arrive(e, job("in", "q", 2, priority=1)) == ["mid"]


def test_a_queue_with_policy_never_preempts_nothing_inside_it() -> None:
    e = engine(one_queue(policy="Never"))
    running(e, job("low", "q", 3, priority=-1))
    assert arrive(e, job("in", "q", 4, priority=1)) == []


# ---------------------------------------------------------------- reclaim from borrowing queues


def test_borrowed_quota_is_reclaimed_from_the_borrower() -> None:
    e = engine(cohort(policy="Never"))
    running(e, job("c1-low", "c1", 3, priority=-1), job("c2-mid", "c2", 3), job("c2-high", "c2", 6, priority=1))
    # c2 uses 9 of its 6: c1's job (3 + 3 <= 6) reclaims the lowest-priority c2 job, which leaves c2 at its min.
    assert arrive(e, job("in", "c1", 3, priority=1)) == ["c2-mid"]
    assert e.workloads["c2-mid"].reason.code == ReasonCode.RECLAIMED  # type: ignore[union-attr]
    assert e.explain("in").reason.code == ReasonCode.WAITING_FOR_RECLAIM  # type: ignore[union-attr]


def test_the_own_queue_is_nearest_so_its_lower_priority_job_goes_before_a_reclaim() -> None:
    # The same scenario with priority preemption allowed in c1: its own lower-priority job is nearest
    # (Kueue would reclaim c2-mid first).
    e = engine(cohort())
    running(e, job("c1-low", "c1", 3, priority=-1), job("c2-mid", "c2", 3), job("c2-high", "c2", 6, priority=1))
    assert arrive(e, job("in", "c1", 3, priority=1)) == ["c1-low"]


def test_nothing_is_reclaimed_from_queues_that_do_not_borrow() -> None:
    e = engine(cohort(policy="Never"), Units([Unit("ecs", "ecs", capacity={GPU: 8 * MILLI})]))
    running(e, job("c1-high", "c1", 2, priority=1), job("c2-low", "c2", 6, priority=-1))
    # c1 is owed 4 more, but the unit holds only 8 and c2 uses no more than its min.
    assert arrive(e, job("in", "c1", 4, priority=1)) == []


def test_nothing_is_reclaimed_for_a_job_that_would_borrow() -> None:
    e = engine(cohort(policy="Never"))
    running(e, job("c1-high", "c1", 4, priority=1), job("c2-low-1", "c2", 4, priority=-1), job("c2-low-2", "c2", 4, priority=-1))
    # c2 borrows 2, but c1 would use 8 of its 6: a job that borrows never reclaims.
    assert arrive(e, job("in", "c1", 4, priority=1)) == []


def test_a_queue_preempts_its_own_job_and_borrows_when_it_is_above_its_min() -> None:
    e = engine(cohort())
    running(e, job("c1-med", "c1", 4), job("c1-low", "c1", 4, priority=-1), job("c2-low-1", "c2", 4, priority=-1))
    assert arrive(e, job("in", "c1", 4, priority=1)) == ["c1-low"]


def test_a_job_that_must_borrow_another_resource_preempts_only_in_its_own_queue() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 12, "memory": "6Gi"},
            max={GPU: 12, "memory": "6Gi"},
            children=[
                node("c1", min={GPU: 6, "memory": "3Gi"}, max={GPU: 12, "memory": "6Gi"}),
                node("c2", min={GPU: 6, "memory": "3Gi"}, max={GPU: 12, "memory": "6Gi"}),
            ],
        )
    )
    e = engine(t)
    running(e, job("c1-med", "c1", 4), job("c2-low-1", "c2", 5, priority=-1),
            job("c2-low-2", "c2", 1, priority=-1), job("c2-low-3", "c2", 1, priority=-1))
    # 5Gi is above c1's 3Gi guarantee, so c2's borrowed GPUs cannot be reclaimed for it.
    assert arrive(e, job("in", "c1", 2, priority=1, memory="5Gi")) == ["c1-med"]


def test_borrowed_work_of_any_priority_is_reclaimed() -> None:
    e = engine(cohort())
    running(e, job("c1", "c1", 2), job("c2-1", "c2", 4), job("c2-2", "c2", 4))
    # Kueue's reclaimWithinCohort: Any: c2's job has the preemptor's priority and is still taken.
    assert arrive(e, job("in", "c1", 4)) == ["c2-2"]


def test_own_lower_priority_jobs_and_borrowed_work_together() -> None:
    e = engine(cohort())
    running(e, job("c1-low", "c1", 3, priority=-1), job("c1-mid", "c1", 2),
            job("c2-low", "c2", 3, priority=-1), job("c2-mid", "c2", 4))
    # c1-low (own queue) frees 3 of the 4 needed; c1 is then within its guarantee, so c2 (borrowing 1)
    # gives c2-low. c1-low stays a victim: without it c1 would use 9 of its 6.
    assert arrive(e, job("in", "c1", 4)) == ["c1-low", "c2-low"]
    reasons = {uid: e.workloads[uid].reason.code for uid in ("c1-low", "c2-low")}  # type: ignore[union-attr]
    assert reasons == {"c1-low": ReasonCode.PREEMPTED_BY_PRIORITY, "c2-low": ReasonCode.RECLAIMED}
    assert e.explain("in").reason.code == ReasonCode.WAITING_FOR_RECLAIM  # type: ignore[union-attr]


def test_a_borrowers_coarse_job_does_not_hold_a_guarantee_hostage() -> None:
    # Queue a (min 6) borrows 2 GPUs through one 8-GPU job; b is owed 6.
    e = engine(cohort(policy="Never"))
    running(e, job("a-big", "c1", 8))
    assert arrive(e, job("b-guaranteed", "c2", 6)) == ["a-big"]  # a drops to 0, below its min: allowed
    e.suspended("a-big")
    assert admitted(e.schedule()) == ["b-guaranteed"]  # after one reclaim round
    # a's job is back in its queue; it would borrow, so it never reclaims from b in turn.
    assert e.workloads["a-big"].state == WorkloadState.PENDING
    assert preempted(e.schedule()) == []


def test_among_equals_a_victim_that_keeps_its_queue_at_its_min_goes_first() -> None:
    e = engine(cohort(total=8, policy="Never"))
    running(e, job("a-small", "c1", 2), job("a-big", "c1", 4))  # a borrows 2; a-big is the newest
    running(e, job("b-run", "c2", 2))
    # Newest first would take a-big (a down to 2 < 4); a-small alone leaves a at its min and is enough.
    assert arrive(e, job("b-in", "c2", 2)) == ["a-small"]


def test_a_queue_stops_being_a_candidate_once_it_no_longer_borrows() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 12},
            max={GPU: 12},
            children=[node(n, min={GPU: 4}, max={GPU: 12}, attributes={"preemptionPolicy": "Never"}) for n in "abc"],
        )
    )
    e = engine(t)
    running(e, job("a1", "a", 2), job("a2", "a", 2), job("a3", "a", 2))  # a borrows 2
    running(e, job("c1", "c", 3, priority=5), job("c2", "c", 3, priority=5))  # c borrows 2
    # b needs 4: a3 (lowest priority) first, and then a uses only its min, so the next victim is c's
    # newest (priority 5) rather than a2 (priority 0). c2 leaves c at 3 < 4: its last victim may.
    assert arrive(e, job("b-in", "b", 4)) == ["a3", "c2"]


def test_a_borrower_far_away_in_the_tree_is_reclaimed_when_no_sibling_borrows() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 8},
            max={GPU: 8},
            children=[
                node("left", min={GPU: 4}, children=[node("l1", min={GPU: 2}), node("l2", min={GPU: 2})]),
                node("right", min={GPU: 4}, children=[node("r1", min={GPU: 2}, max={GPU: 8}), node("r2", min={GPU: 2})]),
            ],
        )
    )
    e = engine(t)
    running(e, job("l1-a", "l1", 2), job("r1-a", "r1", 2), job("r1-b", "r1", 2), job("r1-c", "r1", 2))
    assert arrive(e, job("l2-in", "l2", 2)) == ["r1-c"]


def test_the_preempted_job_requeues_and_runs_once_room_is_back() -> None:
    e = engine(one_queue(gpus=4))
    running(e, job("low", "q", 4, priority=-1))
    assert arrive(e, job("high", "q", 4, priority=1)) == ["low"]
    for d in e.schedule():
        assert not isinstance(d, Preempt)  # decided once: the waiting job does not preempt again
    e.suspended("low")
    assert admitted(e.schedule()) == ["high"]
    e.finish("high")
    assert admitted(e.schedule()) == ["low"]


# ---------------------------------------------------------------- a preemption is decided once


def test_a_victim_restored_as_being_preempted_is_not_chosen_again_nor_another_one() -> None:
    def world() -> Engine:
        return engine(cohort(policy="Never"))

    # Before the restart: b's guaranteed job reclaimed a2 (the newest of a's two borrowing jobs).
    e = world()
    running(e, job("a1", "c1", 4), job("a2", "c1", 4), job("a3", "c1", 4))
    assert arrive(e, job("b-in", "c2", 4)) == ["a3"]
    # After the restart: the same jobs rebuilt, a3 restored as being preempted for b-in, then b-in queued.
    r = world()
    for uid in ("a1", "a2"):
        r.restore(job(uid, "c1", 4), None, 1.0)
    r.restore(job("a3", "c1", 4), None, 2.0, preempted_by="b-in")
    assert r.workloads["a3"].state == WorkloadState.PREEMPTING
    assert r.submit(job("b-in", "c2", 4, at=3.0)) is None
    decisions = r.schedule()
    assert preempted(decisions) == [] and admitted(decisions) == []  # no second victim, nothing decided again
    assert r.explain("b-in").reason.code == ReasonCode.WAITING_FOR_RECLAIM  # type: ignore[union-attr]
    assert r.stats.preempted == 0
    r.suspended("a3")
    assert admitted(r.schedule()) == ["b-in"]
    assert r.workloads["a3"].state == WorkloadState.PENDING and r.workloads["a3"].preemptions == 1


def test_a_victim_restored_after_its_preemptor_is_waited_for_too() -> None:
    e = engine(cohort(policy="Never"))
    e.submit(job("b-in", "c2", 4, at=3.0))
    e.restore(job("a1", "c1", 4), None, 1.0)
    e.restore(job("a2", "c1", 4), None, 1.0)
    e.restore(job("a3", "c1", 4), None, 2.0, preempted_by="b-in")
    assert preempted(e.schedule()) == []
    e.suspended("a3")
    assert admitted(e.schedule()) == ["b-in"]


def test_reclaim_takes_borrowed_jobs_of_two_queues_when_a_third_was_reclaimed_from_first() -> None:
    # Found by tests/test_engine_properties.py: q2 (min 2) waits for 2 GPUs while q0 and q1 (min 0)
    # each borrow 1; reclaiming both must give q2 its guarantee.
    leaves = [
        node(name, min={GPU: lo}, max={GPU: hi}, attributes={"queueingStrategy": "StrictFIFO", "preemptionPolicy": "Never"})
        for name, lo, hi in [("q0", 0, 1), ("q1", 0, 1), ("q2", 2, 2), ("q3", 6, 6), ("q4", 4, 7)]
    ]
    e = engine(
        tree(node("root", min={GPU: 12}, max={GPU: 12}, children=leaves)),
        Units([Unit("ecs", "ecs", capacity={GPU: 12 * MILLI})]),
    )
    clock: Clock = e.clock  # type: ignore[assignment]
    stream = [("q0", 1), ("q1", 1), ("q3", 1), ("q4", 2), ("q0", 1), ("q1", 1), ("q3", 1), ("q4", 5)]
    stream += [("q0", 1), ("q1", 1), ("q3", 4), ("q4", 2)]
    for i, (queue, n) in enumerate(stream):
        clock.t += 1.0
        e.submit(job(f"j{i}", queue, n, priority=1 if i == 11 else 0, at=clock.t))
        for d in e.schedule(clock.t):
            if isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
    clock.t += 1.0
    e.submit(job("guaranteed", "q2", 2, at=clock.t))
    for _ in range(len(stream) + 2):
        for d in e.schedule(clock.t):
            if isinstance(d, Preempt):
                e.suspended(d.workload.uid, clock.t)
        if e.workloads["guaranteed"].state == WorkloadState.ADMITTED:
            break
    assert e.workloads["guaranteed"].state == WorkloadState.ADMITTED, e.explain("guaranteed")
