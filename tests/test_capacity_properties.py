"""A state machine that interleaves what the cluster and its users do, and checks after every step that
nothing is admitted beyond a quota ``max``, a unit's capacity or its largest node, that each unit holds
exactly what its nodes have, and that every report of usage (the ElasticQuotaTree status, the metrics,
``rayqueue status``) equals the sum of the admitted requests.

It drives the engine with the code the front ends use: ``scheduler.engine.capacity`` for nodes and policy
edits, the operator's ``tree_status`` renderer, the shared ``Metrics.update`` and the standalone
``status_view`` rendered by the CLI's ``status_tables``.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rayqueue.queue.workload import Workload, WorkloadState
from rayqueue.quota.quantity import CPU, GPU, MAX_JOBS, MILLI, format_quantity
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.capacity import NodeCapacity, apply_node_capacity
from rayqueue.scheduler.engine.decisions import Admit
from rayqueue.scheduler.engine.units import Unit, Units
from rayqueue.scheduler.metrics import Metrics
from rayqueue.scheduler.operator.controller import tree_status
from rayqueue.scheduler.service.core import status_view
from rayqueue.scheduler.service.tables import display_quantity, status_tables

HELD = (WorkloadState.ADMITTED, WorkloadState.PREEMPTING)
POOLS = ("ecs", "acs")


def quota_tree(maxes: dict[str, dict[str, int]]) -> QuotaTree:
    def limits(name: str) -> dict[str, Any]:
        return {r: v for r, v in maxes.get(name, {}).items()}

    children = [{"name": team, "namespaces": [team], "max": limits(team),
                 "attributes": {"preemptionPolicy": "LowerPriority"}} for team in ("a", "b")]
    return QuotaTree.from_dict({
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "metadata": {"name": "t"},
        "spec": {"root": {"name": "root", "max": limits("root"), "children": children}},
    })


def policy(kind: str, acs_pods: int) -> Units:
    if kind == "none":
        return Units.single(None)
    return Units([Unit("ecs", "ecs", node_selector={"pool": "ecs"}),
                  Unit("acs", "acs", node_selector={"pool": "acs"}, max_pods=acs_pods)])


class CapacityMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.maxes: dict[str, dict[str, int]] = {"root": {GPU: 12, MAX_JOBS: 6}, "a": {GPU: 8}, "b": {GPU: 8}}
        self.nodes: dict[str, NodeCapacity] = {}
        self.engine = Engine(quota_tree(self.maxes), policy("none", 4),
                             EngineConfig(backoff_base_s=0.0, default_preemption="LowerPriority"), clock=lambda: 0.0)
        self.metrics = Metrics()
        self.names = itertools.count()
        self.admitted_now: list[Workload] = []
        self._measure()

    # ------------------------------------------------------------------ what happens

    def _measure(self) -> None:
        apply_node_capacity(self.engine, list(self.nodes.values()) or None)

    def _cycle(self) -> None:
        self.admitted_now = [d.workload for d in self.engine.schedule(0.0) if isinstance(d, Admit)]

    @rule(queue=hs.sampled_from(["a", "b"]), pods=hs.integers(1, 3), gpu=hs.sampled_from([0, 1, 3, 4]),
          cpu=hs.integers(1, 8), priority=hs.integers(0, 2))
    def submit(self, queue: str, pods: int, gpu: int, cpu: int, priority: int) -> None:
        per_pod = {CPU: cpu * 500, GPU: gpu * MILLI}
        per_pod = {r: v for r, v in per_pod.items() if v}
        w = Workload(uid=f"j{next(self.names)}", queue=queue, request={r: v * pods for r, v in per_pod.items()},
                     pods=pods, priority=priority, pod_request=per_pod)
        self.engine.submit(w)
        self._cycle()

    @precondition(lambda self: any(w.state in HELD for w in self.engine.workloads.values()))
    @rule(data=hs.data())
    def finish(self, data: hs.DataObject) -> None:
        held = sorted(uid for uid, w in self.engine.workloads.items() if w.state in HELD)
        self.engine.finish(data.draw(hs.sampled_from(held)))
        self._cycle()

    @precondition(lambda self: any(w.state == WorkloadState.PREEMPTING for w in self.engine.workloads.values()))
    @rule(data=hs.data())
    def confirm_suspended(self, data: hs.DataObject) -> None:
        stopping = sorted(uid for uid, w in self.engine.workloads.items() if w.state == WorkloadState.PREEMPTING)
        self.engine.suspended(data.draw(hs.sampled_from(stopping)), now=0.0)
        self._cycle()

    @rule(node=hs.sampled_from(["root", "a", "b"]), resource=hs.sampled_from([GPU, CPU, MAX_JOBS]),
          value=hs.one_of(hs.none(), hs.integers(0, 16)))
    def edit_tree(self, node: str, resource: str, value: int | None) -> None:
        limits = self.maxes.setdefault(node, {})
        if value is None:
            limits.pop(resource, None)
        else:
            limits[resource] = value
        self.engine.set_tree(quota_tree(self.maxes))
        self._cycle()

    @rule(kind=hs.sampled_from(["none", "ecs-then-acs"]), acs_pods=hs.integers(1, 6))
    def edit_policy(self, kind: str, acs_pods: int) -> None:
        self.engine.set_units(policy(kind, acs_pods))
        self._measure()
        self._cycle()

    @rule(name=hs.sampled_from(["n1", "n2", "n3", "n4"]), pool=hs.sampled_from(POOLS),
          gpu=hs.sampled_from([0, 2, 2, 4, 8]), cpu=hs.sampled_from([0, 4, 16, 16]),
          gone=hs.sampled_from([False, False, False, True]))
    def change_node(self, name: str, pool: str, gpu: int, cpu: int, gone: bool) -> None:
        if gone:
            self.nodes.pop(name, None)
        else:
            alloc = {r: v for r, v in {GPU: gpu * MILLI, CPU: cpu * MILLI}.items() if v}
            self.nodes[name] = NodeCapacity(name, {"pool": pool}, alloc)
        self._measure()
        self._cycle()

    # ------------------------------------------------------------------ what must hold

    def _expected_usage(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {node.name: {} for node in self.engine.tree}
        for w in self.engine.workloads.values():
            if w.state not in HELD:
                continue
            for node in self.engine.tree.leaves[w.queue].lineage:
                acc = out[node.name]
                for r, v in w.request.items():
                    acc[r] = acc.get(r, 0) + v
        return out

    @invariant()
    def nothing_admitted_beyond_a_max_a_capacity_or_a_node(self) -> None:
        # What an edit or a node leaving lowered may leave running jobs above a limit; an admission never
        # may: after the cycle, every limit on the path and the unit of each job it admitted still holds.
        for w in self.admitted_now:
            if w.state not in HELD:
                continue
            for node in self.engine.tree.leaves[w.queue].lineage:
                for r in w.request:
                    limit = node.max.get(r)
                    assert limit is None or node.used_of(r) <= limit, f"{w.uid}: {node.name} over max {r}"
            unit = self.engine.units.by_name[w.unit or ""]
            total, largest = self._cluster_has(unit)
            if total is None:
                continue  # elastic, or no node known: nothing bounds it but the tree
            for r in w.request:
                if r != MAX_JOBS:
                    assert unit.used_of(r) <= total.get(r, 0), f"{w.uid}: {unit.name} over capacity {r}"
            for r, v in (w.pod_request or {}).items():
                assert v <= largest.get(r, 0), f"{w.uid}: a pod of {v} {r} on {unit.name}"

    def _cluster_has(self, unit: Unit) -> tuple[dict[str, int] | None, dict[str, int]]:
        """What the modelled nodes give ``unit`` (None: unbounded), and its largest node per resource."""
        if not self.nodes:
            return None, {}
        chosen = [n for n in self.nodes.values() if all(n.labels.get(k) == v for k, v in unit.node_selector.items())]
        if unit.resource == "acs" and not chosen:
            return None, {}
        total: dict[str, int] = {}
        largest: dict[str, int] = {}
        for n in chosen:
            for r, v in n.allocatable.items():
                total[r] = total.get(r, 0) + v
                largest[r] = max(largest.get(r, 0), v)
        return total, largest

    @invariant()
    def each_unit_holds_what_its_nodes_have(self) -> None:
        for unit in self.engine.units.units:
            total, largest = self._cluster_has(unit)
            assert unit.capacity == total, unit.name
            if total is not None:
                assert unit.complete and unit.largest == largest, unit.name

    @invariant()
    def every_report_of_usage_is_the_sum_of_the_admitted_requests(self) -> None:
        expected = self._expected_usage()
        tree = self.engine.tree
        for node in tree:
            want = {r: v for r, v in expected[node.name].items() if v}
            assert node.usage == want, node.name
        # The ElasticQuotaTree status the operator writes.
        status = tree_status(self.engine)["nodes"]
        for node in tree:
            shown = status[node.name]["used"]
            for r in set(shown) | set(expected[node.name]) | set(node.min) | set(node.max):
                v = expected[node.name].get(r, 0)
                if not v and r not in node.min and r not in node.max:
                    assert r not in shown, (node.name, r)
                    continue
                text = str(v // MILLI) if r == MAX_JOBS else format_quantity(v, r)
                assert shown[r] == text, (node.name, r, shown[r], text)
        # The usage gauge both front ends export: every series it has equals the sum, 0 included.
        self.metrics.update(self.engine)
        series: dict[tuple[str, str], float] = {}
        for metric in self.metrics.registry.collect():
            if metric.name == "rayqueue_quota_resource_usage":
                for sample in metric.samples:
                    series[(sample.labels["quota_node"], sample.labels["resource"])] = sample.value
        for node in tree:
            for r, v in expected[node.name].items():
                if v:
                    assert (node.name, r) in series, (node.name, r)
        for (name, r), value in series.items():
            assert value == expected.get(name, {}).get(r, 0) / MILLI, (name, r, value)
        # What `rayqueue status` shows: the "usage" of each "usage / min / max" cell.
        view = status_view(self.engine, "test")
        table = status_tables(view)[0]
        columns = {str(c.header): list(c._cells) for c in table.columns}
        for row, node_view in enumerate(view["nodes"]):
            for r in node_view["resources"]:
                cell = str(columns[r][row])
                assert cell.split(" / ")[0] == display_quantity(expected[node_view["name"]].get(r, 0), r), (
                    node_view["name"], r, cell)


CapacityMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCapacityMachine = CapacityMachine.TestCase


def test_the_machine_s_invariants_hold_where_a_pod_is_larger_than_every_node() -> None:
    """A sequence random runs reach only rarely: two 2-GPU nodes, a pod of 3 GPUs (4 in the pool)."""
    m = CapacityMachine()
    m.change_node("n1", "ecs", gpu=2, cpu=16, gone=False)
    m.change_node("n2", "ecs", gpu=2, cpu=16, gone=False)
    m.submit("a", pods=1, gpu=3, cpu=1, priority=0)
    m.nothing_admitted_beyond_a_max_a_capacity_or_a_node()
    m.every_report_of_usage_is_the_sum_of_the_admitted_requests()
    assert "j0" not in m.engine.workloads  # rejected: no node of any unit could run the pod
    m.edit_policy("ecs-then-acs", acs_pods=2)
    m.change_node("n3", "acs", gpu=4, cpu=16, gone=False)
    m.submit("a", pods=1, gpu=3, cpu=1, priority=0)
    m.nothing_admitted_beyond_a_max_a_capacity_or_a_node()
    m.each_unit_holds_what_its_nodes_have()
    assert m.engine.workloads["j1"].unit == "acs"  # the only unit with a node big enough
    m.teardown()
