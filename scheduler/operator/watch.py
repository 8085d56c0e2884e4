"""The operator's own RayJob watch: list, then watch from the list's ``resourceVersion``, for ever.

RayJobs are the operator's hot path (several watch events per job: created, our condition, our
admission, KubeRay's status changes). kopf's per-event machinery cost more CPU than everything else the
operator does per admission, so RayJobs are watched here, decoded with orjson and handed straight to the
controller; kopf keeps the webhooks, peering and the low-volume kinds (tree, policy, PriorityClasses, Nodes).

The contract, as client-go's reflector keeps it:
- a stream that ends (the server's ``timeoutSeconds``, a dropped connection, an error) is opened again
  from the last ``resourceVersion`` seen, so nothing is missed and nothing replayed;
- ``410 Gone`` (that version is older than the server keeps) lists again and hands the whole list over
  (``on_list``), which also tells the controller which jobs went away meanwhile;
- errors back off (capped, with jitter) and never end the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from rayqueue.scheduler.operator.kube import RAYJOBS, ApiError, Gone, KubeClient

log = logging.getLogger("rayqueue.operator")

OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
OnList = Callable[[list[dict[str, Any]]], Awaitable[None]]


class RayJobWatch:
    def __init__(self, client: KubeClient, on_event: OnEvent, on_list: OnList, *,
                 inactivity_s: float = 70.0, server_timeout_s: int = 300,
                 backoff_s: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)) -> None:
        self.client = client
        self.on_event = on_event
        self.on_list = on_list
        self.inactivity_s = inactivity_s
        self.server_timeout_s = server_timeout_s
        self.backoff_s = backoff_s
        self.resource_version: str | None = None  # None: list first
        self.lists = 0  # lists made (the first, then one per 410 Gone)
        self.restarts = 0  # streams opened again from a resourceVersion

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    items, version = await self.client.list_versioned(RAYJOBS)
                    self.lists += 1
                    await self.on_list(items)
                    self.resource_version = version
                await self._stream()
                failures = 0  # a stream the server ended: open it again from where it stopped
            except asyncio.CancelledError:
                raise
            except Gone as exc:
                log.info("RayJob watch: %s; listing again", exc)
                self.resource_version = None
            except TimeoutError:
                # silent for ``inactivity_s`` (a quiet cluster; a server sends bookmarks about once a
                # minute): open it again from where it was, at once
                log.debug("RayJob watch timed out (silent for %.0fs?); reopening from resourceVersion %s",
                          self.inactivity_s, self.resource_version)
                await asyncio.sleep(self.backoff_s[0])
            except (ApiError, aiohttp.ClientError, ValueError, OSError) as exc:
                delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)] * (0.5 + random.random() / 2)
                failures += 1
                log.warning("RayJob watch interrupted (%s); resuming from resourceVersion %s in %.1fs",
                            exc or type(exc).__name__, self.resource_version, delay)
                await asyncio.sleep(delay)
            self.restarts += 1

    async def _stream(self) -> None:
        assert self.resource_version is not None
        async for event in self.client.watch(RAYJOBS, self.resource_version, timeout_s=self.server_timeout_s,
                                             inactivity_s=self.inactivity_s):
            obj = event.get("object") or {}
            version = (obj.get("metadata") or {}).get("resourceVersion")
            kind = str(event.get("type") or "")
            if kind != "BOOKMARK":
                obj.setdefault("apiVersion", RAYJOBS.api_version)
                obj.setdefault("kind", RAYJOBS.kind)
                await self.on_event(kind, obj)
            if version:
                # after the handler: a stream cut while handling resumes with this event again (idempotent)
                self.resource_version = str(version)
