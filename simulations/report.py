"""What a simulation run writes: ``summary.json``, ``jobs.csv``, ``report.html`` and its plots as PNG.

Figures are of the *summary resource* (GPUs, or CPU for a CPU-only trace), in its whole units. Cost:
an ECS (or ``default``) unit with a finite capacity is prepaid (subscription), so it costs ``capacity x
makespan x price`` whether used or not; ACS and ECI units, and any elastic unit, are billed per use,
``GPU-hours used x price``, even when a capacity caps them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rayqueue.quota.quantity import GPU
from rayqueue.scheduler.dashboard.style import css, header
from rayqueue.scheduler.extras import requires_extra
from rayqueue.simulations.simulator import JobRecord, SimulationResult, format_duration

MILLI = 1000.0
#: Unit kinds billed per use whatever their capacity: a capacity there is a cap on elastic capacity (an
#: ACS quota), not nodes bought in advance.
ON_DEMAND_KINDS = ("acs", "eci")
GRID_POINTS = 1200
#: Above this many queues the wait CDF names only the WORST_QUEUES_NAMED that wait longest.
MAX_NAMED_CURVES = 20
WORST_QUEUES_NAMED = 8


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


def _steps(result: SimulationResult, key: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
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


def _sample(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
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
    unit_steps = _steps(result, "unit")
    leaf_steps = _steps(result, "leaf")

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


def _cdf(values: np.ndarray, points: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF drawn with at most ``points`` steps (exact for smaller samples)."""
    w = np.sort(values)
    if w.size <= points:
        return w, np.arange(1, w.size + 1) / w.size
    y = np.linspace(0.0, 1.0, points + 1)[1:]
    idx = np.ceil(y * w.size).astype(np.int64) - 1
    return w[idx], y


def _time_axis(end: float) -> tuple[float, str]:
    if end <= 300:
        return 1.0, "seconds"
    if end <= 3 * 3600:
        return 60.0, "minutes"
    if end <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


#: Line styles that, combined with ten colours, tell up to 40 curves apart.
_DASHES = ["-", "--", ":", "-."]


def _curve_style(k: int) -> dict[str, Any]:
    """Colour and dash of the k-th curve: matplotlib's default ten colours repeat, so the dash changes
    every ten curves (Philly has 15 queues; two of them drawn alike would be read as one)."""
    return {"color": f"C{k % 10}", "linestyle": _DASHES[(k // 10) % len(_DASHES)]}


def queues_named_in_cdf(waits: dict[str, list[float]]) -> list[str]:
    """The queues the wait CDF draws in colour and names: all of them up to MAX_NAMED_CURVES, else
    (thirty curves cannot be told apart) the WORST_QUEUES_NAMED with the longest p95 wait, worst first."""
    if len(waits) <= MAX_NAMED_CURVES:
        return sorted(waits)
    return sorted(waits, key=lambda q: (-float(np.percentile(waits[q], 95)), q))[:WORST_QUEUES_NAMED]


def _pyplot() -> Any:
    """matplotlib's pyplot drawing off-screen; it comes with the [report] extra."""
    with requires_extra("report", "the simulation report (for its plots; --no-plots skips them)"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt


def _figures(result: SimulationResult) -> dict[str, bytes]:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    res = short_name(result.resource).upper()
    out: dict[str, bytes] = {}
    scale, unit_label = _time_axis(result.end)
    grid = np.linspace(0.0, max(result.end, 1e-9), GRID_POINTS)

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()

    # Wait-time CDF per queue.
    fig, ax = plt.subplots(figsize=(9, 5))
    by_queue: dict[str, list[float]] = {}
    for r in result.records:
        if r.first_admit is not None:
            by_queue.setdefault(r.queue, []).append(r.first_admit - r.submit)
    wmax = max((max(v) for v in by_queue.values() if v), default=0.0)
    wscale, wlabel = _time_axis(wmax)
    named = queues_named_in_cdf(by_queue)
    title = "Wait-time CDF per queue"
    if len(named) < len(by_queue):
        # The rest in grey, and all queues together for reference.
        for name in sorted(set(by_queue) - set(named)):
            x, y = _cdf(np.asarray(by_queue[name]) / wscale)
            ax.step(x, y, where="post", color="0.8", linewidth=0.6)
        x, y = _cdf(np.concatenate([np.asarray(v) for v in by_queue.values()]) / wscale)
        ax.step(x, y, where="post", color="black", linewidth=2, label=f"all {len(by_queue)} queues")
        title += f" (the {len(named)} with the longest p95 wait named, the others in grey)"
    for k, name in enumerate(named):
        x, y = _cdf(np.asarray(by_queue[name]) / wscale)
        ax.step(x, y, where="post", label=f"{name} ({len(by_queue[name])})", **_curve_style(k))
    ax.set_xscale("symlog", linthresh=max(wmax / wscale / 1000, 1e-3))
    ax.set_xlabel(f"wait before first admission ({wlabel}, symlog)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title, fontsize=11 if len(title) < 60 else 9)
    ax.grid(alpha=0.3)
    if by_queue:
        ax.legend(fontsize=7, ncol=2)
    save(fig, "wait_cdf.png")

    # Utilisation over time, stacked by unit.
    steps = _steps(result, "unit")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    series = [_sample(*steps[i], grid) if i in steps else np.zeros_like(grid) for i in range(len(result.units))]
    ax.stackplot(grid / scale, series, labels=[f"{u.name} ({u.resource})" for u in result.units], alpha=0.8)
    finite = sum(u.capacity for u in result.units if u.capacity is not None) / MILLI
    if finite:
        ax.axhline(finite, color="black", linestyle="--", linewidth=1, label=f"finite capacity ({finite:g})")
    ax.set_xlabel(f"virtual time ({unit_label})")
    ax.set_ylabel(f"{res} in use")
    ax.set_title("Usage over time, stacked by unit")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    save(fig, "utilisation.png")

    # Each queue's usage against its min and max.
    leaf_steps = _steps(result, "leaf")
    n = len(result.leaves)
    cols = min(4, max(n, 1))
    rows = math.ceil(n / cols) if n else 1
    # At least 9 inches wide, so the title fits above one or two small panels.
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2 * cols, 9.0), 2.3 * rows + 0.4), squeeze=False, sharex=True)
    for k, leaf in enumerate(result.leaves):
        ax = axes[k // cols][k % cols]
        usage = _sample(*leaf_steps[k], grid) if k in leaf_steps else np.zeros_like(grid)
        ax.fill_between(grid / scale, usage, step="post", alpha=0.5, label="usage")
        ax.axhline(leaf.min / MILLI, color="green", linestyle="--", linewidth=1, label="min")
        if leaf.max is not None:
            ax.axhline(leaf.max / MILLI, color="red", linestyle=":", linewidth=1, label="max")
        ax.set_title(leaf.name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=6)
    # Margins in inches, so the title clears the first row of panels however many rows there are.
    height = 2.3 * rows + 0.4
    fig.suptitle(f"{res} usage per queue against min (dashed) and max (dotted); time in {unit_label}", y=1 - 0.12 / height)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.35 / height, top=1 - 0.75 / height, hspace=0.45, wspace=0.3)
    save(fig, "queues.png")
    return out


# The dashboard's stylesheet (one look for every page rayqueue makes), then the report's own touches.
_CSS = css() + """
table{font-size:13px}
td{text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0;background:#fff}
.note{color:#666;font-size:13px}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(summary: dict[str, Any], figures: dict[str, bytes]) -> str:
    short = short_name(summary["resource"])
    c = summary["cluster"]
    t = summary["trace"]
    queue_rows = [{"queue": name, **q} for name, q in summary["queues"].items()]
    for q in queue_rows:
        for k in ("wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_p99_s"):
            q[k + "_h"] = None if q[k] is None else format_duration(q[k])
    unit_rows = [{"unit": name, **u} for name, u in c["units"].items()]
    for u in unit_rows:
        if u.get("utilisation") is not None:
            u["utilisation"] = f"{u['utilisation']:.1%}"
        if u.get("cost") is not None:
            u["cost"] = f"{u['cost']:,.2f}"
    class_rows = [{"class": name, **v} for name, v in summary["priority_classes"].items()]
    for v in class_rows:
        v["mean"] = None if v["wait_mean_s"] is None else format_duration(v["wait_mean_s"])
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in t["skipped_examples"])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rayqueue simulation: "
        f"{html.escape(summary['scenario'])}</title><style>{_CSS}</style></head><body>",
        header("simulation report"),
        "<main>",
        f"<h1>Simulation: {html.escape(summary['scenario'])}</h1>",
        f"<p>{html.escape(summary.get('description') or '')}</p>",
        f"<p>{t['jobs']:,} jobs from <code>{html.escape(t['source'])}</code> ({t['rows']:,} rows; "
        f"{t['skipped_rows']:,} skipped, {t['rejected']:,} rejected, {t['unfinished']:,} never finished). "
        f"Makespan {c['makespan']}; {c['preemptions']:,} preemptions; "
        f"total cost {c['currency']} {c['total_cost']:,.2f} "
        f"(prepaid {c['prepaid_cost']:,.2f} + on demand {c['elastic_cost']:,.2f}).</p>",
        "<h2>Queues</h2>",
        _table(
            queue_rows,
            [
                ("queue", "queue"),
                ("min", f"min {short}"),
                ("max", f"max {short}"),
                ("jobs", "jobs"),
                ("rejected", "rejected"),
                ("wait_mean_s_h", "wait mean"),
                ("wait_p50_s_h", "p50"),
                ("wait_p95_s_h", "p95"),
                ("wait_p99_s_h", "p99"),
                (f"{short}_hours", f"{short.upper()}-hours"),
                (f"borrowed_{short}_hours", f"borrowed {short.upper()}-hours"),
                ("preemptions", "preemptions"),
            ],
        ),
        _img(figures["wait_cdf.png"], "wait-time CDF per queue"),
        "<h2>Units</h2>",
        _table(
            unit_rows,
            [
                ("unit", "unit"),
                ("resource", "kind"),
                ("capacity", f"capacity {short}"),
                (f"peak_{short}", f"peak {short}"),
                (f"{short}_hours", f"{short.upper()}-hours"),
                ("utilisation", "utilisation"),
                ("billing", "billing"),
                ("price_per_gpu_hour", "price / GPU-hour"),
                ("cost", "cost"),
            ],
        ),
        _img(figures["utilisation.png"], "usage over time stacked by unit"),
        "<h2>Usage per queue against min and max</h2>",
        _img(figures["queues.png"], "usage per queue against min and max"),
        "<h2>Time to first admission per priority class</h2>",
        _table(
            class_rows,
            [
                ("class", "class"),
                ("priority", "priority"),
                ("jobs", "jobs"),
                ("mean", "mean"),
                ("wait_mean_s", "mean (s)"),
                ("wait_p95_s", "p95 (s)"),
            ],
        ),
    ]
    if skipped:
        parts.append(f"<h2>Skipped rows (first 20 of {t['skipped_rows']})</h2><ul>{skipped}</ul>")
    parts.append(
        "<p class='note'>Preemption in simulation: a suspension is instant and a preempted job restarts "
        "from scratch when admitted again. Prepaid units (ECS with a finite capacity) cost capacity x "
        "makespan x price; ACS, ECI and elastic units cost what they used. Run: "
        f"{summary['run']['wall_seconds']} s wall, {_fmt(summary['run']['jobs_per_second'])} jobs/s.</p>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_outputs(result: SimulationResult, out: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Write summary.json, jobs.csv and (with ``plots``) report.html and the PNGs; returns the summary."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_jobs_csv(result, d / "jobs.csv")
    if plots:
        figures = _figures(result)
        for name, png in figures.items():
            (d / name).write_bytes(png)
        (d / "report.html").write_text(render_html(summary, figures))
    return summary


# ------------------------------------------------------------------ comparisons


def write_comparison(
    results: list[SimulationResult], summaries: list[dict[str, Any]], out: str | Path, plots: bool = True
) -> dict[str, Any]:
    """Side-by-side table (compare.json; with ``plots`` also compare.html and its PNGs) of several what-ifs."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in summaries:
        c = s["cluster"]
        short = short_name(s["resource"])
        rows.append(
            {
                "scenario": s["scenario"],
                "trace": s["trace"]["source"],
                "jobs": s["trace"]["jobs"],
                "rejected": s["trace"]["rejected"],
                "wait_mean_s": c["all_queues"]["wait_mean_s"],
                "wait_p95_s": c["all_queues"]["wait_p95_s"],
                "wait_p99_s": c["all_queues"]["wait_p99_s"],
                "makespan_s": c["makespan_s"],
                "preemptions": c["preemptions"],
                "acs_hours": c.get(f"acs_{short}_hours"),
                "acs_cost": c["acs_cost"],
                "total_cost": c["total_cost"],
                "utilisation": {u: v["utilisation"] for u, v in c["units"].items()},
                "queue_wait_mean_s": {q: v["wait_mean_s"] for q, v in s["queues"].items()},
            }
        )
    data = {"scenarios": rows}
    (d / "compare.json").write_text(json.dumps(data, indent=2) + "\n")
    if not plots:
        return data
    plt = _pyplot()

    figures: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # rotated queue names stay whole
        plt.close(fig)
        figures[name] = buf.getvalue()
        (d / name).write_bytes(figures[name])

    fig, ax = plt.subplots(figsize=(9, 5))
    wmax = max((r.first_admit - r.submit for res in results for r in res.records if r.first_admit is not None), default=0.0)
    wscale, wlabel = _time_axis(wmax)
    for k, res in enumerate(results):
        w = np.array([r.first_admit - r.submit for r in res.records if r.first_admit is not None]) / wscale
        if w.size:
            x, y = _cdf(w)
            # What-ifs often leave the waits unchanged: the earlier curves are drawn wider, so one drawn
            # over another still shows beside it rather than vanishing.
            width = 1.5 + 1.5 * (len(results) - 1 - k) / max(len(results) - 1, 1)
            dash = _DASHES[k % len(_DASHES)]
            ax.step(x, y, where="post", label=res.name, linewidth=width, color=f"C{k % 10}", linestyle=dash)
    ax.set_xscale("symlog", linthresh=max(wmax / wscale / 1000, 1e-3))
    ax.set_xlabel(f"wait before first admission ({wlabel}, symlog)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("Wait-time CDF, all queues")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "compare_wait_cdf.png")

    queues = sorted({q for r in rows for q in r["queue_wait_mean_s"]})
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(queues) * (len(rows) + 1)), 4.5))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(queues))
    for k, r in enumerate(rows):
        vals = [(r["queue_wait_mean_s"].get(q) or 0.0) / wscale for q in queues]
        ax.bar(x + k * width, vals, width, label=r["scenario"])
    ax.set_xticks(x + width * (len(rows) - 1) / 2, queues, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"mean wait ({wlabel})")
    ax.set_title("Mean wait per queue")
    ax.legend()
    save(fig, "compare_queue_wait.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["scenario"] for r in rows]
    ax.bar(names, [r["total_cost"] - r["acs_cost"] for r in rows], label="prepaid and other")
    ax.bar(names, [r["acs_cost"] for r in rows], bottom=[r["total_cost"] - r["acs_cost"] for r in rows], label="ACS")
    ax.set_ylabel(f"cost ({summaries[0]['cluster']['currency'] if summaries else ''})")
    ax.set_title("Cost per scenario")
    ax.legend()
    save(fig, "compare_cost.png")

    table_rows = []
    for r in rows:
        tr = dict(r)
        tr["wait mean"] = None if r["wait_mean_s"] is None else format_duration(r["wait_mean_s"])
        tr["wait p95"] = None if r["wait_p95_s"] is None else format_duration(r["wait_p95_s"])
        tr["wait p99"] = None if r["wait_p99_s"] is None else format_duration(r["wait_p99_s"])
        tr["makespan"] = format_duration(r["makespan_s"])
        tr["utilisation"] = ", ".join(f"{u} {v:.0%}" for u, v in r["utilisation"].items() if v is not None)
        table_rows.append(tr)
    sources = sorted({r["trace"] for r in rows})
    if len(sources) == 1:
        trace_note = f"<p>Every scenario replays <code>{html.escape(sources[0])}</code>.</p>"
    else:
        trace_note = (
            "<p><strong>The scenarios replay different traces</strong> ("
            + "; ".join(f"{html.escape(r['scenario'])}: <code>{html.escape(r['trace'])}</code>" for r in rows)
            + "): the differences below are the workloads' as well as the configurations'.</p>"
        )
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rayqueue: comparison</title><style>{_CSS}</style>"
        f"</head><body>{header('simulation comparison')}<main><h1>Scenarios side by side</h1>",
        trace_note,
        _table(
            table_rows,
            [
                ("scenario", "scenario"),
                ("jobs", "jobs"),
                ("rejected", "rejected"),
                ("wait mean", "wait mean"),
                ("wait p95", "p95"),
                ("wait p99", "p99"),
                ("makespan", "makespan"),
                ("preemptions", "preemptions"),
                ("utilisation", "utilisation"),
                ("acs_hours", "ACS hours"),
                ("acs_cost", "ACS cost"),
                ("total_cost", "total cost"),
            ],
        ),
        _img(figures["compare_wait_cdf.png"], "wait CDF per scenario"),
        _img(figures["compare_queue_wait.png"], "mean wait per queue"),
        _img(figures["compare_cost.png"], "cost per scenario"),
        "<p>Each scenario's full report: "
        + ", ".join(f"<a href='{html.escape(s['scenario'])}/report.html'>{html.escape(s['scenario'])}</a>" for s in summaries)
        + "</p></main></body></html>",
    ]
    (d / "compare.html").write_text("\n".join(page))
    return data
