"""Process-wide settings for a long-running rayqueue process (service, operator, simulator).

The engine keeps every pending and running job in memory for a long time (100,000s of objects with a
large backlog) and makes many short-lived objects per decision. With CPython's default thresholds a
young-generation collection runs every 700 allocations and the full collections that follow walk the
whole backlog again and again while finding almost nothing to free: about a fifth of admission time
with 10,000 to 100,000 pending (``benchmarks/engine_drain.py --default-gc`` shows it). Collections
still run, just less often; the memory they reclaim is the same.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect the young generation every 50,000 allocations instead of 700 (call once at start)."""
    gc.set_threshold(*GC_THRESHOLDS)
