"""The one bounded loader (rayqueue.quota.manifests) and what reaches it parsed (the operator's bodies)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rayqueue.quota.manifests import DocumentError, Limits, check_structure, load_documents
from rayqueue.quota.tree import QuotaTree, QuotaTreeError

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from generate import billion_laughs, deep_tree  # noqa: E402


def test_an_alias_bomb_is_refused_by_counting_not_expanding() -> None:
    # 10 levels of 10 aliases: 10^10 nodes if expanded. The count is arithmetic on the node graph.
    with pytest.raises(DocumentError, match=r"aliases expand to more than 100,000 nodes"):
        load_documents(billion_laughs(), "bomb.yaml")


def test_shared_anchors_within_the_limit_load_as_written() -> None:
    docs = load_documents("res: &r {cpu: 1}\na: *r\nb: [*r, *r]\nmerged: {<<: *r, gpu: 2}\n")
    assert docs == [{"res": {"cpu": 1}, "a": {"cpu": 1}, "b": [{"cpu": 1}, {"cpu": 1}], "merged": {"cpu": 1, "gpu": 2}}]


def test_limits_name_themselves_and_the_place() -> None:
    with pytest.raises(DocumentError, match=r"^x.yaml: line 1, a\[0\]: nested deeper than 2 levels \(the limit\)$"):
        load_documents("a: [[[1]]]\n", "x.yaml", Limits(max_depth=2))
    with pytest.raises(DocumentError, match=r"^x.yaml: larger than the limit of 4 bytes$"):
        load_documents("a: 12\n", "x.yaml", Limits(max_bytes=4))
    with pytest.raises(DocumentError, match=r"^x.yaml \(document 1\): line 4: duplicate key 'a'"):
        load_documents("a: 1\n---\na: 1\na: 2\n", "x.yaml")


def test_a_tree_that_arrived_parsed_is_bounded_too() -> None:
    # The operator's watch hands the tree over as a dict: 3,000 levels must be an error, not RecursionError.
    root: dict[str, object] = {"name": "n0"}
    node = root
    for i in range(1, 3000):
        child: dict[str, object] = {"name": f"n{i}"}
        node["children"] = [child]
        node = child
    body = {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree", "spec": {"root": root}}
    with pytest.raises(QuotaTreeError, match=r"nested deeper than 100 levels \(the limit\)") as err:
        QuotaTree.from_dict(body, "ElasticQuotaTree default/deep")
    assert "\n" not in str(err.value)
    with pytest.raises(DocumentError, match="nested deeper"):
        check_structure(body, "body")


def test_a_tree_of_33_levels_is_refused_naming_the_node(tmp_path: Path) -> None:
    with pytest.raises(QuotaTreeError, match=r"node n0/n1/n2/n3/.*/n33: the tree is deeper than 32 levels"):
        QuotaTree.from_yaml_text(deep_tree(34), "deep.yaml")
    QuotaTree.from_yaml_text(deep_tree(33), "ok.yaml")  # 32 levels below the root: allowed


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))


@pytest.mark.parametrize("text", [
    "apiVersion: scheduling.sigs.k8s.io/v1beta1\nkind: ElasticQuotaTree\nspec: {root: {name: r}}\n" + billion_laughs(),
    "[" * 20_000 + "]" * 20_000 + "\n",
])
def test_quota_validate_as_a_process_refuses_a_bomb_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tree.yaml"
    path.write_text(text)
    rayqueue = Path(sys.executable).parent / "rayqueue"
    proc = subprocess.run([str(rayqueue), "quota", "validate", str(path)], capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 1, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert "INVALID" in out and "(the limit" in out


def test_submit_refuses_a_file_that_is_not_utf8_before_calling_the_service(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rayqueue.scheduler.cli import app

    path = tmp_path / "job.yaml"
    path.write_bytes(b"kind: RayJob\nmetadata: {name: caf\xe9}\n")
    # Port 9 on loopback: nothing listens there, and nothing is sent since reading the file fails first.
    result = CliRunner().invoke(app, ["submit", str(path), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and not isinstance(result.exception, UnicodeDecodeError)
    assert "byte 0xe9 at offset 33 is not UTF-8" in result.output and len(result.output.strip().splitlines()) == 1
