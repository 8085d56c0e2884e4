"""Hand-computed scenarios: every admit and finish time below was worked out on paper first.

Each scenario is small enough to follow in your head; the comments give the reasoning.
"""

from __future__ import annotations

from pathlib import Path

from simhelp import by_job, simulate, times, tree_yaml

from rayqueue.simulations.report import summarize

TWO_TEAMS = tree_yaml(
    """
    name: root
    min: {nvidia.com/gpu: 8}
    children:
      - {name: a, min: {nvidia.com/gpu: 4}, max: {nvidia.com/gpu: 8}}
      - {name: b, min: {nvidia.com/gpu: 4}, max: {nvidia.com/gpu: 8}}
    """
)
EIGHT_GPUS = """
units:
  - {name: ecs, resource: ecs, capacity: "1 nodes x 8 GPUs", pricePerGPUHour: 1.0}
"""


def test_borrowing_beyond_min_and_waiting_for_capacity(tmp_path: Path) -> None:
    # a1 takes 6 of 8 GPUs (borrowing 2 beyond a's min 4); a2 fits beside it up to a's max 8 (borrowing 4)
    # and ends at 1.5. b1 (2 GPUs) arrives at 3 and fits beside a1: 3..8. b2 arrives at 4: b is within its
    # min (2+2 <= 4) but the cluster is full; a is borrowing, so its only job a1 is reclaimed although a
    # drops to 0 < min 4 (a coarse job holds no guarantee hostage): b2 runs 4..9. a1 restarts when b1
    # ends and leaves 6 GPUs free: 8..18.
    result = simulate(
        tmp_path,
        tree=TWO_TEAMS,
        cluster=EIGHT_GPUS,
        trace="""
        job,submit,duration,queue,gpu
        a1,0,10,a,6
        a2,0.5,1,a,2
        b1,3,5,b,2
        b2,4,5,b,2
        """,
    )
    jobs = by_job(result)
    assert times(jobs["a1"]) == (0, 8, 18, "ecs", 1)
    assert times(jobs["a2"]) == (0.5, 0.5, 1.5, "ecs", 0)
    assert times(jobs["b1"]) == (3, 3, 8, "ecs", 0)
    assert times(jobs["b2"]) == (4, 4, 9, "ecs", 0)
    summary = summarize(result)
    # a borrows 2 GPUs for 4 s, 2 more for a2's 1 s, then 2 for a1's 10 s rerun: 30 GPU-seconds.
    assert summary["queues"]["a"]["borrowed_gpu_hours"] == round(30 / 3600, 6)
    assert summary["queues"]["b"]["borrowed_gpu_hours"] == 0
    assert summary["queues"]["b"]["wait_mean_s"] == 0
    # 6*4 (cut short) + 2*1 + 2*5 + 2*5 + 6*10 = 106 GPU-seconds on 8 GPUs over the 18 s makespan.
    assert summary["cluster"]["units"]["ecs"]["utilisation"] == round(106 / (8 * 18), 4)


def test_a_job_within_its_guarantee_goes_before_a_borrower(tmp_path: Path) -> None:
    # t=1: b1 (within b's min) reclaims a2 (taking it leaves a at its min); b1 runs 1..6, a2 re-queues.
    # t=2: b2 (within b's min too) finds the cluster full; a still borrows 2, so a1 is reclaimed although
    # a drops to 0 < min 4: b2 runs 2..7, and a2 restarts from scratch in the room left (2..3).
    # t=6: b1 ends; 6 GPUs are free and a1 restarts from scratch (6..16).
    result = simulate(
        tmp_path,
        tree=TWO_TEAMS,
        cluster=EIGHT_GPUS,
        trace="""
        job,submit,duration,queue,gpu
        a1,0,10,a,6
        a2,0.5,1,a,2
        b1,1,5,b,2
        b2,2,5,b,2
        """,
    )
    jobs = by_job(result)
    assert times(jobs["b1"]) == (1, 1, 6, "ecs", 0)
    assert times(jobs["b2"]) == (2, 2, 7, "ecs", 0)
    assert times(jobs["a2"]) == (0.5, 2, 3, "ecs", 1)
    assert times(jobs["a1"]) == (0, 6, 16, "ecs", 1)


def test_reclaim_preempts_borrowed_work_which_restarts_from_scratch(tmp_path: Path) -> None:
    # a fills the cluster (8 GPUs, 4 of them borrowed). At t=10 b1 asks for 4 GPUs within b's min: the
    # engine reclaims the newest borrowed job, a2. A simulated suspension is instant, so b1 starts at 10
    # and ends at 15; a2 re-queues and restarts from scratch at 15, ending at 15 + 100.
    result = simulate(
        tmp_path,
        tree=TWO_TEAMS,
        cluster=EIGHT_GPUS,
        trace="""
        job,submit,duration,queue,gpu
        a1,0,100,a,4
        a2,0,100,a,4
        b1,10,5,b,4
        """,
    )
    jobs = by_job(result)
    assert times(jobs["a1"]) == (0, 0, 100, "ecs", 0)
    assert times(jobs["a2"]) == (0, 15, 115, "ecs", 1)
    assert times(jobs["b1"]) == (10, 10, 15, "ecs", 0)
    summary = summarize(result)
    assert summary["queues"]["a"]["preemptions"] == 1
    # a2 ran 10 s, was preempted, then ran 100 s again: the wasted run counts as used GPU time.
    assert summary["queues"]["a"]["gpu_hours"] == round((4 * 100 + 4 * 110) / 3600, 6)


def test_reclaim_off_leaves_borrowed_work_alone(tmp_path: Path) -> None:
    result = simulate(
        tmp_path,
        tree=TWO_TEAMS,
        cluster=EIGHT_GPUS + "engine: {reclaim: false}\n",
        trace="""
        job,submit,duration,queue,gpu
        a1,0,100,a,4
        a2,0,100,a,4
        b1,10,5,b,4
        """,
    )
    jobs = by_job(result)
    assert times(jobs["a2"]) == (0, 0, 100, "ecs", 0)
    assert times(jobs["b1"]) == (100, 100, 105, "ecs", 0)


ONE_QUEUE_LOWER_PRIORITY = tree_yaml(
    """
    name: root
    children:
      - name: q
        max: {nvidia.com/gpu: 4}
        attributes: {preemptionPolicy: LowerPriority}
    """
)
CLASSES = """
units:
  - {name: ecs, resource: ecs, capacity: {nvidia.com/gpu: 4}}
engine:
  priorityClasses: {low: 10, high: 100}
"""


def test_higher_priority_preempts_lower_in_its_queue(tmp_path: Path) -> None:
    # lo holds all 4 GPUs; hi (priority 100) arrives at 5 and the queue allows LowerPriority preemption:
    # lo is suspended at 5, hi runs 5..15, lo restarts at 15 and runs its full 50 s again.
    result = simulate(
        tmp_path,
        tree=ONE_QUEUE_LOWER_PRIORITY,
        cluster=CLASSES,
        trace="""
        job,submit,duration,queue,gpu,priority
        lo,0,50,q,4,low
        hi,5,10,q,4,high
        """,
    )
    jobs = by_job(result)
    assert times(jobs["hi"]) == (5, 5, 15, "ecs", 0)
    assert times(jobs["lo"]) == (0, 15, 65, "ecs", 1)
    assert jobs["hi"].priority == 100 and jobs["hi"].priority_class == "high"


def test_priority_orders_the_queue_without_preemption(tmp_path: Path) -> None:
    # Policy Never: x runs 0..10. L (low) arrives at 1, H (high) at 2; both need the whole cluster.
    # Priority first: H runs 10..20, then L 20..30, although L came first.
    result = simulate(
        tmp_path,
        tree=ONE_QUEUE_LOWER_PRIORITY.replace("preemptionPolicy: LowerPriority", "preemptionPolicy: Never"),
        cluster=CLASSES,
        trace="""
        job,submit,duration,queue,gpu,priority
        x,0,10,q,4,low
        L,1,10,q,4,low
        H,2,10,q,4,high
        """,
    )
    jobs = by_job(result)
    assert times(jobs["x"]) == (0, 0, 10, "ecs", 0)
    assert times(jobs["H"]) == (10, 10, 20, "ecs", 0)
    assert times(jobs["L"]) == (20, 20, 30, "ecs", 0)


def _fifo_tree(strategy: str) -> str:
    return tree_yaml(
        f"""
        name: root
        children:
          - name: q
            max: {{nvidia.com/gpu: 4}}
            attributes: {{queueingStrategy: {strategy}}}
        """
    )


FIFO_TRACE = """
job,submit,duration,queue,gpu
q1,0,10,q,3
q2,1,10,q,2
q3,2,1,q,1
"""


def test_strict_fifo_head_blocks_the_queue(tmp_path: Path) -> None:
    # q2 (2 GPUs) does not fit beside q1 (3 of max 4). Under StrictFIFO the head blocks: q3 (1 GPU) would
    # fit but waits behind q2. At 10 q1 ends: q2 and q3 are admitted together; q3 ends at 11.
    result = simulate(tmp_path, tree=_fifo_tree("StrictFIFO"), cluster=EIGHT_GPUS, trace=FIFO_TRACE)
    jobs = by_job(result)
    assert times(jobs["q2"]) == (10, 10, 20, "ecs", 0)
    assert times(jobs["q3"]) == (10, 10, 11, "ecs", 0)


def test_best_effort_fifo_lets_a_smaller_job_past(tmp_path: Path) -> None:
    result = simulate(tmp_path, tree=_fifo_tree("BestEffortFIFO"), cluster=EIGHT_GPUS, trace=FIFO_TRACE)
    jobs = by_job(result)
    assert times(jobs["q3"]) == (2, 2, 3, "ecs", 0)
    assert times(jobs["q2"]) == (10, 10, 20, "ecs", 0)


OPEN_TREE = tree_yaml(
    """
    name: root
    children:
      - {name: q, namespaces: [team-q]}
    """
)
ECS_ACS = """
units:
  - {name: ecs, resource: ecs, capacity: {nvidia.com/gpu: 4}, pricePerGPUHour: 1.0}
  - {name: acs, resource: acs, elastic: true, pricePerGPUHour: 3.6}
"""


def _policy(when: str, acs_max: int | None = None, timeout: str | None = None) -> str:
    acs = "  - resource: acs\n" + (f"    max: {acs_max}\n" if acs_max is not None else "")
    t = f"\n    timeout: {timeout}" if timeout else ""
    return (
        "apiVersion: scheduling.alibabacloud.com/v1alpha1\nkind: ResourcePolicy\nmetadata: {name: p}\nspec:\n"
        "  units:\n  - resource: ecs\n" + acs + f"  whenTryNextUnits:\n    policy: {when}{t}\n"
    )


def test_ecs_full_then_acs_and_its_cost(tmp_path: Path) -> None:
    # j1 fills ECS (4 GPUs) 0..10; j2 arrives at 1, ECS lacks room, so it spills to ACS 1..11. j3 at 12
    # finds ECS free again. ACS: 2 GPUs x 10 s = 20 GPU-seconds at 3.6 per GPU-hour = 0.02.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS,
        policy=_policy("LackResourceOrExceedMax"),
        trace="""
        job,submit,duration,namespace,gpu
        j1,0,10,team-q,4
        j2,1,10,team-q,2
        j3,12,1,team-q,2
        """,
    )
    jobs = by_job(result)
    assert times(jobs["j1"]) == (0, 0, 10, "ecs", 0)
    assert times(jobs["j2"]) == (1, 1, 11, "acs", 0)
    assert times(jobs["j3"]) == (12, 12, 13, "ecs", 0)
    c = summarize(result)["cluster"]
    assert c["acs_gpu_hours"] == round(20 / 3600, 6)
    assert c["acs_cost"] == round(20 / 3600 * 3.6, 4) == 0.02
    # ECS is prepaid: 4 GPUs for the whole 13 s makespan at 1.0 per GPU-hour.
    assert c["prepaid_cost"] == round(4 * 13 / 3600, 4)


def test_acs_with_a_capacity_is_still_billed_per_use(tmp_path: Path) -> None:
    # ACS capped at 4 GPUs (an ACS quota, not prepaid nodes). j1 fills ECS 0..10; j2 (2 GPUs) spills to ACS
    # 1..11; j3 (4 GPUs) finds ECS full and only 2 GPUs left on ACS, so it waits for ECS: 10..20.
    # ACS costs what it ran (2 GPUs x 10 s at 3.6 per GPU-hour = 0.02), not 4 GPUs x 20 s.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS.replace("elastic: true", "capacity: {nvidia.com/gpu: 4}"),
        policy=_policy("LackResourceOrExceedMax"),
        trace="""
        job,submit,duration,namespace,gpu
        j1,0,10,team-q,4
        j2,1,10,team-q,2
        j3,2,10,team-q,4
        """,
    )
    jobs = by_job(result)
    assert times(jobs["j2"]) == (1, 1, 11, "acs", 0)
    assert times(jobs["j3"]) == (10, 10, 20, "ecs", 0)
    c = summarize(result)["cluster"]
    acs = c["units"]["acs"]
    assert (acs["billing"], acs["cost"], acs["utilisation"]) == ("on demand", 0.02, round(20 / (4 * 20), 4))
    assert c["acs_cost"] == c["elastic_cost"] == 0.02
    assert c["prepaid_cost"] == round(4 * 20 / 3600, 4)  # ECS only


def test_acs_max_pods_makes_a_job_wait(tmp_path: Path) -> None:
    # ACS allows at most 2 pods. j1 fills ECS 0..10; j2 (2 pods) goes to ACS 1..6; j3 (1 pod) finds ECS
    # full and ACS at its max, so it waits for j2: ACS 6..11 (ECS only frees at 10).
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS,
        policy=_policy("LackResourceOrExceedMax", acs_max=2),
        trace="""
        job,submit,duration,namespace,gpu,pods
        j1,0,10,team-q,4,1
        j2,1,5,team-q,1,2
        j3,2,5,team-q,1,1
        """,
    )
    jobs = by_job(result)
    assert times(jobs["j2"]) == (1, 1, 6, "acs", 0)
    assert times(jobs["j3"]) == (6, 6, 11, "acs", 0)


def test_timeout_or_exceed_max_waits_for_ecs_then_spills(tmp_path: Path) -> None:
    # TimeoutOrExceedMax with a 30 s timeout: j2 waits for ECS from 10 until its deadline 40, then goes to
    # ACS and ends at 50. Nothing else happens at 40: the engine's own timer wakes the simulator.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS,
        policy=_policy("TimeoutOrExceedMax", timeout="30s"),
        trace="""
        job,submit,duration,namespace,gpu
        j1,0,100,team-q,4
        j2,10,10,team-q,2
        """,
    )
    jobs = by_job(result)
    assert times(jobs["j2"]) == (40, 40, 50, "acs", 0)


def test_a_deadline_that_passes_after_ecs_freed_up_changes_nothing(tmp_path: Path) -> None:
    # TimeoutOrExceedMax with a 300 s timeout: j1 frees ECS at 20, before j2's deadline (10 + 300), so j2
    # runs on ECS 20..25. The deadline timer still fires at 310 and finds nothing to do: the makespan ends
    # at 25, not 310, so ECS is 90% used ((4 x 20 + 2 x 5) / (4 x 25)) and its prepaid cost covers 25 s.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS,
        policy=_policy("TimeoutOrExceedMax", timeout="300s"),
        trace="""
        job,submit,duration,namespace,gpu
        j1,0,20,team-q,4
        j2,10,5,team-q,2
        """,
    )
    assert times(by_job(result)["j2"]) == (20, 20, 25, "ecs", 0)
    c = summarize(result)["cluster"]
    assert c["makespan_s"] == 25
    assert c["units"]["ecs"]["utilisation"] == 0.9
    assert c["prepaid_cost"] == round(4 * 25 / 3600, 4)


def test_exceed_max_waits_for_ecs(tmp_path: Path) -> None:
    # ExceedMax moves on only when a unit's max pods is exceeded, never for lack of resources.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=ECS_ACS,
        policy=_policy("ExceedMax"),
        trace="""
        job,submit,duration,namespace,gpu
        j1,0,100,team-q,4
        j2,10,10,team-q,2
        """,
    )
    assert times(by_job(result)["j2"]) == (100, 100, 110, "ecs", 0)


def test_a_job_no_unit_can_hold_is_rejected_and_counted(tmp_path: Path) -> None:
    # 16 GPUs fit the quota (no max) but no unit: ECS holds 8 and there is no elastic unit.
    result = simulate(
        tmp_path,
        tree=OPEN_TREE,
        cluster=EIGHT_GPUS,
        trace="""
        job,submit,duration,queue,gpu
        big,0,10,q,16
        ok,1,10,q,1
        """,
    )
    jobs = by_job(result)
    assert jobs["big"].status == "rejected" and "larger than every unit" in jobs["big"].reason
    assert times(jobs["ok"]) == (1, 1, 11, "ecs", 0)
    assert summarize(result)["trace"]["rejected"] == 1
