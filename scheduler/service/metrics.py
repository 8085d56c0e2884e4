"""Prometheus metrics of the standalone service (one registry per service, so tests can run several)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rayqueue.quota.quantity import MAX_JOBS, MILLI

if TYPE_CHECKING:
    from rayqueue.scheduler.service.core import Service

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def _units(resource: str, milli: int) -> float:
    """Quantities as a person counts them: cores, GPUs, bytes, jobs."""
    return milli / MILLI


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs = Gauge("rayqueue_jobs", "Jobs per queue and state (Pending, Admitted, Running, Preempting)",
                          ["queue", "state"], registry=r)
        self.submitted = Counter("rayqueue_jobs_submitted_total", "Jobs accepted", ["queue"], registry=r)
        self.admitted = Counter("rayqueue_admissions_total", "Admissions", ["queue", "unit"], registry=r)
        self.finished = Counter("rayqueue_jobs_finished_total", "Jobs that ended", ["queue", "state"], registry=r)
        self.preemptions = Counter("rayqueue_preemptions_total", "Preemptions by reason", ["queue", "reason"],
                                   registry=r)
        self.wait_seconds = Histogram("rayqueue_admission_wait_seconds", "Submission to admission",
                                      ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.start_seconds = Histogram("rayqueue_submit_to_running_seconds", "Submission to Ray RUNNING",
                                       ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.release_seconds = Histogram("rayqueue_release_seconds", "Duration of the Ray submit_job call",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                         registry=r)
        self.cycle_seconds = Histogram("rayqueue_admission_cycle_seconds", "Duration of one admission cycle",
                                       buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
                                       registry=r)
        self.usage = Gauge("rayqueue_quota_usage", "Quota usage per tree node and resource",
                           ["node", "resource"], registry=r)
        self.min = Gauge("rayqueue_quota_min", "Guaranteed quota per node and resource", ["node", "resource"],
                         registry=r)
        self.max = Gauge("rayqueue_quota_max", "Quota limit per node and resource", ["node", "resource"],
                         registry=r)
        self.borrowed = Gauge("rayqueue_quota_borrowed", "Usage above min per node and resource",
                              ["node", "resource"], registry=r)
        self.unit_usage = Gauge("rayqueue_unit_usage", "Usage per capacity unit and resource",
                                ["unit", "resource"], registry=r)
        self.unit_capacity = Gauge("rayqueue_unit_capacity", "Capacity per unit and resource (from Ray's nodes)",
                                   ["unit", "resource"], registry=r)

    def refresh(self, service: Service) -> None:
        from rayqueue.scheduler.service import store as st

        engine = service.engine
        for gauge in (self.jobs, self.usage, self.min, self.max, self.borrowed, self.unit_usage, self.unit_capacity):
            gauge.clear()
        counts: dict[tuple[str, str], int] = {}
        for row in service.store.jobs(st.LIVE_STATES):
            counts[(row.queue, row.state)] = counts.get((row.queue, row.state), 0) + 1
        for q in engine.tree.leaves:  # one queue per leaf
            for state in st.LIVE_STATES:
                self.jobs.labels(queue=q, state=state).set(counts.get((q, state), 0))
        tree = engine.tree
        for node in tree:
            for res in set(node.usage) | set(node.min) | set(node.max):
                self.usage.labels(node=node.name, resource=res).set(_units(res, node.usage.get(res, 0)))
            for res, v in node.min.items():
                self.min.labels(node=node.name, resource=res).set(_units(res, v))
            for res, v in node.max.items():
                self.max.labels(node=node.name, resource=res).set(_units(res, v))
            for res in tree.guaranteed:
                self.borrowed.labels(node=node.name, resource=res).set(_units(res, tree.borrowed(node).get(res, 0)))
        for unit in engine.units.units:
            for res, v in unit.usage.items():
                if res != MAX_JOBS:
                    self.unit_usage.labels(unit=unit.name, resource=res).set(_units(res, v))
            for res, v in (unit.capacity or {}).items():
                self.unit_capacity.labels(unit=unit.name, resource=res).set(_units(res, v))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
