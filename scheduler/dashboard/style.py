"""The one stylesheet of rayqueue's HTML (the dashboard's pages, the simulator's report); no dependency,
so that the base install's report can use it."""

from __future__ import annotations

from importlib.resources import files


def css() -> str:
    return (files("rayqueue.scheduler.dashboard") / "static" / "dashboard.css").read_text(encoding="utf-8")


def header(title: str) -> str:
    """The dashboard's top bar, for a page made outside it (a report)."""
    from html import escape

    return f'<header class="top"><span class="brand">rayqueue</span><span>{escape(title)}</span></header>'
