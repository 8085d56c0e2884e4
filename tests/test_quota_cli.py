"""``rayqueue quota validate|diff`` and ``rayqueue request`` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayqueue.scheduler.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SAMPLES = ROOT / "data" / "kuberay" / "samples"  # vendored, unchanged: data/README.md

# A wide terminal, so that table cells and tree lines are not folded mid-word in the assertions.
runner = CliRunner(env={"COLUMNS": "200"})

BAD_TREE = """\
apiVersion: scheduling.sigs.k8s.io/v1beta1
kind: ElasticQuotaTree
metadata: {name: broken}
spec:
  root:
    name: root
    min: {nvidia.com/gpu: "8"}
    max: {nvidia.com/gpu: "16"}
    children:
    - name: team-a
      namespaces: [shared]
      min: {nvidia.com/gpu: "6", cpu: "-1"}
      max: {nvidia.com/gpu: "4"}
    - name: team-b
      namespaces: [shared]
      min: {nvidia.com/gpu: "6"}
    - name: team-a
      max: {memory: "lots"}
"""


def test_validate_prints_the_tree_with_min_and_max() -> None:
    result = runner.invoke(app, ["quota", "validate", str(EXAMPLES / "tree.yaml")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("OK ")
    assert "7 nodes, 4 leaves" in out
    for leaf in ("team-a-training", "team-a-inference", "team-b-research", "team-b-batch"):
        assert leaf in out
    assert "min: cpu=96, memory=384Gi, nvidia.com/gpu=12" in out
    assert "max: cpu=512, kube-queue/max-jobs=200, memory=2Ti, nvidia.com/gpu=64" in out
    assert "namespaces: team-b-research, team-b-sandbox" in out
    assert "queueingStrategy=StrictFIFO" in out


def test_bad_tree_exits_1_and_prints_each_violation_with_the_node_path(tmp_path: Path) -> None:
    path = tmp_path / "tree.yaml"
    path.write_text(BAD_TREE)
    result = runner.invoke(app, ["quota", "validate", str(path)])
    assert result.exit_code == 1
    out = result.output
    assert "INVALID" in out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("- ")]
    expected = [
        "node root/team-a: cpu must not be negative",
        "node root/team-a: min.nvidia.com/gpu 6 is above max.nvidia.com/gpu 4",
        "node root/team-b: namespace 'shared' is already mapped to root/team-a",
        "node root/team-a: duplicate name 'team-a' (also at root/team-a)",
        "node root/team-a: max.memory: 'lots' is not a quantity",
        "node root: children's min.nvidia.com/gpu add up to 12, above this node's min.nvidia.com/gpu 8",
    ]
    for fragment in expected:
        assert any(fragment in line for line in lines), f"missing violation {fragment!r} in:\n{out}"
    assert f"{len(lines)} problem(s)" in out


def test_unreadable_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["quota", "validate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "cannot read" in result.output
    result = runner.invoke(app, ["quota", "validate", str(EXAMPLES / "resourcepolicy.yaml")])
    assert result.exit_code == 1
    assert "expected exactly one document of kind ElasticQuotaTree" in result.output


def test_diff_lists_each_change(tmp_path: Path) -> None:
    new = (EXAMPLES / "tree.yaml").read_text()
    new = new.replace('nvidia.com/gpu: "12"', 'nvidia.com/gpu: "10"', 1)  # team-a-training min
    new = new.replace("name: team-b-batch", "name: team-b-jobs")
    new = new.replace("queueingStrategy: StrictFIFO", "queueingStrategy: BestEffortFIFO")
    path = tmp_path / "new.yaml"
    path.write_text(new)
    result = runner.invoke(app, ["quota", "diff", str(EXAMPLES / "tree.yaml"), str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "- removed node root/team-b/team-b-batch" in out
    assert "+ added node root/team-b/team-b-jobs" in out
    assert "~ root/team-a/team-a-training min.nvidia.com/gpu: 12 -> 10" in out
    assert "~ root/team-a/team-a-inference queueingStrategy: StrictFIFO -> BestEffortFIFO" in out
    assert "4 change(s)" in out


def test_diff_of_identical_trees_and_of_an_invalid_one(tmp_path: Path) -> None:
    tree = str(EXAMPLES / "tree.yaml")
    same = runner.invoke(app, ["quota", "diff", tree, tree])
    assert same.exit_code == 0 and "no differences" in same.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_TREE)
    result = runner.invoke(app, ["quota", "diff", tree, str(bad)])
    assert result.exit_code == 1
    assert "node root/team-b: namespace 'shared' is already mapped to root/team-a" in result.output


def test_request_prints_pods_and_total() -> None:
    result = runner.invoke(app, ["request", str(EXAMPLES / "rayjob-gpu.yaml"), "--pods"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "team-a-training/image-classifier" in out
    assert "cpu=18500m" in out and "memory=73928Mi" in out and "nvidia.com/gpu=4" in out
    assert "│    6 │" in out  # pods column
    # --pods: the head, the worker group and the submitter, each with per pod and total
    assert "gpu-group" in out and "submitter" in out
    assert "cpu=16, memory=64Gi, nvidia.com/gpu=4" in out


def test_request_reports_rejections_and_exits_1() -> None:
    result = runner.invoke(app, [
        "request",
        str(SAMPLES / "ray-job.kueue-toy-sample.yaml"),
        str(SAMPLES / "ray-job.use-existing-raycluster.yaml"),
        str(SAMPLES / "ray-cluster.sample.yaml"),
    ])
    assert result.exit_code == 1
    out = result.output
    assert "rayjob-sample-*" in out and "cpu=2500m, memory=3272Mi" in out  # the good one is still shown
    assert "REJECTED" in out and "spec.clusterSelector (ray.io/cluster=ray-cluster-kuberay)" in out
    assert "ray-cluster.sample.yaml: no RayJob document found" in out


@pytest.mark.parametrize("mode_file,label", [("ray-job.sidecar-mode.yaml", "SidecarMode"),
                                             ("ray-job.interactive-mode.yaml", "InteractiveMode")])
def test_request_shows_non_default_submission_modes(mode_file: str, label: str) -> None:
    result = runner.invoke(app, ["request", str(SAMPLES / mode_file)])
    assert result.exit_code == 0, result.output
    assert f"({label})" in result.output


def test_request_reads_stdin() -> None:
    text = (EXAMPLES / "rayjob-cpu.yaml").read_text()
    result = runner.invoke(app, ["request", "-"], input=text)
    assert result.exit_code == 0, result.output
    assert "team-b-batch/cpu-sample-*" in result.output


def test_request_with_malformed_yaml_names_the_document() -> None:
    result = runner.invoke(app, ["request", "-"], input="kind: RayJob\n---\nspec: [oops\n")
    assert result.exit_code == 1
    assert "stdin (document 1): malformed YAML" in result.output
