"""Charts as inline SVG, drawn on the server: no JavaScript library, nothing to download, and a page
saved to a file (or pasted in a ticket) keeps its charts."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

from rayqueue.quota.quantity import MILLI, format_quantity, is_byte_resource
from rayqueue.scheduler.dashboard.timeline import Timeline

#: one colour per team, cycled (colour-blind-safe Okabe-Ito palette)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
BINARY_UNITS = (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
#: the width of one character of an 11px label, roughly (labels are cut to fit the chart)
CHAR_PX = 6.2
PHASE_COLOURS = {"waiting": "#E69F00", "admitted": "#009E73", "preempting": "#D55E00"}


def quantity(milli: float, resource: str) -> str:
    """A quantity as a person reads it: bytes in binary units, the rest as Kubernetes writes it."""
    m = int(milli)
    if not is_byte_resource(resource) or m < 1024 * MILLI:
        return format_quantity(m, resource)
    size = m / MILLI
    suffix, unit = next((s, u) for s, u in BINARY_UNITS if size >= u)
    value = size / unit
    return f"{int(value)}{suffix}" if m % (unit * MILLI) == 0 else f"{value:.1f}{suffix}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def quota_bar(resource: str, used: int, lo: int, hi: int | None, borrowed: int, reserved: int = 0,
              width: int = 220) -> Markup:
    """One resource of one quota node: used (the part within ``min`` and the borrowed part apart), a
    reserved part (serving headroom, when a front end reports it), a tick at ``min``, the track up to
    ``max`` (or to what is shown, when unbounded)."""
    if hi is None and not lo:
        # neither limited nor guaranteed here: a bar would only show "full"; the numbers say it all
        return Markup('<span class="nolimit">no limit</span>')
    top = max(hi if hi is not None else 0, lo, used + reserved, 1)
    x = lambda v: round(width * v / top, 1)  # noqa: E731
    own = used - borrowed
    title = (f"{resource}: used {quantity(used, resource)} (borrowed {quantity(borrowed, resource)}), "
             f"min {quantity(lo, resource)}, max {quantity(hi, resource) if hi is not None else 'unbounded'}")
    parts = [f'<svg class="bar" width="{width}" height="14" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<rect x="0" y="2" width="{width}" height="10" fill="{"#eee" if hi is not None else "#f6f6f6"}"'
             f' stroke="#bbb"/>',
             f'<rect x="0" y="2" width="{x(own)}" height="10" fill="#0072B2"/>',
             f'<rect x="{x(own)}" y="2" width="{x(borrowed)}" height="10" fill="#E69F00"/>']
    if reserved:
        parts.append(f'<rect x="{x(used)}" y="2" width="{x(reserved)}" height="10" fill="#56B4E9" opacity="0.6"/>')
    if lo:
        parts.append(f'<line x1="{x(lo)}" y1="0" x2="{x(lo)}" y2="14" stroke="#000" stroke-width="2"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def timeline_chart(t: Timeline, width: int = 960) -> Markup:
    """The job's phases on one lane over time, with its marks (admitted, preempted, requeued, ended)
    as ticks labelled below, each on its own row so that close marks never overlap."""
    span = max(t.end - t.start, 1e-3)
    left, right = 10, 10
    inner = width - left - right
    x = lambda at: round(left + inner * (at - t.start) / span, 1)  # noqa: E731
    rows = len(t.marks)
    height = 60 + 16 * rows
    out = [f'<svg class="timeline" width="{width}" height="{height}" role="img" aria-label="timeline">',
           f'<rect x="{left}" y="10" width="{inner}" height="24" fill="#f4f4f4"/>']
    for p in t.phases:
        w = max(1.0, x(p.end) - x(p.start))
        colour = PHASE_COLOURS.get(p.kind, "#999")
        label = f"{p.kind} {p.label} {duration(p.seconds)}"
        out.append(f'<rect class="phase phase-{p.kind}" x="{x(p.start)}" y="10" width="{w}" height="24" '
                   f'fill="{colour}"><title>{escape(label)}: {escape(p.detail)}</title></rect>')
        if w > 90:
            out.append(f'<text x="{x(p.start) + 4}" y="26" font-size="11" fill="#fff">'
                       f'{escape(p.label)} {duration(p.seconds)}</text>')
    for i, m in enumerate(t.marks):
        mx = x(m.at)
        y = 50 + 16 * i
        anchor = "end" if mx > width * 0.6 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<line x1="{mx}" y1="8" x2="{mx}" y2="{y}" stroke="#555" stroke-dasharray="2,2"/>')
        text = f"{duration(m.at - t.start)} {m.kind}: {m.text}"
        room = int((mx if anchor == "end" else width - mx) / CHAR_PX) - 1  # never cut off by the edge
        if len(text) > room:
            text = text[: max(room - 1, 8)] + "…"
        out.append(f'<text class="mark mark-{escape(m.kind)}" x="{mx + dx}" y="{y + 4}" font-size="11" '
                   f'text-anchor="{anchor}"><title>{escape(m.text)}</title>{escape(text)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def team_chart(series: Mapping[str, Sequence[tuple[float, float]]], start: float, end: float, title: str,
               fmt: str = "count", width: int = 460, height: int = 200) -> Markup:
    """One line per team over time: ``series[team]`` is (time, value) points."""
    left, right, top, bottom = 50, 10, 24, 40
    inner_w, inner_h = width - left - right, height - top - bottom
    peak = max((v for pts in series.values() for _, v in pts), default=0.0) or 1.0
    span = max(end - start, 1.0)
    x = lambda t: round(left + inner_w * min(1.0, max(0.0, (t - start) / span)), 1)  # noqa: E731
    y = lambda v: round(top + inner_h * (1 - v / peak), 1)  # noqa: E731
    label = duration if fmt == "seconds" else (lambda v: f"{v:g}")
    out = [f'<svg class="chart" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" stroke="#999"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + inner_h}" stroke="#999"/>',
           f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{escape(label(peak))}</text>',
           f'<text x="{left - 4}" y="{top + inner_h}" font-size="10" text-anchor="end">0</text>',
           f'<text x="{left}" y="{height - 24}" font-size="10">{escape(when(start))}</text>',
           f'<text x="{left + inner_w}" y="{height - 24}" font-size="10" text-anchor="end">{escape(when(end))}</text>']
    if not series:
        out.append(f'<text x="{left + 10}" y="{top + inner_h / 2}" font-size="12" fill="#777">no data</text>')
    for i, (team, pts) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        ordered = sorted(pts)
        if len(ordered) == 1:
            t0, v0 = ordered[0]
            out.append(f'<circle cx="{x(t0)}" cy="{y(v0)}" r="3" fill="{colour}"/>')
        else:
            points = " ".join(f"{x(t)},{y(v)}" for t, v in ordered)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        lx = left + (i % 4) * (inner_w // 4)
        ly = height - 8 - 12 * (i // 4)
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="8" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{ly}" font-size="10">{escape(team)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
