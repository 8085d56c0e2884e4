"""Trace loading, cluster.yaml and scenarios: what is accepted, and the errors for what is not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayqueue.queue.priority import PriorityClasses
from rayqueue.quota.tree import QuotaTree
from rayqueue.simulations import philly
from rayqueue.simulations.config import (
    ConfigError,
    build_units,
    load_cluster_text,
    load_scenario,
    parse_capacity,
)
from rayqueue.simulations.generate import kueue_rows, kueue_tree, spillover_rows
from rayqueue.simulations.trace import TraceError, load_trace

GPU = "nvidia.com/gpu"
GI = 2**30 * 1000
SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"

TREE = QuotaTree.from_dict(
    {
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
        "kind": "ElasticQuotaTree",
        "spec": {
            "root": {
                "name": "root",
                "children": [
                    {"name": "team-a", "namespaces": ["ns-a"], "max": {GPU: 8, "memory": "64Gi"}},
                    {"name": "team-b", "namespaces": ["ns-b"]},
                ],
            }
        },
    }
)


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "trace.csv"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


# ------------------------------------------------------------------ traces


def test_columns_aliases_namespaces_priorities_and_quantities(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        """
        job,submit,duration,queue,namespace,priority,gpu,cpu,memory,pods
        j1,5,60,team-a,,high,2,500m,40Gi,3
        j2,0,30,,ns-b,7,,2,,
        """,
    )
    trace = load_trace(path, TREE, priorities=PriorityClasses({"high": 1000}))
    assert [j.job for j in trace.jobs] == ["j2", "j1"]  # sorted by submit
    j2, j1 = trace.jobs
    assert (j1.queue, j1.priority, j1.priority_class, j1.pods) == ("team-a", 1000, "high", 3)
    assert j1.request == {GPU: 2000, "cpu": 500, "memory": 40 * GI}
    assert (j2.queue, j2.priority, j2.request, j2.pods) == ("team-b", 7, {"cpu": 2000}, 1)
    assert trace.problems == []


def test_timestamps_start_at_the_earliest(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        """
        submit,duration,queue,gpu
        2017-10-09 07:01:55,10,team-a,1
        2017-10-09 07:00:00,10,team-a,1
        """,
    )
    trace = load_trace(path, TREE)
    assert [j.submit for j in trace.jobs] == [0.0, 115.0]
    assert trace.start is not None and trace.start.isoformat().startswith("2017-10-09T07:00:00")


def test_bad_rows_are_skipped_with_their_row_numbers(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        """
        job,submit,duration,queue,gpu,priority
        ok,0,10,team-a,1,
        no-leaf,0,10,root,1,
        unknown,0,10,team-z,1,
        negative,0,-5,team-a,1,
        huge,0,10,team-a,9,
        weird-prio,0,10,team-b,1,urgent
        bad-qty,0,10,team-b,lots,
        no-submit,,10,team-b,1,
        """,
    )
    trace = load_trace(path, TREE)
    assert [j.job for j in trace.jobs] == ["ok"]
    by_row = {p.row: str(p) for p in trace.problems}
    assert sorted(by_row) == [2, 3, 4, 5, 6, 7, 8]
    assert "row 2 (no-leaf)" in by_row[2] and "not a leaf" in by_row[2]
    assert "team-z" in by_row[3]
    assert "duration must not be negative" in by_row[4]
    assert "larger than any quota allows" in by_row[5] and "root/team-a" in by_row[5] and "max 8" in by_row[5]
    assert "unknown priority class 'urgent'" in by_row[6]
    assert "gpu" in by_row[7] and "'lots'" in by_row[7]
    assert "submit is empty" in by_row[8]


def test_a_malformed_row_is_one_bad_row_and_later_rows_keep_their_numbers(tmp_path: Path) -> None:
    # Row 2 has a field too many, row 4 too few, and a blank line sits between rows 4 and 5: the file still
    # loads, the two rows are skipped with their numbers, and the row after them is still called row 5.
    path = _csv(
        tmp_path,
        """
        job,submit,duration,queue,gpu
        ok-1,0,10,team-a,1
        extra,0,10,team-a,1,surprise
        ok-3,0,10,team-a,1
        short,0

        neg-5,0,-1,team-a,1
        ok-6,1,10,team-b,2
        """,
    )
    trace = load_trace(path, TREE)
    assert [(j.job, j.row) for j in trace.jobs] == [("ok-1", 1), ("ok-3", 3), ("ok-6", 6)]
    assert [str(p) for p in trace.problems] == [
        "row 2 (extra): malformed row: 6 field(s) where the header has 5 ('extra,0,10,team-a,1,surprise')",
        "row 4 (short): malformed row: 2 field(s) where the header has 5 ('short,0')",
        "row 5 (neg-5): duration must not be negative (got -1)",
    ]
    assert trace.rows == 6 and trace.skipped == 3
    with pytest.raises(TraceError, match=r"3 bad row\(s\) \(--strict\):\n  - row 2 \(extra\): malformed row"):
        load_trace(path, TREE, strict=True)


def test_strict_fails_naming_the_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, "submit,duration,queue,gpu\n0,10,team-a,1\n0,-1,team-a,1\n")
    with pytest.raises(TraceError, match=r"1 bad row \(--strict\): row 2 \(row-2\): duration must not"):
        load_trace(path, TREE, strict=True)


def test_missing_columns_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"missing column\(s\) duration, queue \(or namespace\)"):
        load_trace(_csv(tmp_path, "submit,gpu\n0,1\n"), TREE)
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "nope.csv", TREE)


def test_parquet_loads_like_csv(tmp_path: Path) -> None:
    table = pa.table(
        {
            "job": ["p1", "p2"],
            "submit": [0.0, 2.5],
            "duration": [10.0, 1.0],
            "queue": ["team-a", "team-b"],
            "nvidia.com/gpu": [1, 4],
        }
    )
    path = tmp_path / "trace.parquet"
    pq.write_table(table, path)
    trace = load_trace(path, TREE)
    assert [(j.job, j.submit, j.request) for j in trace.jobs] == [("p1", 0.0, {GPU: 1000}), ("p2", 2.5, {GPU: 4000})]


def test_philly_csv_loads_as_it_is() -> None:
    tree = QuotaTree.from_yaml(SCENARIOS / "philly" / "tree.yaml")
    trace = load_trace(philly.JOBS_CSV, tree)
    assert len(trace.jobs) == 82_247 and trace.problems == []
    assert trace.ignored_columns == ["gpu_time"]
    assert {j.queue for j in trace.jobs} == set(tree.leaves)
    assert max(j.request[GPU] for j in trace.jobs) == 128_000


# ------------------------------------------------------------------ cluster.yaml and scenarios


def test_capacity_shorthand() -> None:
    assert parse_capacity("64 nodes x 8 GPUs, 96 CPU, 768Gi") == {
        GPU: 512_000,
        "cpu": 64 * 96_000,
        "memory": 64 * 768 * GI,
    }
    assert parse_capacity("16 GPUs, 500m cpu") == {GPU: 16_000, "cpu": 500}
    with pytest.raises(ValueError, match="names no resource"):
        parse_capacity("64 nodes x 8")


def test_cluster_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_cluster_text(
            """
            units:
              - {name: ecs, capacity: "2 nodes x 8 bananas, lots CPU"}
              - {name: acs, resource: acs}
              - {name: ecs, elastic: true}
            engine: {queueing: Fastest}
            """.replace("\n            ", "\n"),
            "c.yaml",
        )
    text = str(err.value)
    assert "c.yaml is invalid" in text
    assert "units[1]: a unit needs a capacity (or elastic: true for ACS)" in text
    assert "engine.queueing" in text


def test_cluster_capacity_errors_name_the_unit() -> None:
    with pytest.raises(ConfigError, match=r"units\[0\] \(ecs\)\.capacity: cannot read 'lots CPU'"):
        load_cluster_text("units:\n  - {name: ecs, capacity: '8 GPUs, lots CPU'}\n", "c.yaml")


def test_policy_units_take_their_capacity_from_cluster_yaml() -> None:
    sc = load_scenario(SCENARIOS / "spillover" / "scenario.yaml")
    assert [(u.name, u.resource, u.capacity, u.max_pods) for u in sc.units.units] == [
        ("ecs", "ecs", {GPU: 16_000, "cpu": 256_000, "memory": 2 * 2**40 * 1000}, None),
        ("acs", "acs", None, 24),
    ]
    assert sc.units.units[0].node_selector == {"node.kubernetes.io/instance-type": "ecs.gn7i-c32g1.32xlarge"}
    cluster = load_cluster_text("units:\n  - {name: gpu-pool, capacity: '8 GPUs'}\n")
    from rayqueue.scheduler.workloads.resourcepolicy import load_resource_policy

    with pytest.raises(ConfigError, match="'gpu-pool' is not a unit of ResourcePolicy"):
        build_units(cluster, load_resource_policy(SCENARIOS / "spillover" / "policy.yaml"))


def test_scenario_with_missing_files(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("quota: nope.yaml\ncluster: c.yaml\ntrace: t.csv\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(tmp_path / "s.yaml")
    assert "quota: file" in str(err.value) and "trace: file" in str(err.value)


def test_every_ready_scenario_loads() -> None:
    for path in sorted(SCENARIOS.glob("*/scenario*.yaml")):
        sc = load_scenario(path)
        assert sc.trace is not None and Path(sc.trace.path).is_file(), path


def test_generated_files_match_their_generators(tmp_path: Path) -> None:
    import csv

    import yaml

    from rayqueue.simulations.generate import write_all

    write_all(tmp_path)
    for rel in ("kueue_baseline/tree.yaml", "kueue_baseline/trace.csv", "spillover/trace.csv", "serving-burst/trace.csv"):
        assert (tmp_path / rel).read_text() == (SCENARIOS / rel).read_text(), rel
    rows = list(csv.DictReader(open(SCENARIOS / "kueue_baseline" / "trace.csv")))
    assert len(rows) == len(kueue_rows()) == 30 * 500
    assert yaml.safe_load((SCENARIOS / "kueue_baseline" / "tree.yaml").read_text()) == kueue_tree()
    assert spillover_rows()  # deterministic (seeded)
    philly_dir = tmp_path / "philly"
    philly_dir.mkdir()
    philly.write_scenario(philly_dir)
    for name in ("tree.yaml", "cluster.yaml"):
        assert (philly_dir / name).read_text() == (SCENARIOS / "philly" / name).read_text()


# ------------------------------------------------------------------ the ready scenarios follow the issue


def test_philly_scenario_follows_its_rules() -> None:
    # Each VC of the job file is a leaf (by namespace); min = nodes x 8 GPUs from philly_vc.csv, or the
    # documented 1 node for a VC that file lacks; max = 2 x min; ECS holds exactly the sum; ACS is elastic.
    import csv

    with open(philly.VC_CSV, newline="") as fh:
        nodes = {r["vc"]: int(r["node num"]) for r in csv.DictReader(fh)}
    with open(philly.JOBS_CSV, newline="") as fh:
        vcs = {r["cluster"] for r in csv.DictReader(fh)}
    assert sorted(vcs - set(nodes)) == ["23dbec", "51b7ef", "795a4c", "925e2b"]  # as docs/simulation.md says
    sc = load_scenario(SCENARIOS / "philly" / "scenario.yaml")
    leaves = sc.tree.leaves
    assert len(leaves) == len(vcs)
    for vc in vcs:
        leaf = sc.tree.leaf_for(namespace=vc)
        gpus = nodes.get(vc, 1) * 8
        assert (leaf.min.get(GPU), leaf.max.get(GPU)) == (gpus * 1000, 2 * gpus * 1000), vc
    total = sum(nodes.get(vc, 1) for vc in vcs) * 8
    assert sc.tree.root.min == {GPU: total * 1000} and GPU not in sc.tree.root.max  # bursts beyond are allowed
    ecs, acs = sc.units.units
    assert (ecs.name, ecs.resource, ecs.capacity) == ("ecs", "ecs", {GPU: total * 1000})
    assert (acs.name, acs.resource, acs.capacity, acs.max_pods) == ("acs", "acs", None, None)
    assert sc.trace is not None and Path(sc.trace.path).resolve() == philly.JOBS_CSV.resolve()


def test_kueue_baseline_matches_the_published_parameters() -> None:
    # 5 cohorts x 6 queues, nominal 20 CPU, borrowing limit 100; per queue 350 jobs of 1 CPU for 0.2 s every
    # 0.1 s at priority 50, 100 of 5 CPU for 0.5 s every 0.5 s at 100, 50 of 20 CPU for 1 s every 1.2 s at 200.
    import csv
    from collections import defaultdict

    sc = load_scenario(SCENARIOS / "kueue_baseline" / "scenario.yaml")
    cohorts = sc.tree.root.children
    assert len(cohorts) == 5 and all(len(c.children) == 6 for c in cohorts)
    for cohort in cohorts:
        assert cohort.max == {"cpu": 120_000}  # a cohort lends only its members' nominal quota
        for leaf in cohort.children:
            assert (leaf.min, leaf.max) == ({"cpu": 20_000}, {"cpu": 120_000})  # nominal, nominal + borrowing
    assert sc.cluster.engine.priorityClasses == {"small": 50, "medium": 100, "large": 200}
    assert sc.units.units[0].capacity == {"cpu": 600_000}
    assert sc.trace is not None
    per_queue: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with open(sc.trace.path, newline="") as fh:
        for row in csv.DictReader(fh):
            per_queue[(row["queue"], row["priority"])].append(row)
    assert {q for q, _ in per_queue} == set(sc.tree.leaves) and len(sc.tree.leaves) == 30
    expected = {"small": (350, "1", 0.2, 0.1), "medium": (100, "5", 0.5, 0.5), "large": (50, "20", 1.0, 1.2)}
    for (queue, cls), rows in per_queue.items():
        count, cpu, duration, every = expected[cls]
        assert len(rows) == count, (queue, cls)
        assert {(r["cpu"], float(r["duration"])) for r in rows} == {(cpu, duration)}
        submits = sorted(float(r["submit"]) for r in rows)
        assert submits == pytest.approx([i * every for i in range(count)])
