"""Shared set-up for the operator tests: kmock API server, fake KubeRay, operator instances, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
from kmock_cluster import (
    EVENTS,
    NODES,
    POLICIES,
    PRIORITY_CLASSES,
    RAYJOBS,
    RUNTIME_ANNOTATION,
    TREES,
    Api,
    FakeApiServer,
    FakeKubeRay,
    tls_files,
    tls_server,
)

from rayqueue.scheduler.engine import EngineConfig
from rayqueue.scheduler.operator.controller import OperatorConfig
from rayqueue.scheduler.operator.handlers import Operator, WebhookConfig
from rayqueue.scheduler.operator.kube import Connection, RetryPolicy
from rayqueue.scheduler.operator.rayjobs import ADMISSION_ANNOTATION, CONDITION_ANNOTATION
from rayqueue.scheduler.workloads.rayjob import PRIORITY_LABEL, QUEUE_LABEL


def tree_manifest(teams: dict[str, tuple[str, str]], root_min: str = "8", root_max: str = "8",
                  name: str = "elasticquotatree", attributes: dict[str, dict[str, str]] | None = None
                  ) -> dict[str, Any]:
    """A two-level tree: one leaf per team (namespace = team name) with cpu (min, max)."""
    children = []
    for team, (lo, hi) in teams.items():
        child: dict[str, Any] = {"name": team, "namespaces": [team], "min": {"cpu": lo}, "max": {"cpu": hi}}
        if attributes and team in attributes:
            child["attributes"] = attributes[team]
        children.append(child)
    return {
        "apiVersion": "scheduling.sigs.k8s.io/v1beta1",
        "kind": "ElasticQuotaTree",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"root": {"name": "root", "min": {"cpu": root_min}, "max": {"cpu": root_max},
                          "children": children}},
    }


def rayjob(name: str, namespace: str, *, cpu: str = "1", workers: int = 1, priority: str | None = None,
           runtime: float | None = None, suspend: bool | None = True, labels: dict[str, str] | None = None,
           annotations: dict[str, str] | None = None, shutdown: bool | None = True) -> dict[str, Any]:
    """A RayJob in KubeRay's sample shape: head + one worker group, each pod ``cpu``; no submitter
    (HTTPMode) so that the gang is exactly (1 + workers) x cpu."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                            "annotations": dict(annotations or {})}
    if priority is not None:
        meta["labels"][PRIORITY_LABEL] = priority
    if runtime is not None:
        meta["annotations"][RUNTIME_ANNOTATION] = str(runtime)

    def pod(role: str) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": f"ray-{role}", "image": "rayproject/ray:2.46.0",
                                         "resources": {"requests": {"cpu": cpu, "memory": "1Gi"},
                                                       "limits": {"cpu": cpu, "memory": "1Gi"}}}]}}

    spec: dict[str, Any] = {
        "entrypoint": "python -c 'import ray; ray.init()'",
        "submissionMode": "HTTPMode",
        "rayClusterSpec": {
            "rayVersion": "2.46.0",
            "headGroupSpec": {"rayStartParams": {}, "template": pod("head")},
            "workerGroupSpecs": [{"groupName": "workers", "replicas": workers, "minReplicas": workers,
                                  "maxReplicas": workers, "rayStartParams": {}, "template": pod("worker")}],
        },
    }
    if suspend is not None:
        spec["suspend"] = suspend
    if shutdown is not None:
        spec["shutdownAfterJobFinishes"] = shutdown
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}


def policy_manifest(units: list[dict[str, Any]], name: str = "rayjobs") -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.alibabacloud.com/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"units": units, "whenTryNextUnits": {"policy": "LackResourceOrExceedMax"}},
    }


def node(name: str, cpu: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "status": {"allocatable": {"cpu": cpu, "memory": "256Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


@dataclass
class Env:
    server: FakeApiServer
    api: Api
    kuberay: FakeKubeRay
    operators: list[Operator] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def connection(self) -> Connection:
        return Connection(server=self.url)

    async def start_operator(self, *, identity: str = "op-1", peering: str | None = None, priority: int = 0,
                             engine: EngineConfig | None = None, webhook: WebhookConfig | None = None,
                             timeout_s: float = 2.0, wait: bool = True,
                             connection: Connection | None = None, history_url: str | None = None) -> Operator:
        config = OperatorConfig(identity=identity, peering=peering, priority=priority,
                                engine=engine or EngineConfig(backoff_base_s=0.05, backoff_max_s=0.2),
                                status_interval_s=0.2, retry_failed_after_s=0.3, leadership_poll_s=0.2,
                                announce_after_s=0.1, condition_interval_s=0.2, history_url=history_url)
        op = Operator(connection or self.connection(), config, webhook=webhook)
        op.client.retry = RetryPolicy(attempts=8, base_s=0.02, max_s=0.3, timeout_s=timeout_s)
        op.start()
        self.operators.append(op)
        if wait:
            await asyncio.wait_for(op.ready_flag.wait(), 10)
        return op

    # ---- reading the API
    def job(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.server.obj(RAYJOBS, namespace, name)
        assert body is not None, f"RayJob {namespace}/{name} not found"
        return body

    def phase(self, namespace: str, name: str) -> str:
        return str((self.job(namespace, name).get("status") or {}).get("jobDeploymentStatus", ""))

    def running(self, namespace: str, name: str) -> bool:
        return not self.job(namespace, name)["spec"].get("suspend", False)

    def admission(self, namespace: str, name: str) -> dict[str, Any] | None:
        raw = (self.job(namespace, name)["metadata"].get("annotations") or {}).get(ADMISSION_ANNOTATION)
        return json.loads(raw) if raw else None

    def condition(self, namespace: str, name: str) -> dict[str, Any] | None:
        raw = (self.job(namespace, name)["metadata"].get("annotations") or {}).get(CONDITION_ANNOTATION)
        return json.loads(raw) if raw else None

    def events(self, name: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.server.objs(EVENTS):
            if name is not None and e["involvedObject"].get("name") != name:
                continue
            if reason is not None and e["reason"] != reason:
                continue
            out.append(e)
        return out

    def unsuspend_count(self, namespace: str, name: str) -> int:
        """How many times the object went from suspend true to false in the API's history."""
        key = (kmock.resource(RAYJOBS), namespace, name)
        count = 0
        prev = True
        for version in self.server.objects[key].history:
            if version is None:
                continue
            suspend = bool(dict(version).get("spec", {}).get("suspend", False))
            if prev and not suspend:
                count += 1
            prev = suspend
        return count

    # ---- writing through the API
    async def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create(plural, body)

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create(RAYJOBS, body)


#: A hang guard, not a time budget: a busy machine is slow, and every wait ends as soon as its event happens.
EVENTUALLY_S = 120.0


async def eventually(check: Callable[[], Any], timeout: float = EVENTUALLY_S, interval: float = 0.02,
                     what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, TypeError) as exc:
            last_exc = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc}" if last_exc else ""))


@contextlib.asynccontextmanager
async def environment(runtime: float = 0.5, tls_dir: Path | None = None, **kuberay: Any) -> AsyncIterator[Env]:
    """``tls_dir``: serve HTTPS with a certificate written there (``apiserver.crt``), as a real API server."""
    async with FakeApiServer() as server, \
            (tls_server(server, *tls_files(tls_dir)) if tls_dir is not None else kmock.Server(server)):
        env = Env(server=server, api=Api(server), kuberay=FakeKubeRay(server, runtime=runtime, **kuberay))
        async with env.kuberay:
            try:
                yield env
            finally:
                for op in env.operators:
                    await op.stop()
        # Every RayJob version KubeRay saw (ours after admission patches included) fits its real CRD.
        assert env.kuberay.violations == [], env.kuberay.violations[:5]


__all__ = [
    "EVENTS", "NODES", "POLICIES", "PRIORITY_CLASSES", "QUEUE_LABEL", "RAYJOBS", "TREES", "Env", "environment",
    "eventually", "node", "policy_manifest", "rayjob", "tree_manifest",
]
