"""Unit capacity from the nodes a front end sees: one rule for Kubernetes Nodes and for Ray nodes.

The operator reads Nodes' ``status.allocatable``, standalone reads Ray's alive nodes; both turn them into
:class:`NodeCapacity` and call :func:`apply_node_capacity` after every change of nodes, policy or tree,
so the engine's units always hold exactly what the cluster has (never a figure cached from another
policy). No I/O here.

The rule, per unit:

* no node information at all (``nodes`` is None: an API server without Nodes): the capacity the
  ResourcePolicy declares for the unit, else unbounded (only the quota tree bounds it);
* ``ecs`` and the no-policy ``default`` unit: the nodes its ``nodeSelector`` matches (every node when it
  has none), *measured*: a resource none of them has is 0, and the unit also knows the most any one of
  them has per resource, the largest pod it can run. No node matching means nothing at all;
* ``acs`` / ``eci`` (elastic, pay as you go): measured like ``ecs`` when it has a ``nodeSelector`` that
  matches nodes (ACK's virtual nodes, or a local Ray node standing for the pool), else its declared
  capacity, else elastic (bounded by its ``max`` pods and the quota tree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rayqueue.quota.quantity import Resources
from rayqueue.scheduler.engine.facade import Engine
from rayqueue.scheduler.engine.units import Unit
from rayqueue.scheduler.engine.views import UnitCapacityView

ELASTIC_KINDS = ("acs", "eci")


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """One node as capacity sees it: its labels and what it can allocate (milli-units)."""

    name: str
    labels: Mapping[str, str]
    allocatable: Resources


@dataclass(frozen=True, slots=True)
class UnitCapacity:
    capacity: Resources | None  # None: elastic
    largest: Resources | None = None  # per resource, the most one node has (measured units only)
    complete: bool = False  # measured: a resource not named is 0


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def unit_capacity(unit: Unit | UnitCapacityView, nodes: Sequence[NodeCapacity] | None) -> UnitCapacity:
    """What ``unit`` holds given the usable nodes seen (see the module's rule)."""
    declared = UnitCapacity(dict(unit.declared) if unit.declared is not None else None)
    if nodes is None:
        return declared
    chosen = [n for n in nodes if matches(n.labels, unit.node_selector)]
    if unit.resource in ELASTIC_KINDS and (not unit.node_selector or not chosen):
        return declared
    total: Resources = {}
    largest: Resources = {}
    for n in chosen:
        for r, v in n.allocatable.items():
            if v <= 0:
                continue  # absent and 0 are the same to a measured unit
            total[r] = total.get(r, 0) + v
            if v > largest.get(r, 0):
                largest[r] = v
    return UnitCapacity(total, largest, True)


def apply_node_capacity(engine: Engine, nodes: Sequence[NodeCapacity] | None) -> list[str]:
    """Set every unit of ``engine`` to what ``nodes`` hold; returns the names of the units that changed."""
    changed: list[str] = []
    for unit in engine.unit_capacity_views():
        cap = unit_capacity(unit, nodes)
        if (cap.capacity, cap.largest, cap.complete) != (unit.capacity, unit.largest, unit.complete):
            engine.set_unit_capacity(unit.name, cap.capacity, largest=cap.largest, complete=cap.complete)
            changed.append(unit.name)
    return changed
