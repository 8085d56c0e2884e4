"""What a simulation run writes: ``summary.json``, ``jobs.csv``, ``report.html`` and its plots as PNG, and
the side-by-side comparison of several runs.

The numbers are ``summary``'s, the plots ``plots``'s; this module puts them into files and HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from rayqueue.scheduler.dashboard.style import css, header
from rayqueue.simulations.plots import DASHES, cdf_points, figures_of, pyplot, time_axis
from rayqueue.simulations.simulator import SimulationResult, format_duration
from rayqueue.simulations.summary import short_name, summarize, write_jobs_csv

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
    if summary.get("services"):
        service_rows = [{"service": name, **v} for name, v in summary["services"].items()]
        for v in service_rows:
            v["scale_up_wait"] = format_duration(v["scale_up_wait_s"])
        parts.append("<h2>Services</h2>")
        parts.append(_table(service_rows, [
            ("service", "service"), ("queue", "queue"), ("mode", "serving"), ("scale_up_wait", "scale-ups waited"),
            ("batch_preemptions", "batch preemptions"), ("headroom_lent_gpu_hours", "headroom lent GPU-hours"),
            ("acs_gpu_hours", "ACS GPU-hours"), ("acs_cost", "ACS cost"), ("peak_replicas_running", "peak replicas"),
        ]))
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
        figures = figures_of(result)
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
                "finished": s["trace"]["finished"],
                "services": s.get("services", {}),
            }
        )
    data = {"scenarios": rows}
    (d / "compare.json").write_text(json.dumps(data, indent=2) + "\n")
    if not plots:
        return data
    plt = pyplot()

    figures: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # rotated queue names stay whole
        plt.close(fig)
        figures[name] = buf.getvalue()
        (d / name).write_bytes(figures[name])

    fig, ax = plt.subplots(figsize=(9, 5))
    wmax = max((r.first_admit - r.submit for res in results for r in res.records if r.first_admit is not None), default=0.0)
    wscale, wlabel = time_axis(wmax)
    for k, res in enumerate(results):
        w = np.array([r.first_admit - r.submit for r in res.records if r.first_admit is not None]) / wscale
        if w.size:
            x, y = cdf_points(w)
            # What-ifs often leave the waits unchanged: the earlier curves are drawn wider, so one drawn
            # over another still shows beside it rather than vanishing.
            width = 1.5 + 1.5 * (len(results) - 1 - k) / max(len(results) - 1, 1)
            dash = DASHES[k % len(DASHES)]
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


__all__ = ["format_duration", "short_name", "summarize", "write_comparison", "write_jobs_csv", "write_outputs"]
