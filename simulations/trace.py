"""Workload traces: CSV or Parquet, one job a row, validated row by row against the quota tree.

Columns (case-insensitive; a ``columns`` mapping renames others onto these):

- ``submit``: seconds from the start of the trace, or a timestamp (then the earliest is time 0);
- ``duration``: seconds the job runs once admitted;
- ``queue`` (a leaf of the tree) or ``namespace`` (mapped to its leaf);
- ``priority`` (optional): a priority class name or an integer;
- ``job`` (optional): the job's name (defaults to ``row-N``);
- ``pods`` (optional): pods in the gang (counts against a unit's ``max`` pods), default 1;
- resources: ``gpu`` (``nvidia.com/gpu``), ``cpu``, ``memory``, or full names (``nvidia.com/gpu``,
  ``kube-queue/max-jobs``); quantities as in Kubernetes (``500m``, ``40Gi``, ``2``).

A bad row (unknown queue, negative duration, a job larger than a ``max`` on its path, a CSV row with
more or fewer fields than the header, ...) is reported with its row number: row 1 is the first row
after the header (line 2 of a CSV; blank lines are not counted). ``strict`` raises listing every bad
row; the default skips the rows and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rayqueue.queue.priority import PriorityClasses, UnknownPriorityClass
from rayqueue.quota.quantity import (
    ALIASES,
    CPU,
    MEMORY,
    QuantityError,
    Resources,
    check_resource_name,
    parse_quantity,
)
from rayqueue.quota.tree import QuotaNode, QuotaTree

#: Philly's own column names, so its CSV loads as it is.
PHILLY_COLUMNS = {"timestamp": "submit", "num_gpus": "gpu", "cluster": "namespace"}
_KNOWN = {"submit", "duration", "queue", "namespace", "priority", "job", "pods"}


class TraceError(ValueError):
    """The trace cannot be used (unreadable, a required column missing, or a bad row under ``strict``)."""


@dataclass(slots=True)
class TraceJob:
    row: int
    job: str
    queue: str
    submit: float
    duration: float
    request: Resources
    pods: int = 1
    priority: int = 0
    priority_class: str | None = None


@dataclass(slots=True)
class RowProblem:
    row: int
    job: str | None
    message: str

    def __str__(self) -> str:
        name = f" ({self.job})" if self.job else ""
        return f"row {self.row}{name}: {self.message}"


@dataclass
class Trace:
    jobs: list[TraceJob]
    problems: list[RowProblem] = field(default_factory=list)
    source: str = ""
    rows: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    start: datetime | None = None  # time 0 when ``submit`` held timestamps

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def resources(self) -> set[str]:
        return {r for j in self.jobs for r in j.request}


def _resource_column(name: str) -> str | None:
    if name in ALIASES:
        return ALIASES[name]
    if name in (CPU, MEMORY) or "/" in name or name == "ephemeral-storage":
        return name
    return None


@dataclass
class _Columns:
    """What a trace file holds, before any row is validated."""

    values: dict[str, list[Any]]  # column name (lower-cased) -> Python values
    rows: int  # rows read (the malformed ones not included)
    format: str  # csv | parquet
    #: CSV rows whose field count differs from the header's; they are not in ``values``.
    malformed: list[RowProblem] = field(default_factory=list)

    def row_numbers(self) -> list[int] | None:
        """The trace row number of each row in ``values``; ``None`` when it is simply index + 1."""
        if not self.malformed:
            return None
        skipped = {m.row for m in self.malformed}
        numbers: list[int] = []
        row = 0
        while len(numbers) < self.rows:
            row += 1
            if row not in skipped:
                numbers.append(row)
        return numbers


def _malformed_row(header: list[str], line: int, expected: int, actual: int, text: str) -> RowProblem:
    """A CSV row with the wrong number of fields: named by its row (line - 1) and, if readable, its job."""
    import csv

    fields = next(csv.reader([text]), [])
    lowered = [h.strip().lower() for h in header]
    job = None
    if "job" in lowered and lowered.index("job") < len(fields):
        job = fields[lowered.index("job")].strip() or None
    shown = text if len(text) <= 80 else text[:77] + "..."
    return RowProblem(line - 1, job, f"malformed row: {actual} field(s) where the header has {expected} ({shown!r})")


def _read_columns(path: Path, fmt: str) -> _Columns:
    if fmt == "auto":
        fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    malformed: list[tuple[int, int, int, str]] = []  # (line, expected fields, actual fields, text)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            def on_invalid_row(row: Any) -> str:
                # A row with too many or too few fields is one bad row, not a bad file: note it and go on.
                # Its line number (blank lines not counted) is known because parsing is single-threaded.
                malformed.append((row.number, row.expected_columns, row.actual_columns, row.text))
                return "skip"

            # Names, queues and priorities stay text even when they look like numbers.
            text_columns = ["job", "queue", "namespace", "priority", "cluster", "Job", "Queue"]
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: "string" for c in text_columns},
                    strings_can_be_null=True,
                    # Only an empty field is missing: pyarrow would also read "nan", "NA" or "null" as
                    # missing, and "gpu=nan" must be a bad row, not a job asking for nothing.
                    null_values=[""],
                ),
            )
    except FileNotFoundError as exc:
        raise TraceError(f"{path}: no such file") from exc
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # pyarrow.ArrowInvalid and friends: a malformed file
        raise TraceError(f"{path}: not a readable {fmt.upper()} trace: {exc}") from exc
    import pyarrow as pa

    columns: dict[str, list[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        key = name.strip().lower()
        if key in columns:
            raise TraceError(f"{path}: column {name!r} appears twice")
        if pa.types.is_timestamp(col.type):
            # Seconds since the epoch as floats: one vectorised cast instead of 80k datetimes.
            unit = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[col.type.unit]
            ints = col.cast(pa.int64()).to_pylist()
            columns[key] = [_Stamp(v * unit) if v is not None else None for v in ints]
        else:
            columns[key] = col.to_pylist()
    problems = [_malformed_row(table.column_names, *m) for m in malformed]
    return _Columns(columns, table.num_rows, fmt, problems)


class _Stamp(float):
    """Seconds since the epoch, read from a timestamp column (the trace then starts at its earliest)."""


def _as_seconds(value: Any) -> float | datetime:
    if type(value) is float or type(value) is _Stamp:
        return value
    if isinstance(value, datetime):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError("is empty")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        raise ValueError("is empty")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither seconds nor a timestamp") from None


def _quantity(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000
    if isinstance(value, float):
        if value.is_integer():
            return int(value) * 1000
    if isinstance(value, str) and not value.strip():
        return 0
    return parse_quantity(value, field=field)


def _resolve_priority(priorities: PriorityClasses, value: Any) -> tuple[int, str | None] | str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return priorities.resolve(value)
    except UnknownPriorityClass as exc:
        return f"priority: {exc}"


def _pods(value: Any) -> tuple[int, str | None]:
    try:
        pods = float(value)
    except (TypeError, ValueError):
        return 1, f"pods {value!r} is not a whole number"
    if not pods.is_integer() or pods < 1:
        return 1, f"pods must be a whole number >= 1 (got {value!r})"
    return int(pods), None


def looks_like_philly(columns: set[str]) -> bool:
    return {"timestamp", "num_gpus", "cluster", "duration"} <= columns and "submit" not in columns


def load_trace(
    path: str | Path,
    tree: QuotaTree,
    *,
    priorities: PriorityClasses | None = None,
    strict: bool = False,
    columns: Mapping[str, str] | None = None,
    format: str = "auto",
) -> Trace:
    """Read and validate a trace; jobs come back sorted by submit time (then row)."""
    p = Path(path)
    fmt = format
    rename = dict(columns or {})
    if fmt == "philly":
        rename = {**PHILLY_COLUMNS, **rename}
        fmt = "csv"
    read = _read_columns(p, fmt)
    raw, nrows = read.values, read.rows
    if format == "auto" and looks_like_philly(set(raw)):
        rename = {**PHILLY_COLUMNS, **rename}
    data: dict[str, list[Any]] = {}
    for name, values in raw.items():
        data[rename.get(name, name)] = values
    priorities = priorities or PriorityClasses()
    source = str(p)

    missing = [c for c in ("submit", "duration") if c not in data]
    if "queue" not in data and "namespace" not in data:
        missing.append("queue (or namespace)")
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)} (columns present: {', '.join(raw) or 'none'})")
    resource_cols: dict[str, str] = {}
    ignored: list[str] = []
    for name in data:
        if name in _KNOWN:
            continue
        res = _resource_column(name)
        if res is not None:
            try:
                check_resource_name(res, f"column {name!r}")
            except QuantityError as exc:
                raise TraceError(f"{source}: {exc}") from None
        if res is None:
            ignored.append(name)
        elif res in resource_cols.values():
            raise TraceError(f"{source}: resource {res} given by two columns")
        else:
            resource_cols[name] = res

    submit_col = data["submit"]
    duration_col = data["duration"]
    queue_col = data.get("queue")
    ns_col = data.get("namespace")
    prio_col = data.get("priority")
    job_col = data.get("job")
    pods_col = data.get("pods")
    res_cols = [(name, res, data[name]) for name, res in resource_cols.items()]

    problems: list[RowProblem] = list(read.malformed)
    row_numbers = read.row_numbers()
    jobs: list[TraceJob] = []
    stamps: list[float] = []  # epoch seconds of the jobs whose submit was a timestamp
    leaf_cache: dict[tuple[str | None, str | None], QuotaNode | str] = {}
    prio_cache: dict[Any, tuple[int, str | None] | str] = {}
    fit_cache: dict[tuple[str, tuple[tuple[str, int], ...]], str | None] = {}
    saw_number = False

    for i in range(nrows):
        row = i + 1 if row_numbers is None else row_numbers[i]
        job_name = job_col[i] if job_col is not None else None
        name = str(job_name) if job_name not in (None, "") else f"row-{row}"
        # ---- submit
        try:
            submit = _as_seconds(submit_col[i])
        except ValueError as exc:
            problems.append(RowProblem(row, name, f"submit {exc}"))
            continue
        stamp: float | None = None
        if isinstance(submit, datetime):
            if submit.tzinfo is None:  # a naive timestamp is read as UTC
                submit = submit.replace(tzinfo=UTC)
            stamp = submit.timestamp()
        elif type(submit) is _Stamp:
            stamp = float(submit)
        elif math.isnan(submit) or math.isinf(submit):
            problems.append(RowProblem(row, name, "submit is not a number"))
            continue
        # ---- duration
        dur_raw = duration_col[i]
        try:
            duration = float(dur_raw) if dur_raw not in (None, "") else math.nan
        except (TypeError, ValueError):
            problems.append(RowProblem(row, name, f"duration {dur_raw!r} is not a number of seconds"))
            continue
        if math.isnan(duration) or math.isinf(duration):
            problems.append(RowProblem(row, name, "duration is missing"))
            continue
        if duration < 0:
            problems.append(RowProblem(row, name, f"duration must not be negative (got {duration:g})"))
            continue
        # ---- queue
        key = (
            (queue_col[i] or None) if queue_col is not None else None,
            (ns_col[i] or None) if ns_col is not None else None,
        )
        leaf = leaf_cache.get(key)
        if leaf is None:
            try:
                if key[0]:
                    leaf = tree.leaf(str(key[0]))
                elif key[1]:
                    leaf = tree.leaf_for(namespace=str(key[1]))
                else:
                    leaf = "queue and namespace are both empty"
            except KeyError as exc:
                leaf = str(exc.args[0])
            leaf_cache[key] = leaf
        if isinstance(leaf, str):
            problems.append(RowProblem(row, name, leaf))
            continue
        # ---- priority
        priority, pclass = priorities.default, None
        if prio_col is not None and prio_col[i] not in (None, ""):
            pv = prio_col[i]
            resolved = prio_cache.get(pv)
            if resolved is None:
                resolved = _resolve_priority(priorities, pv)
                prio_cache[pv] = resolved
            if isinstance(resolved, str):
                problems.append(RowProblem(row, name, resolved))
                continue
            priority, pclass = resolved
        # ---- resources
        request: Resources = {}
        message: str | None = None
        for col, res, values in res_cols:
            v = values[i]
            if v is None:
                continue
            try:
                q = _quantity(v, col)
            except QuantityError as exc:
                message = str(exc)
                break
            if q < 0:
                message = f"{col} must not be negative (got {v!r})"
                break
            if q:
                request[res] = q
        if message is None and pods_col is not None and pods_col[i] not in (None, ""):
            pods, message = _pods(pods_col[i])
        else:
            pods = 1
        if message is None:
            fkey = (leaf.name, tuple(sorted(request.items())))
            if fkey in fit_cache:
                message = fit_cache[fkey]
            else:
                violation = tree.never_fits(leaf, request)
                if violation is not None:
                    message = f"larger than any quota allows: {violation.sentence()}"
                fit_cache[fkey] = message
        if message is not None:
            problems.append(RowProblem(row, name, message))
            continue

        seconds = 0.0 if stamp is not None or isinstance(submit, datetime) else float(submit)
        job = TraceJob(row, name, leaf.name, seconds, duration, request, pods, priority, pclass)
        if stamp is not None:
            stamps.append(stamp)
        else:
            saw_number = True
        jobs.append(job)

    trace_start: datetime | None = None
    if stamps:
        if saw_number:
            raise TraceError(f"{source}: submit mixes timestamps and seconds; use one or the other")
        t0 = min(stamps)
        trace_start = datetime.fromtimestamp(t0, UTC)
        for job, stamp in zip(jobs, stamps, strict=True):
            job.submit = stamp - t0

    problems.sort(key=lambda pr: pr.row)
    if strict and len(problems) == 1:
        raise TraceError(f"{source}: 1 bad row (--strict): {problems[0]}")
    if strict and problems:
        shown = "\n".join(f"  - {pr}" for pr in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise TraceError(f"{source}: {len(problems)} bad row(s) (--strict):\n{shown}{more}")
    jobs.sort(key=lambda j: (j.submit, j.row))
    return Trace(jobs, problems, source, nrows + len(read.malformed), ignored, trace_start)


def write_trace_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as a trace CSV (the header is the union of keys, in first-seen order)."""
    import csv

    header: list[str] = []
    for r in rows:
        for k in r:
            if k not in header:
                header.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
