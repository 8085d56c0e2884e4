"""Recovery: rebuilding the engine from the API (start, restart, a leader change) and leadership.

State is derived from the objects, so a restart or a leader change rebuilds it from a fresh list
(:meth:`Recovery.resync`): a RayJob is admitted when it carries our admission record and is not
suspended; a job being stopped for another resumes that preemption (``Intake.sync_job``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.scheduler.operator.intake import Intake
from rayqueue.scheduler.operator.kube import NODES, POLICIES, PRIORITY_CLASSES, RAYJOBS, TREES, NotFound
from rayqueue.scheduler.operator.rayjobs import job_uid
from rayqueue.scheduler.operator.state import PEERINGS, OperatorState

log = logging.getLogger("rayqueue.operator")


class Recovery:
    def __init__(self, state: OperatorState, intake: Intake) -> None:
        self.s = state
        self.intake = intake

    async def resync(self) -> None:
        """Forget everything and rebuild the engine from a fresh list of every object we read."""
        s, intake = self.s, self.intake
        trees = await s.client.list(TREES, s.config.tree_namespace)
        policies = await s.client.list(POLICIES, s.config.policy_namespace)
        classes = await s.client.list(PRIORITY_CLASSES)
        nodes = await s.client.list(NODES)
        jobs = await s.client.list(RAYJOBS)
        for ext in s.extensions:
            await ext.relist()
        async with s.cycle_lock, s.lock:
            s.engine = None
            s.tree = s.tree_body = None
            s.policy_body = None
            s.jobs.clear()
            s.rejected.clear()
            s.announced.clear()
            s.pending_writes.clear()
            s.priorities = PriorityClasses()
            for pc in classes:
                intake.set_priority_class("ADDED", pc)
            s.nodes = {n["metadata"]["name"]: n for n in nodes}
            for p in policies:
                if intake.is_our_policy(p):
                    s.policy_body = p
            for j in jobs:
                s.jobs[job_uid(j)] = j
            for ext in s.extensions:
                ext.reset()
            for t in trees:
                if intake.is_our_tree(t):
                    intake.apply_tree(t, rebuild=False)
            intake.rebuild_engine()
            s.synced = True
        log.info("rebuilt from the API: %d RayJobs, tree %s, policy %s, %d nodes", len(jobs),
                 "valid" if s.tree is not None else "missing", "set" if s.policy_body else "none",
                 len(nodes))
        s.wake.set()

    # ================================================================ leadership (kopf peering)

    def is_leader(self, peering: Mapping[str, Any] | None) -> bool:
        """Like kopf: we admit unless a live peer has a higher priority or the same one."""
        if peering is None:
            return True
        config = self.s.config
        now = datetime.datetime.now(datetime.UTC)
        for identity, info in (peering.get("status") or {}).items():
            if identity == config.identity or not isinstance(info, Mapping):
                continue
            try:
                lastseen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
            except ValueError:
                continue
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=datetime.UTC)
            alive = lastseen + datetime.timedelta(seconds=float(info.get("lifetime", 60))) > now
            if alive and int(info.get("priority", 0)) >= config.priority:
                return False
        return True

    async def leadership(self) -> None:
        s = self.s
        config = s.config
        assert config.peering is not None
        # A newcomer waits a few polls before it claims leadership, so that a lower-priority leader
        # (polling as often) has seen it and stepped down first.
        await asyncio.sleep(3 * config.leadership_poll_s)
        while True:
            try:
                peering = await s.client.get(PEERINGS, None, config.peering)
            except NotFound:
                peering = None
            except Exception as exc:
                log.warning("cannot read the peering object: %s", exc)
                await asyncio.sleep(config.leadership_poll_s)
                continue
            leader = self.is_leader(peering)
            if leader and not s.leader:
                log.info("%s: this instance now admits (no live peer with a higher priority)", config.identity)
                try:
                    await self.resync()
                except Exception as exc:
                    log.warning("resync failed, retrying: %s", exc)
                    await asyncio.sleep(config.leadership_poll_s)
                    continue
                s.leader = True
                s.wake.set()
            elif not leader and s.leader:
                log.info("%s: standing by (a peer with a higher priority admits)", config.identity)
                s.leader = False
                s.synced = False
            s.metrics.leader.set(1 if s.leader else 0)
            await asyncio.sleep(config.leadership_poll_s)
