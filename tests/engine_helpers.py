"""Small builders so engine tests read like the scenario they prove."""

from __future__ import annotations

from typing import Any

from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import GPU, parse_resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine, EngineConfig
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt, Reject
from rayqueue.scheduler.workloads.resourcepolicy import Units


def node(name: str, min: dict | None = None, max: dict | None = None, children: list | None = None, **extra: Any) -> dict:
    d: dict[str, Any] = {"name": name}
    if min is not None:
        d["min"] = min
    if max is not None:
        d["max"] = max
    if children:
        d["children"] = children
    d.update(extra)
    return d


def tree(root: dict) -> QuotaTree:
    return QuotaTree.from_dict(
        {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "spec": {"root": root}}
    )


def gpus(n: int) -> dict[str, int]:
    return {GPU: n * 1000}


def job(uid: str, queue: str, gpu: int = 1, priority: int = 0, at: float = 0.0, pods: int = 1, **res: Any) -> Workload:
    request = gpus(gpu) if gpu else {}
    request.update(parse_resources(res))
    return Workload(uid=uid, queue=queue, request=request, pods=pods, priority=priority, submitted_at=at)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(t: QuotaTree, units: Units | None = None, clock: Clock | None = None, **config: Any) -> Engine:
    config.setdefault("backoff_base_s", 0.0)
    return Engine(t, units, EngineConfig(**config), clock=clock or Clock())


def admitted(decisions: list[Decision]) -> list[str]:
    return [d.workload.uid for d in decisions if isinstance(d, Admit)]


def preempted(decisions: list[Decision]) -> list[str]:
    return [d.workload.uid for d in decisions if isinstance(d, Preempt)]


def rejected(decisions: list[Decision]) -> list[str]:
    return [d.workload.uid for d in decisions if isinstance(d, Reject)]


def two_teams(strategy: str = "BestEffortFIFO", preemption: str = "Never", total: int = 8) -> QuotaTree:
    """root (min=max=total GPUs) with teams a and b, each guaranteed half and allowed all."""
    half = total // 2
    attrs = {"queueingStrategy": strategy, "preemptionPolicy": preemption}
    return tree(
        node(
            "root",
            min={GPU: total},
            max={GPU: total},
            children=[
                node("a", min={GPU: half}, max={GPU: total}, namespaces=["ns-a"], attributes=attrs),
                node("b", min={GPU: half}, max={GPU: total}, namespaces=["ns-b"], attributes=attrs),
            ],
        )
    )
