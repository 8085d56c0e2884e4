"""The optional extras of the ``rayqueue`` distribution, and the one-line error when one is missing.

``pip install rayqueue`` brings the engine, the CLI and the simulator. The standalone service needs
``rayqueue[ray]``, the operator ``rayqueue[operator]``, the simulator's plots ``rayqueue[report]``
(``pyproject.toml`` lists what each brings). Commands import their extra's modules lazily, inside
:func:`requires_extra`, so that a missing one is named with the command that needs it instead of a
traceback ending in ``No module named 'ray'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

EXTRAS = ("ray", "operator", "report")


class MissingExtra(Exception):
    """A command needs an optional dependency that is not installed."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        self.what, self.extra, self.module = what, extra, module
        super().__init__(f"{what} needs the [{extra}] extra (module {module!r} is not installed): "
                         f"pip install 'rayqueue[{extra}]'")


@contextmanager
def requires_extra(extra: str, what: str) -> Iterator[None]:
    """Turn a third-party module missing inside the block into :class:`MissingExtra` for ``extra``.

    A missing ``rayqueue`` module is a bug, not an extra to install: it propagates unchanged.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if not top or top == "rayqueue":
            raise
        raise MissingExtra(what, extra, top) from exc


def ensure_extra(extra: str, what: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` now, before any work, if one of ``modules`` is not installed.

    For a command that would otherwise fail late (a plot after a long simulation) or in a subprocess
    (``ray start``); it finds the modules without importing them.
    """
    with requires_extra(extra, what):
        for module in modules:
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)
