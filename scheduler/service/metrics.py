"""The standalone service's metrics: the shared set (``scheduler.metrics``), one registry per service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayqueue.scheduler.metrics import Labels, Metrics

if TYPE_CHECKING:
    from rayqueue.scheduler.service.core import Service


class ServiceMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.leader.set(1)  # a service always admits
        self.tree_valid.set(1)  # an invalid tree is refused before it is stored

    def refresh(self, service: Service) -> None:
        from rayqueue.scheduler.service import store as st

        counts: dict[Labels, float] = {}
        for row in service.store.jobs(st.LIVE_STATES):
            counts[(row.queue, row.state)] = counts.get((row.queue, row.state), 0) + 1
        for q in service.engine.tree_view().leaves:  # one queue per leaf
            for state in st.LIVE_STATES:
                counts.setdefault((q, state), 0)
        self.publish_jobs(counts)
        self.update(service.engine)
