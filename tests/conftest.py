"""Refuse to test a compiled engine older than its sources (``make native`` compiles it again)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    # The modules' code lives in one shared library (setup.py's GROUP); their own .so files are shims.
    library = sorted(ROOT.glob("scheduler/native__mypyc.*.so"))
    if not library:
        return  # interpreted
    compiled_at = library[0].stat().st_mtime
    stale = []
    for so in sorted([*ROOT.glob("*/*.cpython-*.so"), *ROOT.glob("*/*/*.cpython-*.so")]):
        source = so.with_name(so.name.split(".")[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled_at:
            stale.append(str(source.relative_to(ROOT)))
    if stale:
        raise pytest.UsageError(
            f"{', '.join(stale)} changed after the engine was compiled: these tests would run the old code. "
            "Run `make native` (or delete the *.so files to test the interpreted engine)."
        )
