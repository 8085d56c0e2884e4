"""Unit capacity from nodes (``scheduler.engine.capacity``): missing resources, pods no node can hold, policy edits."""

from __future__ import annotations

from engine_helpers import admitted, engine, gpus, job, node, rejected, tree

from rayqueue.queue.workload import ReasonCode, WorkloadState
from rayqueue.quota.quantity import CPU, GPU, MEMORY
from rayqueue.scheduler.engine.capacity import NodeCapacity, apply_node_capacity, unit_capacity
from rayqueue.scheduler.engine.units import Unit, Units

ECS = {"pool": "ecs"}
ACS = {"pool": "acs"}


def machine(name: str, labels: dict[str, str] | None = None, gpu: int = 0, cpu: int = 16) -> NodeCapacity:
    alloc = {CPU: cpu * 1000, MEMORY: 64 * 2**30 * 1000}
    if gpu:
        alloc[GPU] = gpu * 1000
    return NodeCapacity(name, dict(labels or {}), alloc)


def gang(uid: str, queue: str, pods: int, gpu_per_pod: int, at: float = 0.0):  # type: ignore[no-untyped-def]
    w = job(uid, queue, gpu=pods * gpu_per_pod, pods=pods, at=at)
    w.pod_request = gpus(gpu_per_pod)
    return w


def gpu_tree(max_gpu: int = 64):  # type: ignore[no-untyped-def]
    return tree(node("root", children=[node("team", max={GPU: max_gpu})]))


def ecs_then_acs() -> Units:
    return Units([Unit("ecs", "ecs", node_selector=dict(ECS)), Unit("acs", "acs", node_selector=dict(ACS))])


def test_a_resource_no_node_has_is_zero_and_the_job_waits_naming_it() -> None:
    e = engine(gpu_tree())
    apply_node_capacity(e, [machine("cpu-1"), machine("cpu-2")])
    assert e.submit(gang("train", "team", pods=2, gpu_per_pod=1)) is None
    assert admitted(e.schedule()) == []
    w = e.workloads["train"]
    assert w.state == WorkloadState.PENDING and w.reason is not None
    assert w.reason.code == ReasonCode.NO_CAPACITY_IN_UNITS
    assert "default has no nvidia.com/gpu" in w.reason.message
    # CPU work still runs: only what no node has is missing.
    cpu_job = job("cpu", "team", gpu=0, cpu="4")
    e.submit(cpu_job)
    assert admitted(e.schedule()) == ["cpu"]
    # A GPU node joins: the waiting job is admitted.
    apply_node_capacity(e, [machine("cpu-1"), machine("cpu-2"), machine("gpu-1", gpu=8)])
    assert admitted(e.schedule()) == ["train"]


def test_a_pod_larger_than_every_node_of_every_unit_is_rejected_as_never_fitting() -> None:
    e = engine(gpu_tree(), ecs_then_acs())
    # 16 GPUs in ECS in all, and 8 in ACS, but no node has more than 4.
    apply_node_capacity(e, [machine(f"ecs-{i}", ECS, gpu=4) for i in range(4)] + [machine("acs-1", ACS, gpu=4),
                                                                                   machine("acs-2", ACS, gpu=4)])
    reject = e.submit(gang("wide", "team", pods=1, gpu_per_pod=8))
    assert reject is not None and reject.reason.code == ReasonCode.NEVER_FITS
    assert "a pod needs 8 nvidia.com/gpu, its largest node has 4" in reject.reason.message
    # The same 8 GPUs in pods of 4 fit.
    assert e.submit(gang("narrow", "team", pods=2, gpu_per_pod=4)) is None
    assert admitted(e.schedule()) == ["narrow"]


def test_a_pod_too_big_for_the_first_units_nodes_goes_where_a_node_can_hold_it() -> None:
    e = engine(gpu_tree(), ecs_then_acs())
    apply_node_capacity(e, [machine(f"ecs-{i}", ECS, gpu=2) for i in range(8)] + [machine("acs-1", ACS, gpu=8)])
    assert e.submit(gang("big-pod", "team", pods=1, gpu_per_pod=8)) is None
    [d] = e.schedule()
    assert d.workload.uid == "big-pod" and e.workloads["big-pod"].unit == "acs"  # ECS has 16 GPUs, in 2s
    # ACS is now full; the next such job waits, and says that no ECS node can hold its pod.
    assert e.submit(gang("big-pod-2", "team", pods=1, gpu_per_pod=8, at=1)) is None
    assert admitted(e.schedule()) == []
    message = e.workloads["big-pod-2"].reason.message  # type: ignore[union-attr]
    assert "ecs: a pod needs 8 nvidia.com/gpu, its largest node has 2" in message
    assert e.units.by_name["ecs"].used_of(GPU) == 0


def test_a_pod_too_big_for_today_s_nodes_is_admitted_once_a_bigger_node_joins() -> None:
    e = engine(gpu_tree(), ecs_then_acs())
    apply_node_capacity(e, [machine("ecs-1", ECS, gpu=2), machine("ecs-2", ECS, gpu=2), machine("acs-1", ACS, gpu=8)])
    e.submit(gang("fill-acs", "team", pods=1, gpu_per_pod=8))
    assert admitted(e.schedule()) == ["fill-acs"]
    e.submit(gang("four", "team", pods=1, gpu_per_pod=4, at=1))
    assert admitted(e.schedule()) == []
    apply_node_capacity(e, [machine("ecs-1", ECS, gpu=2), machine("ecs-2", ECS, gpu=2), machine("ecs-3", ECS, gpu=4),
                            machine("acs-1", ACS, gpu=8)])
    assert admitted(e.schedule()) == ["four"] and e.workloads["four"].unit == "ecs"


def test_a_policy_edit_keeps_each_unit_at_what_its_nodes_have() -> None:
    nodes = [machine("ecs-1", ECS, gpu=4), machine("acs-1", ACS, gpu=8)]
    e = engine(gpu_tree(), ecs_then_acs())
    apply_node_capacity(e, nodes)
    e.submit(gang("a", "team", pods=1, gpu_per_pod=4))
    assert admitted(e.schedule()) == ["a"] and e.workloads["a"].unit == "ecs"
    # The admin edits the policy (a pod cap on ACS): new unit objects, capacities measured again.
    edited = Units([Unit("ecs", "ecs", node_selector=dict(ECS)), Unit("acs", "acs", node_selector=dict(ACS), max_pods=4)])
    e.set_units(edited)
    apply_node_capacity(e, nodes)
    assert e.units.by_name["ecs"].capacity == {CPU: 16000, MEMORY: 64 * 2**30 * 1000, GPU: 4000}
    e.submit(gang("b", "team", pods=1, gpu_per_pod=4, at=1))
    assert admitted(e.schedule()) == ["b"] and e.workloads["b"].unit == "acs"  # ECS is full
    assert e.units.by_name["ecs"].used_of(GPU) == 4000


def test_the_capacity_rule_per_kind_of_unit() -> None:
    declared = Unit("acs", "acs", capacity=gpus(32), node_selector={"type": "virtual-kubelet"})
    ecs = Unit("ecs", "ecs", node_selector=dict(ECS))
    nodes = [machine("ecs-1", ECS, gpu=4), machine("ecs-2", ECS, gpu=2), machine("other", gpu=8)]
    # Measured: the sum, the largest node per resource, and absent resources count as none.
    cap = unit_capacity(ecs, nodes)
    assert cap.complete and cap.capacity is not None and cap.capacity[GPU] == 6000 and cap.largest == {
        CPU: 16000, MEMORY: 64 * 2**30 * 1000, GPU: 4000}
    # An ECS unit whose selector matches no node has nothing; an elastic one keeps what it declares.
    assert unit_capacity(ecs, [machine("other", gpu=8)]).capacity == {}
    assert unit_capacity(declared, nodes).capacity == gpus(32) and not unit_capacity(declared, nodes).complete
    # No node information at all: what the policy declares, else unbounded.
    assert unit_capacity(ecs, None).capacity is None
    # A declared capacity stays declared: a resource it does not name is unbounded there.
    e = engine(gpu_tree(), Units([Unit("pool", "ecs", capacity=gpus(4))]))
    e.submit(job("cpu-heavy", "team", gpu=1, cpu="1000"))
    assert admitted(e.schedule()) == ["cpu-heavy"]
    assert rejected(e.schedule()) == []
