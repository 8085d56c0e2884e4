"""Build hook: compile the admission engine's hot path with mypyc.

Everything else about the project is in ``pyproject.toml``. The modules in ``NATIVE`` are plain,
fully typed Python; mypyc turns them into C extensions (about twice the admission throughput, see
``benchmarks/engine_drain.py``). They stay importable as Python: set ``RAYQUEUE_PURE_PYTHON=1`` when
installing to skip the compile (no C compiler, debugging), or when mypyc is missing, and the same code
runs interpreted.

mypyc names modules after folders, and ours are mapped into ``rayqueue.*`` by ``package-dir``, so the
sources are staged under ``build/mypyc-src/rayqueue/`` first; the extensions are then named
``rayqueue.quota.tree`` etc. and setuptools places them beside their ``.py`` files.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
NATIVE = [
    "quota/quantity.py",
    "quota/tree.py",
    "queue/workload.py",
    "queue/queues.py",
    "scheduler/engine/units.py",
    "scheduler/engine/decisions.py",
    "scheduler/engine/wakeup.py",
    "scheduler/engine/state.py",
    "scheduler/engine/placement.py",
    "scheduler/engine/parking.py",
    "scheduler/engine/borrowing.py",
    "scheduler/engine/events.py",
    "scheduler/engine/preemption.py",
    "scheduler/engine/cycle.py",
    "scheduler/engine/preview.py",
    "scheduler/engine/changes.py",
    "scheduler/engine/views.py",
    "scheduler/engine/capacity.py",
    "scheduler/engine/facade.py",
]
# One shared library for all of them (calls between them stay native), inside the package so that
# it imports from wherever the package does.
GROUP = "rayqueue.scheduler.native"


def native_extensions() -> list:
    if os.environ.get("RAYQUEUE_PURE_PYTHON", "") not in ("", "0"):
        print("rayqueue: RAYQUEUE_PURE_PYTHON is set: the engine stays interpreted", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("rayqueue: mypyc is not installed: the engine stays interpreted", file=sys.stderr)
        return []
    stage = ROOT / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    for folder in sorted({p.split("/")[0] for p in NATIVE}):
        shutil.copytree(ROOT / folder, stage / "rayqueue" / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "operator", "service", "demo", "schemas", "workloads", "cli"))
    # Module names are taken relative to the first base that holds the file: the staging folder.
    os.environ["MYPYPATH"] = str(stage)
    paths = [str(stage / "rayqueue" / p) for p in NATIVE]
    return mypycify(["--explicit-package-bases", "--namespace-packages", "--ignore-missing-imports", *paths],
                    opt_level="3", group_name=GROUP)


setup(ext_modules=native_extensions())
