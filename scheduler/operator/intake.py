"""Intake: watch events turned into engine events (RayJobs) and engine changes (tree, policy, Nodes).

Every handler is idempotent and safe with stale or replayed events: the engine is made to agree with the
object as it is now (:meth:`Intake.sync_job`), never told "what happened".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rayqueue.queue.workload import Reason, ReasonCode, WorkloadState
from rayqueue.quota.quantity import parse_resources
from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.engine import Engine
from rayqueue.scheduler.engine.capacity import NodeCapacity, apply_node_capacity
from rayqueue.scheduler.history import store as st
from rayqueue.scheduler.operator.history import Change, outcome, submitted
from rayqueue.scheduler.operator.rayjobs import (
    CONDITION_ANNOTATION,
    MUTATED_ANNOTATION,
    JobError,
    JobState,
    job_uid,
    observe,
    preemption_record,
    workload_for,
)
from rayqueue.scheduler.operator.state import OperatorState, object_ref
from rayqueue.scheduler.presentation import tree_effect_lines
from rayqueue.scheduler.workloads.resourcepolicy import ResourcePolicyError, Units, units_from_manifest

log = logging.getLogger("rayqueue.operator")


class Intake:
    def __init__(self, state: OperatorState) -> None:
        self.s = state

    # ================================================================ watch events

    async def on_rayjob(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        body = dict(body)
        uid = job_uid(body)
        own = s.own_versions.get(uid)
        if own is not None and event_type != "DELETED" and \
                own == str((body.get("metadata") or {}).get("resourceVersion")):
            del s.own_versions[uid]
            s.jobs[uid] = body
            return  # the echo of our own write: nothing the engine does not know, no cycle to run
        async with s.lock:
            if event_type == "DELETED":
                s.own_versions.pop(uid, None)
                s.jobs.pop(uid, None)
                s.rejected.pop(uid, None)
                s.announced.pop(uid, None)
                self.deleted(uid)
                if s.engine is not None and s.engine.has_job(uid):
                    s.engine.finish(uid)
                    s.status_dirty = True
            else:
                s.jobs[uid] = body
                if s.engine is not None:
                    self.sync_job(body)
        s.wake.set()

    async def on_rayjob_list(self, bodies: list[dict[str, Any]]) -> None:
        """A fresh list of every RayJob (the watch's first, or after 410 Gone): jobs not in it are gone."""
        s = self.s
        async with s.lock:
            listed = {job_uid(b): b for b in bodies}
            for uid in [uid for uid in s.jobs if uid not in listed]:
                s.jobs.pop(uid, None)
                s.rejected.pop(uid, None)
                s.announced.pop(uid, None)
                self.deleted(uid)
                if s.engine is not None and s.engine.has_job(uid):
                    s.engine.finish(uid)
                    s.status_dirty = True
            for uid, body in listed.items():
                s.jobs[uid] = body
                if s.engine is not None:
                    self.sync_job(body)
        s.wake.set()

    async def on_tree(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        body = dict(body)
        if not self.is_our_tree(body):
            return
        async with s.lock:
            if event_type == "DELETED":
                log.warning("ElasticQuotaTree %s deleted; keeping the last good tree", body["metadata"]["name"])
                return
            self.apply_tree(body, rebuild=True)
        s.wake.set()

    async def on_policy(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        body = dict(body)
        if not self.is_our_policy(body):
            return
        async with s.lock:
            if event_type == "DELETED":
                if s.policy_body is not None and \
                        s.policy_body["metadata"].get("name") == body["metadata"].get("name"):
                    s.policy_body = None
                    if s.engine is not None:
                        s.engine.set_units(self.units())
                        self.apply_capacities()
            else:
                if s.policy_body is not None and s.policy_body.get("spec") == body.get("spec"):
                    s.policy_body = body
                    return
                try:
                    units_from_manifest(body, source=object_ref(body))
                except ResourcePolicyError as exc:
                    s.events.post(body, "ResourcePolicy", "InvalidPolicy",
                                  f"{exc}; the operator keeps using the previous policy", "Warning")
                    return
                s.policy_body = body
                if s.engine is not None:
                    s.engine.set_units(self.units())
                    self.apply_capacities()
                    s.events.post(body, "ResourcePolicy", "PolicyApplied",
                                  "units: " + "; ".join(u.description for u in s.engine.unit_views()))
        s.wake.set()

    async def on_priority_class(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        async with s.lock:
            self.set_priority_class(event_type, body)
            # Jobs rejected for an unknown class get another chance now.
            retry = [uid for uid, (_, reason) in s.rejected.items() if reason == "UnknownPriorityClass"]
            for uid in retry:
                s.rejected.pop(uid, None)
                if s.engine is not None and uid in s.jobs:
                    self.sync_job(s.jobs[uid])
        s.wake.set()

    async def on_node(self, event_type: str, body: Mapping[str, Any]) -> None:
        s = self.s
        name = body["metadata"]["name"]
        async with s.lock:
            if event_type == "DELETED":
                s.nodes.pop(name, None)
            else:
                s.nodes[name] = dict(body)
            if s.engine is not None:
                self.apply_capacities()
        s.wake.set()

    # ================================================================ keeping the engine in step

    def sync_job(self, body: Mapping[str, Any]) -> None:
        """Make the engine agree with one RayJob object (idempotent, safe with stale events)."""
        s = self.s
        engine = s.engine
        assert engine is not None and s.tree is not None
        obs = observe(body, s.tree)
        uid = obs.uid
        w = engine.job(uid)
        record_epoch = float(obs.record.get("admittedAtEpoch", 0)) if obs.record else 0.0
        if obs.state is JobState.UNMANAGED:
            if w is not None:
                engine.cancel(uid)
            return
        if obs.state is JobState.FINISHED:
            if w is not None:
                engine.finish(uid)
                s.status_dirty = True
            s.announced.pop(uid, None)
            if uid not in s.history_ended:
                s.history_ended.add(uid)
                state, message = outcome(body)
                s.record(Change(uid, state, s.clock(), message, {"state": state, "finished_at": s.clock(),
                                                                 "ray_message": message or None},
                                only_live=True))
            return
        if obs.state in (JobState.ADMITTED, JobState.STOPPING):
            if record_epoch <= s.released.get(uid, -1.0):
                return  # a stale event from an admission that has already ended
            if w is not None and w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
                return
            if w is not None:  # pending here, admitted by another instance: count it as running
                engine.cancel(uid)
            try:
                job = workload_for(body, s.tree, s.priorities, s.clock())
            except JobError as exc:
                log.warning("cannot restore %s: %s", obs.name, exc.message)
                return
            unit = obs.record.get("unit") if obs.record else None
            preemption = preemption_record(body) if obs.state is JobState.STOPPING else None
            if preemption is not None:
                # We suspended it for another job and KubeRay has not confirmed yet: resume that
                # preemption (its quota stays held for that job), never decide or count it again.
                code = str(preemption.get("reason") or "")
                reason = Reason(ReasonCode(code), "being preempted (restored)") \
                    if code in ReasonCode.__members__.values() else None
                engine.restore(job, unit, record_epoch, preempted_by=str(preemption.get("for") or "") or None,
                               preempting=True, reason=reason)
            else:
                engine.restore(job, unit, record_epoch)
            # only written if the history does not know it (admitted before the history was attached)
            s.record(submitted(job, obs.namespace, unit=str(unit) if unit else None, admitted_at=record_epoch))
            s.announced.pop(uid, None)
            s.status_dirty = True
            return
        # Pending: suspended and not holding quota (never admitted, or admitted and now Suspended).
        if w is not None and w.state in (WorkloadState.ADMITTED, WorkloadState.PREEMPTING):
            if obs.record is None or w.admitted_at is None or record_epoch + 1e-6 < w.admitted_at:
                return  # stale: an event from before our admission patch
            s.released[uid] = record_epoch
            engine.suspended(uid)
            s.status_dirty = True
            s.history_reasons.pop(uid, None)
            s.record(Change(uid, "Requeued", s.clock(), f"suspended; waits again in queue {w.queue}",
                            {"state": st.PENDING, "unit": None, "admitted_at": None, "preempted_by": None}))
            return
        if w is not None:
            return  # already queued
        rejected = s.rejected.get(uid)
        if rejected is not None and rejected[0] == obs.generation:
            return
        try:
            job = workload_for(body, s.tree, s.priorities, s.clock())
        except JobError as exc:
            self.reject(body, obs.generation, exc.reason, exc.message)
            return
        reject = engine.submit(job)
        if reject is not None:
            self.reject(body, obs.generation, reject.reason.code.value, reject.reason.message, job.queue)
            return
        s.record(submitted(job, obs.namespace))
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(MUTATED_ANNOTATION) and CONDITION_ANNOTATION not in annotations:
            s.events.post(dict(body), "RayJob", "Mutated",
                          f"the rayqueue webhook set {annotations[MUTATED_ANNOTATION]} so that the job "
                          f"waits in queue {job.queue} and frees its Ray cluster when it finishes")
        s.status_dirty = True

    def deleted(self, uid: str) -> None:
        """The RayJob is gone from the API: its history ends (unless it had finished already)."""
        s = self.s
        s.history_reasons.pop(uid, None)
        if uid not in s.history_ended:
            s.record(Change(uid, "Deleted", s.clock(), "the RayJob was deleted",
                            {"state": st.CANCELLED, "finished_at": s.clock()}, only_live=True))
        s.history_ended.discard(uid)

    def reject(self, body: Mapping[str, Any], generation: int, reason: str, message: str, queue: str = "") -> None:
        s = self.s
        uid = job_uid(body)
        s.rejected[uid] = (generation, reason)
        s.events.post(dict(body), "RayJob", "Rejected", f"{reason}: {message}", "Warning")
        s.write_condition(uid, "Rejected", reason, message, None)
        s.metrics.rejected.labels(queue, reason).inc()

    # ================================================================ the tree, the policy, the Nodes

    def apply_tree(self, body: dict[str, Any], rebuild: bool) -> None:
        s = self.s
        if s.tree_body is not None and s.tree_body.get("spec") == body.get("spec") and s.engine:
            s.tree_body = body  # our own status write or metadata change: nothing to apply
            return
        ref = object_ref(body)
        try:
            tree = QuotaTree.from_dict(body, source=ref)
            if s.engine is not None:
                s.engine.preview_tree(QuotaTree.from_dict(body, source=ref))
        except QuotaTreeError as exc:
            self.tree_invalid(body, exc.violations)
            return
        effects: list[str] = []
        s.tree_body = body
        s.tree = tree
        s.tree_error = None
        s.metrics.tree_valid.set(1)
        if s.engine is not None and rebuild:
            effects = tree_effect_lines(s.engine.set_tree(QuotaTree.from_dict(body, source=ref)))
            for uid in list(s.jobs):
                self.sync_job(s.jobs[uid])
        elif rebuild:
            self.rebuild_engine()
        s.events.post(body, "ElasticQuotaTree", "TreeApplied",
                      "; ".join(effects) if effects else "quota tree applied")
        s.write_tree_condition(body, True, "Applied", "quota tree applied" + (
            ": " + "; ".join(effects) if effects else ""))
        s.status_dirty = True

    def tree_invalid(self, body: dict[str, Any], violations: list[str]) -> None:
        s = self.s
        s.tree_error = violations
        s.metrics.tree_valid.set(0)
        keeping = (f"keeping the last good tree (generation "
                   f"{(s.tree_body or {}).get('metadata', {}).get('generation', '?')})"
                   if s.tree_body is not None else "no tree is in effect: nothing is admitted")
        message = "invalid ElasticQuotaTree: " + "; ".join(violations) + "; " + keeping
        log.warning("%s: %s", object_ref(body), message)
        s.events.post(body, "ElasticQuotaTree", "InvalidTree", message, "Warning")
        s.write_tree_condition(body, False, "Invalid", message)

    def rebuild_engine(self) -> None:
        """A new engine from the last good tree and the policy, every RayJob seen synced into it."""
        s = self.s
        if s.tree_body is None:
            s.engine = None
            return
        tree = QuotaTree.from_dict(s.tree_body, source=object_ref(s.tree_body))
        s.engine = Engine(tree, self.units(), s.config.engine, clock=s.clock)
        self.apply_capacities()
        s.released.clear()
        for ext in s.extensions:  # services first: a job preempted for one is restored as such
            ext.restore()
        for body in sorted(s.jobs.values(), key=lambda b: (b["metadata"].get("creationTimestamp") or "",
                                                            b["metadata"].get("name") or "")):
            self.sync_job(body)
        s.status_dirty = True

    def units(self) -> Units:
        s = self.s
        if s.policy_body is not None:
            try:
                return units_from_manifest(s.policy_body, source=object_ref(s.policy_body))
            except ResourcePolicyError:
                pass
        return Units.single(None)

    def apply_capacities(self) -> None:
        """Every unit's capacity from the Ready, schedulable Nodes (``scheduler.engine.capacity``'s rule), worked
        out afresh from the Nodes each time: after a policy edit the units are new objects, and a figure
        remembered from the old ones would leave them unbounded."""
        if self.s.engine is None:
            return
        apply_node_capacity(self.s.engine, self.node_capacities())

    def node_capacities(self) -> list[NodeCapacity] | None:
        """The usable Nodes' allocatable; None when the API shows no Node at all (nothing is known)."""
        if not self.s.nodes:
            return None
        out = []
        for n in self.s.nodes.values():
            if not node_usable(n):
                continue
            meta = n.get("metadata") or {}
            alloc = (n.get("status") or {}).get("allocatable") or {}
            try:
                res = parse_resources(alloc, field=f"Node {meta.get('name')} status.allocatable")
            except ValueError as exc:
                log.warning("ignoring a Node's capacity: %s", exc)
                continue
            out.append(NodeCapacity(str(meta.get("name")), dict(meta.get("labels") or {}), res))
        return out

    def set_priority_class(self, event_type: str, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.s.priorities.remove(name)
        else:
            self.s.priorities.set(name, int(body.get("value", 0)))

    def is_our_tree(self, body: Mapping[str, Any]) -> bool:
        config = self.s.config
        meta = body.get("metadata") or {}
        if config.tree_name and meta.get("name") != config.tree_name:
            return False
        return not (config.tree_namespace and meta.get("namespace") != config.tree_namespace)

    def is_our_policy(self, body: Mapping[str, Any]) -> bool:
        config = self.s.config
        meta = body.get("metadata") or {}
        if config.policy_name and meta.get("name") != config.policy_name:
            return False
        return not (config.policy_namespace and meta.get("namespace") != config.policy_namespace)


def node_usable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    for c in conditions:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return True  # no conditions reported (tests, fresh nodes): count it
