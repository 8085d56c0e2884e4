"""Front ends read the engine through its views, never its live state.

import-linter states which package may import which (pyproject.toml); it cannot see an attribute read,
so this test does: outside the engine package, nothing reads ``engine.tree``, ``engine.units``,
``engine.workloads`` or ``engine.queues`` (the live quota tree, units, jobs and queues), which the engine
keeps only for its own tests and the simulator's checks. What a front end needs is in
``scheduler/engine/views.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIVE_STATE = {"tree", "units", "workloads", "queues"}


def live_state_reads(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every ``<...>engine.<live state>`` read in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr in LIVE_STATE):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        if name == "engine":
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_a_read_of_the_live_state() -> None:
    sample = "def f(self, engine):\n    a = self.engine.tree.leaves\n    b = engine.units.units\n    c = engine.tree_view()\n"
    assert live_state_reads(sample) == [(2, "self.engine.tree"), (3, "engine.units")]


def test_front_ends_read_the_engine_through_its_views() -> None:
    front_ends = sorted(
        p for p in (ROOT / "scheduler").rglob("*.py") if (ROOT / "scheduler" / "engine") not in p.parents
    )
    assert len(front_ends) > 20  # the scan sees the service, the operator, the CLI, metrics, ...
    reads = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in front_ends
        for line, text in live_state_reads(path.read_text())
    ]
    assert reads == [], "read the engine's views (scheduler/engine/views.py) instead:\n" + "\n".join(reads)
