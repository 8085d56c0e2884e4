"""Every Prometheus metric rayqueue exports, one set of names for standalone and the operator.

Names follow Kueue's where Kueue has a counterpart (``kueue_pending_workloads`` ->
``rayqueue_pending_workloads``, ``kueue_cluster_queue_resource_usage`` -> ``rayqueue_quota_resource_usage``,
...), with our objects as labels: ``queue`` (a leaf of the quota tree, Kueue's ClusterQueue),
``quota_node`` (any node of the tree), ``unit`` (a ResourcePolicy unit, Kueue's ResourceFlavor).
Quantities are in the units a person counts: cores, GPUs, bytes, jobs for ``kube-queue/max-jobs``.

The gauges are computed from the engine by :meth:`Metrics.update`, which both front ends call: a
figure that falls to 0 is exported as 0 (never left at its last value, never dropped while its node
exists), so an alert on usage clears when the work ends. One registry per instance, so tests can run
several.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from rayqueue.quota.quantity import MILLI
from rayqueue.scheduler.engine import Engine

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

Labels = tuple[str, ...]


def counted(milli: int) -> float:
    """Milli-units as a person counts them: cores, GPUs, bytes, jobs."""
    return milli / MILLI


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # ---- queues and decisions (Kueue: kueue_pending_workloads, kueue_admitted_active_workloads, ...)
        self.pending = Gauge("rayqueue_pending_workloads", "Pending jobs per queue", ["queue"], registry=r)
        self.admitted_active = Gauge("rayqueue_admitted_active_workloads",
                                     "Admitted jobs holding quota per queue (preempting ones included)",
                                     ["queue"], registry=r)
        self.submitted = Counter("rayqueue_submitted_workloads_total", "Jobs accepted into a queue", ["queue"],
                                 registry=r)
        self.admitted = Counter("rayqueue_admitted_workloads_total", "Admissions", ["queue", "unit"], registry=r)
        self.evicted = Counter("rayqueue_evicted_workloads_total", "Admitted jobs preempted, by their queue",
                               ["queue", "reason"], registry=r)
        self.preempted = Counter("rayqueue_preempted_workloads_total",
                                 "Jobs preempted, by the queue of the job they made room for",
                                 ["preempting_queue", "reason"], registry=r)
        self.rejected = Counter("rayqueue_rejected_workloads_total", "Jobs refused (NeverFits, Invalid, ...)",
                                ["queue", "reason"], registry=r)
        self.finished = Counter("rayqueue_finished_workloads_total", "Jobs that ended", ["queue", "state"],
                                registry=r)
        self.wait_seconds = Histogram("rayqueue_admission_wait_time_seconds", "From submission to admission",
                                      ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.cycles = Counter("rayqueue_admission_cycles_total", "Admission cycles run", registry=r)
        self.cycle_seconds = Histogram("rayqueue_admission_cycle_duration_seconds",
                                       "One admission cycle (the operator's includes applying its decisions)",
                                       buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
                                       registry=r)
        # ---- quota tree and units (Kueue: kueue_cluster_queue_resource_usage, _nominal_quota, ...)
        self.usage = Gauge("rayqueue_quota_resource_usage", "Usage per quota tree node and resource",
                           ["quota_node", "resource"], registry=r)
        self.min = Gauge("rayqueue_quota_nominal_quota", "Guaranteed quota (min) per node and resource",
                         ["quota_node", "resource"], registry=r)
        self.max = Gauge("rayqueue_quota_max_quota", "Quota limit (max) per node and resource",
                         ["quota_node", "resource"], registry=r)
        self.borrowed = Gauge("rayqueue_quota_resource_borrowed", "Usage above min per node and resource",
                              ["quota_node", "resource"], registry=r)
        self.reserved = Gauge("rayqueue_quota_resource_reserved",
                              "Services' headroom up to maxReplicas beyond their hot reserve, per node and resource "
                              "(batch may borrow it; used + reserved above max is lent)",
                              ["quota_node", "resource"], registry=r)
        self.service_replicas = Gauge("rayqueue_service_replicas",
                                      "Replicas per service: asked by its autoscaler, granted, and its bounds",
                                      ["service", "queue", "kind"], registry=r)
        self.service_preemptions = Gauge("rayqueue_service_batch_preemptions",
                                         "Batch jobs preempted for a service's scale-ups", ["service", "queue"],
                                         registry=r)
        self.unit_usage = Gauge("rayqueue_unit_resource_usage", "Usage per capacity unit and resource",
                                ["unit", "resource"], registry=r)
        self.unit_capacity = Gauge("rayqueue_unit_resource_capacity",
                                   "Capacity per unit and resource (from its nodes, or the policy)",
                                   ["unit", "resource"], registry=r)
        # ---- the front end's health
        self.leader = Gauge("rayqueue_leader", "1 when this instance admits, 0 on standby", registry=r)
        self.tree_valid = Gauge("rayqueue_tree_valid",
                                "0 when the stored quota tree is invalid and the last good one is used", registry=r)
        # standalone: jobs by the service's own states, the time to Ray RUNNING, the Ray submit call
        self.jobs = Gauge("rayqueue_workloads", "Jobs per queue and state (Pending, Admitted, Running, Preempting)",
                          ["queue", "state"], registry=r)
        self.start_seconds = Histogram("rayqueue_submit_to_running_seconds", "From submission to Ray RUNNING",
                                       ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.release_seconds = Histogram("rayqueue_release_duration_seconds", "Duration of the Ray submit_job call",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        # operator: the Kubernetes API
        self.api_retries = Counter("rayqueue_api_retries_total", "Kubernetes API calls retried after 429/5xx/timeouts",
                                   ["verb", "why"], registry=r)
        self.conflicts = Counter("rayqueue_api_conflicts_total",
                                 "Patches refused with 409 and re-read before deciding again", registry=r)
        self.events = Counter("rayqueue_events_total", "Kubernetes events posted", ["reason"], registry=r)
        self.history_errors = Counter("rayqueue_history_write_errors_total",
                                      "Batches of history events the operator could not write to its database",
                                      registry=r)
        # label sets each gauge exported last time: what is gone is set to 0 or removed, never left stale
        self._exported: dict[str, set[Labels]] = {}

    def update(self, engine: Engine) -> None:
        """The gauges from the engine's views now (quota, units, queues)."""
        guaranteed = engine.tree_view().guaranteed
        usage: dict[Labels, float] = {}
        mins: dict[Labels, float] = {}
        maxes: dict[Labels, float] = {}
        borrowed: dict[Labels, float] = {}
        before = self._exported.get("usage", set())
        shown: dict[str, set[str]] = {}
        for labels in before:
            shown.setdefault(labels[0], set()).add(labels[1])
        for node in engine.node_views():
            used = node.used
            lent = node.borrowed
            # Every resource the node limits, uses, or showed before (now 0): a gauge goes back to 0.
            for res in set(used) | set(node.min) | set(node.max) | shown.get(node.name, set()):
                usage[(node.name, res)] = counted(used.get(res, 0))
            for res, v in node.min.items():
                mins[(node.name, res)] = counted(v)
            for res, v in node.max.items():
                maxes[(node.name, res)] = counted(v)
            for res in guaranteed:
                borrowed[(node.name, res)] = counted(lent.get(res, 0))
        self._publish("usage", self.usage, usage)
        self._publish("min", self.min, mins)
        self._publish("max", self.max, maxes)
        self._publish("borrowed", self.borrowed, borrowed)
        reserved: dict[Labels, float] = {}
        replicas: dict[Labels, float] = {}
        service_preemptions: dict[Labels, float] = {}
        services = engine.services()
        if services:
            for view in engine.node_views():
                for res, v in view.reserved.items():
                    reserved[(view.name, res)] = counted(v)
            for s in services:
                for kind, n in (("asked", s.replicas), ("granted", s.granted), ("min", s.min_replicas),
                                ("max", s.max_replicas)):
                    replicas[(s.name, s.queue, kind)] = float(n)
                service_preemptions[(s.name, s.queue)] = float(s.preemptions)
        self._publish("reserved", self.reserved, reserved)
        self._publish("service_replicas", self.service_replicas, replicas)
        self._publish("service_preemptions", self.service_preemptions, service_preemptions)
        unit_usage: dict[Labels, float] = {}
        unit_capacity: dict[Labels, float] = {}
        before_units = self._exported.get("unit_usage", set())
        for unit in engine.unit_views():
            used = unit.used
            for res in set(used) | set(unit.capacity or {}) | {r for (u, r) in before_units if u == unit.name}:
                unit_usage[(unit.name, res)] = counted(used.get(res, 0))
            for res, v in (unit.capacity or {}).items():
                unit_capacity[(unit.name, res)] = counted(v)
        self._publish("unit_usage", self.unit_usage, unit_usage)
        self._publish("unit_capacity", self.unit_capacity, unit_capacity)
        pending: dict[Labels, float] = {}
        active: dict[Labels, float] = {}
        for q in engine.queue_views():
            pending[(q.name,)] = float(len(q.pending))
            active[(q.name,)] = float(len(q.admitted))  # preempting jobs still hold their quota
        self._publish("pending", self.pending, pending)
        self._publish("admitted_active", self.admitted_active, active)

    def count_preemption(self, engine: Engine, victim_queue: str, preemptor: str, reason: str) -> None:
        """One job preempted: counted under its own queue (evicted) and under the queue of the job or
        service it made room for (preempted)."""
        self.evicted.labels(queue=victim_queue, reason=reason).inc()
        job = engine.job(preemptor)
        service = engine.service(preemptor) if job is None else None
        by_queue = job.queue if job is not None else service.queue if service is not None else ""
        self.preempted.labels(preempting_queue=by_queue, reason=reason).inc()

    def publish_jobs(self, counts: Mapping[Labels, float]) -> None:
        """Standalone: jobs per (queue, state) as its store counts them."""
        self._publish("jobs", self.jobs, dict(counts))

    def _publish(self, key: str, gauge: Gauge, values: dict[Labels, float]) -> None:
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        for labels in self._exported.get(key, set()) - values.keys():
            gauge.remove(*labels)  # its node, unit or queue is gone from the tree or the policy
        self._exported[key] = set(values)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
