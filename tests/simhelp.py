"""Build small simulations from YAML/CSV text for the simulator's tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from rayqueue.simulations.config import TraceRef, load_scenario_parts
from rayqueue.simulations.simulator import JobRecord, SimulationResult, Simulator, simulate_scenario


def tree_yaml(root: str) -> str:
    """An ElasticQuotaTree document around an indented ``root:`` body."""
    return (
        "apiVersion: scheduling.sigs.k8s.io/v1beta1\nkind: ElasticQuotaTree\nmetadata: {name: t}\nspec:\n  root:\n"
        + textwrap.indent(textwrap.dedent(root).strip("\n"), "    ")
        + "\n"
    )


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def simulate(
    tmp: Path,
    *,
    tree: str,
    cluster: str,
    trace: str,
    policy: str | None = None,
    strict: bool = True,
) -> SimulationResult:
    q = tmp / "tree.yaml"
    q.write_text(tree)
    c = write(tmp, "cluster.yaml", cluster)
    t = write(tmp, "trace.csv", trace)
    p = write(tmp, "policy.yaml", policy) if policy else None
    sc = load_scenario_parts(q, c, p, TraceRef(path=str(t)), name="test")
    return simulate_scenario(sc, strict=strict)


def by_job(result: SimulationResult) -> dict[str, JobRecord]:
    return {r.job: r for r in result.records}


def times(rec: JobRecord) -> tuple[Any, ...]:
    """(first admit, last admit, finish, unit, preemptions) for compact assertions."""
    return (rec.first_admit, rec.admit, rec.finish, rec.unit, rec.preemptions)


__all__ = ["Simulator", "by_job", "simulate", "times", "tree_yaml", "write"]
