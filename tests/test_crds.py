"""The CRDs in crds/: valid CustomResourceDefinitions with structural schemas, and our examples fit them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rayqueue.crds import generate
from rayqueue.quota.tree import QuotaTree

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"

EQT = "scheduling.sigs.k8s.io_elasticquotatrees.yaml"
RP = "scheduling.alibabacloud.com_resourcepolicies.yaml"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return doc


def schema_of(name: str) -> dict[str, Any]:
    versions = load(name)["spec"]["versions"]
    schema: dict[str, Any] = versions[0]["schema"]["openAPIV3Schema"]
    return schema


def structural_problems(node: Any, path: str = "", root: bool = True) -> list[str]:
    """The rules of a structural schema that a generator could break (Kubernetes' own list)."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    if "$ref" in node:
        problems.append(f"{path}: $ref is not allowed")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if not node.get("type") and not (int_or_string or preserve):
        problems.append(f"{path or 'root'}: every node needs a type")
    if int_or_string:
        if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}]:
            problems.append(f"{path}: int-or-string needs anyOf [integer, string]")
    elif any(k in node for k in ("anyOf", "oneOf", "allOf", "not")):
        problems.append(f"{path}: logical junctors only for int-or-string here")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are exclusive")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: an array needs items")
    if node.get("type") not in (None, "object", "array", "string", "integer", "number", "boolean"):
        problems.append(f"{path}: unknown type {node.get('type')!r}")
    for key, child in (node.get("properties") or {}).items():
        if root and key == "metadata" and set(child) - {"type"}:
            problems.append("metadata: only name/generateName may be restricted, keep it {type: object}")
        problems += structural_problems(child, f"{path}.{key}" if path else key, root=False)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        problems += structural_problems(extra, f"{path}.*", root=False)
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]", root=False)
    return problems


@pytest.mark.parametrize("name", [EQT, RP])
def test_crd_shape_is_valid(name: str) -> None:
    crd = load(name)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    names = spec["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.{spec['group']}"
    assert names["plural"] == names["plural"].lower() and names["singular"] == names["singular"].lower()
    assert names["listKind"] == names["kind"] + "List"
    assert spec["scope"] in ("Namespaced", "Cluster")
    versions = spec["versions"]
    assert sum(1 for v in versions if v["storage"]) == 1
    for version in versions:
        assert version["served"] is True
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object"
        assert structural_problems(schema) == []
        jsonschema.Draft7Validator.check_schema(schema)  # also a well-formed JSON schema


def test_committed_crds_are_what_the_generator_writes() -> None:
    for name in generate.FILES:
        assert (CRDS / name).read_text() == generate.render(name), f"regenerate {name}: python -m rayqueue.crds.generate"


def test_structural_check_catches_a_missing_type() -> None:
    broken = copy.deepcopy(schema_of(EQT))
    del broken["properties"]["spec"]["properties"]["root"]["properties"]["name"]["type"]
    assert structural_problems(broken) == ["spec.root.name: every node needs a type"]


def test_group_kind_and_versions_match_what_rayqueue_reads() -> None:
    from rayqueue.quota.model import API_VERSION as EQT_API
    from rayqueue.quota.model import KIND as EQT_KIND
    from rayqueue.scheduler.workloads.resourcepolicy import API_VERSION as RP_API
    from rayqueue.scheduler.workloads.resourcepolicy import KIND as RP_KIND

    for name, api, kind in ((EQT, EQT_API, EQT_KIND), (RP, RP_API, RP_KIND)):
        crd = load(name)
        group, version = api.split("/")
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
        assert [v["name"] for v in crd["spec"]["versions"]] == [version]
    assert "status" in load(EQT)["spec"]["versions"][0]["subresources"]


# ------------------------------------------------------------------------------ the examples fit


def test_example_tree_fits_the_crd_and_loads() -> None:
    tree = yaml.safe_load((EXAMPLES / "tree.yaml").read_text())
    jsonschema.validate(tree, schema_of(EQT))
    assert set(QuotaTree.from_dict(tree).leaves) == {"team-a-training", "team-a-inference", "team-b-research", "team-b-batch"}


def test_example_resource_policy_fits_the_crd_and_loads() -> None:
    from rayqueue.scheduler.workloads.resourcepolicy import load_resource_policy

    policy = yaml.safe_load((EXAMPLES / "resourcepolicy.yaml").read_text())
    jsonschema.validate(policy, schema_of(RP))
    units = load_resource_policy(EXAMPLES / "resourcepolicy.yaml")
    assert [(u.name, u.resource, u.max_pods) for u in units.units] == [("ecs", "ecs", None), ("acs", "acs", 40)]


def test_tree_schema_rejects_what_the_api_server_would() -> None:
    tree = yaml.safe_load((EXAMPLES / "tree.yaml").read_text())
    bad_quantity = copy.deepcopy(tree)
    bad_quantity["spec"]["root"]["children"][0]["min"]["cpu"] = "two"
    no_name = copy.deepcopy(tree)
    del no_name["spec"]["root"]["children"][1]["children"][0]["name"]
    for bad in (bad_quantity, no_name):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema_of(EQT))


def test_tree_deeper_than_the_typed_levels_is_kept() -> None:
    node: dict[str, Any] = {"name": "leaf", "namespaces": ["deep"], "max": {"cpu": "1"}}
    for level in range(generate.TYPED_LEVELS + 3):
        node = {"name": f"level-{level}", "children": [node]}
    tree = {"apiVersion": "scheduling.sigs.k8s.io/v1beta1", "kind": "ElasticQuotaTree",
            "metadata": {"name": "deep"}, "spec": {"root": node}}
    jsonschema.validate(tree, schema_of(EQT))
    assert QuotaTree.from_dict(tree).leaf_for(namespace="deep").name == "leaf"


def test_policy_schema_rejects_unknown_unit_kinds_and_policies() -> None:
    policy = yaml.safe_load((EXAMPLES / "resourcepolicy.yaml").read_text())
    wrong_unit = copy.deepcopy(policy)
    wrong_unit["spec"]["units"][0]["resource"] = "gce"
    wrong_policy = copy.deepcopy(policy)
    wrong_policy["spec"]["whenTryNextUnits"]["policy"] = "Whenever"
    negative_max = copy.deepcopy(policy)
    negative_max["spec"]["units"][1]["max"] = -1
    for bad in (wrong_unit, wrong_policy, negative_max):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema_of(RP))
