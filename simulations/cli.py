"""``rayqueue simulate``: replay a trace against a quota tree and a cluster, or compare scenarios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    scenarios: list[Path] = typer.Argument(
        None,
        help="Scenario file(s) bundling quota, cluster, policy and trace. One runs it; several need --compare.",
        show_default=False,
    ),
    quota: Path | None = typer.Option(None, "--quota", help="ElasticQuotaTree YAML (overrides the scenario's)."),
    cluster: Path | None = typer.Option(None, "--cluster", help="cluster.yaml: units, prices, engine options."),
    trace: Path | None = typer.Option(None, "--trace", help="Trace CSV or Parquet (the Philly CSV loads as is)."),
    policy: Path | None = typer.Option(None, "--policy", help="ResourcePolicy YAML (ordered ECS/ACS units)."),
    out: Path = typer.Option(Path("simulation-out"), "--out", help="Directory for summary.json, jobs.csv, report.html."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad trace rows instead of skipping them."),
    compare: bool = typer.Option(False, "--compare", help="Run every scenario given on the same trace, side by side."),
    trace_format: str = typer.Option("auto", "--trace-format", help="auto | csv | parquet | philly"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write report.html and the PNG plots."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate admission in virtual time on the real engine and report waits, utilisation and cost.

    \b
    rayqueue simulate --quota tree.yaml --cluster cluster.yaml --trace jobs.csv [--policy p.yaml] --out DIR
    rayqueue simulate simulations/scenarios/philly/scenario.yaml --out DIR
    rayqueue simulate --compare a.yaml b.yaml [--trace jobs.csv] --out DIR
    """
    from rich.console import Console

    from rayqueue.quota.tree import QuotaTreeError
    from rayqueue.scheduler.engine.driver import SimulationError
    from rayqueue.scheduler.extras import MissingExtra, ensure_extra
    from rayqueue.scheduler.workloads.resourcepolicy import ResourcePolicyError
    from rayqueue.simulations.config import ConfigError, TraceRef
    from rayqueue.simulations.trace import TraceError

    console = Console(stderr=True)
    if trace_format not in ("auto", "csv", "parquet", "philly"):
        typer.echo(f"--trace-format: {trace_format!r} is not one of auto, csv, parquet, philly", err=True)
        raise typer.Exit(2)
    trace_ref = TraceRef(path=str(trace), format=trace_format) if trace else None  # type: ignore[arg-type]
    try:
        if plots:  # before the simulation, not after it
            ensure_extra("report", "rayqueue simulate (for its plots; --no-plots skips them)", "matplotlib")
        if compare:
            _compare(list(scenarios or []), trace_ref, quota, cluster, policy, out, strict, plots, progress, console)
        else:
            _single(list(scenarios or []), trace_ref, quota, cluster, policy, out, strict, plots, progress, console)
    except (QuotaTreeError, ConfigError, ResourcePolicyError, TraceError, SimulationError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except MissingExtra as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


def _load(
    scenario_path: Path | None,
    quota: Path | None,
    cluster: Path | None,
    policy: Path | None,
    trace_ref: Any,
) -> Any:
    from rayqueue.simulations.config import ConfigError, load_scenario, load_scenario_parts

    if scenario_path is not None:
        sc = load_scenario(scenario_path)
        if (quota or cluster or policy) and sc.paths is not None:
            q, c, p = sc.paths
            sc = load_scenario_parts(quota or q, cluster or c, policy or p, sc.trace, name=sc.name, description=sc.description)
        if trace_ref is not None:
            sc.trace = trace_ref
        return sc
    missing = [flag for flag, v in (("--quota", quota), ("--cluster", cluster), ("--trace", trace_ref)) if v is None]
    if missing:
        raise ConfigError([f"missing {', '.join(missing)} (or give a scenario file)"], "rayqueue simulate")
    assert quota is not None and cluster is not None
    return load_scenario_parts(quota, cluster, policy, trace_ref, name=Path(quota).stem)


def _single(
    scenarios: list[Path],
    trace_ref: Any,
    quota: Path | None,
    cluster: Path | None,
    policy: Path | None,
    out: Path,
    strict: bool,
    plots: bool,
    progress: bool,
    console: Any,
) -> None:
    from rayqueue.simulations.config import ConfigError
    from rayqueue.simulations.report import write_outputs
    from rayqueue.simulations.simulator import simulate_scenario

    if len(scenarios) > 1:
        raise ConfigError([f"{len(scenarios)} scenario files given; add --compare to run them side by side"], "rayqueue simulate")
    sc = _load(scenarios[0] if scenarios else None, quota, cluster, policy, trace_ref)
    result = simulate_scenario(sc, strict=strict, progress=progress)
    summary = write_outputs(result, out, plots=plots)
    _print_summary(summary, out, plots)


def _compare(
    scenarios: list[Path],
    trace_ref: Any,
    quota: Path | None,
    cluster: Path | None,
    policy: Path | None,
    out: Path,
    strict: bool,
    plots: bool,
    progress: bool,
    console: Any,
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from rayqueue.simulations.config import ConfigError
    from rayqueue.simulations.report import format_duration, write_comparison, write_outputs
    from rayqueue.simulations.simulator import simulate_scenario

    if len(scenarios) < 2:
        raise ConfigError(["--compare needs at least two scenario files"], "rayqueue simulate")
    loaded = [_load(p, quota, cluster, policy, trace_ref) for p in scenarios]
    names: set[str] = set()
    for sc in loaded:
        base, k = sc.name, 2
        while sc.name in names:
            sc.name = f"{base}-{k}"
            k += 1
        names.add(sc.name)
    traces = {sc.name: str(Path(sc.trace.path).resolve()) if sc.trace else "none" for sc in loaded}
    if len(set(traces.values())) > 1:
        # The what-ifs change the tree or the cluster, not the work: different traces make the
        # waits and costs side by side a comparison of workloads too, so say so before the numbers.
        listed = "; ".join(f"{name}: {path}" for name, path in traces.items())
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] the scenarios replay different traces ({listed}); "
            "--trace FILE replays one trace through all of them",
            highlight=False,
        )
    results, summaries = [], []
    for sc in loaded:
        Console(stderr=True).print(f"[bold]scenario {sc.name}[/bold]")
        result = simulate_scenario(sc, strict=strict, progress=progress)
        summaries.append(write_outputs(result, out / sc.name, plots=plots))
        results.append(result)
    data = write_comparison(results, summaries, out, plots=plots)
    table = Table(title="Scenarios side by side", box=box.SIMPLE, pad_edge=False)
    table.add_column("scenario", no_wrap=True, min_width=min(max(len(sc.name) for sc in loaded), 40))
    for col in ("jobs", "rej.", "wait", "p95", "makespan", "ACS cost", "total"):
        table.add_column(col, justify="right", overflow="fold")
    for r in data["scenarios"]:
        table.add_row(
            r["scenario"],
            f"{r['jobs']:,}",
            f"{r['rejected']:,}",
            "–" if r["wait_mean_s"] is None else format_duration(r["wait_mean_s"]),
            "–" if r["wait_p95_s"] is None else format_duration(r["wait_p95_s"]),
            format_duration(r["makespan_s"]),
            _money(r["acs_cost"]),
            _money(r["total_cost"]),
        )
    _print_table(table)
    if any(r["services"] for r in data["scenarios"]):
        _print_table(_services_table([(r["scenario"], r["services"]) for r in data["scenarios"]]))
    written = f"{out}/compare.html, compare.json" if plots else f"{out}/compare.json"
    Console().print(f"wrote {written} and each scenario's outputs under {out}/<scenario>/")


def _services_table(rows: list[tuple[str, dict[str, Any]]]) -> Any:
    """Per scenario and service: how long scale-ups waited, what batch paid, what ACS cost."""
    from rich import box
    from rich.table import Table

    from rayqueue.simulations.report import format_duration

    table = Table(title="Services", box=box.SIMPLE, pad_edge=False)
    table.add_column("scenario", no_wrap=True)
    table.add_column("service", no_wrap=True)
    for col in ("mode", "scale-up wait", "batch preempt.", "lent GPU-h", "ACS GPU-h", "ACS cost"):
        table.add_column(col, justify="right", overflow="fold")
    for scenario, services in rows:
        for name, v in services.items():
            table.add_row(
                scenario, name, v["mode"], format_duration(v["scale_up_wait_s"]), f"{v['batch_preemptions']:,}",
                _hours(v["headroom_lent_gpu_hours"]), _hours(v["acs_gpu_hours"]), _money(v["acs_cost"]),
            )
    return table


def _print_table(table: Any) -> None:
    """Print a table without cutting a figure short.

    Written to a pipe or a log, rich assumes 80 columns and would end numbers with an ellipsis
    ("16,0…"), so the table gets its natural width there; a narrow terminal folds a figure over two
    lines rather than cutting it.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        natural = Console(width=1000).measure(table).maximum
        console = Console(width=max(console.width, natural))
    console.print(table)


def _hours(value: float) -> str:
    """Resource-hours: 3 significant digits when small, so a 67 s run's 0.04 CPU-h does not read as 0.0."""
    if value == 0:
        return "0"
    if abs(value) < 10:
        return f"{value:.3g}"
    return f"{value:,.1f}"


def _money(value: float) -> str:
    """Compact amounts for narrow terminals: 950.25, 223.1k, 11.17M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:,.1f}k"
    return f"{value:,.2f}"


def _print_summary(summary: dict[str, Any], out: Path, plots: bool) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from rayqueue.simulations.report import format_duration, short_name

    short = short_name(summary["resource"])
    console = Console()
    table = Table(title=f"Simulation {summary['scenario']}: queues", box=box.SIMPLE, pad_edge=False)
    longest = max((len(n) for n in summary["queues"]), default=5)
    table.add_column("queue", no_wrap=True, min_width=min(longest, 40))
    for col in ("jobs", "rej.", "wait", "p50", "p95", "p99", f"{short.upper()}-h", "borrowed", "preempt."):
        table.add_column(col, justify="right", overflow="fold")

    def d(v: float | None) -> str:
        return "–" if v is None else format_duration(v)

    for name, q in summary["queues"].items():
        table.add_row(
            name,
            f"{q['jobs']:,}",
            f"{q['rejected']:,}",
            d(q["wait_mean_s"]),
            d(q["wait_p50_s"]),
            d(q["wait_p95_s"]),
            d(q["wait_p99_s"]),
            _hours(q[f"{short}_hours"]),
            _hours(q[f"borrowed_{short}_hours"]),
            f"{q['preemptions']:,}",
        )
    _print_table(table)
    c, t, run = summary["cluster"], summary["trace"], summary["run"]
    units = ", ".join(
        f"{n} {u['utilisation']:.0%}" if u["utilisation"] is not None else f"{n} {_hours(u[f'{short}_hours'])} {short}-h"
        for n, u in c["units"].items()
    )
    console.print(
        f"jobs {t['jobs']:,} (skipped rows {t['skipped_rows']:,}, rejected {t['rejected']:,}, "
        f"unfinished {t['unfinished']:,}); makespan {c['makespan']}; units: {units}; "
        f"ACS {_hours(c[f'acs_{short}_hours'])} {short}-h costing {c['currency']} {c['acs_cost']:,.2f}; "
        f"total {c['currency']} {c['total_cost']:,.2f}"
    )
    if summary.get("services"):
        _print_table(_services_table([(summary["scenario"], summary["services"])]))
    if t["skipped_examples"]:
        console.print("skipped rows (first ones): " + json.dumps(t["skipped_examples"][:5]), highlight=False)
    console.print(
        f"simulated in {run['wall_seconds']} s ({run['jobs_per_second']:,} jobs/s); wrote {out}/summary.json, "
        f"{out}/jobs.csv" + (f", {out}/report.html" if plots else "")
    )
