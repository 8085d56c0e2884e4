"""A JSON Schema check compiled once into plain Python closures that answer one question: valid or not.

``jsonschema``'s validator interprets the schema on every call (a new validator object per sub-schema it
descends into) and cost about a millisecond per RayJob, half of a submission's parsing. The CRD cuts in
``schemas/`` use a handful of keywords, so they are compiled once here into closures that return a bool
and build nothing. ``jsonschema`` stays the reference: the closures only say "valid", and a document
they do not pass is checked again by ``jsonschema``, which writes the messages. A document is therefore
refused exactly when ``jsonschema`` refuses it, as long as the closures never pass what ``jsonschema``
refuses; ``tests/test_schema_check.py`` compares both on generated documents.

Draft 7 semantics, as ``jsonschema.Draft7Validator`` applies them without a format checker (``format``
is an annotation there, so here too). A schema with any other keyword does not compile
(:func:`compile_check` returns None) and the caller uses ``jsonschema`` alone: never a looser check.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

#: A compiled check: True when the instance is valid.
Check = Callable[[Any], bool]

#: Keywords that constrain nothing (annotations; ``format`` without a format checker, as jsonschema's
#: default validator runs).
_ANNOTATIONS: Final = frozenset({"$comment", "description", "title", "default", "examples", "format"})
_KEYWORDS: Final = frozenset({"type", "properties", "additionalProperties", "required", "items", "anyOf", "pattern"})


class Unsupported(ValueError):
    """The schema uses a keyword (or a form of one) this compiler does not know."""


def compile_check(schema: Any) -> Check | None:
    """The schema as a check, or None when it uses anything not compiled here (use jsonschema then)."""
    try:
        return _compile(schema)
    except Unsupported:
        return None


def _valid(_: Any) -> bool:
    return True


def _invalid(_: Any) -> bool:
    return False


def _is_integer(x: Any) -> bool:
    # draft 6 and later: 1.0 is an integer; a bool is not
    if isinstance(x, int):
        return not isinstance(x, bool)
    return isinstance(x, float) and x.is_integer()


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


_TYPES: Final[dict[str, Check]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "integer": _is_integer,
    "number": _is_number,
}


def _compile(schema: Any) -> Check:
    if schema is True:
        return _valid
    if schema is False:
        return _invalid
    if not isinstance(schema, Mapping):
        raise Unsupported(f"a schema must be an object or a boolean, got {type(schema).__name__}")
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise Unsupported(f"keyword(s) {sorted(unknown)}")
    checks: list[Check] = []
    if "type" in schema:
        checks.append(_type(schema["type"]))
    if "pattern" in schema:
        checks.append(_pattern(schema["pattern"]))
    if any(k in schema for k in ("properties", "additionalProperties", "required")):
        checks.append(_object(schema))
    if "items" in schema:
        checks.append(_items(schema["items"]))
    if "anyOf" in schema:
        checks.append(_any_of(schema["anyOf"]))
    if not checks:
        return _valid
    if len(checks) == 1:
        return checks[0]
    # the type first: the others then mostly see the type they constrain
    all_of = tuple(checks)

    def every(x: Any) -> bool:
        for check in all_of:
            if not check(x):
                return False
        return True

    return every


def _type(spec: Any) -> Check:
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
        raise Unsupported(f"type {spec!r}")
    if len(names) == 1:
        return _TYPES[names[0]]
    options = tuple(_TYPES[n] for n in names)
    return lambda x: any(t(x) for t in options)


def _pattern(pattern: Any) -> Check:
    if not isinstance(pattern, str):
        raise Unsupported(f"pattern {pattern!r}")
    search = re.compile(pattern).search  # jsonschema searches too (the pattern is not anchored for us)
    return lambda x: not isinstance(x, str) or search(x) is not None


def _object(schema: Mapping[str, Any]) -> Check:
    props_schema = schema.get("properties", {})
    required = schema.get("required", [])
    extra_schema = schema.get("additionalProperties", True)
    if not isinstance(props_schema, Mapping) or not isinstance(required, list):
        raise Unsupported("properties or required of an unexpected form")
    props = {name: _compile(sub) for name, sub in props_schema.items()}
    needed = tuple(required)
    extra = None if extra_schema is True else _compile(extra_schema)

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for name in needed:
            if name not in x:
                return False
        for key, value in x.items():
            sub = props.get(key)
            if sub is None:
                if extra is not None and not extra(value):
                    return False
            elif not sub(value):
                return False
        return True

    return check


def _items(spec: Any) -> Check:
    if isinstance(spec, list):  # draft 7's tuple form: item i against schema i, the rest unchecked
        positional = tuple(_compile(s) for s in spec)
        return lambda x: not isinstance(x, list) or all(c(v) for c, v in zip(positional, x, strict=False))
    each = _compile(spec)

    def check(x: Any) -> bool:
        if not isinstance(x, list):
            return True
        for value in x:
            if not each(value):
                return False
        return True

    return check


def _any_of(spec: Any) -> Check:
    if not isinstance(spec, list) or not spec:
        raise Unsupported("anyOf must be a non-empty list")
    options = tuple(_compile(s) for s in spec)
    return lambda x: any(c(x) for c in options)
