"""Benchmark: the Philly trace end to end, and Kueue's scalability baseline.

    .venv/bin/python benchmarks/simulate_philly.py [--out DIR] [--no-report]

Philly: load 82,247 jobs, simulate them on the real engine, write summary.json, jobs.csv and the HTML
report; prints jobs per second, wall time and peak memory against the targets (20 s, 1 GiB on a 2-core
machine). Kueue baseline: prints the simulated wall time (makespan) and the average time to admission
per priority class.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from rayqueue.scheduler.process import tune_gc
from rayqueue.simulations.config import load_scenario
from rayqueue.simulations.report import write_outputs
from rayqueue.simulations.simulator import simulate_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"
TARGET_S = 20.0
TARGET_RSS_MIB = 1024.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_philly(out: Path, report: bool) -> bool:
    started = time.perf_counter()
    scenario = load_scenario(SCENARIOS / "philly" / "scenario.yaml")
    result = simulate_scenario(scenario)
    simulated = time.perf_counter()
    summary = write_outputs(result, out / "philly", plots=report)
    total = time.perf_counter() - started
    jobs = len(result.records)
    rss = peak_rss_mib()
    c = summary["cluster"]
    print(f"Philly: {jobs:,} jobs ({summary['trace']['skipped_rows']} rows skipped) from {summary['trace']['source']}")
    print(
        f"  load + simulate {simulated - started:.2f} s (engine loop {result.wall_seconds:.2f} s, "
        f"{jobs / result.wall_seconds:,.0f} jobs/s; {result.cycles:,} admission cycles, {result.events:,} events)"
    )
    print(f"  end to end with outputs{' and report' if report else ''}: {total:.2f} s -> {jobs / total:,.0f} jobs/s")
    print(f"  peak memory {rss:,.0f} MiB")
    print(
        f"  makespan {c['makespan']}, mean wait {c['all_queues']['wait_mean_s']:.1f} s, "
        f"ECS utilisation {c['units']['ecs']['utilisation']:.1%}, ACS {c['acs_gpu_hours']:,.0f} GPU-h"
    )
    ok = total < TARGET_S and rss < TARGET_RSS_MIB
    print(f"  target < {TARGET_S:.0f} s and < {TARGET_RSS_MIB:.0f} MiB: {'met' if ok else 'MISSED'}")
    return ok


def run_kueue(out: Path, report: bool) -> None:
    started = time.perf_counter()
    scenario = load_scenario(SCENARIOS / "kueue_baseline" / "scenario.yaml")
    result = simulate_scenario(scenario)
    summary = write_outputs(result, out / "kueue_baseline", plots=report)
    total = time.perf_counter() - started
    c = summary["cluster"]
    print(f"Kueue baseline: {len(result.records):,} jobs in {len(summary['queues'])} queues")
    print(f"  simulated wall time (makespan) {c['makespan_s']:.1f} s; {c['preemptions']:,} preemptions")
    for name, cls in summary["priority_classes"].items():
        print(
            f"  class {name:<7} (priority {cls['priority']:>3}): {cls['jobs']:>6,} jobs, "
            f"average time to admission {cls['wait_mean_s']:.2f} s (p95 {cls['wait_p95_s']:.2f} s)"
        )
    print(f"  ran in {total:.2f} s ({len(result.records) / result.wall_seconds:,.0f} jobs/s in the engine loop)")


def main() -> int:
    tune_gc()  # as `rayqueue simulate` does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp dir)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html and the PNGs")
    parser.add_argument("--skip-kueue", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        ok = run_philly(out, not args.no_report)
        if not args.skip_kueue:
            run_kueue(out, not args.no_report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
