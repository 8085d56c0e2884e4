"""kopf wiring: watch handlers that feed the controller, admission webhooks, and how to run it all.

RayJobs, the hot path, are watched by the controller itself (``watch.py``); kopf watches the tree, the
ResourcePolicy, PriorityClasses and Nodes, serves the webhooks and runs peering.

Every watch handler is a raw ``on.event`` handler: kopf neither patches our objects nor keeps progress
annotations on them; the controller's state is derived from the objects themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from rayqueue.quota.tree import QuotaTree, QuotaTreeError
from rayqueue.scheduler.operator.controller import Controller, OperatorConfig
from rayqueue.scheduler.operator.kube import Connection, KubeClient
from rayqueue.scheduler.operator.metrics import OperatorMetrics
from rayqueue.scheduler.operator.rayjobs import MUTATED_ANNOTATION, is_managed, webhook_patch
from rayqueue.scheduler.operator.services import serving_suspended
from rayqueue.scheduler.workloads.resourcepolicy import ResourcePolicyError, units_from_manifest

log = logging.getLogger("rayqueue.operator")


@dataclass
class WebhookConfig:
    port: int = 9443
    addr: str | None = None
    host: str | None = None  # the name in the certificate, e.g. rayqueue-webhook.rayqueue-system.svc
    certfile: str | None = None
    pkeyfile: str | None = None
    insecure: bool = False  # plain HTTP (tests only; the API server requires TLS)


def _event_type(event: Mapping[str, Any]) -> str:
    return str(event.get("type") or "ADDED")  # None: kopf's initial listing


def validate_tree(body: Mapping[str, Any]) -> list[str]:
    """The validator's messages for an ElasticQuotaTree (empty when it is valid)."""
    try:
        QuotaTree.from_dict(body, source=_ref(body))
    except QuotaTreeError as exc:
        return list(exc.violations)
    return []


def validate_policy(body: Mapping[str, Any]) -> list[str]:
    try:
        units_from_manifest(body, source=_ref(body))
    except ResourcePolicyError as exc:
        return list(exc.violations)
    return []


def _ref(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{body.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name')}"


def build_registry(controller: Controller, connection: Connection, webhooks: bool = False) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf logs in at start and again whenever the API answers 401: load the credentials again
        # (a rotated service-account token) instead of handing back the refused ones.
        await connection.reload()
        info: kopf.ConnectionInfo = await connection.kopf_info()
        return info

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    # RayJobs are not watched through kopf: the controller runs its own list+watch (``watch.py``).

    @kopf.on.event("scheduling.sigs.k8s.io", "v1beta1", "elasticquotatrees", registry=registry)
    async def tree_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_tree(_event_type(event), event["object"])

    @kopf.on.event("scheduling.alibabacloud.com", "v1alpha1", "resourcepolicies", registry=registry)
    async def policy_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_policy(_event_type(event), event["object"])

    @kopf.on.event("scheduling.k8s.io", "v1", "priorityclasses", registry=registry)
    async def priority_class_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_priority_class(_event_type(event), event["object"])

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_node(_event_type(event), event["object"])

    @kopf.on.event("ray.io", "v1", "rayservices", registry=registry)
    async def rayservice_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_rayservice(_event_type(event), event["object"])

    @kopf.on.event("ray.io", "v1", "rayclusters", registry=registry)
    async def raycluster_event(event: Mapping[str, Any], **_: Any) -> None:
        await controller.on_raycluster(_event_type(event), event["object"])

    if webhooks:
        register_webhooks(registry, controller)
    return registry


def register_webhooks(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Admission webhooks (kopf refuses to start with them unless a webhook server is configured)."""

    @kopf.on.mutate("ray.io", "v1", "rayjobs", operation="CREATE", id="suspend-rayjobs",
                    registry=registry, persistent=True)
    def suspend_new_rayjobs(body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str],
                            **_: Any) -> None:
        raw = dict(body)
        if not is_managed(raw, controller.tree):
            return
        changes = webhook_patch(raw)
        if not changes:
            return
        patch.setdefault("spec", {}).update(changes)
        said = ", ".join(f"spec.{k}={str(v).lower()}" for k, v in sorted(changes.items()))
        patch.setdefault("metadata", {}).setdefault("annotations", {})[MUTATED_ANNOTATION] = said
        warnings.append(f"rayqueue set {said}: the job waits in its queue and frees its cluster when done")

    def suspend_serving(body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str]) -> None:
        raw = dict(body)
        if not is_managed(raw, controller.tree) or serving_suspended(raw):
            return
        patch.setdefault("spec", {})["suspend"] = True
        patch.setdefault("metadata", {}).setdefault("annotations", {})[MUTATED_ANNOTATION] = "spec.suspend=true"
        warnings.append(f"rayqueue set spec.suspend=true: the {raw.get('kind')} waits in its queue for admission")

    @kopf.on.mutate("ray.io", "v1", "rayservices", operation="CREATE", id="suspend-serving",
                    registry=registry, persistent=True)
    def suspend_new_rayservices(body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str],
                                **_: Any) -> None:
        suspend_serving(body, patch, warnings)

    @kopf.on.mutate("ray.io", "v1", "rayclusters", operation="CREATE", id="suspend-serving",
                    registry=registry, persistent=True)
    def suspend_new_rayclusters(body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str],
                                **_: Any) -> None:
        suspend_serving(body, patch, warnings)

    @kopf.on.validate("scheduling.sigs.k8s.io", "v1beta1", "elasticquotatrees", id="validate-tree",
                      registry=registry, persistent=True)
    def check_tree(body: Mapping[str, Any], **_: Any) -> None:
        problems = validate_tree(dict(body))
        if problems:
            raise kopf.AdmissionError("invalid ElasticQuotaTree: " + "; ".join(problems), code=422)

    @kopf.on.validate("scheduling.alibabacloud.com", "v1alpha1", "resourcepolicies", id="validate-policy",
                      registry=registry, persistent=True)
    def check_policy(body: Mapping[str, Any], **_: Any) -> None:
        problems = validate_policy(dict(body))
        if problems:
            raise kopf.AdmissionError("invalid ResourcePolicy: " + "; ".join(problems), code=422)


class _NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled configuration": the operator has no on.create/update/delete handlers.

    kopf computes the diff-base (a deep copy of the object's essence) for every watch event even when no
    handler needs it; with only ``on.event`` handlers that was a fifth of the operator's CPU under a burst.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class _NoProgress(kopf.ProgressStorage):
    """No handler progress: ``on.event`` handlers are not retried by kopf and keep no state on objects."""

    def fetch(self, *, key: Any, body: kopf.Body) -> Any:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def build_settings(config: OperatorConfig, webhook: WebhookConfig | None = None) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.progress_storage = _NoProgress()
    settings.posting.enabled = False  # we post our own events, with reasons users act on
    settings.scanning.disabled = True  # our kinds are known; no need to watch CRDs appear
    settings.watching.reconnect_backoff = 0.2
    settings.watching.server_timeout = 300
    settings.watching.inactivity_timeout = config.watch_inactivity_s
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1, 2, 5]
    settings.peering.clusterwide = True
    if config.peering is not None:
        settings.peering.name = config.peering
        settings.peering.priority = config.priority
        settings.peering.lifetime = 10
    if webhook is not None:
        settings.admission.server = kopf.WebhookServer(
            addr=webhook.addr, port=webhook.port, host=webhook.host,
            certfile=webhook.certfile, pkeyfile=webhook.pkeyfile, insecure=webhook.insecure,
        )
    return settings


class _AllTasks(Collection[asyncio.Task[Any]]):
    """``ignored`` for kopf.run_tasks: leave every task that is not one of the operator's root tasks."""

    def __contains__(self, item: object) -> bool:
        return True

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


class Operator:
    """One operator instance in this event loop (tests run two side by side)."""

    def __init__(self, connection: Connection, config: OperatorConfig | None = None,
                 webhook: WebhookConfig | None = None, metrics_port: int | None = None) -> None:
        self.connection = connection
        self.config = config or OperatorConfig()
        self.webhook = webhook
        self.metrics = OperatorMetrics()
        self.client = KubeClient(connection)
        self.controller = Controller(self.client, self.config, self.metrics)
        self.registry = build_registry(self.controller, connection, webhooks=webhook is not None)
        self.settings = build_settings(self.config, webhook)
        self.metrics_port = metrics_port
        self.stop_flag: asyncio.Event = asyncio.Event()
        self.ready_flag: asyncio.Event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        if self.metrics_port is not None:
            self.metrics.serve(self.metrics_port)
        tasks = await kopf.spawn_tasks(
            registry=self.registry,
            settings=self.settings,
            clusterwide=True,
            standalone=self.config.peering is None,
            peering_name=self.config.peering,
            priority=self.config.priority,
            # kopf types this as its Identity, a NewType of str that it does not export (kopf._core):
            # the plain string is what it holds at run time.
            identity=cast(Any, self.config.identity),
            stop_flag=self.stop_flag,
            ready_flag=self.ready_flag,
        )
        # kopf.operator() would cancel every task created in the loop while it ran, other instances
        # and the caller's included; our own tasks are stopped by the cleanup handler instead.
        await kopf.run_tasks(tasks, ignored=_AllTasks())

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"operator {self.config.identity}")
        return self.task

    async def stop(self, timeout: float = 15.0) -> None:
        self.stop_flag.set()
        if self.task is not None and not self.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            except TimeoutError:
                self.task.cancel()
            except (asyncio.CancelledError, Exception):
                pass

    async def kill(self) -> None:
        """Stop abruptly, as a crashed pod would (no cleanup beyond closing sockets)."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        await self.controller.stop()
