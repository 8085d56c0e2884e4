"""Generators of the ready scenarios' synthetic traces and trees (the committed files are their output).

``python -m rayqueue.simulations.generate`` rewrites them; a test checks the committed files match.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from rayqueue.simulations.trace import write_trace_csv

HERE = Path(__file__).resolve().parent / "scenarios"

# ------------------------------------------------------------------ Kueue's scalability baseline

#: Kueue's published scheduler-performance "baseline": 5 cohorts x 6 queues, nominal 20 CPU each,
#: borrowing limit 100; per queue three job classes submitted at a steady rate.
KUEUE_COHORTS = 5
KUEUE_QUEUES_PER_COHORT = 6
KUEUE_NOMINAL_CPU = 20
KUEUE_BORROWING_LIMIT = 100
#: class: (jobs per queue, CPU, duration s, interval s, priority)
KUEUE_CLASSES = {
    "small": (350, 1, 0.2, 0.1, 50),
    "medium": (100, 5, 0.5, 0.5, 100),
    "large": (50, 20, 1.0, 1.2, 200),
}


def kueue_queue_names() -> list[tuple[str, str]]:
    return [
        (f"cohort-{c}", f"cohort-{c}-q{q}") for c in range(KUEUE_COHORTS) for q in range(KUEUE_QUEUES_PER_COHORT)
    ]


def kueue_tree() -> dict[str, Any]:
    cohorts = []
    for c in range(KUEUE_COHORTS):
        nominal = KUEUE_NOMINAL_CPU * KUEUE_QUEUES_PER_COHORT
        leaves = [
            {
                "name": f"cohort-{c}-q{q}",
                "min": {"cpu": KUEUE_NOMINAL_CPU},
                "max": {"cpu": KUEUE_NOMINAL_CPU + KUEUE_BORROWING_LIMIT},
            }
            for q in range(KUEUE_QUEUES_PER_COHORT)
        ]
        # A Kueue cohort lends only its members' unused nominal quota: its max is their sum.
        cohorts.append({"name": f"cohort-{c}", "min": {"cpu": nominal}, "max": {"cpu": nominal}, "children": leaves})
    total = KUEUE_NOMINAL_CPU * KUEUE_QUEUES_PER_COHORT * KUEUE_COHORTS
    return {
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
        "kind": "ElasticQuotaTree",
        "metadata": {"name": "kueue-baseline"},
        "spec": {"root": {"name": "kueue", "min": {"cpu": total}, "children": cohorts}},
    }


def kueue_rows() -> list[dict[str, Any]]:
    rows = []
    for _, queue in kueue_queue_names():
        for cls, (count, cpu, duration, interval, _prio) in KUEUE_CLASSES.items():
            for i in range(count):
                rows.append(
                    {
                        "job": f"{queue}-{cls}-{i:03d}",
                        "submit": round(i * interval, 6),
                        "duration": duration,
                        "queue": queue,
                        "cpu": cpu,
                        "priority": cls,
                    }
                )
    rows.sort(key=lambda r: (r["submit"], r["job"]))
    return rows


# ------------------------------------------------------------------ ECS-then-ACS spill-over


def spillover_rows(seed: int = 7) -> list[dict[str, Any]]:
    """One working day of two teams: team-a bursts around midday, team-b runs a steady stream."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    t = 0.0
    while t < 8 * 3600:
        hour = t / 3600
        rate = 1 / 900 if not 3 <= hour < 5 else 1 / 100  # a burst from hour 3 to 5
        t += rng.expovariate(rate)
        gpus = rng.choice([1, 2, 4, 8])
        rows.append(
            {
                "job": f"a-{len(rows):04d}",
                "submit": round(t, 1),
                "duration": round(rng.uniform(600, 2400), 1),
                "namespace": "team-a",
                "gpu": gpus,
                "pods": 1 + gpus // 4,
                "priority": "normal",
            }
        )
    t = 0.0
    k = 0
    while t < 8 * 3600:
        t += rng.expovariate(1 / 1200)
        rows.append(
            {
                "job": f"b-{k:04d}",
                "submit": round(t, 1),
                "duration": round(rng.uniform(1800, 3600), 1),
                "namespace": "team-b",
                "gpu": rng.choice([1, 2, 4]),
                "pods": 1,
                "priority": "high" if rng.random() < 0.2 else "normal",
            }
        )
        k += 1
    rows.sort(key=lambda r: (r["submit"], r["job"]))
    return rows


# ------------------------------------------------------------------ serving next to batch


def serving_burst_rows(seed: int = 11) -> list[dict[str, Any]]:
    """Two batch teams that keep 24 GPUs busy for 8 hours (the service's idle headroom included)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for team, mean_gap, sizes in (("team-a", 300, [1, 2, 4]), ("team-b", 420, [2, 4])):
        t, k = 0.0, 0
        while t < 8 * 3600:
            t += rng.expovariate(1 / mean_gap)
            rows.append(
                {
                    "job": f"{team[-1]}-{k:04d}",
                    "submit": round(t, 1),
                    "duration": round(rng.uniform(900, 2700), 1),
                    "namespace": team,
                    "gpu": rng.choice(sizes),
                    "pods": 1,
                    "priority": "high" if rng.random() < 0.1 else "normal",
                }
            )
            k += 1
    rows.sort(key=lambda r: (r["submit"], r["job"]))
    return rows


def write_all(base: Path = HERE) -> None:
    kb = base / "kueue_baseline"
    kb.mkdir(parents=True, exist_ok=True)
    header = "# Generated by python -m rayqueue.simulations.generate; do not edit by hand.\n"
    (kb / "tree.yaml").write_text(header + yaml.safe_dump(kueue_tree(), sort_keys=False))
    write_trace_csv(kb / "trace.csv", kueue_rows())
    sp = base / "spillover"
    sp.mkdir(parents=True, exist_ok=True)
    write_trace_csv(sp / "trace.csv", spillover_rows())
    sb = base / "serving-burst"
    sb.mkdir(parents=True, exist_ok=True)
    write_trace_csv(sb / "trace.csv", serving_burst_rows())


if __name__ == "__main__":
    write_all()
