"""The operator's own Kubernetes I/O: the kept ``kubernetes_asyncio`` client with our retries (events: ``events.py``).

kopf watches; everything the operator writes (admission patches, suspends, events, tree status) goes
through :class:`KubeClient`. Where the API server is and who we are comes from ``kubernetes_asyncio``'s
own loaders (in-cluster service account, or a kubeconfig with its exec plugins and OIDC), and requests go
through its ``ApiClient`` (TLS, auth headers). We call ``ApiClient.call_api`` with our own resource paths
rather than the generated ``CustomObjectsApi``/``CoreV1Api`` methods: one code path for custom and core
kinds, plain dicts both ways (no model (de)serialisation on the admission patch or the events, the hot
path), and the raw response, so that we can read ``Retry-After``. kopf's own API access is not public
API (``kopf._cogs``), so it is not used here.

On top of it, :meth:`KubeClient.request`:
- retries 429/5xx, timeouts and dropped connections with capped exponential backoff, waiting instead the
  time a ``Retry-After`` header asks for (API Priority and Fairness sends it with every 429);
- on a 401 loads the credentials again (a bound service-account token rotates; kubelet rewrites the file)
  and retries once; a second 401 is an error;
- turns 404/409 into typed exceptions the controller acts on (a 409 on a patch that carries
  ``metadata.resourceVersion`` means "re-read and decide again", never "apply blindly").
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import email.utils
import json
import logging
import math
import os
import random
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient, Configuration

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


class Gone(ApiError):
    """410: the resourceVersion a watch asked to resume from is older than the server keeps: list again."""


#: loads a Configuration's server and credentials (again): files are read anew, exec plugins rerun
Loader = Callable[[Configuration], Awaitable[None]]


class Connection:
    """Where the API server is and how to authenticate: a ``kubernetes_asyncio`` ``Configuration``, shared
    by the operator's client and kopf's login, and how to load its credentials again after a 401.

    ``Connection(server, token=...)`` is a fixed server and token (``--server/--token``, tests);
    :meth:`in_cluster` and :meth:`from_kubeconfig` use ``kubernetes_asyncio``'s loaders, whose refresh hook
    also re-reads a service-account token every minute, as client-go does.
    """

    def __init__(self, server: str | None = None, *, token: str | None = None, ca_path: str | None = None,
                 cert_path: str | None = None, key_path: str | None = None, insecure: bool = False,
                 configuration: Configuration | None = None, loader: Loader | None = None,
                 source: str = "--server") -> None:
        if configuration is None:
            if not server:
                raise ValueError("a Connection needs a server URL or a loaded configuration")
            configuration = Configuration(host=server.rstrip("/"), ssl_ca_cert=ca_path)
            configuration.cert_file = cert_path
            configuration.key_file = key_path
            configuration.verify_ssl = not insecure
            if token:
                configuration.api_key["BearerToken"] = f"Bearer {token}"
        self.configuration = configuration
        self.source = source
        #: bumped by every reload, so that many requests refused at once reload the credentials once
        self.generation = 0
        self._loader = loader
        self._lock = asyncio.Lock()

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @classmethod
    def in_cluster(cls, token_path: str = f"{SA_DIR}/token", ca_path: str = f"{SA_DIR}/ca.crt",
                   environ: Mapping[str, str] | None = None) -> Connection:
        """The pod's service account: ``KUBERNETES_SERVICE_HOST/PORT``, its token file and CA."""
        env = dict(os.environ if environ is None else environ)

        def load_now(configuration: Configuration) -> None:
            k8s_config.load_incluster_config(client_configuration=configuration, token_filename=token_path,
                                             cert_filename=ca_path, environ=env)

        async def load(configuration: Configuration) -> None:
            load_now(configuration)

        configuration = Configuration()
        load_now(configuration)
        return cls(configuration=configuration, loader=load, source="in-cluster service account")

    @classmethod
    async def from_kubeconfig(cls, context: str | None = None, config_file: str | None = None) -> Connection:
        """A kubeconfig context (default: ``$KUBECONFIG`` or ``~/.kube/config``, its current context)."""

        async def load(configuration: Configuration) -> None:
            # persist_config=False: never write refreshed tokens back into the user's kubeconfig
            await k8s_config.load_kube_config(config_file=config_file, context=context,
                                              client_configuration=configuration, persist_config=False)

        configuration = Configuration()
        await load(configuration)
        return cls(configuration=configuration, loader=load,
                   source=f"kubeconfig context {context}" if context else "kubeconfig")

    @classmethod
    async def from_environment(cls, context: str | None = None) -> Connection:
        """In-cluster service account when running in a pod (and no context is asked for), else kubeconfig."""
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(f"{SA_DIR}/token"):
            return cls.in_cluster()
        return await cls.from_kubeconfig(context)

    async def reload(self, seen: int | None = None) -> None:
        """Load the credentials again (after a 401). ``seen``: the generation the refused request used;
        when another request has reloaded since, this one only retries with what is loaded now."""
        async with self._lock:
            if seen is not None and seen != self.generation:
                return
            if self._loader is not None:
                await self._loader(self.configuration)
            self.generation += 1

    async def authorization(self) -> str | None:
        """The ``Authorization`` header value now (runs the loader's refresh hook: a re-read token)."""
        header = await self.configuration.get_api_key_with_prefix("BearerToken")
        return header or None

    async def kopf_info(self) -> Any:
        import kopf

        header = await self.authorization()
        parts = header.split(" ", 1) if header else []
        scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        cfg = self.configuration
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )


@dataclass
class RetryPolicy:
    attempts: int = 8
    base_s: float = 0.05
    max_s: float = 5.0
    timeout_s: float = 10.0
    #: a server's Retry-After is followed up to this many seconds (a decision should not wait longer)
    max_retry_after_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        d = min(self.max_s, self.base_s * 2**attempt)
        return d * (0.5 + random.random() / 2)


Objects = list[dict[str, Any]]

RETRYABLE = {429, 500, 502, 503, 504}


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (Kubernetes sends whole seconds; HTTP also allows a date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class KubeClient:
    connection: Connection
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_retry: Callable[[str, str], None] | None = None  # (verb, why) for metrics
    max_connections: int = 32
    #: requests sent, by "VERB plural[/sub]" (retries included): what the operator costs the API server
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    _api: ApiClient | None = None

    async def __aenter__(self) -> KubeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._api is None:
            cfg = self.connection.configuration
            cfg.connection_pool_maxsize = self.max_connections
            if cfg.proxy is None:
                cfg.proxy = _env_proxy(self.connection.server)
            api = ApiClient(cfg)
            api.user_agent = "rayqueue-operator"
            # kubernetes_asyncio's session trusts the environment, and aiohttp then looks up ~/.netrc and
            # the proxy variables in a worker thread on every request: two thread hops per admission
            # patch, most of the client's CPU (measured: 2.3-2.7 ms against 0.9 ms per patch). The proxy
            # is resolved once above instead; the connector (pool, TLS) is kubernetes_asyncio's own.
            rest = api.rest_client
            session = rest.pool_manager
            rest.pool_manager = aiohttp.ClientSession(connector=session.connector, trust_env=False,
                                                      read_bufsize=2**21)
            session.detach()
            self._api = api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        if self._api is None:
            await self.start()
        assert self._api is not None
        api = self._api
        url = self.connection.server + path
        base_headers = {"Accept": "application/json", **api.default_headers}
        if body is not None:
            base_headers["Content-Type"] = content_type
        query = list(params.items()) if params else None
        last: Exception | None = None
        reloaded = False
        attempt = 0
        self.calls[f"{method} {_kind_of(path)}"] += 1
        while attempt < self.retry.attempts:
            retry_after: float | None = None
            generation = self.connection.generation
            try:
                # ApiClient.request, not call_api: our bodies are plain JSON already, and call_api's
                # sanitising walk over every patch was a tenth of the client's CPU.
                headers = dict(base_headers)
                await api.update_params_for_auth(headers, [], ["BearerToken"])  # runs the refresh hook
                rsp = await api.request(method, url, query_params=query, headers=headers, body=body,
                                        _preload_content=False, _request_timeout=self.retry.timeout_s)
                async with rsp:
                    status: int = rsp.status
                    data: bytes = await rsp.read()
                    retry_after_header = rsp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                last = exc
                why = "timeout" if isinstance(exc, TimeoutError) else "connection"
            else:
                if status < 300:
                    return _decode(data)
                message = f"{method} {path}: {_status_message(data)}"
                if status == 401 and not reloaded:
                    # A rotated token (or an expired exec-plugin one): load it again and retry once, at
                    # once and outside the attempts, since a new token is not a slower server.
                    reloaded = True
                    last = ApiError(401, message)
                    self._retrying(method, path, "401", attempt)
                    await self.connection.reload(generation)
                    continue
                if status == 404:
                    raise NotFound(404, message)
                if status == 409:
                    raise Conflict(409, message)
                if status not in RETRYABLE:
                    raise ApiError(status, message)
                last = ApiError(status, message)
                why = str(status)
                retry_after = retry_after_seconds(retry_after_header)
            attempt += 1
            if attempt >= self.retry.attempts:
                break
            self._retrying(method, path, why, attempt)
            await asyncio.sleep(self.retry.delay(attempt - 1, retry_after))
        assert last is not None
        raise last

    def _retrying(self, method: str, path: str, why: str, attempt: int) -> None:
        if self.on_retry is not None:
            self.on_retry(method, why)
        log.debug("retrying %s %s after %s (attempt %d)", method, path, why, attempt + 1)

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

    async def list_versioned(self, res: Resource, namespace: str | None = None) -> tuple[Objects, str]:
        """Every object, and the list's ``resourceVersion``: a watch from it misses nothing written after."""
        data = await self.request("GET", res.path(namespace))
        items: Objects = [*(data.get("items") or [])]
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items, str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(self, res: Resource, resource_version: str, *, timeout_s: int = 300,
                    inactivity_s: float = 70.0) -> AsyncIterator[dict[str, Any]]:
        """The raw watch events after ``resource_version`` (``type``, ``object``), decoded with orjson.

        One attempt, no retries: the caller resumes from the last version it saw. Raises ``Gone`` on 410
        (as a status or an ``ERROR`` event: list again), ``ApiError`` on any other refusal (a 401 has loaded
        the credentials again first); a stream silent for ``inactivity_s`` ends with ``TimeoutError``.
        """
        if self._api is None:
            await self.start()
        assert self._api is not None
        api = self._api
        headers = {"Accept": "application/json", **api.default_headers}
        generation = self.connection.generation
        await api.update_params_for_auth(headers, [], ["BearerToken"])
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_s))]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.retry.timeout_s, sock_read=inactivity_s)
        rsp = await api.request("GET", self.connection.server + res.path(), query_params=query, headers=headers,
                                _preload_content=False, _request_timeout=timeout)
        async with rsp:
            if rsp.status >= 300:
                message = f"watch {res.plural}: {_status_message(await rsp.read())}"
                if rsp.status == 410:
                    raise Gone(410, message)
                if rsp.status == 401:
                    await self.connection.reload(generation)
                raise ApiError(rsp.status, message)
            async for line in rsp.content:
                if not line.strip():
                    continue
                event: dict[str, Any] = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 500)
                    message = f"watch {res.plural}: {status.get('message') or status.get('reason') or code}"
                    raise Gone(410, message) if code == 410 else ApiError(code, message)
                yield event

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict[str, Any],
                    sub: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", res.path(namespace, name, sub), body=patch, content_type="application/merge-patch+json")
        return result

    async def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", res.path(namespace), body=body)
        return result


def _kind_of(path: str) -> str:
    """``rayjobs`` for ``/apis/ray.io/v1/namespaces/ns/rayjobs/name``, ``elasticquotatrees/status``, ..."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]  # after /api/v1 or /apis/group/version
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return "?"
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")


def _env_proxy(server: str) -> str | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` name for the API server, unless ``NO_PROXY`` exempts it."""
    parsed = urllib.parse.urlsplit(server)
    if not parsed.hostname or urllib.request.proxy_bypass(parsed.hostname):
        return None
    return urllib.request.getproxies().get(parsed.scheme)


def _decode(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return orjson.loads(data)  # every answer carries a whole object: 4-6x faster than json
    except ValueError:
        return {"raw": data[:200].decode("utf-8", "replace")}


def _status_message(data: bytes) -> str:
    text = data[:2000].decode("utf-8", "replace")
    try:
        status = json.loads(data)
        return str(status.get("message") or status.get("reason") or text[:200])
    except (ValueError, AttributeError):
        return text[:200]
