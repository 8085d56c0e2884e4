"""Prometheus metrics of the operator (one registry per operator instance, so tests can run two)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("rayqueue_operator_decisions_total", "Decisions applied to RayJobs",
                                 ["kind", "queue"], registry=r)
        self.cycles = Counter("rayqueue_operator_cycles_total", "Admission cycles run", registry=r)
        self.cycle_seconds = Histogram("rayqueue_operator_cycle_seconds",
                                       "Time of one admission cycle including applying its decisions",
                                       registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.api_retries = Counter("rayqueue_operator_api_retries_total",
                                   "Kubernetes API calls retried after 429/5xx/timeouts",
                                   ["verb", "why"], registry=r)
        self.conflicts = Counter("rayqueue_operator_conflicts_total",
                                 "Patches refused with 409 and re-read before deciding again", registry=r)
        self.pending = Gauge("rayqueue_operator_pending_jobs", "Pending RayJobs per queue", ["queue"], registry=r)
        self.admitted = Gauge("rayqueue_operator_admitted_jobs", "Admitted RayJobs per queue", ["queue"],
                              registry=r)
        self.usage = Gauge("rayqueue_operator_quota_used", "Usage per quota node and resource (base units)",
                           ["node", "resource"], registry=r)
        self.leader = Gauge("rayqueue_operator_leader", "1 when this instance admits, 0 on standby",
                            registry=r)
        self.tree_valid = Gauge("rayqueue_operator_tree_valid",
                                "0 when the stored ElasticQuotaTree is invalid and the last good one is used",
                                registry=r)
        self.wait_seconds = Histogram("rayqueue_operator_time_to_admission_seconds",
                                      "From RayJob creation to admission", ["queue"], registry=r,
                                      buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400))
        self.events = Counter("rayqueue_operator_events_total", "Kubernetes events posted", ["reason"],
                              registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
