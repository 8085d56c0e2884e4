"""Cut KubeRay's RayJob CRD schema down to the fields rayqueue reads.

KubeRay's ``ray.io_rayjobs.yaml`` is 1.4 MB (every PodSpec field, three times over); loading it on
each validation would cost a second. We keep the ``v1`` schema of the fields in :data:`KEEP` (their
types, required lists, defaults, enums and quantity patterns) and drop the rest, so extra fields stay
allowed, as they are by the API server for fields this cut does not know.

Regenerate after a KubeRay upgrade (a test checks the stored copy matches the CRD in data/kuberay/)::

    python -m rayqueue.scheduler.workloads.rayjob_schema data/kuberay/ray.io_rayjobs.yaml \
        scheduler/workloads/schemas/rayjob-v1.schema.json

The RayCluster and RayService cuts (``raycluster-v1.schema.json``, ``rayservice-v1.schema.json``, read by
``serving.py``) are made the same way from ``ray.io_rayclusters.yaml`` and ``ray.io_rayservices.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: What to keep: a key maps to the sub-tree to keep below it; ``True`` keeps the whole sub-schema.
#: ``"*"`` stands for array items.
_CONTAINER: dict[str, Any] = {
    "name": True,
    "restartPolicy": True,
    "resources": {"requests": True, "limits": True},
}
_POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": True, "annotations": True},
    "spec": {
        "containers": {"*": _CONTAINER},
        "initContainers": {"*": _CONTAINER},
        "overhead": True,
        "nodeSelector": True,
        "tolerations": True,
        "priorityClassName": True,
    },
}
KEEP: dict[str, Any] = {
    "apiVersion": True,
    "kind": True,
    "metadata": True,
    "spec": {
        "entrypoint": True,
        "runtimeEnvYAML": True,
        "submissionMode": True,
        "clusterSelector": True,
        "shutdownAfterJobFinishes": True,
        "suspend": True,
        "submitterPodTemplate": _POD_TEMPLATE,
        "rayClusterSpec": {
            "headGroupSpec": {"template": _POD_TEMPLATE},
            "workerGroupSpecs": {
                "*": {
                    "groupName": True,
                    "replicas": True,
                    "minReplicas": True,
                    "maxReplicas": True,
                    "numOfHosts": True,
                    "suspend": True,
                    "template": _POD_TEMPLATE,
                }
            },
        },
    },
}

_WORKER_GROUPS: dict[str, Any] = {
    "*": {
        "groupName": True,
        "replicas": True,
        "minReplicas": True,
        "maxReplicas": True,
        "numOfHosts": True,
        "suspend": True,
        "template": _POD_TEMPLATE,
    }
}
#: A RayCluster's spec as a RayCluster and a RayService (``rayClusterConfig``) hold it.
_CLUSTER_SPEC: dict[str, Any] = {
    "enableInTreeAutoscaling": True,
    "suspend": True,
    "headGroupSpec": {"template": _POD_TEMPLATE},
    "workerGroupSpecs": _WORKER_GROUPS,
}
#: What to keep per kind (scheduler/workloads/serving.py reads RayCluster and RayService).
KEEP_BY_KIND: dict[str, dict[str, Any]] = {
    "RayJob": KEEP,
    "RayCluster": {"apiVersion": True, "kind": True, "metadata": True, "spec": _CLUSTER_SPEC},
    "RayService": {
        "apiVersion": True,
        "kind": True,
        "metadata": True,
        "spec": {"serveConfigV2": True, "suspend": True, "rayClusterConfig": _CLUSTER_SPEC},
    },
}

_STRUCTURE_KEYS = {"type", "required", "default", "enum", "format", "pattern", "anyOf", "additionalProperties"}


def prune(schema: dict[str, Any], keep: Any) -> dict[str, Any]:
    if keep is True:
        return _strip(schema)
    out = {k: v for k, v in schema.items() if k in _STRUCTURE_KEYS}
    if "additionalProperties" in out:
        out["additionalProperties"] = _strip(out["additionalProperties"])
    if "*" in keep:
        out["items"] = prune(schema["items"], keep["*"])
        return out
    props = schema.get("properties", {})
    missing = [k for k in keep if k not in props]
    if missing:
        raise KeyError(f"the CRD has no field(s) {missing} (KubeRay changed its schema?)")
    out["properties"] = {k: prune(props[k], sub) for k, sub in keep.items()}
    if "required" in out:
        # The API server applies defaults before it checks ``required``: a defaulted field may be absent.
        out["required"] = [r for r in out["required"] if r in keep and "default" not in props[r]]
        if not out["required"]:
            del out["required"]
    return out


def _strip(schema: Any) -> Any:
    """Drop descriptions and Kubernetes-only extensions (``x-kubernetes-*``) that jsonschema ignores."""
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in schema.items() if k != "description" and not k.startswith("x-")}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def pruned_schema_from_crd(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """The cut of a KubeRay CRD (RayJob, RayCluster or RayService: :data:`KEEP_BY_KIND`)."""
    kind = crd["spec"]["names"]["kind"]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = prune(v["schema"]["openAPIV3Schema"], KEEP_BY_KIND[kind])
            schema["$comment"] = (
                f"Cut from KubeRay's ray.io_{kind.lower()}s.yaml (Apache-2.0) by "
                "rayqueue.scheduler.workloads.rayjob_schema; do not edit by hand."
            )
            schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
            # The CRD leaves ObjectMeta to the API server; we read these fields, so check their types.
            text = {"type": "string"}
            schema["properties"]["metadata"] = {
                "type": "object",
                "properties": {
                    "name": text,
                    "generateName": text,
                    "namespace": text,
                    "labels": {"type": "object", "additionalProperties": text},
                    "annotations": {"type": "object", "additionalProperties": text},
                },
            }
            return schema
    raise KeyError(f"the CRD has no version {version}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__)
        return 2
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(args[0]).read_text(), Loader=loader)
    Path(args[1]).write_text(json.dumps(pruned_schema_from_crd(crd), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
