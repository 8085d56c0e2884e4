"""The simulator's inputs besides the trace: ``cluster.yaml`` (units, prices, engine options) and scenarios.

``cluster.yaml`` describes the physical side of a what-if: each capacity unit (ECS subscription nodes,
ACS elastic capacity), what a GPU-hour costs there, and how the engine behaves (queueing and preemption
policy, priority classes, backoff). A *scenario* bundles a quota tree, a cluster, an optional
ResourcePolicy and a trace, so that ``rayqueue simulate --compare a.yaml b.yaml`` can run several
what-ifs side by side.

Example::

    units:
      - name: ecs
        resource: ecs
        capacity: "64 nodes x 8 GPUs, 96 CPU, 768Gi"
        pricePerGPUHour: 1.2      # prepaid: paid for every hour of the run, used or not
      - name: acs
        resource: acs
        elastic: true             # unbounded; billed per use
        maxPods: 200
        pricePerGPUHour: 3.5
    engine:
      queueing: BestEffortFIFO
      preemption: LowerPriority
      priorityClasses: {low: 50, normal: 100, high: 200}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayqueue.quota.manifests import DocumentError, load_document, read_bytes
from rayqueue.quota.quantity import CPU, GPU, MEMORY, QuantityError, Resources, parse_resources
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.workloads.resourcepolicy import Unit, Units, load_resource_policy
from rayqueue.simulations.serving import ServiceTrace, ServingMode, parse_service_trace

CLUSTER_KIND = "SimulationCluster"
SCENARIO_KIND = "SimulationScenario"


class ConfigError(ValueError):
    """A bad ``cluster.yaml`` or scenario; every problem names the file and the field."""

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        self.source = source
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{source} is invalid: {problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


# ------------------------------------------------------------------ capacity shorthand

_NAMES = {
    "gpu": GPU,
    "gpus": GPU,
    "cpu": CPU,
    "cpus": CPU,
    "core": CPU,
    "cores": CPU,
    "vcpu": CPU,
    "vcpus": CPU,
    "mem": MEMORY,
    "memory": MEMORY,
    "pod": "pods",
    "pods": "pods",
}
_NODES = re.compile(r"^\s*(\d+)\s*nodes?\s*[x×*]\s*(.*)$", re.IGNORECASE)
_ITEM = re.compile(r"^\s*([0-9.]+(?:Ki|Mi|Gi|Ti|Pi|m|k|M|G|T)?)\s*([A-Za-z./_-]*)\s*$")


def parse_capacity(text: str, *, field: str = "capacity") -> Resources:
    """``"64 nodes x 8 GPUs, 96 CPU, 768Gi"`` -> the unit's total (per-node figures times the nodes).

    Without ``N nodes x`` the figures are the unit's total. A bare binary size (``768Gi``) is memory.
    """
    nodes = 1
    body = text
    m = _NODES.match(text)
    if m:
        nodes = int(m.group(1))
        body = m.group(2)
    per_node: dict[str, str] = {}
    for raw in body.split(","):
        if not raw.strip():
            continue
        item = _ITEM.match(raw)
        if not item:
            raise QuantityError(f"{field}: cannot read {raw.strip()!r} (expected e.g. '8 GPUs', '96 CPU', '768Gi')")
        qty, name = item.group(1), item.group(2)
        if not name:
            if not re.search(r"(Ki|Mi|Gi|Ti|Pi)$", qty):
                raise QuantityError(f"{field}: {raw.strip()!r} names no resource (write e.g. '96 CPU')")
            resource = MEMORY
        else:
            resource = _NAMES.get(name.lower(), name)
        if resource in per_node:
            raise QuantityError(f"{field}: {resource} given twice")
        per_node[resource] = qty
    if not per_node:
        raise QuantityError(f"{field}: {text!r} names no resource")
    parsed = parse_resources(per_node, field=field)
    return {r: v * nodes for r, v in parsed.items()}


# ------------------------------------------------------------------ cluster.yaml


class UnitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    resource: Literal["ecs", "acs", "eci", "default"] = "ecs"
    #: The unit's total, as a mapping (``{nvidia.com/gpu: 512}``) or the shorthand string.
    capacity: dict[str, str | int | float] | str | None = None
    #: Alternatively ``nodes`` times a per-node ``node`` mapping.
    nodes: int | None = Field(default=None, ge=0)
    node: dict[str, str | int | float] | None = None
    elastic: bool = False
    maxPods: int | None = Field(default=None, ge=0)
    pricePerGPUHour: float = Field(default=0.0, ge=0)
    nodeSelector: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_capacity(self) -> UnitConfig:
        given = [self.capacity is not None, self.nodes is not None or self.node is not None]
        if sum(given) > 1:
            raise ValueError("give either capacity or nodes + node, not both")
        if (self.nodes is None) != (self.node is None):
            raise ValueError("nodes and node go together (node is the per-node capacity)")
        if self.elastic and any(given):
            raise ValueError("an elastic unit has no capacity (leave capacity/nodes out)")
        if not self.elastic and not any(given):
            raise ValueError("a unit needs a capacity (or elastic: true for ACS)")
        return self

    def total(self, where: str) -> Resources | None:
        if self.elastic:
            return None
        if isinstance(self.capacity, str):
            return parse_capacity(self.capacity, field=f"{where}.capacity")
        if self.capacity is not None:
            return parse_resources(self.capacity, field=f"{where}.capacity")
        assert self.node is not None and self.nodes is not None
        per_node = parse_resources(self.node, field=f"{where}.node")
        return {r: v * self.nodes for r, v in per_node.items()}


class BackoffConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseSeconds: float | None = Field(default=None, ge=0)
    maxSeconds: float | None = Field(default=None, ge=0)


class EngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queueing: Literal["BestEffortFIFO", "StrictFIFO"] = "BestEffortFIFO"
    preemption: Literal["Never", "LowerPriority"] = "LowerPriority"
    reclaim: bool = True
    priorityClasses: dict[str, int] = Field(default_factory=dict)
    defaultPriority: int = 0
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apiVersion: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    currency: str = "USD"
    units: list[UnitConfig] = Field(min_length=1)
    engine: EngineOptions = Field(default_factory=EngineOptions)

    @model_validator(mode="after")
    def _unique(self) -> ClusterConfig:
        names = [u.name for u in self.units]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"unit names must be unique (repeated: {', '.join(dupes)})")
        return self

    def price(self, unit: str) -> float:
        for u in self.units:
            if u.name == unit:
                return u.pricePerGPUHour
        return 0.0


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        loc = ""
        for p in e["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append(f"{loc or 'document'}: {msg}")
    return out


def load_cluster_text(text: str | bytes, source: str = "cluster.yaml") -> ClusterConfig:
    try:
        raw = load_document(text, source)
    except DocumentError as exc:
        raise ConfigError([exc.problem], source) from exc
    return cluster_from_dict(raw, source)


def cluster_from_dict(raw: Any, source: str = "cluster.yaml") -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping, got {type(raw).__name__}"], source)
    try:
        cfg = ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc), source) from exc
    problems = []
    for i, u in enumerate(cfg.units):
        try:
            u.total(f"units[{i}] ({u.name})")
        except QuantityError as exc:
            problems.append(str(exc))
    if cfg.kind not in (None, CLUSTER_KIND):
        problems.append(f"kind: expected {CLUSTER_KIND}, got {cfg.kind}")
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_cluster(path: str | Path) -> ClusterConfig:
    source = str(path)
    try:
        data = read_bytes(path, source)
    except DocumentError as exc:
        raise ConfigError([exc.problem], source) from exc
    return load_cluster_text(data, source)


def build_units(cluster: ClusterConfig, policy: Units | None = None, source: str = "cluster.yaml") -> Units:
    """The engine's pools: the policy's units (order, selectors, ``max``) with cluster.yaml's capacities.

    Without a policy, cluster.yaml's units are the pools, in the order written, spilling over when one
    lacks room (``LackResourceOrExceedMax``).
    """
    by_name = {u.name: u for u in cluster.units}
    if policy is None:
        units = []
        for i, u in enumerate(cluster.units):
            units.append(
                Unit(
                    name=u.name,
                    resource=u.resource,
                    capacity=u.total(f"units[{i}] ({u.name})"),
                    max_pods=u.maxPods,
                    node_selector=dict(u.nodeSelector),
                )
            )
        return Units(units, name=str(cluster.metadata.get("name", "cluster")))
    problems = []
    for name in by_name.keys() - policy.by_name.keys():
        problems.append(f"units: {name!r} is not a unit of ResourcePolicy {policy.name} (its units: {', '.join(policy.by_name)})")
    out: list[Unit] = []
    for pu in policy.units:
        cu = by_name.get(pu.name)
        capacity = pu.capacity
        max_pods = pu.max_pods
        if cu is not None:
            i = cluster.units.index(cu)
            capacity = cu.total(f"units[{i}] ({cu.name})")
            if cu.maxPods is not None:
                max_pods = cu.maxPods if max_pods is None else min(max_pods, cu.maxPods)
        elif capacity is None and pu.resource == "ecs":
            problems.append(f"units: ResourcePolicy unit {pu.name!r} (ecs) has no capacity; add a unit named {pu.name!r}")
        out.append(
            Unit(
                name=pu.name,
                resource=pu.resource,
                capacity=capacity,
                max_pods=max_pods,
                node_selector=dict(pu.node_selector),
                pod_labels=dict(pu.pod_labels),
                tolerations=list(pu.tolerations),
            )
        )
    if problems:
        raise ConfigError(sorted(problems), source)
    return Units(out, policy.when_try_next, policy.timeout_s, name=policy.name)


# ------------------------------------------------------------------ scenarios


class TraceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    format: Literal["auto", "csv", "parquet", "philly"] = "auto"


class ScenarioConfig(BaseModel):
    """``quota``, ``cluster``, ``policy`` and ``trace`` are paths relative to the scenario file."""

    model_config = ConfigDict(extra="forbid")

    apiVersion: str | None = None
    kind: str | None = None
    name: str | None = None
    description: str = ""
    quota: str
    cluster: str
    policy: str | None = None
    trace: str | TraceRef | None = None
    #: a ``kind: ServiceTrace`` file: services with a request-rate series (``simulations/serving.py``)
    services: str | None = None
    #: how services meet batch: the engine's reservations, a static split, or none (``--compare`` them)
    serving: Literal["reservation", "static", "none"] = "reservation"


class Scenario:
    """A loaded scenario: the objects, ready for a run (the trace is loaded later, with the tree)."""

    def __init__(
        self,
        name: str,
        tree: QuotaTree,
        cluster: ClusterConfig,
        units: Units,
        trace: TraceRef | None,
        description: str = "",
        source: str = "",
        paths: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        self.name = name
        #: (quota, cluster, policy) files the scenario was loaded from, for overrides.
        self.paths = paths
        self.tree = tree
        self.cluster = cluster
        self.units = units
        self.trace = trace
        self.description = description
        self.source = source
        self.services: ServiceTrace | None = None
        self.serving: ServingMode = "reservation"


def load_scenario_parts(
    quota: str | Path,
    cluster: str | Path,
    policy: str | Path | None = None,
    trace: TraceRef | None = None,
    name: str = "simulation",
    description: str = "",
) -> Scenario:
    tree = QuotaTree.from_yaml(quota)
    cfg = load_cluster(cluster)
    pol = load_resource_policy(policy) if policy else None
    units = build_units(cfg, pol, str(cluster))
    paths = (Path(quota), Path(cluster), Path(policy) if policy else None)
    return Scenario(name, tree, cfg, units, trace, description, source=str(quota), paths=paths)


def load_scenario(path: str | Path) -> Scenario:
    source = str(path)
    p = Path(path)
    try:
        raw = load_document(read_bytes(p, source), source)
    except DocumentError as exc:
        raise ConfigError([exc.problem], source) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping, got {type(raw).__name__}"], source)
    try:
        spec = ScenarioConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc), source) from exc
    base = p.parent

    def rel(value: str) -> Path:
        # normpath: the reports name the trace as data/traces/philly/philly_jobs.csv, not a/b/c/../../../..
        q = Path(value).expanduser()
        return Path(os.path.normpath(q if q.is_absolute() else base / q))

    problems = []
    for field in ("quota", "cluster", "policy"):
        value = getattr(spec, field)
        if value is not None and not rel(value).is_file():
            problems.append(f"{field}: file {rel(value)} not found")
    trace: TraceRef | None = None
    if spec.trace is not None:
        ref = spec.trace if isinstance(spec.trace, TraceRef) else TraceRef(path=spec.trace)
        trace = TraceRef(path=str(rel(ref.path)), format=ref.format)
        if not Path(trace.path).is_file():
            problems.append(f"trace: file {trace.path} not found")
    services: ServiceTrace | None = None
    if spec.services is not None:
        where = rel(spec.services)
        if not where.is_file():
            problems.append(f"services: file {where} not found")
        else:
            try:
                loaded = parse_service_trace(load_document(read_bytes(where, str(where)), str(where)), str(where))
            except DocumentError as exc:
                raise ConfigError([exc.problem], str(where)) from exc
            if isinstance(loaded, list):
                raise ConfigError(loaded, str(where))
            services = loaded
    if problems:
        raise ConfigError(problems, source)
    sc = load_scenario_parts(
        rel(spec.quota),
        rel(spec.cluster),
        rel(spec.policy) if spec.policy else None,
        trace,
        name=spec.name or p.stem,
        description=spec.description,
    )
    sc.services = services
    sc.serving = spec.serving
    return sc
