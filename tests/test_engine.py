"""Each admission rule and reason code, as a scenario."""

from __future__ import annotations

import pytest
from engine_helpers import Clock, admitted, engine, gpus, job, node, preempted, rejected, tree, two_teams

from rayqueue.queue.priority import PriorityClasses, UnknownPriorityClass
from rayqueue.queue.workload import ReasonCode, WorkloadState
from rayqueue.quota.quantity import CPU, GPU, MAX_JOBS
from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.engine import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.preview import OverNewMax, TreeDiff
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.workloads.resourcepolicy import (
    ResourcePolicyError,
    Unit,
    Units,
    load_resource_policy_text,
    parse_duration,
)


def test_a_quota_that_fits_two_of_three_makes_the_third_wait_with_the_exact_reason() -> None:
    e = engine(tree(node("root", children=[node("nlp", max={GPU: 8})])))
    for i in range(3):
        e.submit(job(f"j{i}", "nlp", gpu=4, at=i))
    assert admitted(e.schedule()) == ["j0", "j1"]
    why = e.explain("j2")
    assert why.state == WorkloadState.PENDING and why.position == 0
    assert why.reason is not None and why.reason.code == ReasonCode.QUOTA_MAX_EXCEEDED
    assert why.reason.message == "root/nlp would use 12 of max 8 nvidia.com/gpu (8 in use + 4 requested)"
    e.finish("j0")
    assert admitted(e.schedule()) == ["j2"]


def test_priority_then_submission_time_then_name_order_a_queue() -> None:
    e = engine(tree(node("root", children=[node("q", max={GPU: 1})])))
    e.submit(job("late-high", "q", priority=10, at=5))
    e.submit(job("early-low", "q", priority=0, at=1))
    e.submit(job("b-same", "q", priority=10, at=5))
    e.submit(job("early-high", "q", priority=10, at=2))
    order = []
    for _ in range(4):
        got = admitted(e.schedule())
        order += got
        e.finish(got[0])
    assert order == ["early-high", "b-same", "late-high", "early-low"]


def test_positions_come_without_scanning_and_follow_the_order() -> None:
    e = engine(tree(node("root", children=[node("q", max={GPU: 0})])))
    # max 0 GPUs: GPU jobs never fit, CPU jobs queue; positions follow priority.
    e.submit(job("a", "q", gpu=0, cpu=1, at=1))
    e.submit(job("b", "q", gpu=0, cpu=1, at=2, priority=5))
    assert e.explain("b").position == 0
    assert e.explain("a").position == 1


def test_never_fits_is_rejected_and_does_not_block_its_queue() -> None:
    e = engine(tree(node("root", children=[node("team-a", max={GPU: 32})])), default_queueing="StrictFIFO")
    reject = e.submit(job("huge", "team-a", gpu=64))
    assert reject is not None and reject.reason.code == ReasonCode.NEVER_FITS
    assert reject.reason.message == "needs 64 nvidia.com/gpu, max of root/team-a is 32"
    e.submit(job("small", "team-a", gpu=2))
    assert admitted(e.schedule()) == ["small"]


def test_a_job_larger_than_every_unit_never_fits() -> None:
    units = Units([Unit("ecs", "ecs", capacity=gpus(8)), Unit("acs", "acs", capacity=None, max_pods=4)])
    e = engine(tree(node("root", children=[node("q")])), units)
    reject = e.submit(job("wide", "q", gpu=16, pods=5))
    assert reject is not None and reject.reason.code == ReasonCode.NEVER_FITS
    assert "larger than every unit" in reject.reason.message


def test_strict_fifo_head_blocks_and_best_effort_lets_the_next_try() -> None:
    for strategy, expected in (("StrictFIFO", []), ("BestEffortFIFO", ["small"])):
        e = engine(tree(node("root", children=[node("q", max={GPU: 4}, attributes={"queueingStrategy": strategy})])))
        e.submit(job("running", "q", gpu=2, at=0))
        assert admitted(e.schedule()) == ["running"]
        e.submit(job("big", "q", gpu=4, at=1))
        e.submit(job("small", "q", gpu=1, at=2))
        assert admitted(e.schedule()) == expected, strategy
        if strategy == "StrictFIFO":
            why = e.explain("small")
            assert why.reason is not None and why.reason.code == ReasonCode.BLOCKED_BY_HEAD
            assert "big" in why.reason.message
            e.finish("running")
            assert admitted(e.schedule()) == ["big"]


def test_strict_fifo_new_higher_priority_head_is_tried() -> None:
    e = engine(tree(node("root", children=[node("q", max={GPU: 4}, attributes={"queueingStrategy": "StrictFIFO"})])))
    e.submit(job("running", "q", gpu=2))
    e.schedule()
    e.submit(job("big", "q", gpu=4, at=1))
    assert admitted(e.schedule()) == []
    e.submit(job("urgent-small", "q", gpu=2, at=2, priority=100))
    assert admitted(e.schedule()) == ["urgent-small"]


def test_max_jobs_counts_jobs() -> None:
    e = engine(tree(node("root", children=[node("q", max={MAX_JOBS: 2})])))
    for i in range(3):
        e.submit(job(f"j{i}", "q", gpu=0, cpu=1, at=i))
    assert admitted(e.schedule()) == ["j0", "j1"]
    assert "kube-queue/max-jobs" in str(e.explain("j2").reason)


def test_borrowing_then_reclaim_returns_the_guarantee() -> None:
    e = engine(two_teams())
    for i in range(4):
        e.submit(job(f"a{i}", "a", gpu=2, at=i))
    assert admitted(e.schedule()) == ["a0", "a1", "a2", "a3"]  # a borrows b's idle guarantee
    e.submit(job("b0", "b", gpu=2, at=10))
    decisions = e.schedule()
    assert preempted(decisions) == ["a3"]  # lowest priority, newest first; exactly enough
    victim = decisions[0]
    assert victim.reason.code == ReasonCode.RECLAIMED
    assert "return root/b its guarantee for b0" in victim.reason.message
    assert e.explain("b0").reason.code == ReasonCode.WAITING_FOR_RECLAIM  # type: ignore[union-attr]
    # Quota stays held until the front end confirms the victim stopped.
    assert admitted(e.schedule()) == []
    e.suspended("a3")
    assert admitted(e.schedule()) == ["b0"]
    assert e.workloads["a3"].state == WorkloadState.PENDING and e.workloads["a3"].preemptions == 1


def test_a_borrower_admitted_earlier_in_the_same_cycle_is_withdrawn_not_started_and_stopped() -> None:
    e = engine(
        tree(node("root", min={GPU: 8}, max={GPU: 8}, children=[node("a", min={GPU: 4}), node("b", min={GPU: 4})]))
    )
    # b0 outranks b1, so a reclaim from b takes b1 (the lowest priority) first.
    e.submit(job("b0", "b", gpu=4, priority=20))
    assert admitted(e.schedule()) == ["b0"]  # b at its guarantee
    # b1 (priority 10) goes first and borrows; a1 (6 GPUs) does not fit and is not within a's guarantee;
    # then a's next job, a-small, is within its guarantee and needs b1's GPUs back, in the same cycle.
    e.submit(job("b1", "b", gpu=2, priority=10, at=1))
    e.submit(job("a1", "a", gpu=6, priority=5, at=2))
    e.submit(job("a-small", "a", gpu=4, priority=0, at=3))
    decisions = e.schedule()
    # Never "admit b1" and "preempt b1" together: its admission is taken back and a-small admitted now.
    assert admitted(decisions) == ["a-small"]
    assert preempted(decisions) == []
    b1 = e.explain("b1")
    assert b1.state == WorkloadState.PENDING and b1.position == 0 and b1.unit is None
    assert e.workloads["b1"].preemptions == 0
    assert e.tree.nodes["b"].usage[GPU] == 4000 and e.tree.nodes["a"].usage[GPU] == 4000
    assert e.stats.withdrawn == 1
    # b1 runs once b's own job frees room, like any pending job.
    e.finish("b0")
    assert admitted(e.schedule()) == ["b1"]


def test_reclaim_may_take_a_borrowers_coarse_job_below_its_min() -> None:
    e = engine(two_teams())
    e.submit(job("a-big", "a", gpu=6))
    assert admitted(e.schedule()) == ["a-big"]
    # b needs 4 within its guarantee; a borrows 2 through one 6-GPU job: a stays eligible while it
    # borrows, so that job is taken even though a drops to 0 < min 4 (its guarantee is no hostage).
    e.submit(job("b0", "b", gpu=4, at=1))
    assert preempted(e.schedule()) == ["a-big"]
    e.suspended("a-big")
    assert admitted(e.schedule()) == ["b0"]


def test_reclaim_prefers_the_nearest_borrower() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 8},
            max={GPU: 8},
            children=[
                node("left", min={GPU: 4}, children=[node("l1", min={GPU: 2}, max={GPU: 8}), node("l2", min={GPU: 2})]),
                node("right", min={GPU: 4}, children=[node("r1", min={GPU: 2}, max={GPU: 8}), node("r2", min={GPU: 2})]),
            ],
        )
    )
    e = engine(t)
    e.submit(job("l1-a", "l1", gpu=2, at=0, priority=5))
    e.submit(job("l1-b", "l1", gpu=2, at=1, priority=5))  # l1 borrows 2
    e.submit(job("r1-a", "r1", gpu=2, at=2, priority=0))
    e.submit(job("r1-b", "r1", gpu=2, at=3, priority=0))  # r1 borrows 2, at a lower priority
    assert sorted(admitted(e.schedule())) == ["l1-a", "l1-b", "r1-a", "r1-b"]
    e.submit(job("l2-in", "l2", gpu=2, at=4))
    # l2 is within its guarantee and the root is full: the borrower nearest in the tree (its sibling l1)
    # goes first even though r1's borrower has a lower priority; among equals, the newest.
    assert preempted(e.schedule()) == ["l1-b"]


def test_no_preemption_is_planned_unless_it_lets_the_preemptor_fit() -> None:
    e = engine(two_teams(total=8))
    e.submit(job("a0", "a", gpu=4))
    e.submit(job("a1", "a", gpu=1, at=1))
    assert admitted(e.schedule()) == ["a0", "a1"]
    # b asks for 4 (within its min); 3 GPUs are free; preempting a1 (the only borrower) frees 1 -> fits.
    e.submit(job("b0", "b", gpu=4, at=2))
    assert preempted(e.schedule()) == ["a1"]
    # A job that even all borrowed work could not make room for plans nothing: the unit holds 6
    # GPUs, b's 4 are taken by b's own higher-priority job, and a borrows nothing.
    e2 = engine(two_teams(total=8), Units([Unit("ecs", "ecs", capacity={GPU: 6000})]))
    e2.submit(job("a0", "a", gpu=2))
    e2.submit(job("b-run", "b", gpu=4, priority=9, at=1))
    e2.schedule()
    e2.submit(job("b0", "b", gpu=2, at=2))
    assert preempted(e2.schedule()) == []


def test_lower_priority_preemption_inside_a_queue() -> None:
    # LowerPriority is the default policy.
    t = tree(node("root", children=[node("q", max={GPU: 4})]))
    e = engine(t)
    e.submit(job("low-old", "q", gpu=2, priority=1, at=0))
    e.submit(job("low-new", "q", gpu=2, priority=1, at=1))
    e.schedule()
    e.submit(job("high", "q", gpu=2, priority=10, at=2))
    decisions = e.schedule()
    assert preempted(decisions) == ["low-new"]
    assert decisions[0].reason.code == ReasonCode.PREEMPTED_BY_PRIORITY
    e.suspended("low-new")
    assert admitted(e.schedule()) == ["high"]
    # With the policy Never, nothing is preempted.
    e2 = engine(tree(node("root", children=[node("q", max={GPU: 2}, attributes={"preemptionPolicy": "Never"})])))
    e2.submit(job("low", "q", gpu=2, priority=1))
    e2.schedule()
    e2.submit(job("high", "q", gpu=2, priority=10, at=1))
    assert preempted(e2.schedule()) == []


def test_ecs_first_then_acs_and_acs_max_pods() -> None:
    units = Units(
        [
            Unit("ecs", "ecs", capacity=gpus(4), node_selector={"pool": "ecs"}),
            Unit("acs", "acs", capacity=None, max_pods=3, pod_labels={"alibabacloud.com/compute-class": "gpu"}),
        ]
    )
    e = engine(tree(node("root", children=[node("q")])), units)
    for i in range(4):
        e.submit(job(f"j{i}", "q", gpu=2, pods=2 if i < 3 else 1, at=i))
    decisions = e.schedule()
    placed = {d.workload.uid: d.placement for d in decisions}  # type: ignore[union-attr]
    assert placed["j0"].unit == "ecs" and placed["j1"].unit == "ecs"
    assert placed["j0"].node_selector == {"pool": "ecs"}
    assert placed["j2"].unit == "acs" and placed["j2"].pod_labels == {"alibabacloud.com/compute-class": "gpu"}
    assert "j3" in placed and placed["j3"].unit == "acs"  # 2 + 1 pods = 3 = max
    e.submit(job("j4", "q", gpu=1, at=9))
    assert admitted(e.schedule()) == []
    why = e.explain("j4").reason
    assert why is not None and why.code == ReasonCode.NO_CAPACITY_IN_UNITS
    assert why.message == (
        "ecs full (4/4 nvidia.com/gpu in use, 1 requested); acs at max 3 pods (3 in use, 1 requested)"
    )
    e.finish("j0")
    assert [(d.workload.uid, d.placement.unit) for d in e.schedule()] == [("j4", "ecs")]  # type: ignore[union-attr]


def test_exceed_max_waits_for_ecs_when_it_only_lacks_resources() -> None:
    units = Units([Unit("ecs", "ecs", capacity=gpus(2)), Unit("acs", "acs", max_pods=10)], "ExceedMax")
    e = engine(tree(node("root", children=[node("q")])), units)
    e.submit(job("a", "q", gpu=2))
    e.submit(job("b", "q", gpu=2, at=1))
    assert [(d.workload.uid, d.placement.unit) for d in e.schedule()] == [("a", "ecs")]  # type: ignore[union-attr]


def test_timeout_or_exceed_max_spills_after_the_timeout() -> None:
    clock = Clock(0.0)
    units = Units([Unit("ecs", "ecs", capacity=gpus(2)), Unit("acs", "acs", max_pods=10)], "TimeoutOrExceedMax", 30.0)
    e = engine(tree(node("root", children=[node("q")])), units, clock)
    e.submit(job("a", "q", gpu=2))
    e.submit(job("b", "q", gpu=2, at=0.0))
    assert admitted(e.schedule(0.0)) == ["a"]
    assert e.next_wakeup() == 30.0
    assert admitted(e.schedule(29.0)) == []
    clock.t = 30.0
    assert [(d.workload.uid, d.placement.unit) for d in e.schedule(30.0)] == [("b", "acs")]  # type: ignore[union-attr]


def test_resource_policy_yaml_is_validated_with_field_names() -> None:
    good = """
apiVersion: scheduling.alibabacloud.com/v1alpha1
kind: ResourcePolicy
metadata: {name: rp, namespace: default}
spec:
  selector: {app: ray}
  units:
  - resource: ecs
    nodeSelector: {pool: ecs}
  - resource: acs
    max: 20
  whenTryNextUnits: {policy: TimeoutOrExceedMax, timeout: 1m}
"""
    units = load_resource_policy_text(good)
    assert [u.name for u in units.units] == ["ecs", "acs"] and units.timeout_s == 60.0 and units.units[1].max_pods == 20
    bad = good.replace("resource: acs", "resource: gpu-cloud").replace("timeout: 1m", "timeout: soon")
    with pytest.raises(ResourcePolicyError) as err:
        load_resource_policy_text(bad)
    assert "spec.units[1].resource" in str(err.value)
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25


def test_order_across_queues_guaranteed_first_then_priority_then_fair_share() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 4},
            max={GPU: 5},
            children=[
                node("a", min={GPU: 2}, max={GPU: 5}),
                node("b", min={GPU: 2}, max={GPU: 5}),
            ],
        )
    )
    e = engine(t)
    e.submit(job("a-big", "a", gpu=3, priority=100, at=0))  # would borrow: goes after b's guaranteed job
    e.submit(job("b-in", "b", gpu=2, priority=0, at=1))
    decisions = e.schedule()
    assert admitted(decisions) == ["b-in", "a-big"]


def test_backoff_delays_a_job_that_keeps_failing() -> None:
    clock = Clock(0.0)
    e = engine(tree(node("root", children=[node("q", max={GPU: 4})])), clock=clock, backoff_base_s=10.0)
    e.submit(job("gpu-run", "q", gpu=4, at=0))
    assert admitted(e.schedule(0.0)) == ["gpu-run"]
    e.submit(job("w", "q", gpu=1, at=1))
    assert admitted(e.schedule(1.0)) == []  # parked on the leaf's GPUs (first failure: no delay)
    e.submit(job("urgent", "q", gpu=4, at=2, priority=10))
    e.finish("gpu-run")  # wakes w, but urgent goes first and takes the room: w's second failure
    assert admitted(e.schedule(2.0)) == ["urgent"]
    assert e.workloads["w"].failures == 2
    e.finish("urgent")  # w would fit now, but it backs off until t=12, out of the wake-up index
    assert admitted(e.schedule(3.0)) == []
    assert e.next_wakeup() == 12.0
    assert admitted(e.schedule(12.0)) == ["w"]


def test_a_woken_job_still_blocked_elsewhere_is_not_tried() -> None:
    e = engine(tree(node("root", max={GPU: 4}, children=[node("q", max={GPU: 4, CPU: 4})])))
    e.submit(job("cpu-hog", "q", gpu=0, cpu=4))
    e.submit(job("gpu-run", "q", gpu=4, at=0))
    e.schedule()
    e.submit(job("w", "q", gpu=1, cpu=1, at=1))
    e.schedule()
    attempts = e.stats.attempts
    e.finish("gpu-run")  # frees GPUs, but w also waits for CPU: moved, not tried
    assert admitted(e.schedule()) == [] and e.stats.attempts == attempts and e.stats.moved == 1
    e.finish("cpu-hog")
    assert admitted(e.schedule()) == ["w"]


def test_bad_events_are_clear_errors_and_lose_nothing() -> None:
    e = engine(two_teams())
    e.submit(job("x", "a"))
    with pytest.raises(DuplicateJob):
        e.submit(job("x", "a"))
    with pytest.raises(UnknownQueue, match="unknown queue 'nope'"):
        e.submit(job("y", "nope"))
    with pytest.raises(UnknownQueue, match="not a leaf"):
        e.submit(job("z", "root"))
    assert admitted(e.schedule()) == ["x"]
    with pytest.raises(KeyError, match="no job 'ghost'"):
        e.finish("ghost")


def test_unknown_priority_class_is_an_error_on_that_job() -> None:
    classes = PriorityClasses({"high": 1000, "low": 10})
    assert classes.resolve("high") == (1000, "high")
    assert classes.resolve("250") == (250, None)
    assert classes.resolve(None) == (0, None)
    with pytest.raises(UnknownPriorityClass, match="unknown priority class 'urgent' \\(known: high, low\\)"):
        classes.resolve("urgent")


def test_cancel_pending_and_running() -> None:
    e = engine(tree(node("root", children=[node("q", max={GPU: 2})])))
    e.submit(job("run", "q", gpu=2))
    e.submit(job("wait", "q", gpu=2, at=1))
    e.submit(job("wait2", "q", gpu=2, at=2))
    e.schedule()
    e.cancel("wait")
    assert e.explain("wait2").position == 0
    e.cancel("run")
    assert admitted(e.schedule()) == ["wait2"]
    assert e.tree.nodes["q"].usage[GPU] == 2000


def test_restore_rebuilds_usage_without_admitting_twice() -> None:
    e = engine(two_teams())
    e.restore(job("running", "a", gpu=6), "default", admitted_at=5.0)
    with pytest.raises(DuplicateJob):
        e.submit(job("running", "a", gpu=6))
    e.submit(job("next", "a", gpu=4, at=6))
    assert admitted(e.schedule()) == []
    assert e.tree.nodes["a"].usage[GPU] == 6000
    e.finish("running")
    assert admitted(e.schedule()) == ["next"]


def test_tree_edit_preview_and_apply_while_jobs_run() -> None:
    e = engine(two_teams())
    e.submit(job("a0", "a", gpu=6))
    e.schedule()
    smaller = tree(
        node(
            "root",
            min={GPU: 8},
            max={GPU: 8},
            children=[node("a", min={GPU: 4}, max={GPU: 4}), node("b", min={GPU: 4}, max={GPU: 8})],
        )
    )
    effects = e.preview_tree(smaller)  # data; the front ends word it (scheduler.presentation)
    assert TreeDiff("~ root/a max.nvidia.com/gpu: 8 -> 4") in effects
    assert OverNewMax("root/a", GPU, 6000, 4000) in effects
    lines = tree_effect_lines(effects)
    assert lines[0] == "~ root/a max.nvidia.com/gpu: 8 -> 4"
    assert any("root/a uses 6 nvidia.com/gpu, over its new max 4" in line for line in lines)
    assert tree_effect_lines(e.preview_tree(QuotaTree.from_dict(e.tree.to_dict()))) == ["no change to the tree"]
    assert e.tree is not smaller and e.tree.nodes["a"].max[GPU] == 8000  # a preview changes nothing
    e.set_tree(smaller)
    assert e.tree.nodes["a"].usage[GPU] == 6000
    e.submit(job("a1", "a", gpu=1, at=1))
    assert admitted(e.schedule()) == []
    # Removing a leaf that holds jobs is refused and the old tree keeps working.
    without_a = tree(node("root", children=[node("b")]))
    with pytest.raises(QuotaTreeError, match="leaf a would be removed"):
        e.set_tree(without_a)
    assert e.tree is smaller


def test_rejected_jobs_after_a_tree_edit_leave_their_queue() -> None:
    e = engine(two_teams(), default_queueing="StrictFIFO")
    e.submit(job("run", "a", gpu=8))
    e.submit(job("big", "a", gpu=6, at=1))
    e.submit(job("small", "a", gpu=1, at=2))
    e.schedule()
    e.set_tree(
        tree(node("root", min={GPU: 8}, max={GPU: 8}, children=[node("a", min={GPU: 4}, max={GPU: 4}), node("b", min={GPU: 4})]))
    )
    e.finish("run")
    decisions = e.schedule()
    assert rejected(decisions) == ["big"] and admitted(decisions) == ["small"]


def test_a_capacity_change_wakes_only_the_jobs_waiting_on_that_unit() -> None:
    units = Units([Unit("ecs", "ecs", capacity=gpus(3))])
    e = engine(tree(node("root", children=[node("q", max={GPU: 8}), node("capped", max={GPU: 1})])), units)
    e.submit(job("run", "q", gpu=2))
    e.submit(job("capped-run", "capped", gpu=1, at=1))
    e.submit(job("wait-unit", "q", gpu=2, at=2))  # waits for the unit
    e.submit(job("wait-quota", "capped", gpu=1, at=3))  # waits for its leaf's max
    assert admitted(e.schedule()) == ["run", "capped-run"]
    attempts = e.stats.attempts
    e.set_unit_capacity("ecs", gpus(3))  # unchanged: nothing happens
    assert admitted(e.schedule()) == [] and e.stats.attempts == attempts
    e.set_unit_capacity("ecs", gpus(8))  # nodes joined: only the job waiting on the unit is tried
    assert admitted(e.schedule()) == ["wait-unit"] and e.stats.attempts == attempts + 1
    e.set_unit_capacity("ecs", gpus(1))  # they left: running jobs keep running; 2 GPUs can never fit now
    reject = e.submit(job("too-big-now", "q", gpu=2, at=9))
    assert reject is not None and reject.reason.code == ReasonCode.NEVER_FITS


def test_views_show_jobs_queues_nodes_and_units_as_snapshots() -> None:
    e = engine(two_teams())
    e.submit(job("big", "a", gpu=6))
    e.submit(job("next", "a", gpu=4, at=1))
    e.submit(job("low", "a", gpu=4, at=2, priority=-1))
    e.schedule()
    big = e.job("big")
    assert big is not None and big.state == WorkloadState.ADMITTED and big.unit is not None
    assert big.request[GPU] == 6000 and big.request[MAX_JOBS] == 1000  # as the engine counts it
    waiting = e.job("next")
    assert waiting is not None and waiting.state == WorkloadState.PENDING
    assert waiting.reason is not None and waiting.reason.code == ReasonCode.QUOTA_MAX_EXCEEDED
    assert e.job("nobody") is None
    queue_a = next(q for q in e.queue_views() if q.name == "a")
    assert queue_a.pending == ("next", "low") and queue_a.admitted == ("big",)
    nodes = {n.name: n for n in e.node_views()}
    assert nodes["a"].used[GPU] == 6000 and nodes["a"].borrowed == {GPU: 2000} and nodes["a"].parent == "root"
    assert nodes["root"].parent is None and not nodes["root"].is_leaf and nodes["root"].max == {GPU: 8000}
    assert [u.pods for u in e.unit_views()] == [1]
    assert e.counts() == {WorkloadState.ADMITTED: 1, WorkloadState.PENDING: 2}
    assert [j.uid for j in e.jobs(WorkloadState.PENDING)] and {j.uid for j in e.jobs()} == {"big", "next", "low"}
    # A view is a snapshot: the engine moving on does not change it; current_state follows the job itself.
    held = e.workloads["big"]
    e.finish("big")
    assert big.state == WorkloadState.ADMITTED and nodes["a"].used[GPU] == 6000
    assert not e.has_job("big") and e.current_state(held) is None
    assert e.current_state(e.workloads["next"]) == WorkloadState.PENDING
