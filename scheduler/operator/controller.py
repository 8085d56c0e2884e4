"""The operator's core, as one small facade over its parts: what kopf handlers and tests call.

The work is split by responsibility, as the engine's is, all parts sharing one ``OperatorState``:

- ``watch``: the RayJob list+watch (kopf watches the other kinds);
- ``intake``: watch events (RayJobs, the tree, the ResourcePolicy, PriorityClasses, Nodes) into the engine;
- ``release``: the scheduling loop; admission and preemption patches, events, conditions, tree status;
- ``recovery``: the rebuild from the API at start and on a leader change, and leadership itself;
- ``queries``: what the status, gauges and summary read (engine views only).

The engine does no I/O; these parts do all of it, through :class:`KubeClient` (retries) and
:class:`EventPoster` (events in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.decisions import Decision
from rayqueue.scheduler.operator.events import EventPoster
from rayqueue.scheduler.operator.history import HistoryWriter
from rayqueue.scheduler.operator.intake import Intake
from rayqueue.scheduler.operator.kube import KubeClient
from rayqueue.scheduler.operator.metrics import OperatorMetrics
from rayqueue.scheduler.operator.queries import Queries, merge_patch, tree_status
from rayqueue.scheduler.operator.recovery import Recovery
from rayqueue.scheduler.operator.release import Release
from rayqueue.scheduler.operator.services import Services
from rayqueue.scheduler.operator.state import OperatorConfig, OperatorState, _now
from rayqueue.scheduler.operator.watch import RayJobWatch

__all__ = ["Controller", "OperatorConfig", "merge_patch", "tree_status"]


class Controller:
    def __init__(self, client: KubeClient, config: OperatorConfig | None = None,
                 metrics: OperatorMetrics | None = None, clock: Callable[[], float] = _now) -> None:
        self.state = OperatorState(client, config or OperatorConfig(), metrics or OperatorMetrics(), clock)
        self.intake = Intake(self.state)
        self.queries = Queries(self.state)
        self.release = Release(self.state, self.intake, self.queries)
        self.recovery = Recovery(self.state, self.intake)
        self.services = Services(self.state, self.intake)
        self.state.extensions.append(self.services)
        # RayJobs come from our own watch, not kopf's (``watch.py``); through ``self.on_rayjob`` looked up
        # at each event, so that a wrapper set on the instance (the benchmark's) sees every event.
        self.watch = RayJobWatch(self.state.client, lambda kind, body: self.on_rayjob(kind, body),
                                 self.intake.on_rayjob_list, inactivity_s=self.state.config.watch_inactivity_s)
        self._tasks: list[asyncio.Task[None]] = []

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Rebuild from the API, then run the loops (scheduling, status writer, leadership)."""
        s = self.state
        await s.client.start()
        s.events.start()
        if s.leader:
            await self.recovery.resync()
        self._tasks = [
            asyncio.create_task(self.release.loop(), name="rayqueue scheduling loop"),
            asyncio.create_task(self.release.writer(), name="rayqueue condition writer"),
            asyncio.create_task(self.watch.run(), name="rayqueue RayJob watch"),
        ]
        if s.config.peering is not None:
            self._tasks.append(asyncio.create_task(self.recovery.leadership(), name="rayqueue leadership"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await self.state.events.drain(timeout=2.0)
        await self.state.events.stop()
        await self.state.client.close()
        if self.state.history is not None:
            await asyncio.to_thread(self.state.history.close)

    async def resync(self) -> None:
        await self.recovery.resync()

    async def cycle(self) -> list[Decision]:
        return await self.release.cycle()

    # ================================================================ watch events (from kopf)

    async def on_rayjob(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.intake.on_rayjob(event_type, body)

    async def on_tree(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.intake.on_tree(event_type, body)

    async def on_policy(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.intake.on_policy(event_type, body)

    async def on_priority_class(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.intake.on_priority_class(event_type, body)

    async def on_node(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.intake.on_node(event_type, body)

    async def on_rayservice(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.services.on_rayservice(event_type, body)

    async def on_raycluster(self, event_type: str, body: Mapping[str, Any]) -> None:
        await self.services.on_raycluster(event_type, body)

    # ================================================================ queries

    def is_leader(self, peering: Mapping[str, Any] | None) -> bool:
        return self.recovery.is_leader(peering)

    def summary(self) -> dict[str, Any]:
        return self.queries.summary()

    def tree_status(self) -> dict[str, Any]:
        return self.queries.tree_status()

    @property
    def engine(self) -> Engine | None:
        return self.state.engine

    @property
    def tree(self) -> QuotaTree | None:
        """The last good tree (parsed; no usage): the webhook maps namespaces with it."""
        return self.state.tree

    @property
    def lock(self) -> asyncio.Lock:
        """The engine's lock: the dashboard reads the engine between two decisions."""
        return self.state.lock

    @property
    def clock(self) -> Callable[[], float]:
        return self.state.clock

    @property
    def history(self) -> HistoryWriter | None:
        """The SQL history this operator writes (``--history-db``), if any."""
        return self.state.history

    @property
    def leader(self) -> bool:
        return self.state.leader

    @property
    def synced(self) -> bool:
        return self.state.synced

    @property
    def cycles(self) -> int:
        return self.state.cycles

    @property
    def metrics(self) -> OperatorMetrics:
        return self.state.metrics

    @property
    def events(self) -> EventPoster:
        return self.state.events

    @property
    def client(self) -> KubeClient:
        return self.state.client

    @property
    def config(self) -> OperatorConfig:
        return self.state.config
