"""The compiled CRD check (scheduler/workloads/schema_check.py) passes exactly what jsonschema passes.

A submission's CRD check answers "valid" from closures compiled from the schema, and only a document they
refuse goes to jsonschema for its messages. That is as strict as jsonschema alone only if the closures
never pass a document jsonschema refuses: checked here on KubeRay's samples edited at random (values of
every JSON type at any place, fields deleted or added), for the RayJob, RayCluster and RayService cuts.
"""

from __future__ import annotations

import copy
import json
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stz

from rayqueue.quota.manifests import load_documents
from rayqueue.scheduler.workloads import rayjob, serving
from rayqueue.scheduler.workloads.schema_check import compile_check

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("RayJob", "RayCluster", "RayService")


def schema_of(kind: str) -> dict[str, Any]:
    name = f"{kind.lower()}-v1.schema.json"
    text = (importlib_resources.files("rayqueue.scheduler.workloads") / "schemas" / name).read_text()
    out: dict[str, Any] = json.loads(text)
    return out


def samples(kind: str) -> list[dict[str, Any]]:
    out = []
    for folder in ("samples", "serving-samples"):
        for path in sorted((ROOT / "data" / "kuberay" / folder).glob("*.yaml")):
            for doc in load_documents(path.read_text(), path.name):
                if isinstance(doc, dict) and doc.get("kind") == kind:
                    # serving.py drops null fields before its check, as the API server does
                    out.append(doc if kind == "RayJob" else serving._without_nulls(doc))
    return out


SAMPLES = {kind: samples(kind) for kind in KINDS}
VALIDATORS = {kind: jsonschema.Draft7Validator(schema_of(kind)) for kind in KINDS}
CHECKS = {kind: compile_check(schema_of(kind)) for kind in KINDS}

#: Values the schemas tell apart: quantities and not, integers as floats, bools (not integers), nulls.
scalars = stz.one_of(
    stz.sampled_from([0, 1, -1, 2**31, 2**63, 1.0, 0.5, -2.0, float("nan"), float("inf"), True, False, None,
                      "", "1", "500m", "40Gi", "1e3", "+1", ".5", "1.", "1Ki ", " 1", "abc", "1.5Mi", "0x10"]),
    stz.integers(),
    stz.floats(allow_nan=False),
    stz.text(max_size=6),
)
values = stz.recursive(
    scalars,
    lambda inner: stz.one_of(stz.lists(inner, max_size=3),
                             stz.dictionaries(stz.sampled_from(["name", "cpu", "x", "replicas", "limits"]), inner,
                                              max_size=3)),
    max_leaves=6,
)


def places(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path in the document (mapping keys and list indexes)."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += places(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += places(v, (*path, i))
    return out


@stz.composite
def edited(draw: stz.DrawFn, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(draw(stz.sampled_from(SAMPLES[kind])))
    for _ in range(draw(stz.integers(1, 3))):
        path = draw(stz.sampled_from(places(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(stz.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(stz.sampled_from(["extra", "requests", "groupName", "template", "spec"]))] = draw(values)
        else:
            parent.append(draw(values))
    return doc


def test_the_shipped_schemas_compile() -> None:
    # else every submission would take the slow path, silently
    assert all(CHECKS[kind] is not None for kind in KINDS)
    assert all(SAMPLES[kind] for kind in KINDS)


def test_a_schema_with_a_keyword_not_compiled_is_left_to_jsonschema() -> None:
    assert compile_check({"type": "string", "maxLength": 3}) is None
    assert compile_check({"properties": {"a": {"enum": [1]}}}) is None
    assert compile_check({"items": {"$ref": "#/definitions/x"}}) is None


def test_the_samples_pass_both() -> None:
    for kind in KINDS:
        check = CHECKS[kind]
        assert check is not None
        for doc in SAMPLES[kind]:
            assert VALIDATORS[kind].is_valid(doc) and check(doc)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=stz.data())
def test_edited_documents_get_the_same_verdict(kind: str, data: stz.DataObject) -> None:
    doc = data.draw(edited(kind))
    check = CHECKS[kind]
    assert check is not None
    assert check(doc) == VALIDATORS[kind].is_valid(doc)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_violation_is_refused(kind: str) -> None:
    """The edits that matter, one at a time: a wrong type, a bool for an integer, a bad quantity, a
    required field gone; each refused by both, and with jsonschema's message by crd_violations."""
    sample = next(d for d in SAMPLES[kind] if "workerGroupSpecs" in json.dumps(d))
    spec = sample["spec"] if kind == "RayCluster" else \
        sample["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]
    path_of = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"),
               "RayService": ("spec", "rayClusterConfig")}[kind]

    def at(doc: dict[str, Any]) -> dict[str, Any]:
        node = doc
        for part in path_of:
            node = node[part]
        return node

    edits = [
        lambda d: at(d)["workerGroupSpecs"][0].__setitem__("replicas", True),
        lambda d: at(d)["workerGroupSpecs"][0].__setitem__("replicas", "2"),
        lambda d: at(d)["workerGroupSpecs"][0].__setitem__("replicas", 1.5),
        lambda d: at(d)["headGroupSpec"]["template"]["spec"]["containers"][0].__setitem__(
            "resources", {"limits": {"cpu": "two"}}),
        lambda d: at(d)["headGroupSpec"]["template"]["spec"].__setitem__("containers", {"name": "head"}),
        lambda d: d["metadata"].__setitem__("labels", {"a": 1}),
        lambda d: d.pop("spec"),
    ]
    assert spec  # the sample has the fields edited
    for edit in edits:
        doc = copy.deepcopy(sample)
        edit(doc)
        check = CHECKS[kind]
        assert check is not None and not check(doc)
        assert not VALIDATORS[kind].is_valid(doc)
        problems = rayjob.crd_violations(doc) if kind == "RayJob" else serving.crd_violations(doc, kind)
        assert problems, doc
    # and an integer written as a float is an integer in draft 7, as the API server takes it
    doc = copy.deepcopy(sample)
    at(doc)["workerGroupSpecs"][0]["replicas"] = 2.0
    assert CHECKS[kind](doc) and VALIDATORS[kind].is_valid(doc)  # type: ignore[misc]
