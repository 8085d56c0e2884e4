"""The units' capacity from Ray's alive nodes: read at start, then every ``capacity_interval_s``.

Ray's nodes are the nodes: each unit gets what the nodes matching its selector hold, by the rule both
front ends share (``scheduler.engine.capacity``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rayqueue.scheduler.engine.capacity import apply_node_capacity
from rayqueue.scheduler.service.raycluster import node_capacities
from rayqueue.scheduler.service.state import ServiceState

log = logging.getLogger("rayqueue.service")


class RayCapacity:
    def __init__(
        self,
        s: ServiceState,
        nodes: Callable[[str], list[dict[str, Any]]],
        cycle: Callable[[], Awaitable[None]],
    ) -> None:
        self.s = s
        self.nodes = nodes  # Ray's alive nodes (resources, labels) at an address
        self._cycle = cycle

    def apply(self, nodes: list[dict[str, Any]]) -> bool:
        """Each unit's capacity from ``nodes`` (call it holding the engine lock). True if any unit changed."""
        engine = self.s.engine
        changed = apply_node_capacity(engine, node_capacities(nodes))
        if changed:
            described = {u.name: u.description for u in engine.unit_views()}
            for name in changed:
                log.info("unit %s capacity: %s", name, described[name])
        return bool(changed)

    async def loop(self) -> None:
        s = self.s
        while True:
            await asyncio.sleep(s.config.capacity_interval_s)
            try:
                nodes = await asyncio.to_thread(self.nodes, s.ray.address)
            except Exception:
                continue
            if not nodes:
                continue
            async with s.engine_lock:
                if self.apply(nodes):
                    await self._cycle()
