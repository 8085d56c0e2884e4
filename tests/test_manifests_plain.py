"""The loader's way for texts without anchors or aliases (libyaml's composer and a one-pass builder,
quota/manifests.py ``_load_without_aliases``) accepts and refuses the same texts, and builds the same
objects, as the bounded composer every other text goes through."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stz

from rayqueue.quota import manifests
from rayqueue.quota.manifests import DEFAULT_LIMITS, DocumentError, load_documents

ROOT = Path(__file__).resolve().parent.parent


def typed(value: Any) -> Any:
    """``value`` with every scalar's type made visible, so that 1, 1.0, True and "1" differ."""
    if isinstance(value, dict):
        return ("dict", sorted(((typed(k), typed(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def bounded(text: str) -> Any:
    """What the bounded composer makes of ``text``: its documents, or its refusal."""
    try:
        return typed(manifests._load_bounded(text, "t.yaml", DEFAULT_LIMITS))
    except DocumentError as exc:
        return ("refused", str(exc))


def loaded(text: str) -> Any:
    try:
        return typed(load_documents(text, "t.yaml"))
    except DocumentError as exc:
        return ("refused", str(exc))


# Scalars that YAML 1.1 resolves to other types than they look, and keys that collide.
tricky = stz.sampled_from(["1", "1.0", "0x1F", "0o17", "017", "1_000", "1:30", "yes", "No", "on", "~", "null",
                           ".inf", "-.Inf", ".nan", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "=", "<<",
                           "a", "b", "", " x", "é", "true", "False"])
scalars = stz.one_of(tricky, stz.integers(), stz.floats(allow_nan=True), stz.booleans(), stz.none(),
                     stz.text(max_size=5), stz.dates())
keys = stz.one_of(tricky, stz.integers(-3, 3), stz.booleans(), stz.none(), stz.text(max_size=3))
trees = stz.recursive(scalars, lambda inner: stz.one_of(stz.lists(inner, max_size=4),
                                                        stz.dictionaries(keys, inner, max_size=4)), max_leaves=12)
# Text edits that make what the builder leaves to the bounded composer: explicit tags, merge keys,
# duplicate lines (duplicate keys), a value key, and YAML that does not parse.
edits = stz.sampled_from(["", "!!str ", "!!int ", "!!set ", "!!binary aGk= ", "!!omap ", "!custom ", "<<: {z: 1}\n",
                          "= : v\n", "[", "}\n", "- ", "? ", "---\n", "%YAML 1.1\n---\n", "...\n"])


@stz.composite
def texts(draw: stz.DrawFn) -> str:
    docs = draw(stz.lists(trees, min_size=1, max_size=3))
    text = yaml.safe_dump_all(docs, default_flow_style=draw(stz.sampled_from([None, True, False])),
                              explicit_start=draw(stz.booleans()))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(stz.integers(0, 3))):
        at = draw(stz.integers(0, len(lines)))
        if lines and draw(stz.booleans()):
            lines.insert(at, lines[min(at, len(lines) - 1)])  # a line twice: often a duplicate key
        else:
            lines.insert(at, draw(edits))
    return "".join(lines)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=texts())
def test_both_ways_make_the_same_of_any_text(text: str) -> None:
    if "&" in text or "*" in text:
        return  # such a text always takes the bounded composer
    assert loaded(text) == bounded(text)
    try:
        plain = manifests._load_without_aliases(text, DEFAULT_LIMITS)
    except Exception as exc:  # the builder never raises: it leaves the text to the bounded composer
        pytest.fail(f"the plain way raised {exc!r} on {text!r}")
    if plain is not None:  # accepted that way: the bounded composer accepts it too, and builds the same
        assert typed(plain) == bounded(text)


def test_a_kuberay_sample_takes_the_plain_way_and_gets_what_pyyaml_gets() -> None:
    for path in sorted((ROOT / "data" / "kuberay" / "samples").glob("*.yaml")):
        text = path.read_text()
        if "&" in text or "*" in text:
            continue
        plain = manifests._load_without_aliases(text, DEFAULT_LIMITS)
        assert plain is not None, path.name
        assert typed(plain) == typed(list(yaml.load_all(text, Loader=yaml.SafeLoader))), path.name


@pytest.mark.parametrize("flow", [True, False])
def test_the_depth_limit_holds_on_the_plain_way(flow: bool) -> None:
    def nested(levels: int) -> str:
        if flow:
            return "[" * levels + "]" * levels + "\n"
        return "".join("  " * i + "a:\n" for i in range(levels - 1)) + "  " * (levels - 1) + "a: 1\n"

    assert manifests._load_without_aliases(nested(100), DEFAULT_LIMITS) is not None  # at the limit: loaded
    assert manifests._load_without_aliases(nested(101), DEFAULT_LIMITS) is None
    with pytest.raises(DocumentError, match=r"nested deeper than 100 levels \(the limit\)"):
        load_documents(nested(101), "deep.yaml")
    with pytest.raises(DocumentError, match=r"nested deeper than 100 levels"):
        load_documents(nested(5000) if flow else "[" * 5000, "deeper.yaml")  # past libyaml's own limit too


def test_duplicate_keys_and_too_many_documents_are_refused_with_the_bounded_composers_words() -> None:
    with pytest.raises(DocumentError, match=r"dup.yaml: line 3, spec: duplicate key 'max'"):
        load_documents("spec:\n  max: 1\n  max: 2\n", "dup.yaml")
    limits = manifests.Limits(max_documents=3)
    assert manifests._load_without_aliases("a: 1\n---\nb: 2\n---\nc: 3\n", limits) is not None
    assert manifests._load_without_aliases("a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n", limits) is None
    with pytest.raises(DocumentError, match=r"more than 3 documents \(the limit\)"):
        load_documents("a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n", "many.yaml", limits)


@pytest.mark.parametrize("text", ["a: !!int x\n", "!!float x\n", "a: !!timestamp x\n", "a: 1\n---\nb: !!int 1.5.3\n",
                                  "a: !!int ''\n", "a: !!bool maybe\n", "{!!int x: 1}\n"])
def test_a_value_that_does_not_fit_its_tag_is_refused_in_one_line(text: str) -> None:
    # PyYAML's constructors raise ValueError or AttributeError for these, which escaped as a traceback
    with pytest.raises(DocumentError, match=r"^t\.yaml( \(document 1\))?: a value does not fit its explicit YAML tag"):
        load_documents(text, "t.yaml")


def test_scalars_keep_yaml_1_1_types() -> None:
    docs = load_documents("a: 0x1F\nb: '0x1F'\nc: 1:30\nd: yes\ne: 2001-12-14\nf: ~\n1: x\n'1': y\n")
    assert docs == [{"a": 31, "b": "0x1F", "c": 90, "d": True, "e": datetime.date(2001, 12, 14), "f": None,
                     1: "x", "1": "y"}]
