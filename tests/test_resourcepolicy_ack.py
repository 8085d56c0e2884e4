"""ACK's ResourcePolicy as written for ACK: TimeoutOrExceedMax's default timeout, LackResourceAndNoTerminating."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import jsonschema
import pytest
import yaml
from engine_helpers import admitted, engine, gpus, job, node, preempted, tree
from simhelp import by_job, simulate, times, tree_yaml

from rayqueue.queue.workload import ReasonCode, WorkloadState
from rayqueue.quota.quantity import GPU
from rayqueue.scheduler.engine.decisions import Admit
from rayqueue.scheduler.workloads.resourcepolicy import (
    ResourcePolicyError,
    Unit,
    Units,
    WhenTryNext,
    load_resource_policy_text,
)

CRD = Path(__file__).resolve().parents[1] / "crds" / "scheduling.alibabacloud.com_resourcepolicies.yaml"


def _policy(when: str) -> str:
    return f"""
apiVersion: scheduling.alibabacloud.com/v1alpha1
kind: ResourcePolicy
metadata: {{name: rp, namespace: default}}
spec:
  selector: {{app: ray}}
  units:
  - resource: ecs
  - resource: acs
    max: 20
  whenTryNextUnits: {when}
"""


# ------------------------------------------------------------------ the manifest


def test_timeout_or_exceed_max_without_a_timeout_waits_fifteen_minutes_as_in_ack() -> None:
    units = load_resource_policy_text(_policy("{policy: TimeoutOrExceedMax}"))
    assert units.when_try_next == "TimeoutOrExceedMax" and units.timeout_s == 15 * 60


@pytest.mark.parametrize("timeout, seconds", [("60s", 60), ("15m", 900), ("1h30m", 5400), ("250ms", 0.25)])
def test_a_timeout_with_its_unit_is_read(timeout: str, seconds: float) -> None:
    units = load_resource_policy_text(_policy(f"{{policy: TimeoutOrExceedMax, timeout: '{timeout}'}}"))
    assert units.timeout_s == seconds


@pytest.mark.parametrize("timeout", ["'60'", "60", "soon", "'-5m'", "''"])
def test_a_timeout_without_a_unit_or_malformed_is_an_error_naming_the_field(timeout: str) -> None:
    with pytest.raises(ResourcePolicyError) as err:
        load_resource_policy_text(_policy(f"{{policy: TimeoutOrExceedMax, timeout: {timeout}}}"))
    message = str(err.value)
    assert "spec.whenTryNextUnits.timeout" in message
    assert "\n" not in message.split("spec.whenTryNextUnits.timeout", 1)[1].strip()  # one line for the field
    if timeout in ("'60'", "60"):
        assert "has no unit (e.g. 60s, 15m)" in message


def test_lack_resource_and_no_terminating_is_accepted() -> None:
    units = load_resource_policy_text(_policy("{policy: LackResourceAndNoTerminating}"))
    assert units.when_try_next == "LackResourceAndNoTerminating"


def test_every_policy_of_the_crd_is_one_the_engine_applies_and_the_reverse() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    enum = schema["properties"]["spec"]["properties"]["whenTryNextUnits"]["properties"]["policy"]["enum"]
    assert set(enum) == set(get_args(WhenTryNext))
    for policy in enum:
        manifest = yaml.safe_load(_policy(f"{{policy: {policy}}}"))
        jsonschema.validate(manifest, schema)
        assert load_resource_policy_text(_policy(f"{{policy: {policy}}}")).when_try_next == policy


# ------------------------------------------------------------------ LackResourceAndNoTerminating in the engine


def _ecs_then_acs(when: str = "LackResourceAndNoTerminating") -> Units:
    return Units([Unit("ecs", "ecs", capacity=gpus(8)), Unit("acs", "acs", max_pods=10)], when)  # type: ignore[arg-type]


def _teams(a_max: int = 4) -> object:
    # Team a may hold a_max GPUs and preempts lower priority in its own queue; team b may hold 16.
    return tree(
        node(
            "root",
            children=[
                node("a", max={GPU: a_max}, attributes={"preemptionPolicy": "LowerPriority"}),
                node("b", max={GPU: 16}),
            ],
        )
    )


def _placed(decisions: list) -> list[tuple[str, str]]:
    return [(d.workload.uid, d.placement.unit) for d in decisions if isinstance(d, Admit)]


def test_a_job_waits_for_terminating_pods_on_ecs_instead_of_spilling_to_acs() -> None:
    e = engine(_teams(), _ecs_then_acs())  # type: ignore[arg-type]
    e.submit(job("v", "a", gpu=4, priority=0, pods=2))
    e.submit(job("x", "b", gpu=4))
    assert _placed(e.schedule(0)) == [("v", "ecs"), ("x", "ecs")]  # ECS is full
    # p (high priority, team a at its max) preempts v; j (team b) finds ECS full while v's 2 pods terminate.
    e.submit(job("p", "a", gpu=2, priority=10, at=1))
    e.submit(job("j", "b", gpu=2, at=1))
    assert preempted(e.schedule(1)) == ["v"]
    why = e.explain("j").reason
    assert why is not None and why.code == ReasonCode.NO_CAPACITY_IN_UNITS
    assert why.message == (
        "ecs full (8/8 nvidia.com/gpu in use, 2 requested); "
        "waiting for 2 terminating pods on unit ecs to go before trying the next unit"
    )
    assert e.workloads["j"].state == WorkloadState.PENDING
    # v is confirmed gone: its 4 GPUs on ECS take both p and j.
    e.suspended("v", 2)
    assert sorted(_placed(e.schedule(2))) == [("j", "ecs"), ("p", "ecs")]


def test_without_terminating_pods_it_spills_like_lack_resource_or_exceed_max() -> None:
    for when in ("LackResourceAndNoTerminating", "LackResourceOrExceedMax"):
        e = engine(_teams(), _ecs_then_acs(when))  # type: ignore[arg-type]
        e.submit(job("x", "b", gpu=8))
        e.submit(job("j", "b", gpu=2, at=1))
        assert _placed(e.schedule(0)) == [("x", "ecs"), ("j", "acs")], when


def test_lack_resource_or_exceed_max_spills_while_pods_terminate() -> None:
    # The same moment as above under the default policy: j goes to ACS at once.
    e = engine(_teams(), _ecs_then_acs("LackResourceOrExceedMax"))  # type: ignore[arg-type]
    e.submit(job("v", "a", gpu=4, pods=2))
    e.submit(job("x", "b", gpu=4))
    e.schedule(0)
    e.submit(job("p", "a", gpu=2, priority=10, at=1))
    e.submit(job("j", "b", gpu=2, at=1))
    decisions = e.schedule(1)
    assert preempted(decisions) == ["v"] and _placed(decisions) == [("j", "acs")]


def test_the_confirmation_wakes_the_waiting_job_even_when_ecs_stays_full() -> None:
    # Team a may hold 2 GPUs. v frees 2, which p takes; j (4 GPUs) cannot use ECS, and with nothing
    # terminating any more it spills to ACS in the cycle after the confirmation, without waiting for
    # another release.
    e = engine(_teams(a_max=2), _ecs_then_acs())  # type: ignore[arg-type]
    e.submit(job("v", "a", gpu=2))
    e.submit(job("x", "b", gpu=6))
    e.schedule(0)
    e.submit(job("p", "a", gpu=2, priority=10, at=1))
    e.submit(job("j", "b", gpu=4, at=1))
    assert preempted(e.schedule(1)) == ["v"]
    assert "waiting for 1 terminating pod on unit ecs" in str(e.explain("j").reason)
    assert admitted(e.schedule(1.5)) == []  # still terminating: nothing moves
    e.suspended("v", 2)
    assert sorted(_placed(e.schedule(2))) == [("j", "acs"), ("p", "ecs")]


def test_a_finished_victim_also_ends_the_wait() -> None:
    # A preempted job that finishes (or is deleted) before its suspension is confirmed is gone too.
    e = engine(_teams(), _ecs_then_acs())  # type: ignore[arg-type]
    e.submit(job("v", "a", gpu=4))
    e.submit(job("x", "b", gpu=4))
    e.schedule(0)
    e.submit(job("p", "a", gpu=2, priority=10, at=1))
    e.submit(job("j", "b", gpu=2, at=1))
    assert preempted(e.schedule(1)) == ["v"]
    e.finish("v")
    assert sorted(_placed(e.schedule(2))) == [("j", "ecs"), ("p", "ecs")]
    assert e.units.by_name["ecs"].terminating_pods == 0


def test_swapping_the_policy_keeps_the_terminating_pods() -> None:
    e = engine(_teams(), _ecs_then_acs())  # type: ignore[arg-type]
    e.submit(job("v", "a", gpu=4, pods=3))
    e.submit(job("x", "b", gpu=4))
    e.schedule(0)
    e.submit(job("p", "a", gpu=2, priority=10, at=1))
    assert preempted(e.schedule(1)) == ["v"]
    e.set_units(_ecs_then_acs())
    assert e.units.by_name["ecs"].terminating_pods == 3
    e.submit(job("j", "b", gpu=2, at=2))
    assert _placed(e.schedule(2)) == []
    e.suspended("v", 3)
    assert sorted(_placed(e.schedule(3))) == [("j", "ecs"), ("p", "ecs")]
    assert e.units.by_name["ecs"].terminating_pods == 0


# ------------------------------------------------------------------ through the simulator

TEAMS = tree_yaml(
    """
    name: root
    children:
      - {name: a, max: {nvidia.com/gpu: 4}, attributes: {preemptionPolicy: LowerPriority}}
      - {name: b, max: {nvidia.com/gpu: 16}}
    """
)
CLUSTER = """
units:
  - {name: ecs, resource: ecs, capacity: "1 nodes x 8 GPUs", pricePerGPUHour: 1.0}
  - {name: acs, resource: acs, elastic: true, pricePerGPUHour: 4.0}
engine:
  priorityClasses: {low: 0, high: 10}
"""
TRACE = """
job,submit,duration,queue,gpu,pods,priority
v,0,100,a,4,2,low
x,0,100,b,4,1,low
p,10,50,a,2,1,high
j,10,50,b,2,1,low
"""


def _sim_policy(when: str) -> str:
    return f"""
apiVersion: scheduling.alibabacloud.com/v1alpha1
kind: ResourcePolicy
metadata: {{name: rp}}
spec:
  units:
  - resource: ecs
  - resource: acs
  whenTryNextUnits: {{policy: {when}}}
"""


def test_simulator_a_terminating_victim_keeps_the_job_on_ecs(tmp_path: Path) -> None:
    # At 10 p preempts v (team a is at its max). j arrives with ECS full: under LackResourceAndNoTerminating
    # it waits for v's pods, which the simulator confirms gone at once, and runs on ECS beside p; under
    # LackResourceOrExceedMax it spills to ACS in the cycle that preempted v.
    result = simulate(tmp_path, tree=TEAMS, cluster=CLUSTER, trace=TRACE, policy=_sim_policy("LackResourceAndNoTerminating"))
    jobs = by_job(result)
    assert times(jobs["p"]) == (10, 10, 60, "ecs", 0)
    assert times(jobs["j"]) == (10, 10, 60, "ecs", 0)
    assert jobs["v"].preemptions == 1
    spill = tmp_path / "spill"
    spill.mkdir()
    result = simulate(spill, tree=TEAMS, cluster=CLUSTER, trace=TRACE, policy=_sim_policy("LackResourceOrExceedMax"))
    jobs = by_job(result)
    assert times(jobs["j"]) == (10, 10, 60, "acs", 0)
    assert times(jobs["p"]) == (10, 10, 60, "ecs", 0)
