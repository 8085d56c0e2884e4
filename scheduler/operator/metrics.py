"""The operator's metrics: the shared set (``scheduler.metrics``), one registry per operator instance."""

from __future__ import annotations

from rayqueue.scheduler.metrics import Metrics

OperatorMetrics = Metrics

__all__ = ["OperatorMetrics"]
