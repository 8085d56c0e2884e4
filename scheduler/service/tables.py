"""The CLI's tables of a running service's answers (``status``, ``jobs``, ``history``), fitted to the terminal.

Each table is drawn wide, and redrawn narrow (names wrapped, fewer columns) when the wide one would not fit
the terminal's width: an 80-column terminal shows whole job names, never ``te…``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rayqueue.quota.quantity import MAX_JOBS, MILLI, format_quantity, is_byte_resource


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


BINARY_UNITS = (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def display_quantity(milli: int, resource: str) -> str:
    """A quantity for a table cell: bytes in the largest binary unit that keeps the number at least 1, with
    3 significant digits when not exact (Ray's 16314848Ki reads ``15.6Gi``; ``16Gi`` stays ``16Gi``, and a
    rounded value always shows a decimal, so ``16.0Gi`` is never mistaken for a full 16Gi). Everything else
    as ``format_quantity`` writes it. The API's JSON keeps the exact milli-units."""
    if not is_byte_resource(resource) or milli < 1024 * MILLI:
        return format_quantity(milli, resource)
    size_bytes = milli / MILLI
    suffix, unit = next((suffix, unit) for suffix, unit in BINARY_UNITS if size_bytes >= unit)
    value = size_bytes / unit
    if milli % (unit * MILLI) == 0:
        return f"{int(value)}{suffix}"
    return f"{value:.2f}{suffix}" if value < 10 else f"{value:.1f}{suffix}"


def _res(values: dict[str, int], name: str) -> str:
    v = values.get(name)
    return "-" if v is None else display_quantity(v, name)


STATE_STYLE = {
    "Pending": "yellow",
    "Admitted": "cyan",
    "Running": "green",
    "Preempting": "magenta",
    "Succeeded": "bold green",
    "Failed": "bold red",
    "Stopped": "red",
    "Cancelled": "dim",
    "Rejected": "red",
}


def state_text(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


# ------------------------------------------------------------------------------ renderers


def _natural_width(table: Table) -> int:
    return Console(width=100_000).measure(table).maximum


def _fitted(wide: Table, narrow: Callable[[], Table], width: int | None) -> Table:
    """The wide table where it fits ``width`` (None: always), else the narrow one.

    Every column folds (never an ellipsis), and name columns are kept at their longest name, so a name
    is only ever broken when it is wider than the terminal itself.
    """
    if width is None or _natural_width(wide) <= width:
        return wide
    return narrow()


def _table(title: str, narrow: bool = False) -> Table:
    if narrow:  # no vertical rules: two columns more fit in 80
        return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    return Table(title=title, title_justify="left")


def _name_column(table: Table, header: str, names: list[str], wrap: bool = False) -> None:
    """A column at least as wide as its longest name; ``wrap``: other lines of its cells may wrap."""
    table.add_column(header, no_wrap=not wrap, overflow="fold", min_width=max((len(n) for n in names), default=0))


def status_tables(status: dict[str, Any], width: int | None = None) -> list[Table]:
    """The quota tree and the capacity units; ``width``: the terminal's, to fit (None: natural width)."""
    nodes = status["nodes"]
    resources: list[str] = []
    for n in nodes:
        for r in n["resources"]:
            if r not in resources:
                resources.append(r)
    resources.sort(key=lambda r: (r == MAX_JOBS, r))
    title = f"quota tree {status['tree']}  (usage / min / max)"
    names = ["  " * n["depth"] + n["name"] for n in nodes]
    table = _table(title)
    _name_column(table, "node", names)
    for r in resources:
        table.add_column(r, justify="right", overflow="fold")
    table.add_column("borrowed", overflow="fold")
    any_reserved = any(n.get("reserved") for n in nodes)  # services' headroom (serving.py), only if any
    if any_reserved:
        table.add_column("reserved", overflow="fold")
    table.add_column("pending", justify="right")
    table.add_column("running", justify="right")
    for n, name in zip(nodes, names, strict=True):
        cells = []
        for r in resources:
            if r not in n["resources"]:
                cells.append("")
                continue
            used = display_quantity(n["usage"].get(r, 0), r)
            cells.append(f"{used} / {_res(n['min'], r)} / {_res(n['max'], r)}")
        borrowed = ", ".join(f"{r}={display_quantity(v, r)}" for r, v in sorted(n["borrowed"].items()))
        extra = [_reserved(n)] if any_reserved else []
        table.add_row(
            name, *cells, f"[magenta]{borrowed}[/]" if borrowed else "", *extra, str(n["pending"]), str(n["running"])
        )

    def by_resource() -> Table:
        # One line per node and per resource under it: the width no longer grows with the resources.
        narrow = _table(title.replace("(usage / min / max)", ""), narrow=True)
        labels = names + ["  " * n["depth"] + "  " + r for n in nodes for r in n["resources"]]
        _name_column(narrow, "node / resource", labels)
        for col in ("usage", "min", "max", "borrowed", "pend", "run"):
            narrow.add_column(col, justify="right", overflow="fold")
        for n, name in zip(nodes, names, strict=True):
            narrow.add_row(name, "", "", "", "", str(n["pending"]), str(n["running"]))
            for r in n["resources"]:
                borrowed = n["borrowed"].get(r)
                narrow.add_row(
                    "  " * n["depth"] + "  " + r, display_quantity(n["usage"].get(r, 0), r), _res(n["min"], r),
                    _res(n["max"], r), f"[magenta]{display_quantity(borrowed, r)}[/]" if borrowed else "", "", "",
                )
        return narrow

    def units_table(narrow: bool) -> Table:
        units = _table(f"capacity units (Ray at {status['ray']})", narrow=narrow)
        _name_column(units, "unit", [u["name"] for u in status["units"]])
        for col in ("kind", "capacity", "in use", "pods", "nodeSelector"):
            units.add_column(col, overflow="fold")
        sep = "\n" if narrow else ", "  # narrow: one resource a line
        for u in status["units"]:
            # Ray's resources that no node has (0 TPUs...) are left out: they only add noise here
            cap = "elastic" if u["capacity"] is None else sep.join(
                f"{r}={display_quantity(v, r)}" for r, v in sorted(u["capacity"].items()) if v
            ) or "none"
            use = sep.join(f"{r}={display_quantity(v, r)}" for r, v in sorted(u["usage"].items())) or "-"
            pods = f"{u['pods']}" + (f" / {u['max_pods']}" if u["max_pods"] is not None else "")
            sel = sep.join(f"{k}={v}" for k, v in u["node_selector"].items()) or "(any node)"
            units.add_row(u["name"], u["resource"], cap, use, pods, sel)
        return units

    out = [_fitted(table, by_resource, width), _fitted(units_table(False), lambda: units_table(True), width)]
    if status.get("services"):
        out.append(services_table(status["services"]))
    return out


def _reserved(n: dict[str, Any]) -> str:
    return ", ".join(f"{r}={display_quantity(v, r)}" for r, v in sorted((n.get("reserved") or {}).items()))


def services_table(services: list[dict[str, Any]], title: str = "services (RayService -> Ray Serve)") -> Table:
    """Each service: replicas Serve asks / charged / its bounds, what it uses and reserves for bursts."""
    table = _table(title)
    _name_column(table, "id", [v["id"] for v in services])
    _name_column(table, "queue", [v["queue"] for v in services])
    for col in ("state", "replicas (asked / granted / min..max)", "used", "reserved", "preempted", "reason"):
        table.add_column(col, overflow="fold")
    for v in services:
        bounds = f"{v.get('min_replicas', '?')}..{v.get('max_replicas', '?')}"
        table.add_row(v["id"], v["queue"], state_text(v["state"]), f"{v['replicas']} / {v['granted']} / {bounds}",
                      v.get("used") or "-", v.get("reserved") or "-", str(v["preemptions"]), v.get("reason") or "")
    return table


def _prio(j: dict[str, Any]) -> str:
    return f"{j['priority_class']}({j['priority']})" if j["priority_class"] else str(j["priority"])


def jobs_table(jobs: list[dict[str, Any]], title: str = "jobs", width: int | None = None) -> Table:
    """The jobs; ``width``: the terminal's, to fit (None: natural width)."""
    table = _table(title)
    _name_column(table, "id", [j["id"] for j in jobs])
    _name_column(table, "queue", [j["queue"] for j in jobs])
    for col in ("prio", "state", "pos", "unit", "request", "submitted", "running", "finished"):
        table.add_column(col, no_wrap=col == "state", overflow="fold")
    for j in jobs:
        table.add_row(
            j["id"],
            j["queue"],
            _prio(j),
            state_text(j["state"]),
            "" if j["position"] is None else str(j["position"]),
            j["unit"] or "",
            j["request"],
            when(j["submitted_at"]),
            when(j["running_at"]),
            when(j["finished_at"]),
        )

    def narrow() -> Table:
        # The queue under the id, the position beside the state, the priority class alone, one time (of
        # the latest step) instead of three; the request and the unit are left to `rayqueue explain JOB`.
        small = _table(title, narrow=True)
        _name_column(small, "id / queue", [j["id"] for j in jobs])
        for col in ("state", "prio", "since"):
            small.add_column(col, no_wrap=col == "state", overflow="fold")
        for j in jobs:
            since = j["finished_at"] or j["running_at"] or j["submitted_at"]
            pos = "" if j["position"] is None else f" #{j['position']}"
            small.add_row(f"{j['id']}\n  [dim]{j['queue']}[/]", state_text(j["state"]) + pos,
                          j["priority_class"] or str(j["priority"]), when(since)[:8] if since else "-")
        return small

    return _fitted(table, narrow, width)


def history_table(events: list[dict[str, Any]], title: str = "history", width: int | None = None) -> Table:
    """The events; ``width``: the terminal's, to fit (None: natural width)."""
    table = _table(title)
    table.add_column("time", overflow="fold")
    _name_column(table, "job", [e["job"] for e in events])
    for col in ("event", "state", "unit", "message"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(when(e["at"]), e["job"], e["kind"], e["state"] or "", e["unit"] or "", e["message"])

    def narrow() -> Table:
        # The message under the job, wrapped to its width; the state follows from the event, and the
        # message names the unit where it matters.
        small = _table(title, narrow=True)
        small.add_column("time", no_wrap=True)
        _name_column(small, "job / message", [e["job"] for e in events], wrap=True)
        small.add_column("event", no_wrap=True, overflow="fold")
        for e in events:
            message = Text(e["job"] + "\n")
            message.append(e["message"], style="dim")
            small.add_row(when(e["at"]), message, e["kind"])
        return small

    return _fitted(table, narrow, width)


def page_note(what: str, shown: int, total: int, offset: int) -> str | None:
    """The line under a paged table that says what was left out and how to see it; None when nothing was."""
    older = total - offset - shown
    if older <= 0 and offset == 0:
        return None
    line = f"showing {shown} of {total} {what}" + (f", after skipping the {offset} newest" if offset else "")
    if older > 0:
        line += f"; {older} older not shown (--offset {offset + shown} for the next page, --limit 0 for all)"
    return line
