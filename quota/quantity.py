"""Kubernetes resource quantities, parsed exactly.

Every quantity is held as an integer number of *milli-units* (``"500m"`` cpu is 500, ``"1"`` is 1000,
``"40Gi"`` memory is 40 * 2**30 * 1000). Integers never drift, so a tree that admits and releases a
million jobs ends with usage exactly zero.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Final

# Resource names are interned everywhere they enter (here, ``canonical_resource``, the engine's submit):
# the engine looks them up in dicts all the time, and identical keys skip the string comparison.
GPU = sys.intern("nvidia.com/gpu")
CPU = sys.intern("cpu")
MEMORY = sys.intern("memory")
MAX_JOBS = sys.intern("kube-queue/max-jobs")
PODS = sys.intern("pods")

MILLI = 1000

#: Resources as the engine holds them: name -> milli-units. Absent means zero in a request.
Resources = dict[str, int]

# Where a vector holds no limit (no max, no capacity, no guarantee to check). Negative, so the hot path
# tests it with one comparison and every real quantity, however large, stays exact.
NO_LIMIT: Final = -1


class ResourceSlots:
    """Every resource name this process has met, each with a fixed index.

    Quota nodes and units keep usage and limits as lists indexed by slot, and a job carries its request
    as (slot, amount) lists (``Demand``): admission then compares list items instead of hashing names
    in dicts. One registry per process, so every tree, unit and job agrees on the slots.
    """

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        # Trees may be loaded in one thread (an API handler) while the engine runs in another: a new
        # name must get exactly one slot.
        self._adding = threading.Lock()

    def slot(self, name: str) -> int:
        found = self.index.get(name)
        if found is not None:
            return found
        with self._adding:
            found = self.index.get(name)
            if found is not None:
                return found
            name = sys.intern(name)
            self.names.append(name)
            self.index[name] = len(self.names) - 1
            return self.index[name]

    def __len__(self) -> int:
        return len(self.names)

    def vector(self, values: Resources, fill: int) -> list[int]:
        """``values`` laid out by slot; every other slot holds ``fill``."""
        for name in values:
            self.slot(name)
        out = [fill] * len(self.names)
        for name, value in values.items():
            out[self.index[name]] = value
        return out

    def widen(self, vector: list[int], fill: int) -> None:
        """Extend ``vector`` to every slot known now (slots met after it was made hold ``fill``)."""
        missing = len(self.names) - len(vector)
        if missing > 0:
            vector.extend([fill] * missing)

    def value_of(self, vector: list[int], name: str) -> int:
        """``vector``'s entry for resource ``name`` (0 for a resource it has no slot for)."""
        i = self.index.get(name)
        return 0 if i is None or i >= len(vector) else vector[i]

    def resources(self, vector: list[int]) -> Resources:
        """The non-zero entries of ``vector`` by name."""
        names = self.names
        return {names[i]: v for i, v in enumerate(vector) if v}


SLOTS: Final = ResourceSlots()


class Demand:
    """A request as the hot path walks it: the slots and amounts of its non-zero resources."""

    __slots__ = ("slots", "amounts", "width")

    def __init__(self, request: Resources) -> None:
        self.slots: list[int] = []
        self.amounts: list[int] = []
        for name, value in request.items():
            if value:
                self.slots.append(SLOTS.slot(name))
                self.amounts.append(value)
        # Vectors shorter than this are widened before use (they were made before a slot was added).
        self.width: int = max(self.slots) + 1 if self.slots else 0


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")

#: The largest quantity Kubernetes represents (in base units: 2**63 - 1 cpus, bytes, GPUs).
MAX_QUANTITY: Final = 2**63 - 1

# A resource name is a Kubernetes qualified name: an optional DNS subdomain prefix and "/", then a name of
# at most 63 characters that starts and ends with a letter or digit.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# Short names accepted in traces, CLI flags and config files.
ALIASES = {"gpu": GPU, "gpus": GPU, "num_gpus": GPU, "mem": MEMORY, "max-jobs": MAX_JOBS}


class ManifestError(ValueError):
    """An invalid manifest; ``violations`` holds every problem found, each naming the object and the field."""

    def __init__(self, violations: list[str], source: str) -> None:
        self.violations = violations
        if len(violations) == 1:  # one problem, one line: what a log line or an HTTP detail shows whole
            super().__init__(f"{source} is invalid: {violations[0]}")
            return
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{source} is invalid ({len(violations)} problem(s)):\n{lines}")


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


#: quantity text -> milli-units, for the few distinct strings manifests repeat (``500m``, ``512Mi``): a
#: parse goes through Decimal and Fraction (~0.2 ms), once per pod template of every RayJob seen.
#: Bounded, so that hostile input cannot grow it; only successes are kept (errors name their field).
_PARSED: dict[str, int] = {}
_PARSED_LIMIT = 4096


def parse_quantity(value: str | int | float, *, field: str = "quantity") -> int:
    """Parse ``value`` into integer milli-units; rounds up below one milli-unit like Kubernetes does."""
    if type(value) is str:
        cached = _PARSED.get(value)
        if cached is not None:
            return cached
        result = _parse_quantity(value, field)
        if len(_PARSED) < _PARSED_LIMIT:
            _PARSED[value] = result
        return result
    return _parse_quantity(value, field)


def _parse_quantity(value: str | int | float, field: str) -> int:
    if isinstance(value, bool):
        raise QuantityError(f"{field}: {value!r} is not a quantity")
    if isinstance(value, int):
        if abs(value) > MAX_QUANTITY:
            raise QuantityError(f"{field}: {value} is larger than a Kubernetes quantity can be (2^63-1)")
        return value * MILLI
    if isinstance(value, float):
        if not math.isfinite(value):  # YAML's .nan and .inf
            raise QuantityError(f"{field}: {value!r} is not a quantity (quantities are finite numbers)")
        number = _bounded(Decimal(repr(value)), value, field)
        scale = Fraction(1)
    else:
        text = str(value).strip()
        match = _QUANTITY.match(text)
        if not match:
            raise QuantityError(
                f"{field}: {value!r} is not a quantity (expected e.g. 500m, 2, 40Gi, 1.5)"
            )
        try:
            decimal = Decimal(match.group(1))
        except InvalidOperation as exc:
            raise QuantityError(f"{field}: {value!r} is not a quantity") from exc
        number = _bounded(decimal, value, field)
        suffix = match.group(2) or ""
        scale = Fraction(_BINARY[suffix]) if suffix in _BINARY else _DECIMAL[suffix]
    if abs(number * scale) > MAX_QUANTITY:
        raise QuantityError(f"{field}: {value!r} is larger than a Kubernetes quantity can be (2^63-1)")
    milli = number * scale * MILLI
    # Kubernetes rounds a quantity up to the smallest unit it can represent.
    result = -((-milli.numerator) // milli.denominator)
    return int(result)


def _bounded(decimal: Decimal, value: object, field: str) -> Fraction:
    """The number as a fraction, refusing exponents whose power of ten alone would take minutes to compute."""
    if decimal.is_zero():
        return Fraction(0)
    if decimal.adjusted() > 40:  # above 1e40 whatever the suffix: far past 2^63-1
        raise QuantityError(f"{field}: {value!r} is larger than a Kubernetes quantity can be (2^63-1)")
    if decimal.adjusted() < -40:
        # Far below a nano-unit: Kubernetes rounds it up to the smallest unit; keep its sign only.
        return Fraction(1 if decimal > 0 else -1, 10**40)
    return Fraction(decimal)


def check_resource_name(name: str, field: str = "resource") -> str:
    """``name`` when it is a Kubernetes qualified name (``cpu``, ``nvidia.com/gpu``); else QuantityError."""
    prefix, slash, rest = name.rpartition("/")
    ok = len(rest) <= 63 and _QUALIFIED_NAME.match(rest) is not None
    if slash:
        ok = ok and 0 < len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix) is not None
    if not ok:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise QuantityError(
            f"{field}: {shown!r} is not a valid resource name (a Kubernetes qualified name such as "
            "cpu, memory or nvidia.com/gpu)"
        )
    return name


def is_byte_resource(resource: str) -> bool:
    """Resources counted in bytes (memory, storage): rendered with binary suffixes."""
    return resource == MEMORY or resource.endswith("memory") or resource.endswith("storage")


def format_quantity(milli: int, resource: str = "") -> str:
    """Render milli-units the way a person writes them (``2``, ``500m``, ``40Gi``)."""
    if is_byte_resource(resource):
        if milli % MILLI == 0:
            units = milli // MILLI
            for suffix in ("Ti", "Gi", "Mi", "Ki"):
                size = _BINARY[suffix]
                if units and units % size == 0:
                    return f"{units // size}{suffix}"
            return str(units)
    if milli % MILLI == 0:
        return str(milli // MILLI)
    return f"{milli}m"


def canonical_resource(name: str) -> str:
    """The full resource name for a short alias (``gpu`` -> ``nvidia.com/gpu``)."""
    return sys.intern(ALIASES.get(name, name))


def parse_resources(raw: Mapping[str, object] | None, *, field: str = "resources") -> Resources:
    """Parse a ``{name: quantity}`` mapping; the error names the field and the resource."""
    out: Resources = {}
    for name, value in (raw or {}).items():
        if value is None:
            continue
        resource = canonical_resource(check_resource_name(str(name), f"{field}.{name}"))
        if not isinstance(value, (str, int, float)):
            raise QuantityError(f"{field}.{name}: {value!r} is not a quantity")
        out[resource] = parse_quantity(value, field=f"{field}.{name}")
    return out


def add(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for name, value in b.items():
        out[name] = out.get(name, 0) + value
    return out


def total(items: Iterable[Mapping[str, int]]) -> Resources:
    out: Resources = {}
    for item in items:
        for name, value in item.items():
            out[name] = out.get(name, 0) + value
    return out


def scale(res: Mapping[str, int], factor: int) -> Resources:
    return {name: value * factor for name, value in res.items()}


def describe(res: Mapping[str, int]) -> str:
    """``cpu=2, memory=4Gi, nvidia.com/gpu=1`` for messages and tables."""
    return ", ".join(f"{name}={format_quantity(value, name)}" for name, value in sorted(res.items()))
