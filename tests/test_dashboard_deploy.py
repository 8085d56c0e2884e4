"""deploy/'s Grafana dashboard and Prometheus alert rules name only metrics rayqueue exports (one set of
names for both front ends, scheduler/metrics.py), so that a renamed metric cannot silently blank a panel
or an alert."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from rayqueue.scheduler.metrics import Metrics
from rayqueue.scheduler.operator.metrics import OperatorMetrics
from rayqueue.scheduler.service.metrics import ServiceMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NAME = re.compile(r"\brayqueue_[a-z_]+\b")


def exported() -> set[str]:
    """Every sample name the shared registry can produce (counters' _total, histograms' _bucket ...)."""
    names: set[str] = set()
    for metric in Metrics().registry.collect():
        base = metric.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum", f"{base}_created"}
    return names


def test_both_front_ends_export_the_one_shared_set() -> None:
    assert OperatorMetrics is Metrics and issubclass(ServiceMetrics, Metrics)


def test_grafana_and_alerts_use_only_exported_metric_names() -> None:
    known = exported()
    board = json.loads((DEPLOY / "grafana" / "rayqueue.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    rules = [r for group in yaml.safe_load((DEPLOY / "06-alerts.yaml").read_text())["spec"]["groups"]
             for r in group["rules"]]
    exprs += [r["expr"] for r in rules]
    used = {name for e in exprs for name in NAME.findall(e)}
    assert used, "no metric found in deploy/"
    assert used <= known, f"unknown metrics in deploy/: {sorted(used - known)}"
    assert {r["alert"] for r in rules} >= {"RayqueueQueueStalled", "RayqueuePreemptionStorm", "RayqueueNoLeader"}
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
