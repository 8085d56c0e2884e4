"""Run Python code or the ``rayqueue`` CLI as if only the core dependencies and the named extras were installed.

    python tests/only_extras.py EXTRAS -c CODE          # EXTRAS: comma-separated, or "" for the core only
    python tests/only_extras.py EXTRAS -m rayqueue ARGS...

The allowed distributions are ``pyproject.toml``'s core dependencies and those extras, with everything
they require in turn (read from the installed metadata, markers evaluated); every other installed
distribution's top-level modules are refused by a ``sys.meta_path`` finder, as if absent, so an
import of ``ray`` raises ``ModuleNotFoundError`` exactly as it would in a venv made with
``pip install rayqueue`` alone. tests/test_packaging.py runs the front ends through it: a venv per
extra would take minutes (Ray alone is hundreds of MB).
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)["project"]
    return data


def declared(extras: Sequence[str]) -> list[Requirement]:
    """The core requirements plus those of ``extras``, with ``rayqueue[...]`` self-references expanded."""
    proj = project()
    optional = proj["optional-dependencies"]
    texts = list(proj["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        for text in optional[extra]:
            req = Requirement(text)
            if normalize(req.name) == normalize(proj["name"]):  # all = ["rayqueue[ray,operator,report]"]
                todo.extend(req.extras)
            else:
                texts.append(text)
    return [Requirement(t) for t in texts]


def closure(reqs: Sequence[Requirement]) -> set[str]:
    """Normalized names of ``reqs`` and of everything they require, as installed."""
    allowed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(normalize(r.name), frozenset(r.extras)) for r in reqs if r.marker is None or r.marker.evaluate()]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        allowed.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue  # declared but not installed: nothing of it can be imported anyway
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((normalize(req.name), frozenset(req.extras)))
    return allowed


def blocked_modules(extras: Sequence[str]) -> set[str]:
    """Top-level modules that only distributions outside the allowed set provide."""
    allowed = closure(declared(extras)) | {normalize(project()["name"])}
    return {module for module, dists in md.packages_distributions().items()
            if not any(normalize(d) in allowed for d in dists)}


class Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if fullname.partition(".")[0] in self.modules:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed with these extras)",
                                      name=fullname)
        return None


def main(argv: list[str]) -> None:
    extras = [e for e in argv[0].split(",") if e]
    blocked = blocked_modules(extras)
    # What this script itself or a start-up .pth file imported (packaging, _distutils_hack) is forgotten,
    # so that a later import of it is refused too rather than served from sys.modules.
    for name in [n for n in sys.modules if n.partition(".")[0] in blocked]:
        del sys.modules[name]
    sys.meta_path.insert(0, Refuse(blocked))
    if argv[1] == "-c":
        exec(compile(argv[2], "<only_extras>", "exec"), {"__name__": "__main__"})
    elif argv[1:3] == ["-m", "rayqueue"]:
        sys.argv = ["rayqueue", *argv[3:]]
        from rayqueue.scheduler.cli import main as cli

        cli()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
