"""The one loader for every manifest a user hands us: YAML or JSON, files or bodies, bounded.

Trees, ResourcePolicies, RayJob submissions, scenarios and cluster files all come through
:func:`load_documents` (text or bytes) or :func:`read_documents` (a file). Every input may be hostile,
so loading is bounded before anything walks the result:

* size: at most ``max_bytes`` (read no further than that from a file);
* encoding: UTF-8 (a BOM is allowed); other bytes are refused naming the offset and line;
* nesting: at most ``max_depth`` levels of mappings and sequences, counted as the document *expands*
  (an alias inside a deep structure counts the alias's own depth too). The composer is iterative, so a
  20,000-deep ``[[[[...`` is refused at the limit, never a RecursionError;
* aliases: an alias repeats the node it names, so a few bytes can stand for billions of nodes (the
  "billion laughs"). Counting the number of aliases would refuse harmless manifests that share one
  ``resources`` block a hundred times and still let ten aliases of ten aliases through, so we count what
  matters: the nodes aliases add to the expanded document. Each node's expanded size is known when the
  node ends, so the count is arithmetic on the node graph (milliseconds for any bomb) and the document
  is refused once aliases add more than ``max_alias_nodes`` nodes. An alias to a node that contains it
  (a recursive structure) is refused as well: nothing downstream can walk it;
* duplicate keys in a mapping are refused (YAML forbids them; PyYAML would silently keep the last one,
  so ``max`` written twice would apply the one the admin did not mean).

Every refusal is a :class:`DocumentError`: one line naming the source, the document, the field (path)
and the limit. The module lives in ``quota/``, the bottom layer, because the quota tree loads its own
YAML and may not import the layers above it; it knows nothing of queues, jobs or Kubernetes kinds.
"""

from __future__ import annotations

import codecs
import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_LOADER: Final[type] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one input may be. The defaults hold a 10 MB quota tree of 59,000 leaves with room."""

    max_bytes: int = 32 * 2**20
    max_depth: int = 100
    max_alias_nodes: int = 100_000
    max_documents: int = 1_000


DEFAULT_LIMITS: Final = Limits()


class DocumentError(ValueError):
    """An input that cannot be loaded: one line naming the source, the document, the field and the limit.

    ``problem`` is that line without the source (for errors that name the source themselves);
    ``document`` the 0-based index of the document in a multi-document stream, when past the first.
    """

    def __init__(self, source: str, problem: str, document: int | None = None) -> None:
        self.source = source
        self.document = document or None
        one_line = " ".join(problem.split())  # whatever the parser said
        self.problem = f"document {document}: {one_line}" if document else one_line
        where = f"{source} (document {document})" if document else source
        super().__init__(f"{where}: {one_line}")


# ------------------------------------------------------------------------------------ bytes and text


def read_bytes(path: str | Path, source: str | None = None, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The file's bytes, reading no more than the size limit allows."""
    where = source or str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise DocumentError(where, f"cannot read: {exc.strerror or exc}") from exc
    _check_size(len(data), where, limits)
    return data


def decode(data: bytes | str, source: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """UTF-8 text within the size limit; a refusal names the first bad byte's offset and line."""
    if isinstance(data, str):
        # Text that came decoded (an HTTP body) may still hold lone surrogates ("\\ud800" in JSON).
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError as exc:
            line = data.count("\n", 0, exc.start) + 1
            raise DocumentError(source, f"line {line}: character {exc.start} is not valid Unicode (a lone surrogate)") from exc
        _check_size(size, source, limits)
        return data.removeprefix("\ufeff")
    _check_size(len(data), source, limits)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        hint = " (UTF-16?)" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
        problem = f"line {line}: byte 0x{bad} at offset {exc.start} is not UTF-8{hint}; files must be UTF-8 text"
        raise DocumentError(source, problem) from exc
    return text.removeprefix("\ufeff")


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a large document is built.

    Loading allocates one object per node and frees almost none, and every full collection walks all
    of them again: with collections on, a 59,000-leaf tree took time growing with the square of its size.
    Nothing built here is cyclic (recursive aliases are refused), so collection is only deferred.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_size(size: int, source: str, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise DocumentError(source, f"larger than the limit of {limits.max_bytes:,} bytes")


# ------------------------------------------------------------------------------------ documents


def read_documents(path: str | Path, source: str | None = None, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every document of a YAML (or JSON) file, bounded as this module says."""
    where = source or str(path)
    return load_documents(read_bytes(path, where, limits), where, limits)


def load_documents(data: bytes | str, source: str = "input", limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every document of a YAML (or JSON) text, in order; empty documents come back as ``None``."""
    text = decode(data, source, limits)
    if "&" not in text and "*" not in text:
        plain = _load_without_aliases(text, limits)
        if plain is not None:
            return plain
    return _load_bounded(text, source, limits)


#: What PyYAML's constructors raise, besides its own errors, for a scalar that does not fit its explicit
#: tag (``!!int x``: ValueError; ``!!int ""``: IndexError; ``!!bool x``: KeyError; ``!!timestamp x``:
#: AttributeError).
_BAD_SCALAR: Final = (ValueError, TypeError, ArithmeticError, AttributeError, LookupError)


def _load_bounded(text: str, source: str, limits: Limits) -> list[Any]:
    """The documents of a decoded text through the bounded composer (any text; every refusal explained)."""
    loader = _LOADER(text)
    composer = _Composer(loader, source, limits)
    try:
        with paused_gc():
            return composer.documents()
    except DocumentError:
        raise
    except yaml.YAMLError as exc:
        raise DocumentError(source, _yaml_problem(exc, limits), composer.index) from exc
    except _BAD_SCALAR as exc:
        detail = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise DocumentError(source, f"a value does not fit its explicit YAML tag (such as !!int x){detail}",
                            composer.index) from exc
    finally:
        loader.dispose()


def _load_without_aliases(text: str, limits: Limits) -> list[Any] | None:
    """The documents of a text that has no anchor and no alias (neither ``&`` nor ``*`` occurs in it), or
    None: then :func:`load_documents` takes its bounded composer, which refuses what is wrong with the
    message this module promises.

    Without aliases a document is no bigger than its text, so libyaml's own composer (C; it refuses
    nesting beyond 1,000 levels itself) is safe to use, and the common nodes (plain mappings, sequences,
    strings) are built in one pass that also checks the depth limit and duplicate keys; every other
    scalar is PyYAML's to construct. Anything else (a tag of its own, a merge key, any problem) sends the
    text to the bounded composer, so both ways accept and refuse the same texts and build the same
    objects. This way is about 1.5x as fast (a RayJob: 0.8 -> 0.5 ms)."""
    loader = _LOADER(text)
    try:
        with paused_gc():
            docs: list[Any] = []
            while loader.check_node():
                if len(docs) >= limits.max_documents:
                    return None
                docs.append(_build(loader.get_node(), 0, loader, limits.max_depth))
                loader.constructed_objects = {}  # what construct_document would leave behind
            return docs
    except (_NotPlain, yaml.YAMLError, RecursionError, *_BAD_SCALAR):
        return None  # the bounded composer says what is wrong
    finally:
        loader.dispose()


class _NotPlain(Exception):
    """A node the one-pass builder leaves to the bounded composer."""


_STR: Final = "tag:yaml.org,2002:str"
_SEQ: Final = "tag:yaml.org,2002:seq"
_MAP: Final = "tag:yaml.org,2002:map"
_VALUE_TAG: Final = "tag:yaml.org,2002:value"
#: Scalars PyYAML's safe constructor builds at once (no generator; ``!!set`` and the like are not scalars).
_SCALAR_TAGS: Final = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "binary", "timestamp"))


def _scalar(node: ScalarNode, loader: Any) -> Any:
    if node.tag == _STR:
        return node.value
    if node.tag not in _SCALAR_TAGS:
        raise _NotPlain
    return loader.construct_object(node, deep=True)


def _build(node: Node, depth: int, loader: Any, max_depth: int) -> Any:
    """``node`` as PyYAML's safe constructor builds it; ``depth``: the collections open around it."""
    if isinstance(node, ScalarNode):
        return _scalar(node, loader)
    depth += 1
    if depth > max_depth:
        raise _NotPlain
    if isinstance(node, SequenceNode) and node.tag == _SEQ:
        return [_build(item, depth, loader, max_depth) for item in node.value]
    if not isinstance(node, MappingNode) or node.tag != _MAP:
        raise _NotPlain
    out: dict[Any, Any] = {}
    seen: set[tuple[str, str]] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag in (_MERGE_TAG, _VALUE_TAG):
            raise _NotPlain
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise _NotPlain  # a duplicate key: refused by the bounded composer, with its line
        seen.add(ident)
        out[_scalar(key_node, loader)] = _build(value_node, depth, loader, max_depth)
    return out


def load_document(data: bytes | str, source: str = "input", limits: Limits = DEFAULT_LIMITS) -> Any:
    """The single document of a text (``None`` when empty); more than one is refused."""
    docs = load_documents(data, source, limits)
    if len(docs) > 1:
        raise DocumentError(source, f"expected one document, found {len(docs)}")
    return docs[0] if docs else None


def _yaml_problem(exc: yaml.YAMLError, limits: Limits) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if "maximum nesting depth" in problem:
        # libyaml's own guard (1000 flow levels) can fire while scanning ahead of our composer's count.
        problem = f"nested deeper than {limits.max_depth} levels (the limit)"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"malformed YAML{where}: {problem}"


class _Frame:
    """A mapping or sequence being composed."""

    __slots__ = ("node", "items", "key", "size", "depth", "anchor", "line", "column", "keys")

    def __init__(self, node: Node, anchor: str | None, line: int, column: int) -> None:
        self.node = node
        self.items: list[Any] = []
        self.key: Node | None = None  # a mapping's key waiting for its value
        self.size = 1  # nodes in the expanded subtree so far
        self.depth = 1  # levels in the expanded subtree so far
        self.anchor = anchor
        self.line = line
        self.column = column
        self.keys: set[tuple[str, str]] | None = set() if isinstance(node, MappingNode) else None


class _Composer:
    """PyYAML's composer without recursion, counting each node's expanded size and depth as it ends."""

    def __init__(self, loader: Any, source: str, limits: Limits) -> None:
        self.loader = loader
        self.source = source
        self.limits = limits
        self.index = 0  # the document being read

    def error(self, problem: str) -> DocumentError:
        return DocumentError(self.source, problem, self.index)

    def documents(self) -> list[Any]:
        loader = self.loader
        out: list[Any] = []
        event = loader.get_event()
        if not isinstance(event, StreamStartEvent):
            raise self.error("not a YAML stream")
        while True:
            event = loader.get_event()
            if isinstance(event, StreamEndEvent):
                return out
            if not isinstance(event, DocumentStartEvent):
                raise self.error(f"unexpected {type(event).__name__}")
            if len(out) >= self.limits.max_documents:
                raise self.error(f"more than {self.limits.max_documents} documents (the limit)")
            self.index = len(out)
            node = self._document(len(out))
            end = loader.get_event()
            if not isinstance(end, DocumentEndEvent):
                raise self.error(f"unexpected {type(end).__name__}")
            out.append(loader.construct_document(node))

    def _where(self, index: int, stack: list[_Frame], line: int) -> str:
        path = _path(stack)
        return f"line {line + 1}" + (f", {path}" if path else "")

    def _document(self, index: int) -> Node:
        loader, limits = self.loader, self.limits
        anchors: dict[str, tuple[Node, int, int]] = {}  # anchor -> (node, expanded size, expanded depth)
        open_anchors: set[str] = set()
        stack: list[_Frame] = []
        alias_nodes = 0
        while True:
            event = loader.get_event()
            node: Node
            size, depth, anchor = 1, 0, None
            # The C parser's marks are its own class; the nodes only keep them for messages.
            start: Any = event.start_mark
            end: Any = event.end_mark
            line = start.line if start is not None else 0
            if isinstance(event, AliasEvent):
                name = event.anchor
                if name in open_anchors:
                    raise self.error(
                        f"{self._where(index, stack, line)}: alias *{name} refers back to itself "
                        "(it names a node that contains it; a recursive structure cannot be loaded)",
                    )
                if name not in anchors:
                    raise self.error(f"{self._where(index, stack, line)}: alias *{name} names no anchor")
                node, size, depth = anchors[name]
                alias_nodes += size
                if alias_nodes > limits.max_alias_nodes:
                    raise self.error(
                        f"{self._where(index, stack, line)}: aliases expand to more than {limits.max_alias_nodes:,} "
                        "nodes (the limit; a YAML alias bomb?)",
                    )
            elif isinstance(event, ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, start, end, style=event.style)
                anchor = event.anchor
            elif isinstance(event, (SequenceStartEvent, MappingStartEvent)):
                if len(stack) >= limits.max_depth:
                    raise self.error(
                        f"{self._where(index, stack, line)}: nested deeper than {limits.max_depth} levels (the limit)",
                    )
                tag = event.tag
                if isinstance(event, SequenceStartEvent):
                    if tag is None or tag == "!":
                        tag = loader.resolve(SequenceNode, None, event.implicit)
                    node = SequenceNode(tag, [], start, None, flow_style=event.flow_style)
                else:
                    if tag is None or tag == "!":
                        tag = loader.resolve(MappingNode, None, event.implicit)
                    node = MappingNode(tag, [], start, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    open_anchors.add(event.anchor)
                stack.append(_Frame(node, event.anchor, line, start.column if start is not None else 0))
                continue
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                frame = stack.pop()
                node = frame.node
                node.end_mark = end
                node.value = frame.items
                size, depth, anchor = frame.size, frame.depth, frame.anchor
                if anchor is not None:
                    open_anchors.discard(anchor)
                if depth + len(stack) > limits.max_depth:
                    # Only aliases can make a subtree deeper than the stack that composed it.
                    raise self.error(
                        f"{self._where(index, stack, frame.line)}: nested deeper than {limits.max_depth} levels "
                        "once its aliases are expanded (the limit)",
                    )
            else:
                raise self.error(f"unexpected {type(event).__name__}")
            if anchor is not None:
                anchors[anchor] = (node, size, depth)
            if not stack:
                return node
            self._add(stack[-1], node, size, depth, index, stack, line)

    def _add(self, parent: _Frame, node: Node, size: int, depth: int, index: int, stack: list[_Frame], line: int) -> None:
        parent.size += size
        if depth + 1 > parent.depth:
            parent.depth = depth + 1
        if parent.keys is None:
            parent.items.append(node)
            return
        if parent.key is None:
            parent.key = node
            return
        key = parent.key
        parent.key = None
        if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
            ident = (key.tag, key.value)
            if ident in parent.keys:
                raise self.error(
                    f"{self._where(index, stack, key.start_mark.line if key.start_mark else line)}: "
                    f"duplicate key {key.value!r} (each key may appear once in a mapping)",
                )
            parent.keys.add(ident)
        parent.items.append((key, node))


def _path(stack: list[_Frame]) -> str:
    """``spec.root.children[0].min``: where the composer is, in the document's own keys."""
    parts: list[str | int] = []
    for frame in stack:
        if frame.keys is None:
            parts.append(len(frame.items))
        elif frame.key is not None:
            parts.append(str(frame.key.value) if isinstance(frame.key, ScalarNode) else "<key>")
    return format_path(parts)


def format_path(parts: list[str | int], shown: int = 12) -> str:
    """``spec.root.children[0].min`` from its keys and indexes; a deep path keeps its start and end."""
    if len(parts) > shown:
        # A path as deep as the limit would fill a screen: its start and end say where it is.
        head, tail = format_path(parts[: shown // 2]), format_path(parts[-(shown // 2) :])
        return f"{head}...({len(parts) - shown} more levels)...{tail}"
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _short(part)
    return out


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


# ------------------------------------------------------------------------------------ parsed objects


def check_structure(obj: Any, source: str, limits: Limits = DEFAULT_LIMITS, max_items: int = 4_000_000) -> None:
    """Bound an object that arrived parsed (a Kubernetes watch event, a webhook's JSON body).

    Iterative: refuses nesting beyond ``max_depth`` (a container that contains itself is refused the
    same way) and more than ``max_items`` values in all, so that the recursive validators downstream
    never hit Python's recursion limit nor walk a structure without end.
    """
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(obj, ())]
    seen = 0
    while todo:
        item, path = todo.pop()
        seen += 1
        if seen > max_items:
            raise DocumentError(source, f"more than {max_items:,} mappings and lists (the limit)")
        if len(path) >= limits.max_depth:
            where = format_path(list(path))
            raise DocumentError(source, f"{where}: nested deeper than {limits.max_depth} levels (the limit)")
        if isinstance(item, Mapping):
            for k, v in item.items():
                if isinstance(v, (Mapping, list, tuple)):
                    todo.append((v, (*path, str(k))))
        elif isinstance(item, (list, tuple)):
            for i, v in enumerate(item):
                if isinstance(v, (Mapping, list, tuple)):
                    todo.append((v, (*path, i)))
