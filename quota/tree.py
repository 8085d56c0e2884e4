"""The hierarchical quota tree: validation, usage accounting, borrowing and headroom.

Admit and release walk from a leaf to the root, so both cost O(depth x resources). The tree knows
nothing of queues or jobs: it accounts resource vectors against named leaves.

Why one module of about 550 lines: the tree's validation, its accounting and its diff share the node
structure and its slot vectors, and the accounting is the engine's hot path (compiled with mypyc, where
calls between modules cost more than calls within one); split apart, each half would need the other's
internals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayqueue.quota.manifests import DocumentError, check_structure, load_documents, paused_gc, read_documents
from rayqueue.quota.model import API_VERSION, KIND, ElasticQuotaTreeManifest, QuotaNodeSpec
from rayqueue.quota.quantity import (
    MAX_JOBS,
    NO_LIMIT,
    SLOTS,
    Demand,
    ManifestError,
    QuantityError,
    Resources,
    format_quantity,
    parse_resources,
)

WEIGHT_ATTRIBUTE = "weight"
QUEUEING_ATTRIBUTE = "queueingStrategy"
PREEMPTION_ATTRIBUTE = "preemptionPolicy"


class QuotaTreeError(ManifestError):
    """An invalid tree: every problem found, each naming the node and the field."""

    def __init__(self, violations: list[str], source: str = "ElasticQuotaTree") -> None:
        super().__init__(violations, source)


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """Why a request does not fit: the first node on the leaf's path whose ``max`` it would exceed."""

    node: str
    resource: str
    used: int
    requested: int
    limit: int

    def sentence(self) -> str:
        r = self.resource
        would = format_quantity(self.used + self.requested, r)
        return (
            f"{self.node} would use {would} of max {format_quantity(self.limit, r)} {r} "
            f"({format_quantity(self.used, r)} in use + {format_quantity(self.requested, r)} requested)"
        )


class QuotaNode:
    __slots__ = (
        "name",
        "path",
        "parent",
        "children",
        "min",
        "max",
        "used",
        "max_by_slot",
        "min_by_slot",
        "guarantee_by_slot",
        "namespaces",
        "attributes",
        "weight",
        "depth",
        "lineage",
        "limit_keys",
    )

    def __init__(
        self,
        name: str,
        path: str,
        parent: QuotaNode | None,
        min_: Resources,
        max_: Resources,
        namespaces: list[str],
        attributes: dict[str, Any],
        weight: float,
    ) -> None:
        self.name = name
        self.path = path
        self.parent = parent
        self.children: list[QuotaNode] = []
        self.min = min_
        self.max = max_
        # The same numbers by resource slot (see ``quantity.ResourceSlots``): what admission reads.
        # All four always have the same length (``widen`` extends them together).
        for r in (*max_, *min_):
            SLOTS.slot(r)
        self.used: list[int] = SLOTS.vector({}, 0)
        self.max_by_slot: list[int] = SLOTS.vector(max_, NO_LIMIT)
        self.min_by_slot: list[int] = SLOTS.vector(min_, 0)
        # The min where "within guarantee" checks it (guaranteed resources only); set by the tree.
        self.guarantee_by_slot: list[int] = SLOTS.vector({}, NO_LIMIT)
        self.namespaces = namespaces
        self.attributes = attributes
        self.weight = weight
        self.depth: int = 0 if parent is None else parent.depth + 1
        # self, parent, ..., root: the walk every admit/release does.
        self.lineage: tuple[QuotaNode, ...] = (self,) if parent is None else (self, *parent.lineage)
        # ("node", name, resource) by slot: a handle on one of this node's limits, made once, that a
        # caller keeps in sets and dicts (what ``blocked_at`` returns) instead of building it per check.
        self.limit_keys: list[tuple[Any, ...]] = [("node", name, r) for r in SLOTS.names]

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def usage(self) -> Resources:
        """What this node's jobs use, per resource (non-zero entries)."""
        return SLOTS.resources(self.used)

    def used_of(self, resource: str) -> int:
        return SLOTS.value_of(self.used, resource)

    def widen(self) -> None:
        """Make room for resource slots added since this node was made."""
        if len(self.used) < len(SLOTS):
            SLOTS.widen(self.used, 0)
            SLOTS.widen(self.max_by_slot, NO_LIMIT)
            SLOTS.widen(self.min_by_slot, 0)
            SLOTS.widen(self.guarantee_by_slot, NO_LIMIT)
        names = SLOTS.names
        for i in range(len(self.limit_keys), len(names)):
            self.limit_keys.append(("node", self.name, names[i]))

    def borrowed(self, resources: frozenset[str] | None = None) -> Resources:
        """Usage above this node's ``min``, per resource (what a reclaim could take back)."""
        out: Resources = {}
        names, used, mins = SLOTS.names, self.used, self.min_by_slot
        for i in range(len(used)):
            over = used[i] - mins[i]
            if over > 0 and (resources is None or names[i] in resources):
                out[names[i]] = over
        return out

    def __repr__(self) -> str:
        return f"QuotaNode({self.path})"


class QuotaTree:
    """A validated ``ElasticQuotaTree`` with live usage."""

    def __init__(self, root: QuotaNode, nodes: dict[str, QuotaNode], name: str = "elasticquotatree") -> None:
        self.root = root
        self.nodes = nodes
        self.name = name
        self.leaves: dict[str, QuotaNode] = {n.name: n for n in nodes.values() if n.is_leaf}
        self.namespace_to_leaf: dict[str, QuotaNode] = {
            ns: leaf for leaf in self.leaves.values() for ns in leaf.namespaces
        }
        # Resources some node guarantees: reclaim and "fits in guarantee" speak only of these.
        self.guaranteed: frozenset[str] = frozenset(
            r for n in nodes.values() for r in n.min if r != MAX_JOBS
        )
        self.bounded: frozenset[str] = frozenset(r for n in nodes.values() for r in n.max)
        self._share_scale: dict[str, float] = {}
        for r in self.guaranteed | self.bounded:
            denom = root.min.get(r) or root.max.get(r) or 1
            self._share_scale[r] = 1.0 / denom
        # The guaranteed resources by slot, with their fair-share scale: what the hot path loops over.
        self.guaranteed_slots: list[int] = sorted(SLOTS.slot(r) for r in self.guaranteed)
        self._share_scale_by_slot: list[float] = [self._share_scale[SLOTS.names[i]] for i in self.guaranteed_slots]
        for node in nodes.values():
            node.widen()
            for i in self.guaranteed_slots:
                node.guarantee_by_slot[i] = node.min_by_slot[i]

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_yaml(cls, path: str | Path) -> QuotaTree:
        source = str(path)
        try:
            docs = read_documents(path, source)
        except DocumentError as exc:
            raise QuotaTreeError([exc.problem], source) from exc
        return cls._from_documents(docs, source)

    @classmethod
    def from_yaml_text(cls, text: str | bytes, source: str = "ElasticQuotaTree") -> QuotaTree:
        try:
            docs = load_documents(text, source)
        except DocumentError as exc:
            raise QuotaTreeError([exc.problem], source) from exc
        return cls._from_documents(docs, source)

    @classmethod
    def _from_documents(cls, documents: list[Any], source: str) -> QuotaTree:
        docs = [d for d in documents if d is not None]
        trees = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
        if len(trees) != 1:
            found = ", ".join(str(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs)
            raise QuotaTreeError(
                [f"expected exactly one document of kind {KIND}, found {len(trees)} (documents: {found or 'none'})"],
                source,
            )
        return cls.from_dict(trees[0], source)

    @classmethod
    def from_dict(cls, manifest: Mapping[str, Any], source: str = "ElasticQuotaTree") -> QuotaTree:
        with paused_gc():  # thousands of nodes, none of them garbage yet (see paused_gc)
            return cls._from_dict(manifest, source)

    @classmethod
    def _from_dict(cls, manifest: Mapping[str, Any], source: str) -> QuotaTree:
        if not isinstance(manifest, Mapping):
            raise QuotaTreeError([f"expected a mapping, got {type(manifest).__name__}"], source)
        try:
            # A body that arrived parsed (the operator's watch, a webhook) is bounded here; so is the
            # tree's height, before the recursive validation below walks it.
            check_structure(manifest, source)
            _check_height(manifest)
        except DocumentError as exc:
            raise QuotaTreeError([exc.problem], source) from exc
        try:
            model = ElasticQuotaTreeManifest.model_validate(manifest)
        except ValidationError as exc:
            raise QuotaTreeError([_pydantic_message(e) for e in exc.errors()], source) from exc
        problems: list[str] = []
        if model.apiVersion != API_VERSION:
            problems.append(f"apiVersion: expected {API_VERSION}, got {model.apiVersion}")
        if model.kind != KIND:
            problems.append(f"kind: expected {KIND}, got {model.kind}")
        tree = _build(model.spec.root, problems)
        if problems or tree is None:
            raise QuotaTreeError(problems, f"{source} ({model.metadata.name})")
        tree.name = model.metadata.name
        return tree

    # ---------------------------------------------------------------- lookup

    def leaf(self, name: str) -> QuotaNode:
        try:
            return self.leaves[name]
        except KeyError:
            if name in self.nodes:
                raise KeyError(f"quota node {name!r} is not a leaf; jobs queue only at leaves") from None
            raise KeyError(f"no leaf named {name!r} in the quota tree") from None

    def leaf_for(self, namespace: str | None = None, quota: str | None = None) -> QuotaNode:
        """The leaf a job maps to: an explicit quota name first, else its namespace."""
        if quota:
            return self.leaf(quota)
        if namespace and namespace in self.namespace_to_leaf:
            return self.namespace_to_leaf[namespace]
        raise KeyError(f"namespace {namespace!r} belongs to no leaf of the quota tree and no quota was named")

    def __iter__(self) -> Iterator[QuotaNode]:
        return iter(self.nodes.values())

    # ---------------------------------------------------------------- accounting

    def fits(self, leaf: QuotaNode, demand: Demand) -> QuotaViolation | None:
        """None when usage + demand stays within ``max`` on every node from ``leaf`` to the root."""
        over = self.over_max(leaf, demand)
        if over is None:
            return None
        node, r = over[0]
        return QuotaViolation(node.path, r, node.used_of(r), _amount(demand, r), node.max[r])

    def over_max(self, leaf: QuotaNode, demand: Demand) -> list[tuple[QuotaNode, str]] | None:
        """Every (node, resource) on the leaf's path whose ``max`` the demand would exceed now, lowest
        node first; None when the demand fits."""
        out: list[tuple[QuotaNode, str]] | None = None
        slots, amounts = demand.slots, demand.amounts
        for node in leaf.lineage:
            if not node.max:
                continue
            if len(node.used) < demand.width:
                node.widen()
            used, limits = node.used, node.max_by_slot
            for k in range(len(slots)):
                i = slots[k]
                limit = limits[i]
                if limit != NO_LIMIT and used[i] + amounts[k] > limit:
                    if out is None:
                        out = []
                    out.append((node, SLOTS.names[i]))
        return out

    def blocked_at(self, leaf: QuotaNode, demand: Demand) -> list[tuple[tuple[Any, ...], int]] | None:
        """``over_max`` as (the node's limit key, the amount asked) per limit the demand would exceed,
        lowest node first; None when the demand fits."""
        out: list[tuple[tuple[Any, ...], int]] | None = None
        slots, amounts = demand.slots, demand.amounts
        for node in leaf.lineage:
            if not node.max:
                continue
            if len(node.used) < demand.width or len(node.limit_keys) < demand.width:
                node.widen()
            used, limits = node.used, node.max_by_slot
            for k in range(len(slots)):
                i = slots[k]
                limit = limits[i]
                if limit != NO_LIMIT and used[i] + amounts[k] > limit:
                    if out is None:
                        out = []
                    out.append((node.limit_keys[i], amounts[k]))
        return out

    def exceeds_max(self, leaf: QuotaNode, demand: Demand) -> bool:
        """Whether ``over_max`` would find anything, without making its list."""
        slots, amounts = demand.slots, demand.amounts
        for node in leaf.lineage:
            if not node.max:
                continue
            if len(node.used) < demand.width:
                node.widen()
            used, limits = node.used, node.max_by_slot
            for k in range(len(slots)):
                i = slots[k]
                limit = limits[i]
                if limit != NO_LIMIT and used[i] + amounts[k] > limit:
                    return True
        return False

    def never_fits(self, leaf: QuotaNode, request: Resources) -> QuotaViolation | None:
        """A violation even on an empty tree: the request is larger than a ``max`` on its path."""
        for node in leaf.lineage:
            for r, v in request.items():
                m = node.max.get(r)
                if m is not None and v > m:
                    return QuotaViolation(node.path, r, 0, v, m)
        return None

    def within_guarantee(self, leaf: QuotaNode, demand: Demand) -> bool:
        """True when the leaf's usage + demand stays within its ``min`` on every guaranteed resource."""
        if len(leaf.used) < demand.width:
            leaf.widen()
        slots, amounts = demand.slots, demand.amounts
        used, limits = leaf.used, leaf.guarantee_by_slot
        for k in range(len(slots)):
            i = slots[k]
            limit = limits[i]
            if limit != NO_LIMIT and used[i] + amounts[k] > limit:
                return False
        return True

    def admit(self, leaf: QuotaNode, demand: Demand) -> None:
        self._charge(leaf, demand, True)

    def release(self, leaf: QuotaNode, demand: Demand) -> None:
        self._charge(leaf, demand, False)

    def _charge(self, leaf: QuotaNode, demand: Demand, adding: bool) -> None:
        """Add or take back the demand on every node from ``leaf`` to the root."""
        slots, amounts = demand.slots, demand.amounts
        for node in leaf.lineage:
            if len(node.used) < demand.width:
                node.widen()
            used = node.used
            for k in range(len(slots)):
                i = slots[k]
                # A branch, not a multiply by +-1: compiled, multiplying large integers is the slow path.
                left = used[i] + amounts[k] if adding else used[i] - amounts[k]
                if left < 0:
                    raise RuntimeError(f"quota accounting error: {node.path} {SLOTS.names[i]} would go to {left}")
                used[i] = left

    def headroom(self, leaf: QuotaNode) -> Resources:
        """How much more the leaf could take now on each bounded resource (min over its path)."""
        out: Resources = {}
        for node in leaf.lineage:
            for r, m in node.max.items():
                room = max(0, m - node.used_of(r))
                if r not in out or room < out[r]:
                    out[r] = room
        return out

    def borrowed(self, node: QuotaNode) -> Resources:
        """Usage above ``min`` on the guaranteed resources (what a reclaim could take back)."""
        out: Resources = {}
        used, mins, names = node.used, node.min_by_slot, SLOTS.names
        for i in self.guaranteed_slots:
            over = used[i] - mins[i]
            if over > 0:
                out[names[i]] = over
        return out

    def fair_share(self, leaf: QuotaNode) -> float:
        """Dominant borrowed share over the leaf's weight: lower goes first among borrowers."""
        share = 0.0
        used, mins, scale = leaf.used, leaf.min_by_slot, self._share_scale_by_slot
        slots = self.guaranteed_slots
        for k in range(len(slots)):
            i = slots[k]
            over = used[i] - mins[i]
            if over > 0:
                s = over * scale[k]
                if s > share:
                    share = s
        return share / leaf.weight

    def reset_usage(self) -> None:
        for node in self.nodes.values():
            node.used = [0] * len(node.used)

    # ---------------------------------------------------------------- views

    def to_dict(self) -> dict[str, Any]:
        """The tree back in the admin's format (quantities rendered)."""

        def render(res: Resources) -> dict[str, str]:
            return {r: format_quantity(v, r) for r, v in sorted(res.items())}

        def node_dict(node: QuotaNode) -> dict[str, Any]:
            d: dict[str, Any] = {"name": node.name}
            if node.min:
                d["min"] = render(node.min)
            if node.max:
                d["max"] = render(node.max)
            if node.namespaces:
                d["namespaces"] = list(node.namespaces)
            if node.attributes:
                d["attributes"] = dict(node.attributes)
            if node.children:
                d["children"] = [node_dict(c) for c in node.children]
            return d

        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name},
            "spec": {"root": node_dict(self.root)},
        }


def _amount(demand: Demand, resource: str) -> int:
    i = SLOTS.index.get(resource)
    for k in range(len(demand.slots)):
        if demand.slots[k] == i:
            return demand.amounts[k]
    return 0


def diff_trees(old: QuotaTree, new: QuotaTree) -> list[str]:
    """Human-readable differences between two trees' structure and limits."""
    lines: list[str] = []
    for name in sorted(old.nodes.keys() - new.nodes.keys()):
        lines.append(f"- removed node {old.nodes[name].path}")
    for name in sorted(new.nodes.keys() - old.nodes.keys()):
        lines.append(f"+ added node {new.nodes[name].path}")
    for name in sorted(old.nodes.keys() & new.nodes.keys()):
        a, b = old.nodes[name], new.nodes[name]
        if a.path != b.path:
            lines.append(f"~ {name}: moved {a.path} -> {b.path}")
        for field in ("min", "max"):
            ra: Resources = getattr(a, field)
            rb: Resources = getattr(b, field)
            for r in sorted(ra.keys() | rb.keys()):
                va, vb = ra.get(r), rb.get(r)
                if va != vb:
                    fa = "unset" if va is None else format_quantity(va, r)
                    fb = "unset" if vb is None else format_quantity(vb, r)
                    lines.append(f"~ {b.path} {field}.{r}: {fa} -> {fb}")
        if sorted(a.namespaces) != sorted(b.namespaces):
            lines.append(f"~ {b.path} namespaces: {sorted(a.namespaces)} -> {sorted(b.namespaces)}")
        if a.weight != b.weight:
            lines.append(f"~ {b.path} weight: {a.weight:g} -> {b.weight:g}")
        for key in (QUEUEING_ATTRIBUTE, PREEMPTION_ATTRIBUTE):
            if a.attributes.get(key) != b.attributes.get(key):
                lines.append(f"~ {b.path} {key}: {a.attributes.get(key)} -> {b.attributes.get(key)}")
    return lines


# -------------------------------------------------------------------- building and rules


#: Levels below the root a tree may have. ACK's trees are a few levels deep; the limit keeps every walk
#: of the tree (validation, views, the admit path's lineage) small and far from the recursion limit.
MAX_TREE_DEPTH = 32


def _check_height(manifest: Mapping[str, Any]) -> None:
    """Refuse a tree more than ``MAX_TREE_DEPTH`` levels deep, naming the node where it passes the limit."""
    spec = manifest.get("spec")
    root = spec.get("root") if isinstance(spec, Mapping) else None
    todo: list[tuple[Any, str, int]] = [(root, "", 0)]
    while todo:
        node, path, depth = todo.pop()
        if not isinstance(node, Mapping):
            continue
        here = f"{path}/{node.get('name')}" if path else str(node.get("name"))
        if depth > MAX_TREE_DEPTH:
            raise DocumentError("", f"node {_short_path(here)}: the tree is deeper than {MAX_TREE_DEPTH} levels (the limit)")
        children = node.get("children")
        if isinstance(children, list):
            todo.extend((child, here, depth + 1) for child in children)


def _short_path(path: str, shown: int = 8) -> str:
    parts = path.split("/")
    if len(parts) <= shown:
        return path
    return "/".join(parts[: shown // 2]) + f"/...({len(parts) - shown} more)/" + "/".join(parts[-(shown // 2) :])


def _build(spec: QuotaNodeSpec, problems: list[str]) -> QuotaTree | None:
    nodes: dict[str, QuotaNode] = {}
    seen_paths: dict[str, str] = {}
    namespace_owner: dict[str, str] = {}

    def visit(s: QuotaNodeSpec, parent: QuotaNode | None) -> QuotaNode:
        path = s.name if parent is None else f"{parent.path}/{s.name}"
        where = f"node {path}"
        if not s.name.strip():
            problems.append(f"{where}: name must not be empty")
        if s.name in seen_paths:
            problems.append(f"{where}: duplicate name {s.name!r} (also at {seen_paths[s.name]})")
        else:
            seen_paths[s.name] = path
        mins = _resources(s.min, f"{where}: min", problems)
        maxs = _resources(s.max, f"{where}: max", problems)
        for r, v in (*mins.items(), *maxs.items()):
            if v < 0:
                problems.append(f"{where}: {r} must not be negative (got {format_quantity(v, r)})")
        for r, lo in mins.items():
            hi = maxs.get(r)
            if hi is not None and lo > hi:
                problems.append(
                    f"{where}: min.{r} {format_quantity(lo, r)} is above max.{r} {format_quantity(hi, r)}"
                )
        attributes = dict(s.attributes or {})
        weight = 1.0
        if WEIGHT_ATTRIBUTE in attributes:
            try:
                weight = float(attributes[WEIGHT_ATTRIBUTE])
                if not math.isfinite(weight) or weight <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(
                    f"{where}: attributes.weight must be a positive number "
                    f"(got {attributes[WEIGHT_ATTRIBUTE]!r})"
                )
                weight = 1.0
        for attr, allowed in ((QUEUEING_ATTRIBUTE, QUEUEING_STRATEGIES), (PREEMPTION_ATTRIBUTE, PREEMPTION_POLICIES)):
            if attr in attributes and attributes[attr] not in allowed:
                problems.append(
                    f"{where}: attributes.{attr} must be one of {', '.join(allowed)} (got {attributes[attr]!r})"
                )
        node = QuotaNode(s.name, path, parent, mins, maxs, list(s.namespaces or []), attributes, weight)
        if s.name not in nodes:
            nodes[s.name] = node
        children = s.children or []
        if s.namespaces and children:
            problems.append(f"{where}: namespaces are allowed on leaves only (this node has children)")
        for ns in s.namespaces or []:
            if ns in namespace_owner:
                problems.append(f"{where}: namespace {ns!r} is already mapped to {namespace_owner[ns]}")
            else:
                namespace_owner[ns] = path
        for child_spec in children:
            node.children.append(visit(child_spec, node))
        if node.children:
            for r in {r for c in node.children for r in c.min}:
                total = sum(c.min.get(r, 0) for c in node.children)
                cap = node.min.get(r, 0)
                if total > cap:
                    problems.append(
                        f"{where}: children's min.{r} add up to {format_quantity(total, r)}, "
                        f"above this node's min.{r} {format_quantity(cap, r)}"
                    )
        return node

    # Recursive, but only as deep as the tree, which ``_check_height`` bounded before validation.
    root = visit(spec, None)
    if problems:
        return None
    return QuotaTree(root, nodes)


QUEUEING_STRATEGIES = ("StrictFIFO", "BestEffortFIFO")
PREEMPTION_POLICIES = ("Never", "LowerPriority")


def _resources(raw: Mapping[str, object] | None, field: str, problems: list[str]) -> Resources:
    try:
        return parse_resources(raw, field=field)
    except QuantityError as exc:
        problems.append(str(exc))
        return {}


def _pydantic_message(error: Any) -> str:
    loc = error.get("loc", ())
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    where = "".join(parts) or "document"
    return f"{where}: {error.get('msg')}"
