"""Words for people, shared by the front ends (quota CLI, service, operator): the engine returns data.

Not a front end itself: it imports the engine's data types and the quota layer's formatting, nothing
that does I/O, so every front end may use it without depending on another.
"""

from __future__ import annotations

from collections.abc import Iterable

from rayqueue.quota.quantity import describe, format_quantity
from rayqueue.scheduler.engine.preview import NewBorrowing, OverNewMax, PendingNeverFits, TreeDiff, TreeEffect


def tree_effect_lines(effects: Iterable[TreeEffect]) -> list[str]:
    """One line per effect of a new tree: the differences first ("no change to the tree" if none),
    then the warnings, each starting with "!"."""
    effects = list(effects)
    lines = [e.text for e in effects if isinstance(e, TreeDiff)] or ["no change to the tree"]
    for e in effects:
        if isinstance(e, OverNewMax):
            lines.append(
                f"! {e.path} uses {format_quantity(e.used, e.resource)} {e.resource}, over its new max "
                f"{format_quantity(e.limit, e.resource)}: running jobs keep running, nothing more is admitted there"
            )
        elif isinstance(e, NewBorrowing):
            lines.append(f"! {e.path} would be borrowing {describe(e.borrowed)} (reclaimable)")
        elif isinstance(e, PendingNeverFits):
            lines.append(f"! pending job {e.job} would never fit: {e.violation.sentence()}")
    return lines
