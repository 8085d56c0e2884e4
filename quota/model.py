"""The admin's format: ACK's ``ElasticQuotaTree`` (``scheduling.sigs.k8s.io/v1beta1``).

Pydantic checks the shape; the rules that need the whole tree (unique names, min sums, ...) live in
``tree.py`` so that every violation is reported at once with the node's path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "scheduling.sigs.k8s.io/v1beta1"
KIND = "ElasticQuotaTree"

#: Checked by ``parse_quantity`` (which names the node and the field), not here: pydantic would turn
#: ``true`` into 1 and report a bad value once per member of a union.
QuantityValue = Any


class QuotaNodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    min: dict[str, QuantityValue] | None = None
    max: dict[str, QuantityValue] | None = None
    namespaces: list[str] | None = None
    children: list[QuotaNodeSpec] | None = None
    attributes: dict[str, Any] | None = None


class ElasticQuotaTreeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: QuotaNodeSpec


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = "elasticquotatree"
    namespace: str | None = None
    resourceVersion: str | None = None


class ElasticQuotaTreeManifest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    apiVersion: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ElasticQuotaTreeSpec
