"""Write the CRD manifests in this folder from the schemas below (one source of truth).

    python -m rayqueue.crds.generate          # rewrites crds/*.yaml next to this file

A test checks the committed YAML equals what this module generates, so edit here, then regenerate.

* ``elasticquotatrees.scheduling.sigs.k8s.io`` (v1beta1): ACK's quota tree, which rayqueue reads and
  whose status it writes. A structural schema (required by ``apiextensions.k8s.io/v1``) cannot refer
  to itself, so the recursive ``children`` are typed for :data:`TYPED_LEVELS` levels below the root;
  deeper levels keep every field (``x-kubernetes-preserve-unknown-fields``) and rayqueue's own loader
  checks them as strictly as the typed ones.
* ``resourcepolicies.scheduling.alibabacloud.com`` (v1alpha1): Alibaba's ResourcePolicy, for clusters
  that do not have it already (ACK installs its own; do not apply this one over it). Fields follow
  Alibaba's documentation, plus two optional rayqueue extensions on a unit: ``capacity`` (the unit's
  size when no live source reports it) and ``tolerations`` (written into admitted pods).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
TYPED_LEVELS = 6  # levels below the root whose fields are typed

QUANTITY: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    # The pattern Kubernetes' own schemas give a resource.Quantity.
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
    "x-kubernetes-int-or-string": True,
}


def _resource_list(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "additionalProperties": QUANTITY}


def _string_map(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def quota_node_schema(levels_below: int) -> dict[str, Any]:
    """One node of the tree; its children are typed ``levels_below`` more levels down."""
    if levels_below > 0:
        child: dict[str, Any] = quota_node_schema(levels_below - 1)
    else:
        child = {
            "type": "object",
            "description": "A node deeper than the typed levels: kept as written, checked by rayqueue's loader.",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "Unique in the whole tree."},
            "namespaces": {
                "type": "array",
                "description": "Leaves only: jobs in these namespaces queue here (a namespace on one leaf at most).",
                "items": {"type": "string"},
            },
            "min": _resource_list("Guaranteed resources; a missing resource is 0. Children's min add up to at most this."),
            "max": _resource_list("Upper bound; a missing resource is unbounded at this node. min <= max."),
            "attributes": {
                "type": "object",
                "description": "weight (positive number, fair share of borrowed resources), queueingStrategy "
                "(StrictFIFO | BestEffortFIFO), preemptionPolicy (Never | LowerPriority); others kept as written.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "children": {"type": "array", "items": child},
        },
    }


def _crd(group: str, kind: str, plural: str, singular: str, version: str, schema: dict[str, Any],
         short_names: list[str], columns: list[dict[str, Any]], status: bool) -> dict[str, Any]:
    version_spec: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if columns:
        version_spec["additionalPrinterColumns"] = columns
    if status:
        version_spec["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
            },
            "scope": "Namespaced",
            "versions": [version_spec],
        },
    }


def elastic_quota_tree_crd() -> dict[str, Any]:
    node_status = {
        "type": "object",
        "description": "What rayqueue accounts at this node.",
        "properties": {
            "used": _resource_list("Requests of admitted (and preempting) jobs in this subtree."),
            "requested": _resource_list("Requests of pending jobs in this subtree."),
            "borrowed": _resource_list("Usage above min (reclaimable)."),
            "admittedJobs": {"type": "integer", "minimum": 0},
            "pendingJobs": {"type": "integer", "minimum": 0},
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }
    schema = {
        "type": "object",
        "description": "A hierarchical quota tree (ACK's format): one object, spec.root is the organisation.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["root"],
                "properties": {"root": quota_node_schema(TYPED_LEVELS)},
            },
            "status": {
                "type": "object",
                "properties": {
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "nodes": {
                        "type": "object",
                        "description": "Per node name.",
                        "additionalProperties": node_status,
                    },
                    "conditions": {
                        "type": "array",
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                },
            },
        },
        "required": ["spec"],
    }
    return _crd(
        "scheduling.sigs.k8s.io", "ElasticQuotaTree", "elasticquotatrees", "elasticquotatree", "v1beta1",
        schema, ["eqtree"],
        [{"name": "Root", "type": "string", "jsonPath": ".spec.root.name"},
         {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
        status=True,
    )


def resource_policy_crd() -> dict[str, Any]:
    unit = {
        "type": "object",
        "required": ["resource"],
        "properties": {
            "resource": {"type": "string", "enum": ["ecs", "acs", "eci"],
                         "description": "ecs: subscription nodes; acs / eci: elastic, billed per use."},
            "nodeSelector": _string_map("Labels of the nodes of this unit; written into admitted pods."),
            "max": {"type": "integer", "format": "int32", "minimum": 0,
                    "description": "At most this many pods in the unit."},
            "maxResources": _resource_list("At most these resources in the unit."),
            "podLabels": _string_map("Labels written into pods placed in this unit."),
            "podAnnotations": _string_map("Annotations written into pods placed in this unit."),
            "spotInstance": {"type": "boolean"},
            "scaleInWeight": {"type": "integer", "format": "int32"},
            "capacity": _resource_list("rayqueue: the unit's size when no live source (Nodes, Ray) reports it."),
            "tolerations": {
                "type": "array",
                "description": "rayqueue: tolerations written into pods placed in this unit.",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    }
    schema = {
        "type": "object",
        "description": "Ordered capacity units (ECS first, then ACS) for the pods it selects.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["units"],
                "properties": {
                    "selector": _string_map("Pods with these labels follow this policy (empty: every pod of the namespace)."),
                    "matchExpressions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["key", "operator"],
                            "properties": {
                                "key": {"type": "string"},
                                "operator": {"type": "string"},
                                "values": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                    "strategy": {"type": "string", "enum": ["prefer", "required"], "default": "prefer"},
                    "units": {"type": "array", "minItems": 1, "items": unit},
                    "whenTryNextUnits": {
                        "type": "object",
                        "properties": {
                            "policy": {
                                "type": "string",
                                "default": "LackResourceOrExceedMax",
                                "enum": ["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax",
                                         "LackResourceAndNoTerminating"],
                            },
                            "timeout": {"type": "string", "description": "A duration such as 30s or 15m."},
                        },
                    },
                    "preemptPolicy": {"type": "string", "enum": ["BeforeNextUnit", "AfterAllUnits"],
                                      "default": "AfterAllUnits"},
                    "ignorePreviousPod": {"type": "boolean", "default": False},
                    "ignoreTerminatingPod": {"type": "boolean", "default": True},
                    "matchLabelKeys": {"type": "array", "items": {"type": "string"}},
                    "consumerRef": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "required": ["spec"],
    }
    return _crd(
        "scheduling.alibabacloud.com", "ResourcePolicy", "resourcepolicies", "resourcepolicy", "v1alpha1",
        schema, ["rp"],
        [{"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
         {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
        status=True,
    )


FILES = {
    "scheduling.sigs.k8s.io_elasticquotatrees.yaml": (
        elastic_quota_tree_crd,
        "ElasticQuotaTree (ACK's quota tree). Structural schemas cannot recurse: children are typed "
        f"{TYPED_LEVELS} levels below the root, deeper levels are kept as written (rayqueue validates them).",
    ),
    "scheduling.alibabacloud.com_resourcepolicies.yaml": (
        resource_policy_crd,
        "Alibaba's ResourcePolicy, for clusters without it (ACK already installs it: do not apply over it).",
    ),
}


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-schemas are written out in full: no YAML anchors in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(name: str) -> str:
    build, note = FILES[name]
    header = f"# Generated by `python -m rayqueue.crds.generate`; edit crds/generate.py, not this file.\n# {note}\n"
    return header + yaml.dump(build(), Dumper=_NoAliasDumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else HERE
    for name in FILES:
        (out / name).write_text(render(name))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
