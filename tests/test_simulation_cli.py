"""`rayqueue simulate` end to end: the files a planner gets, comparisons, and bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from rayqueue.scheduler.cli import app

SPILL = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "spillover"
runner = CliRunner()


def _run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["simulate", "--no-progress", *args])


def test_flags_write_summary_jobs_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        "--quota",
        str(SPILL / "tree.yaml"),
        "--cluster",
        str(SPILL / "cluster.yaml"),
        "--policy",
        str(SPILL / "policy.yaml"),
        "--trace",
        str(SPILL / "trace.csv"),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["queues"]) == {"team-a", "team-b"}
    team_a = summary["queues"]["team-a"]
    for key in (
        "jobs",
        "wait_mean_s",
        "wait_p50_s",
        "wait_p95_s",
        "wait_p99_s",
        "gpu_hours",
        "borrowed_gpu_hours",
        "preemptions",
    ):
        assert key in team_a
    c = summary["cluster"]
    assert set(c["units"]) == {"ecs", "acs"}
    assert c["units"]["ecs"]["utilisation"] is not None and 0 < c["units"]["ecs"]["utilisation"] <= 1
    # team-a's burst spills over to ACS, and ACS is billed per GPU-hour.
    assert c["acs_gpu_hours"] > 0
    assert abs(c["acs_cost"] - c["acs_gpu_hours"] * 4.0) < 0.01
    rows = list(csv.DictReader(open(out / "jobs.csv")))
    assert len(rows) == summary["trace"]["jobs"] == 126
    assert {"job", "queue", "priority", "submit", "admit", "finish", "unit", "preemptions"} <= set(rows[0])
    assert {r["unit"] for r in rows} == {"ecs", "acs"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert '<header class="top">' in page and "header.top .brand" in page  # the dashboard's look
    for png in ("wait_cdf.png", "utilisation.png", "queues.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert "team-a" in result.output and "ACS" in result.output
    # Printed to a pipe, the queue table keeps every header and figure whole (rich would assume 80
    # columns and cut them: "borro…", "16,0…").
    assert "…" not in result.output
    assert "borrowed" in result.output and "preempt." in result.output
    assert f"{team_a['gpu_hours']:,.1f}" in result.output


def test_bad_rows_are_skipped_and_counted_or_fail_with_strict(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    shutil.copy(SPILL / "trace.csv", trace)
    with open(trace, "a") as fh:
        fh.write("bad-1,10,-5,team-a,1,1,normal\n")  # negative duration
        fh.write("bad-2,10,5,team-z,1,1,normal\n")  # no such namespace
        fh.write("bad-3,10,5,team-a,64,1,normal\n")  # above team-a's max of 32 GPUs
        fh.write("bad-4,10,5,team-a\n")  # malformed: 4 fields, the header has 7
    args = ["--quota", str(SPILL / "tree.yaml"), "--cluster", str(SPILL / "cluster.yaml"), "--trace", str(trace)]
    ok = _run(*args, "--out", str(tmp_path / "lenient"), "--no-plots")
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert summary["trace"]["skipped_rows"] == 4
    assert summary["trace"]["jobs"] == 126 and summary["trace"]["rows"] == 130
    examples = summary["trace"]["skipped_examples"]
    assert examples[0].startswith("row 127 (bad-1): duration must not be negative")
    assert examples[2].startswith("row 129 (bad-3): larger than any quota allows: org/team-a would use 64 of max 32")
    assert examples[3].startswith("row 130 (bad-4): malformed row: 4 field(s) where the header has 7")
    skipped = [r for r in csv.DictReader(open(tmp_path / "lenient" / "jobs.csv")) if r["status"] == "skipped"]
    assert [r["row"] for r in skipped] == ["127", "128", "129", "130"]

    strict = _run(*args, "--out", str(tmp_path / "strict"), "--strict")
    assert strict.exit_code == 2
    assert "4 bad row(s) (--strict)" in strict.output and "row 128 (bad-2)" in strict.output
    assert "team-z" in strict.output and "row 130 (bad-4): malformed row" in strict.output
    assert not (tmp_path / "strict" / "summary.json").exists()


def test_compare_runs_scenarios_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = _run("--compare", str(SPILL / "scenario.yaml"), str(SPILL / "scenario-more-ecs.yaml"), "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    by_name = {r["scenario"]: r for r in data["scenarios"]}
    assert set(by_name) == {"spillover", "spillover-more-ecs"}
    # 8 more prepaid GPUs: less spill-over to ACS.
    assert by_name["spillover-more-ecs"]["acs_cost"] < by_name["spillover"]["acs_cost"]
    assert (out / "spillover" / "report.html").exists() and (out / "spillover-more-ecs" / "summary.json").exists()
    assert (out / "compare.html").read_text().count("data:image/png;base64,") == 3
    assert "spillover-more-ecs" in result.output and "…" not in result.output
    assert "different traces" not in result.output
    assert {r["trace"] for r in data["scenarios"]} == {str(SPILL / "trace.csv")}


def test_compare_warns_when_the_scenarios_replay_different_traces(tmp_path: Path) -> None:
    # A what-if that also changes the trace compares workloads as well as configurations: say so.
    half = tmp_path / "half.csv"
    lines = (SPILL / "trace.csv").read_text().splitlines()
    half.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    other = tmp_path / "scenario-half.yaml"
    other.write_text(
        f"name: half-the-jobs\nquota: {SPILL / 'tree.yaml'}\ncluster: {SPILL / 'cluster.yaml'}\n"
        f"policy: {SPILL / 'policy.yaml'}\ntrace: {half}\n"
    )
    out = tmp_path / "cmp"
    result = _run("--compare", str(SPILL / "scenario.yaml"), str(other), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "the scenarios replay different traces" in result.stderr and str(half) in result.stderr
    data = json.loads((out / "compare.json").read_text())
    assert [r["trace"] for r in data["scenarios"]] == [str(SPILL / "trace.csv"), str(half)]
    assert "The scenarios replay different traces" in (out / "compare.html").read_text()
    # --trace replays one trace through both: no warning.
    plain = tmp_path / "plain"
    same = _run("--compare", str(SPILL / "scenario.yaml"), str(other), "--trace", str(half), "--out", str(plain), "--no-plots")
    assert same.exit_code == 0, same.output
    assert "different traces" not in same.output
    # --no-plots: the comparison's figures are left out too, its data is not.
    assert (plain / "compare.json").exists()
    assert not (plain / "compare.html").exists() and not list(plain.rglob("*.png"))


def test_usage_errors(tmp_path: Path) -> None:
    missing = _run("--quota", str(SPILL / "tree.yaml"), "--out", str(tmp_path))
    assert missing.exit_code == 2 and "missing --cluster, --trace" in missing.output
    two = _run(str(SPILL / "scenario.yaml"), str(SPILL / "scenario-more-ecs.yaml"), "--out", str(tmp_path))
    assert two.exit_code == 2 and "add --compare" in two.output
    bad_tree = tmp_path / "tree.yaml"
    bad_tree.write_text((SPILL / "tree.yaml").read_text().replace("max: {nvidia.com/gpu: 32}", "max: {nvidia.com/gpu: 4}"))
    bad = _run(str(SPILL / "scenario.yaml"), "--quota", str(bad_tree), "--out", str(tmp_path))
    assert bad.exit_code == 2 and "team-a: min.nvidia.com/gpu 8 is above max.nvidia.com/gpu 4" in bad.output


def test_up_to_forty_queues_get_curves_told_apart() -> None:
    # Philly has 15 queues; with matplotlib's ten colours alone, vc-23dbec and vc-ed69ec were drawn alike.
    from rayqueue.simulations.plots import curve_style

    styles = [(s["color"], s["linestyle"]) for s in map(curve_style, range(40))]
    assert len(set(styles)) == 40


def test_a_progress_bar_reports_jobs_done_and_virtual_time(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["simulate", str(SPILL / "scenario.yaml"), "--out", str(tmp_path), "--no-plots"])
    assert shown.exit_code == 0, shown.output
    bar = [line for line in shown.stderr.splitlines() if line.startswith("simulating")]
    assert len(bar) == 1 and "126/126 jobs done" in bar[0] and "virtual time 9.3h" in bar[0]
    quiet = _run(str(SPILL / "scenario.yaml"), "--out", str(tmp_path), "--no-plots")
    assert "simulating" not in quiet.stderr


def test_progress_is_reported_during_a_long_run() -> None:
    # 5,000 one-second jobs on one GPU, one every second: the progress callback fires while the run goes
    # on (every 2,000 instants), with virtual time and jobs done growing, and once more at the end.
    from rayqueue.quota.tree import QuotaTree
    from rayqueue.scheduler.workloads.resourcepolicy import Units
    from rayqueue.simulations.config import cluster_from_dict
    from rayqueue.simulations.simulator import Simulator
    from rayqueue.simulations.trace import Trace, TraceJob

    gpu = "nvidia.com/gpu"
    tree = QuotaTree.from_dict(
        {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "spec": {"root": {"name": "q"}}}
    )
    jobs = [TraceJob(row=i + 1, job=f"j{i}", queue="q", submit=float(i), duration=1.0, request={gpu: 1000}) for i in range(5000)]
    calls: list[tuple[float, int, int]] = []
    cluster = cluster_from_dict({"units": [{"name": "pool", "capacity": {gpu: 1}}]})
    sim = Simulator(tree, Units.single({gpu: 1000}), cluster, Trace(jobs, rows=5000), on_progress=lambda *a: calls.append(a))
    sim.run()
    assert len(calls) >= 3 and calls[-1] == (5000.0, 5000, 5000)
    assert calls[0][1] < calls[1][1] < 5000 and calls[0][0] < calls[1][0] < 5000.0


def test_the_wait_cdf_names_every_queue_or_the_worst_eight() -> None:
    from rayqueue.simulations.plots import queues_named_in_cdf

    few = {f"q{k:02d}": [float(k)] for k in range(20)}
    assert queues_named_in_cdf(few) == sorted(few)
    # 30 queues (the Kueue baseline): the eight with the longest p95 wait, worst first.
    many = {f"q{k:02d}": [0.0] * 90 + [float(k)] * 10 for k in range(30)}
    assert queues_named_in_cdf(many) == [f"q{k:02d}" for k in range(29, 21, -1)]
