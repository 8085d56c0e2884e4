"""Kubernetes Events, posted in the background through :class:`~rayqueue.scheduler.operator.kube.KubeClient`
so that a cycle never waits on them, and folded into event series as Kubernetes' event correlator does.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from rayqueue.scheduler.operator.kube import EVENTS, KubeClient, NotFound

log = logging.getLogger("rayqueue.operator")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventPoster:
    """Posts Kubernetes Events in the background so that a cycle never waits on them.

    The same event again (same object, reason, type and message) is not a new Event: as Kubernetes'
    event correlator does, the Event already posted is patched with ``count + 1`` and a new
    ``lastTimestamp`` (an event series), so a job requeued ten times shows one ``Queued`` line with
    ``x10``, not ten. The series are remembered for the last ``series_limit`` distinct events.
    """

    def __init__(self, client: KubeClient, component: str = "rayqueue", instance: str = "rayqueue-operator",
                 on_posted: Callable[[str], None] | None = None, series_limit: int = 4096) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.on_posted = on_posted
        self.posted = 0  # Events created
        self.repeated = 0  # Events patched as a series (count + 1)
        self.failed = 0
        self.series_limit = series_limit
        # (namespace, uid, reason, type, message) -> [Event name, count]; insertion order = age
        self._series: dict[tuple[str, str, str, str, str], list[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, workers: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []

    def post(self, body: dict[str, Any], kind: str, reason: str, message: str, type_: str = "Normal") -> None:
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        ts = now_iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind") or kind,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        self.queue.put_nowait(event)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is posted (tests, shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.queue.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    @staticmethod
    def _key(event: dict[str, Any]) -> tuple[str, str, str, str, str]:
        obj = event["involvedObject"]
        return (event["metadata"]["namespace"], str(obj.get("uid") or obj.get("name")), event["reason"],
                event["type"], event["message"])

    async def _send(self, event: dict[str, Any]) -> None:
        key = self._key(event)
        namespace = event["metadata"]["namespace"]
        series = self._series.get(key)
        if series is not None:
            name, count = series
            try:
                await self.client.patch(EVENTS, namespace, name,
                                        {"count": count + 1, "lastTimestamp": event["lastTimestamp"]})
                series[1] = count + 1
                self.repeated += 1
                return
            except NotFound:  # the Event expired (an hour by default): start a new series
                self._series.pop(key, None)
        created = await self.client.create(EVENTS, namespace, event)
        self._series[key] = [(created.get("metadata") or {}).get("name"), 1]
        if len(self._series) > self.series_limit:
            del self._series[next(iter(self._series))]
        self.posted += 1

    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self._send(event)
                if self.on_posted is not None:
                    self.on_posted(event["reason"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # events are best effort: never block or crash the operator
                self.failed += 1
                log.warning("could not post event %s on %s: %s", event["reason"],
                            event["involvedObject"].get("name"), exc)
