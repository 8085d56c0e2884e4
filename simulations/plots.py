"""The simulation report's plots (matplotlib, the ``[report]`` extra): waits, usage over time, borrowing
and spill-over, each as PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from rayqueue.scheduler.extras import requires_extra
from rayqueue.simulations.simulator import SimulationResult
from rayqueue.simulations.summary import GRID_POINTS, MILLI, sample_steps, short_name, usage_steps

#: Above this many queues the wait CDF names only the WORST_QUEUES_NAMED that wait longest.
MAX_NAMED_CURVES = 20
WORST_QUEUES_NAMED = 8


def cdf_points(values: np.ndarray, points: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF drawn with at most ``points`` steps (exact for smaller samples)."""
    w = np.sort(values)
    if w.size <= points:
        return w, np.arange(1, w.size + 1) / w.size
    y = np.linspace(0.0, 1.0, points + 1)[1:]
    idx = np.ceil(y * w.size).astype(np.int64) - 1
    return w[idx], y


def time_axis(end: float) -> tuple[float, str]:
    if end <= 300:
        return 1.0, "seconds"
    if end <= 3 * 3600:
        return 60.0, "minutes"
    if end <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


#: Line styles that, combined with ten colours, tell up to 40 curves apart.
DASHES = ["-", "--", ":", "-."]


def curve_style(k: int) -> dict[str, Any]:
    """Colour and dash of the k-th curve: matplotlib's default ten colours repeat, so the dash changes
    every ten curves (Philly has 15 queues; two of them drawn alike would be read as one)."""
    return {"color": f"C{k % 10}", "linestyle": DASHES[(k // 10) % len(DASHES)]}


def queues_named_in_cdf(waits: dict[str, list[float]]) -> list[str]:
    """The queues the wait CDF draws in colour and names: all of them up to MAX_NAMED_CURVES, else
    (thirty curves cannot be told apart) the WORST_QUEUES_NAMED with the longest p95 wait, worst first."""
    if len(waits) <= MAX_NAMED_CURVES:
        return sorted(waits)
    return sorted(waits, key=lambda q: (-float(np.percentile(waits[q], 95)), q))[:WORST_QUEUES_NAMED]


def pyplot() -> Any:
    """matplotlib's pyplot drawing off-screen; it comes with the [report] extra."""
    with requires_extra("report", "the simulation report (for its plots; --no-plots skips them)"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt


def figures_of(result: SimulationResult) -> dict[str, bytes]:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    res = short_name(result.resource).upper()
    out: dict[str, bytes] = {}
    scale, unit_label = time_axis(result.end)
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
    wscale, wlabel = time_axis(wmax)
    named = queues_named_in_cdf(by_queue)
    title = "Wait-time CDF per queue"
    if len(named) < len(by_queue):
        # The rest in grey, and all queues together for reference.
        for name in sorted(set(by_queue) - set(named)):
            x, y = cdf_points(np.asarray(by_queue[name]) / wscale)
            ax.step(x, y, where="post", color="0.8", linewidth=0.6)
        x, y = cdf_points(np.concatenate([np.asarray(v) for v in by_queue.values()]) / wscale)
        ax.step(x, y, where="post", color="black", linewidth=2, label=f"all {len(by_queue)} queues")
        title += f" (the {len(named)} with the longest p95 wait named, the others in grey)"
    for k, name in enumerate(named):
        x, y = cdf_points(np.asarray(by_queue[name]) / wscale)
        ax.step(x, y, where="post", label=f"{name} ({len(by_queue[name])})", **curve_style(k))
    ax.set_xscale("symlog", linthresh=max(wmax / wscale / 1000, 1e-3))
    ax.set_xlabel(f"wait before first admission ({wlabel}, symlog)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title, fontsize=11 if len(title) < 60 else 9)
    ax.grid(alpha=0.3)
    if by_queue:
        ax.legend(fontsize=7, ncol=2)
    save(fig, "wait_cdf.png")

    # Utilisation over time, stacked by unit.
    steps = usage_steps(result, "unit")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    series = [sample_steps(*steps[i], grid) if i in steps else np.zeros_like(grid) for i in range(len(result.units))]
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
    leaf_steps = usage_steps(result, "leaf")
    n = len(result.leaves)
    cols = min(4, max(n, 1))
    rows = math.ceil(n / cols) if n else 1
    # At least 9 inches wide, so the title fits above one or two small panels.
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2 * cols, 9.0), 2.3 * rows + 0.4), squeeze=False, sharex=True)
    for k, leaf in enumerate(result.leaves):
        ax = axes[k // cols][k % cols]
        usage = sample_steps(*leaf_steps[k], grid) if k in leaf_steps else np.zeros_like(grid)
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
