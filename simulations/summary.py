"""What a simulation run measured, as numbers: the summary (waits, utilisation, borrowing, spill-over and
its cost per unit and queue) and ``jobs.csv``, one row per job.

Figures are of the *summary resource* (GPUs, or CPU for a CPU-only trace), in its whole units. Cost:
an ECS (or ``default``) unit with a finite capacity is prepaid (subscription), so it costs ``capacity x
makespan x price`` whether used or not; ACS and ECI units, and any elastic unit, are billed per use,
``GPU-hours used x price``, even when a capacity caps them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from rayqueue.quota.quantity import GPU
from rayqueue.simulations.simulator import JobRecord, SimulationResult, format_duration

MILLI = 1000.0
#: Unit kinds billed per use whatever their capacity: a capacity there is a cap on elastic capacity (an
#: ACS quota), not nodes bought in advance.
ON_DEMAND_KINDS = ("acs", "eci")
GRID_POINTS = 1200

def short_name(resource: str) -> str:
    return "gpu" if resource == GPU else resource.rsplit("/", 1)[-1]


# ------------------------------------------------------------------ numbers


def _percentiles(waits: np.ndarray) -> dict[str, float | None]:
    if waits.size == 0:
        return {"wait_mean_s": None, "wait_p50_s": None, "wait_p95_s": None, "wait_p99_s": None, "wait_max_s": None}
    p50, p95, p99 = np.percentile(waits, [50, 95, 99])
    return {
        "wait_mean_s": round(float(waits.mean()), 6),
        "wait_p50_s": round(float(p50), 6),
        "wait_p95_s": round(float(p95), 6),
        "wait_p99_s": round(float(p99), 6),
        "wait_max_s": round(float(waits.max()), 6),
    }


def usage_steps(result: SimulationResult, key: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per unit (``key="unit"``) or leaf: the times usage changed and the usage (whole units) after."""
    t = np.frombuffer(result.change_t, dtype=np.float64) if len(result.change_t) else np.zeros(0)
    which = np.asarray(result.change_unit if key == "unit" else result.change_leaf, dtype=np.int64)
    delta = np.asarray(result.change_delta, dtype=np.float64) / MILLI
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if t.size == 0:
        return out
    order = np.argsort(which, kind="stable")
    which_sorted = which[order]
    bounds = np.flatnonzero(np.diff(which_sorted)) + 1
    for chunk in np.split(order, bounds):
        i = int(which[chunk[0]])
        out[i] = (t[chunk], np.cumsum(delta[chunk]))
    return out


def _area(times: np.ndarray, values: np.ndarray, end: float) -> float:
    """Integral of a step function (value after each change) up to ``end``."""
    if times.size == 0:
        return 0.0
    widths = np.diff(np.append(times, max(end, float(times[-1]))))
    return float(np.sum(values * widths))


def sample_steps(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    if times.size == 0:
        return np.zeros_like(grid)
    idx = np.searchsorted(times, grid, side="right") - 1
    out = np.where(idx >= 0, values[np.clip(idx, 0, None)], 0.0)
    return out


def summarize(result: SimulationResult) -> dict[str, Any]:
    res = result.resource
    short = short_name(res)
    records = result.records
    start = min((r.submit for r in records), default=0.0)
    makespan = max(result.end - start, 0.0)
    hours = makespan / 3600.0
    unit_steps = usage_steps(result, "unit")
    leaf_steps = usage_steps(result, "leaf")

    queues: dict[str, Any] = {}
    by_queue: dict[str, list[JobRecord]] = {leaf.name: [] for leaf in result.leaves}
    for r in records:
        by_queue.setdefault(r.queue, []).append(r)
    for i, leaf in enumerate(result.leaves):
        recs = by_queue.get(leaf.name, [])
        waits = np.array([r.first_admit - r.submit for r in recs if r.first_admit is not None], dtype=np.float64)
        used_h = sum(r.amount * r.busy_seconds for r in recs) / MILLI / 3600.0
        borrowed_h = 0.0
        if i in leaf_steps:
            times, values = leaf_steps[i]
            borrowed_h = _area(times, np.maximum(values - leaf.min / MILLI, 0.0), result.end) / 3600.0
        queues[leaf.name] = {
            "path": leaf.path,
            "min": leaf.min / MILLI,
            "max": None if leaf.max is None else leaf.max / MILLI,
            "jobs": len(recs),
            "finished": sum(1 for r in recs if r.status == "finished"),
            "rejected": sum(1 for r in recs if r.status == "rejected"),
            "unfinished": sum(1 for r in recs if r.status == "unfinished"),
            **_percentiles(waits),
            f"{short}_hours": round(used_h, 6),
            f"borrowed_{short}_hours": round(borrowed_h, 6),
            "preemptions": sum(r.preemptions for r in recs),
        }

    classes: dict[str, Any] = {}
    by_class: dict[str, list[JobRecord]] = {}
    for r in records:
        by_class.setdefault(r.priority_class or str(r.priority), []).append(r)
    for name, recs in sorted(by_class.items(), key=lambda kv: -kv[1][0].priority):
        waits = np.array([r.first_admit - r.submit for r in recs if r.first_admit is not None], dtype=np.float64)
        classes[name] = {"priority": recs[0].priority, "jobs": len(recs), **_percentiles(waits)}

    units: dict[str, Any] = {}
    elastic_cost = prepaid_cost = 0.0
    is_gpu = res == GPU
    for i, u in enumerate(result.units):
        used = 0.0
        peak = 0.0
        if i in unit_steps:
            times, values = unit_steps[i]
            used = _area(times, values, result.end) / 3600.0
            peak = float(values.max())
        cap = None if u.capacity is None else u.capacity / MILLI
        entry: dict[str, Any] = {
            "resource": u.resource,
            "capacity": cap,
            f"{short}_hours": round(used, 6),
            f"peak_{short}": peak,
            "utilisation": None if not cap or hours == 0 else round(used / (cap * hours), 4),
            "price_per_gpu_hour": u.price,
        }
        if is_gpu:
            if cap is None or u.resource in ON_DEMAND_KINDS:
                cost = used * u.price
                elastic_cost += cost
                entry["billing"] = "on demand"
            else:
                cost = cap * hours * u.price
                prepaid_cost += cost
                entry["billing"] = "prepaid"
            entry["cost"] = round(cost, 4)
        units[u.name] = entry

    all_waits = np.array([r.first_admit - r.submit for r in records if r.first_admit is not None])
    finished = sum(1 for r in records if r.status == "finished")
    summary: dict[str, Any] = {
        "scenario": result.name,
        "description": result.description,
        "resource": res,
        "trace": {
            "source": result.trace_source,
            "rows": result.trace_rows,
            "jobs": len(records),
            "skipped_rows": len(result.problems),
            "skipped_examples": [str(p) for p in result.problems[:20]],
            "rejected": sum(1 for r in records if r.status == "rejected"),
            "unfinished": sum(1 for r in records if r.status == "unfinished"),
            "finished": finished,
        },
        "cluster": {
            "makespan_s": round(makespan, 6),
            "makespan": format_duration(makespan),
            "units": units,
            f"acs_{short}_hours": round(
                sum(units[u.name][f"{short}_hours"] for u in result.units if u.resource in ("acs", "eci")), 6
            ),
            "currency": result.cluster.currency,
            "elastic_cost": round(elastic_cost, 4),
            "acs_cost": round(sum(units[u.name].get("cost", 0.0) for u in result.units if u.resource in ("acs", "eci")), 4),
            "prepaid_cost": round(prepaid_cost, 4),
            "total_cost": round(elastic_cost + prepaid_cost, 4),
            "preemptions": sum(r.preemptions for r in records),
            "all_queues": _percentiles(all_waits),
        },
        "queues": queues,
        "priority_classes": classes,
        "run": {
            "wall_seconds": round(result.wall_seconds, 3),
            "jobs_per_second": round(len(records) / result.wall_seconds, 1) if result.wall_seconds else None,
            "admission_cycles": result.cycles,
            "events": result.events,
            "engine": result.engine_stats,
        },
    }
    if result.services:
        summary["services"] = result.services
    return summary


# ------------------------------------------------------------------ files


JOB_COLUMNS = [
    "job",
    "queue",
    "priority",
    "submit",
    "admit",
    "finish",
    "unit",
    "preemptions",
    "wait",
    "status",
    "last_admit",
    "priority_class",
    "row",
    "reason",
]


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return repr(round(x, 6)) if not float(x).is_integer() else str(int(x))


def write_jobs_csv(result: SimulationResult, path: Path) -> None:
    """One row per job: ``admit`` is the first admission, ``last_admit`` the one whose run finished."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_COLUMNS)
        for r in result.records:
            w.writerow(
                [
                    r.job,
                    r.queue,
                    r.priority,
                    _num(r.submit),
                    _num(r.first_admit),
                    _num(r.finish),
                    r.unit or "",
                    r.preemptions,
                    _num(r.wait),
                    r.status,
                    _num(r.admit),
                    r.priority_class or "",
                    r.uid[1:],
                    r.reason,
                ]
            )
        for p in result.problems:
            w.writerow([p.job or "", "", "", "", "", "", "", 0, "", "skipped", "", "", p.row, p.message])
