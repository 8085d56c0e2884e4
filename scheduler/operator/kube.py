"""The operator's own Kubernetes I/O: a small async client with retries, and the event poster.

kopf watches; everything the operator writes (admission patches, suspends, events, tree status) goes
through :class:`KubeClient`, which retries 429/5xx, timeouts and dropped connections with capped
exponential backoff and turns 404/409 into typed exceptions the controller acts on (a 409 on a patch that
carries ``metadata.resourceVersion`` means "re-read and decide again", never "apply blindly").
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("rayqueue.operator")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True
    kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        url = f"{base}/namespaces/{namespace}/{self.plural}" if (self.namespaced and namespace) else \
            f"{base}/{self.plural}"
        if name:
            url += f"/{name}"
        if sub:
            url += f"/{sub}"
        return url


RAYJOBS = Resource("ray.io", "v1", "rayjobs", True, "RayJob")
TREES = Resource("scheduling.sigs.k8s.io", "v1beta1", "elasticquotatrees", True, "ElasticQuotaTree")
POLICIES = Resource("scheduling.alibabacloud.com", "v1alpha1", "resourcepolicies", True, "ResourcePolicy")
PRIORITY_CLASSES = Resource("scheduling.k8s.io", "v1", "priorityclasses", False, "PriorityClass")
NODES = Resource("", "v1", "nodes", False, "Node")
EVENTS = Resource("", "v1", "events", True, "Event")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


@dataclass
class Connection:
    """Where the API server is and how to authenticate (in-cluster, kubeconfig, or given by a test)."""

    server: str
    token: str | None = None
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    insecure: bool = False

    @classmethod
    def from_environment(cls, context: str | None = None) -> Connection:
        """In-cluster service account when running in a pod, else the usual kubeconfig."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(f"{SA_DIR}/token"):
            host: str = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if ":" in host:
                host = "[" + host + "]"
            with open(f"{SA_DIR}/token") as f:
                token = f.read().strip()
            return cls(server=f"https://{host}:{port}", token=token, ca_path=f"{SA_DIR}/ca.crt")
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(context=context, client_configuration=configuration)
        auth: str | None = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
        bearer = auth.split(" ", 1)[1] if auth and " " in auth else auth
        return cls(
            server=configuration.host.rstrip("/"),
            token=bearer,
            ca_path=configuration.ssl_ca_cert,
            cert_path=configuration.cert_file,
            key_path=configuration.key_file,
            insecure=not configuration.verify_ssl,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if self.cert_path and self.key_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def kopf_info(self) -> Any:
        import kopf

        def read_b64(path: str | None) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return kopf.ConnectionInfo(
            server=self.server,
            ca_data=read_b64(self.ca_path),
            insecure=self.insecure,
            scheme="Bearer" if self.token else None,
            token=self.token,
            certificate_data=read_b64(self.cert_path),
            private_key_data=read_b64(self.key_path),
        )


@dataclass
class RetryPolicy:
    attempts: int = 8
    base_s: float = 0.05
    max_s: float = 5.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        d = min(self.max_s, self.base_s * 2**attempt)
        return d * (0.5 + random.random() / 2)


RETRYABLE = {429, 500, 502, 503, 504}


@dataclass
class KubeClient:
    connection: Connection
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_retry: Callable[[str, str], None] | None = None  # (verb, why) for metrics
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            headers = {"User-Agent": "rayqueue-operator"}
            if self.connection.token:
                headers["Authorization"] = f"Bearer {self.connection.token}"
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=32)
            self._session = aiohttp.ClientSession(base_url=None, headers=headers, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url = self.connection.server.rstrip("/") + path
        headers = {"Content-Type": content_type} if body is not None else {}
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            try:
                timeout = aiohttp.ClientTimeout(total=self.retry.timeout_s)
                async with self._session.request(method, url, json=body, params=params, headers=headers,
                                                 timeout=timeout) as rsp:
                    text = await rsp.text()
                    if rsp.status < 300:
                        return await _json(rsp, text)
                    message = _status_message(text)
                    if rsp.status == 404:
                        raise NotFound(404, f"{method} {path}: {message}")
                    if rsp.status == 409:
                        raise Conflict(409, f"{method} {path}: {message}")
                    if rsp.status in RETRYABLE:
                        last = ApiError(rsp.status, f"{method} {path}: {message}")
                        why = str(rsp.status)
                    else:
                        raise ApiError(rsp.status, f"{method} {path}: {message}")
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                last = exc
                why = "timeout" if isinstance(exc, TimeoutError) else "connection"
            if self.on_retry is not None:
                self.on_retry(method, why)
            log.debug("retrying %s %s after %s (attempt %d)", method, path, why, attempt + 1)
            await asyncio.sleep(self.retry.delay(attempt))
        assert last is not None
        raise last

    # ---- verbs
    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", res.path(namespace, name))
        return result

    async def list(self, res: Resource, namespace: str | None = None) -> list[dict[str, Any]]:
        data = await self.request("GET", res.path(namespace))
        items: list[dict[str, Any]] = list(data.get("items") or [])
        # List items carry no kind/apiVersion in a real API server; give them back.
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict[str, Any],
                    sub: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", res.path(namespace, name, sub), body=patch, content_type="application/merge-patch+json")
        return result

    async def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", res.path(namespace), body=body)
        return result


async def _json(rsp: aiohttp.ClientResponse, text: str) -> Any:
    import json

    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text}


def _status_message(text: str) -> str:
    import json

    try:
        data = json.loads(text)
        return str(data.get("message") or data.get("reason") or text[:200])
    except ValueError:
        return text[:200]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventPoster:
    """Posts Kubernetes Events in the background so that a cycle never waits on them."""

    def __init__(self, client: KubeClient, component: str = "rayqueue", instance: str = "rayqueue-operator",
                 on_posted: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.on_posted = on_posted
        self.posted = 0
        self.failed = 0
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

    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self.client.create(EVENTS, event["metadata"]["namespace"], event)
                self.posted += 1
                if self.on_posted is not None:
                    self.on_posted(event["reason"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # events are best effort: never block or crash the operator
                self.failed += 1
                log.warning("could not post event %s on %s: %s", event["reason"],
                            event["involvedObject"].get("name"), exc)
