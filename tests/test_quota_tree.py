from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import node, tree

from rayqueue.quota.quantity import CPU, GPU, MAX_JOBS, MEMORY, Demand, QuantityError, format_quantity, parse_quantity
from rayqueue.quota.tree import QuotaTree, QuotaTreeError, diff_trees

ROOT = Path(__file__).resolve().parents[1]


def test_import_queue_from_repo_root_is_the_standard_library() -> None:
    code = (
        "import queue, concurrent.futures, urllib3; import rayqueue.queue.queues as q; "
        "print(queue.__file__); print(q.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stdlib_queue, ours = out.splitlines()
    assert not stdlib_queue.startswith(str(ROOT)), stdlib_queue
    assert ours.startswith(str(ROOT / "queue"))
    assert not (ROOT / "queue" / "__init__.py").exists()


@pytest.mark.parametrize(
    ("text", "milli"),
    [("500m", 500), ("1", 1000), ("2.5", 2500), ("40Gi", 40 * 2**30 * 1000), ("1k", 1_000_000), ("100Mi", 100 * 2**20 * 1000),
     ("1e3", 1_000_000), ("0.1", 100), ("1u", 1), (8, 8000)],
)
def test_quantities_parse_exactly(text: str | int, milli: int) -> None:
    assert parse_quantity(text) == milli


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "5Xi", "--1", True])
def test_bad_quantity_names_the_field(bad: object) -> None:
    with pytest.raises(QuantityError, match="max.cpu"):
        parse_quantity(bad, field="max.cpu")  # type: ignore[arg-type]


def test_quantities_render_back() -> None:
    assert format_quantity(parse_quantity("40Gi"), MEMORY) == "40Gi"
    assert format_quantity(parse_quantity("500m"), CPU) == "500m"
    assert format_quantity(parse_quantity("8"), GPU) == "8"


def test_every_rule_is_reported_at_once_with_the_node_path() -> None:
    spec = node(
        "root",
        min={GPU: 8, CPU: 10},
        max={GPU: 8},
        children=[
            node("a", min={GPU: 6}, max={GPU: 4}, namespaces=["x"]),  # min > max
            node("b", min={GPU: 6, CPU: -1}, namespaces=["x"]),  # negative, namespace reused, mins add to 12 > 8
            node("a", namespaces=["y"]),  # duplicate name
            node("mid", namespaces=["z"], children=[node("c")]),  # namespaces on a non-leaf
            node("d", max={GPU: "lots"}),  # not a quantity
            node("e", attributes={"weight": 0, "queueingStrategy": "LIFO"}),
        ],
    )
    with pytest.raises(QuotaTreeError) as err:
        tree(spec)
    text = "\n".join(err.value.violations)
    assert "node root/a: min.nvidia.com/gpu 6 is above max.nvidia.com/gpu 4" in text
    assert "node root/b: cpu must not be negative" in text
    assert "node root/b: namespace 'x' is already mapped to root/a" in text
    assert "node root: children's min.nvidia.com/gpu add up to 12, above this node's min.nvidia.com/gpu 8" in text
    assert "node root/a: duplicate name 'a' (also at root/a)" in text
    assert "node root/mid: namespaces are allowed on leaves only" in text
    assert "node root/d: max.nvidia.com/gpu: 'lots' is not a quantity" in text
    assert "node root/e: attributes.weight must be a positive number" in text
    assert "node root/e: attributes.queueingStrategy must be one of StrictFIFO, BestEffortFIFO" in text
    assert len(err.value.violations) >= 9


def test_malformed_yaml_and_wrong_kind_are_clear() -> None:
    with pytest.raises(QuotaTreeError, match="malformed YAML"):
        QuotaTree.from_yaml_text("spec: [unclosed", "tree.yaml")
    with pytest.raises(QuotaTreeError, match="expected exactly one document of kind ElasticQuotaTree"):
        QuotaTree.from_yaml_text("kind: ConfigMap\n", "tree.yaml")
    with pytest.raises(QuotaTreeError, match=r"spec.root.children\[0\].nmae: Extra inputs are not permitted"):
        QuotaTree.from_yaml_text(
            "kind: ElasticQuotaTree\napiVersion: scheduling.sigs.k8s.io/v1beta1\nspec:\n  root:\n    name: r\n"
            "    children:\n    - nmae: typo\n      name: x\n",
        )


def test_a_yaml_alias_cycle_is_rejected_not_recursed() -> None:
    text = """
kind: ElasticQuotaTree
apiVersion: scheduling.sigs.k8s.io/v1beta1
spec:
  root: &r
    name: root
    children: [*r]
"""
    with pytest.raises(QuotaTreeError, match="refers back to itself"):
        QuotaTree.from_yaml_text(text)


def test_usage_accounting_borrowed_and_headroom() -> None:
    t = tree(
        node(
            "root",
            min={GPU: 8},
            max={GPU: 12, MAX_JOBS: 3},
            children=[node("a", min={GPU: 4}, max={GPU: 10}, namespaces=["ns-a"]), node("b", min={GPU: 4})],
        )
    )
    a = t.leaf_for(namespace="ns-a")
    req = Demand({GPU: 6000, MAX_JOBS: 1000})
    assert t.fits(a, req) is None
    t.admit(a, req)
    assert t.borrowed(a) == {GPU: 2000}
    assert t.headroom(a) == {GPU: 4000, MAX_JOBS: 2000}
    violation = t.fits(a, Demand({GPU: 6000}))
    assert violation is not None
    assert violation.sentence() == "root/a would use 12 of max 10 nvidia.com/gpu (6 in use + 6 requested)"
    t.release(a, req)
    assert all(v == 0 for n in t for v in n.usage.values())
    assert t.never_fits(a, {GPU: 11000}) is not None


def test_unknown_namespace_and_non_leaf_queue_are_named() -> None:
    t = tree(node("root", children=[node("team", children=[node("nlp", namespaces=["nlp"])])]))
    with pytest.raises(KeyError, match="not a leaf"):
        t.leaf("team")
    with pytest.raises(KeyError, match="namespace 'other' belongs to no leaf"):
        t.leaf_for(namespace="other")
    assert t.leaf_for(namespace="nlp").path == "root/team/nlp"


def test_diff_names_what_changed() -> None:
    old = tree(node("root", max={GPU: 8}, children=[node("a", max={GPU: 8}), node("b")]))
    new = tree(node("root", max={GPU: 16}, children=[node("a", max={GPU: 4}), node("c")]))
    lines = diff_trees(old, new)
    assert "- removed node root/b" in lines
    assert "+ added node root/c" in lines
    assert "~ root max.nvidia.com/gpu: 8 -> 16" in lines
    assert "~ root/a max.nvidia.com/gpu: 8 -> 4" in lines


def test_to_dict_round_trips() -> None:
    t = tree(node("root", min={MEMORY: "40Gi"}, children=[node("a", min={MEMORY: "40Gi"}, namespaces=["a"])]))
    again = QuotaTree.from_dict(t.to_dict())
    assert again.nodes["a"].min == t.nodes["a"].min
    assert again.to_dict() == t.to_dict()


def test_a_resource_first_met_after_the_tree_was_built_is_accounted_exactly() -> None:
    t = tree(node("root", max={GPU: 8}, children=[node("a", max={GPU: 4}, namespaces=["ns-a"])]))
    a = t.leaf_for(namespace="ns-a")
    fpga = "example.com/fpga-" + format(id(t), "x")  # a name no tree or job has used in this process
    req = Demand({GPU: 2000, fpga: 3000})
    assert t.fits(a, req) is None
    t.admit(a, req)
    assert t.nodes["root"].usage == {GPU: 2000, fpga: 3000}
    assert t.headroom(a) == {GPU: 2000}  # nothing bounds the new resource
    t.release(a, req)
    assert t.nodes["root"].usage == {} and a.usage == {}


def test_quantities_beyond_a_machine_word_stay_exact() -> None:
    # 4Ei of memory in milli-units: above 2**62 (Kubernetes' own limit, 2**63-1 bytes, is about 8Ei).
    huge = 4 * 2**60 * 1000
    t = tree(node("root", max={MEMORY: "7Ei"}, children=[node("a", max={MEMORY: "6Ei"}, namespaces=["ns-a"])]))
    a = t.leaf_for(namespace="ns-a")
    t.admit(a, Demand({MEMORY: huge}))
    assert t.fits(a, Demand({MEMORY: huge // 2})) is None
    violation = t.fits(a, Demand({MEMORY: huge}))
    assert violation is not None and violation.node == "root/a" and violation.limit == 6 * 2**60 * 1000
    t.release(a, Demand({MEMORY: huge}))
    assert a.usage == {}
