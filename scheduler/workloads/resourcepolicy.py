"""Alibaba's ``ResourcePolicy`` as ordered capacity pools (ECS first, then ACS).

A gang is placed whole in one unit: a Ray cluster's head and workers stay in one pool (one network, one
price), and the engine never half-starts a cluster across pools. Capacity is the unit's aggregate
(the sum over its nodes); fitting pods onto individual nodes is left to kube-scheduler or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayqueue.quota.manifests import DocumentError, load_documents, read_documents
from rayqueue.quota.quantity import Resources, check_resource_name, parse_quantity
from rayqueue.scheduler.engine.units import ResourcePolicyError, Unit, UnitKind, Units, WhenTryNext

__all__ = ["ResourcePolicyError", "Unit", "Units", "UnitKind", "WhenTryNext", "units_from_manifest",
           "load_resource_policy", "load_resource_policy_text", "parse_duration"]

API_VERSION = "scheduling.alibabacloud.com/v1alpha1"
KIND = "ResourcePolicy"
#: ``TimeoutOrExceedMax`` without a ``timeout`` waits this long, as ACK does.
DEFAULT_TIMEOUT_S = 15 * 60.0


# ------------------------------------------------------------------------ the manifest


class UnitSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    resource: Literal["ecs", "acs", "eci"]
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    max: int | None = Field(default=None, ge=0, le=2**31 - 1)  # int32, as in ACK's CRD
    podLabels: dict[str, str] = Field(default_factory=dict)
    podAnnotations: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # Ours, optional: a unit's capacity when no live source (Nodes, Ray) provides it.
    capacity: dict[str, str | int | float] | None = None


class WhenTryNextUnits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: WhenTryNext = "LackResourceOrExceedMax"
    timeout: str | int | float | None = None


class ResourcePolicySpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    selector: dict[str, str] = Field(default_factory=dict)
    strategy: str = "prefer"
    units: list[UnitSpec] = Field(min_length=1)
    whenTryNextUnits: WhenTryNextUnits = Field(default_factory=WhenTryNextUnits)


class ResourcePolicyManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    apiVersion: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ResourcePolicySpec


# ------------------------------------------------------------------------ the engine's pools


def units_from_manifest(manifest: Mapping[str, Any], source: str = "ResourcePolicy") -> Units:
    """Validate a ``ResourcePolicy`` and turn its units into pools named ``<resource>`` or ``<resource>-<i>``."""
    if not isinstance(manifest, Mapping):
        raise ResourcePolicyError([f"expected a mapping, got {type(manifest).__name__}"], source)
    try:
        model = ResourcePolicyManifest.model_validate(manifest)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
            problems.append(f"{loc or 'document'}: {e['msg']}")
        raise ResourcePolicyError(problems, source) from exc
    problems = []
    if model.apiVersion != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION}, got {model.apiVersion}")
    if model.kind != KIND:
        problems.append(f"kind: expected {KIND}, got {model.kind}")
    when = model.spec.whenTryNextUnits
    timeout_s = DEFAULT_TIMEOUT_S if when.policy == "TimeoutOrExceedMax" else 0.0
    if when.timeout is not None:
        try:
            timeout = parse_duration(when.timeout, unit_required=True)
        except ValueError as exc:
            problems.append(f"spec.whenTryNextUnits.timeout: {exc}")
        else:
            if when.policy == "TimeoutOrExceedMax":
                timeout_s = timeout
    counts: dict[str, int] = {}
    for spec in model.spec.units:
        counts[spec.resource] = counts.get(spec.resource, 0) + 1
    seen: dict[str, int] = {}
    units: list[Unit] = []
    for i, spec in enumerate(model.spec.units):
        seen[spec.resource] = seen.get(spec.resource, 0) + 1
        name = spec.resource if counts[spec.resource] == 1 else f"{spec.resource}-{seen[spec.resource]}"
        capacity: Resources | None = None
        if spec.capacity is not None:
            capacity = {}
            for r, v in spec.capacity.items():
                try:
                    check_resource_name(r, f"spec.units[{i}].capacity.{r}")
                    capacity[r] = parse_quantity(v, field=f"spec.units[{i}].capacity.{r}")
                except ValueError as exc:
                    problems.append(str(exc))
        units.append(
            Unit(
                name=name,
                resource=spec.resource,
                capacity=capacity,
                max_pods=spec.max,
                node_selector=dict(spec.nodeSelector),
                pod_labels=dict(spec.podLabels),
                tolerations=list(spec.tolerations),
            )
        )
    if problems:
        raise ResourcePolicyError(problems, source)
    meta_name = str(model.metadata.get("name", "resourcepolicy"))
    return Units(units, when.policy, timeout_s, name=meta_name)


def load_resource_policy(path: str | Path) -> Units:
    source = str(path)
    try:
        docs = read_documents(path, source)
    except DocumentError as exc:
        raise ResourcePolicyError([exc.problem], source) from exc
    return _units_from_documents(docs, source)


def load_resource_policy_text(text: str | bytes, source: str = "ResourcePolicy") -> Units:
    try:
        docs = load_documents(text, source)
    except DocumentError as exc:
        raise ResourcePolicyError([exc.problem], source) from exc
    return _units_from_documents(docs, source)


def _units_from_documents(documents: list[Any], source: str) -> Units:
    docs = [d for d in documents if d is not None]
    policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(policies) != 1:
        raise ResourcePolicyError([f"expected exactly one document of kind {KIND}, found {len(policies)}"], source)
    return units_from_manifest(policies[0], source)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float, *, unit_required: bool = False) -> float:
    """``30s``, ``5m``, ``1h30m``, ``250ms``, or (unless ``unit_required``) a number of seconds."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    malformed = f"{shown} is not a duration (e.g. 30s, 5m, 1h30m)"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(malformed)
    if isinstance(value, (int, float)):
        if unit_required:
            raise ValueError(f"{shown} has no unit (e.g. 60s, 15m)")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{shown} must be a finite, non-negative number of seconds")
        return float(value)
    text = value.strip()
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "0123456789.":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in _DURATION_UNITS or not _is_number(number):
            raise ValueError(malformed)
        total += float(number) * _DURATION_UNITS[unit]
        number = ""
        i += len(unit)
    if number:
        if total or not _is_number(number):
            raise ValueError(malformed)
        if unit_required:
            raise ValueError(f"{shown} has no unit (e.g. 60s, 15m)")
        total = float(number)
    elif not text:
        raise ValueError(malformed)
    if not math.isfinite(total):
        raise ValueError(f"{shown} is longer than any duration can be")
    return total


def _is_number(text: str) -> bool:
    """Digits with at most one decimal point, and at least one digit."""
    return text.count(".") <= 1 and text.strip(".") != ""
