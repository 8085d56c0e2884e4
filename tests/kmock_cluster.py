"""Test doubles for the operator: a Kubernetes API on kmock and a small fake KubeRay.

Test code, kept out of the package: used by the tests and by ``benchmarks/operator_kmock.py`` (which puts
``tests/`` on its path); needs the ``dev`` extra (kmock).

``FakeApiServer`` is kmock's in-memory Kubernetes emulator plus what the operator relies on in a real API
server: ``metadata.uid``, ``creationTimestamp`` and an increasing ``resourceVersion`` on every write, a 409
when a patch carries a stale ``metadata.resourceVersion``, JSON merge-patch semantics (``null`` deletes),
lists that carry their ``resourceVersion`` and watches that resume from one (or answer ``410 Gone`` once
:meth:`FakeApiServer.compact` has dropped it), and fault injection (409/500/timeouts on chosen requests,
dropped watch streams).

``FakeKubeRay`` moves RayJob status the way KubeRay's controller does for the fields the operator reads:
created suspended -> ``Suspended``; ``suspend: false`` -> ``Initializing`` -> ``Running`` -> ``Complete``
after a runtime; ``suspend: true`` while running -> ``Suspending`` -> ``Suspended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import itertools
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock

RAYJOBS = "ray.io/v1/rayjobs"
RAYSERVICES = "ray.io/v1/rayservices"
RAYCLUSTERS = "ray.io/v1/rayclusters"
TREES = "scheduling.sigs.k8s.io/v1beta1/elasticquotatrees"
POLICIES = "scheduling.alibabacloud.com/v1alpha1/resourcepolicies"
PRIORITY_CLASSES = "scheduling.k8s.io/v1/priorityclasses"
NODES = "v1/nodes"
EVENTS = "v1/events"
PEERINGS = "kopf.dev/v1/clusterkopfpeerings"

RESOURCES: dict[str, kmock.ResourceInfo] = {
    RAYJOBS: kmock.ResourceInfo(
        kind="RayJob", singular="rayjob", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
    ),
    RAYSERVICES: kmock.ResourceInfo(
        kind="RayService", singular="rayservice", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
    ),
    RAYCLUSTERS: kmock.ResourceInfo(
        kind="RayCluster", singular="raycluster", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
    ),
    TREES: kmock.ResourceInfo(
        kind="ElasticQuotaTree", singular="elasticquotatree", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
    ),
    POLICIES: kmock.ResourceInfo(
        kind="ResourcePolicy", singular="resourcepolicy", namespaced=True,
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
    ),
    PRIORITY_CLASSES: kmock.ResourceInfo(
        kind="PriorityClass", singular="priorityclass", namespaced=False,
        verbs={"get", "list", "watch", "create", "delete"},
    ),
    NODES: kmock.ResourceInfo(
        kind="Node", singular="node", namespaced=False, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "create", "delete"},
    ),
    EVENTS: kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs={"get", "list", "watch", "create", "patch"},
    ),
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"get", "list", "watch"},
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False,
        verbs={"get", "list", "watch"},
    ),
    PEERINGS: kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
        verbs={"get", "list", "watch", "patch", "create"},
    ),
}


@dataclass
class Fault:
    """Fail the next ``times`` requests that match: an HTTP status, or ``timeout`` seconds of silence."""

    method: str  # GET, PATCH, POST, DELETE, or "*"
    plural: str | None = None  # e.g. "rayjobs"; None: any resource
    status: int = 500
    times: int = 1
    timeout: float = 0.0  # > 0: hang this long before answering (the client times out first)
    subresource: str | None = "*"  # "*" any, None only the main resource, "status" only /status
    after: bool = False  # apply the request, then hang ``timeout`` seconds and fail (a lost answer)
    retry_after: str | None = None  # a Retry-After header on the answer (as API Priority and Fairness sends)
    watch: bool | None = None  # True: only watch requests; False: none; None: any
    hits: int = 0

    def matches(self, request: kmock.Request) -> bool:
        if self.hits >= self.times:
            return False
        if self.method != "*" and request.method.value.upper() != self.method.upper():
            return False
        if self.plural is not None and (request.resource is None or request.resource.plural != self.plural):
            return False
        if self.subresource != "*" and request.subresource != self.subresource:
            return False
        if self.watch is not None and (request.action == kmock.action.WATCH) != self.watch:
            return False
        return True


#: put on the event buses by ``FakeApiServer.drop_watches`` to wake the watches up; never sent to clients
_DROP: dict[str, Any] = {"type": "DROP"}


def _deleted_event(raw: dict[str, Any], version: int) -> dict[str, Any]:
    """A DELETED event carries the version of the deletion, as an API server's does."""
    obj = {**raw, "metadata": {**(raw.get("metadata") or {}), "resourceVersion": str(version)}}
    return {"type": "DELETED", "object": obj}


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: the token the tests' own clients (``Api``, ``FakeKubeRay``) send; always accepted
ADMIN_TOKEN = "kmock-admin"


@dataclass(frozen=True)
class Seen:
    """A request as the API server saw it (``FakeApiServer.record``)."""

    at: float  # time.monotonic() when it arrived (a watch is listed when it ends)
    method: str
    path: str
    token: str | None  # the bearer token it carried
    agent: str  # User-Agent: kopf's watches and the operator's own client differ
    status: int  # the answer's HTTP status


def _bearer(request: kmock.Request) -> str | None:
    header = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = header.partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _status_response(status: int, reason: str, message: str,
                     headers: dict[str, str] | None = None) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": status, "reason": reason,
            "message": message}
    return aiohttp.web.json_response(body, status=status, headers=headers)


@attrs.define(kw_only=True)
class _DirectRouting(kmock.RawHandler):
    """Route Kubernetes requests straight to the emulator's handlers while no test reaction is set.

    kmock picks a reaction for each request by testing it against every registered reaction, and each test
    walks every request still in flight (``request in reaction``): O(reactions x requests in flight) per
    request. With ~100 requests in flight in the operator benchmark that was a third of the API server's
    CPU. The emulator's own reactions are all we register, so a Kubernetes verb on a known resource goes to
    the matching ``_serve_*`` directly; any reaction added by a test (``server[...] << ...``) restores
    kmock's full matching.
    """

    async def _handle(self, request: kmock.Request) -> Any:
        # (no attrs field here: a slot in both bases of FakeApiServer would be a layout conflict)
        if request.resource is not None and request.resource.plural and \
                len(self._payloads) == getattr(self, "_builtin_payloads", -1):  # not discovery (/apis/g/v)
            serve = _ROUTES.get(request.action) if request.action is not None else None
            if serve is not None:
                if serve == "_serve_watch":
                    return await kmock.Response(payload=getattr(self, serve)(request))(request)
                return aiohttp.web.json_response(await getattr(self, serve)(request))
        return await super()._handle(request)


_ROUTES = {kmock.action.FETCH: "_serve_fetch", kmock.action.CREATE: "_serve_create",
           kmock.action.UPDATE: "_serve_update", kmock.action.DELETE: "_serve_delete",
           kmock.action.LIST: "_serve_list", kmock.action.WATCH: "_serve_watch"}


@attrs.define(kw_only=True)
class FakeApiServer(kmock.KubernetesEmulator, _DirectRouting):
    """kmock's emulator with resource versions, optimistic concurrency and fault injection."""

    faults: list[Fault] = attrs.field(factory=list)
    #: called after every write: (plural, namespace, name, request data); KubeRay doubles and benchmarks
    listeners: list[Callable[[str, str | None, str, Any], None]] = attrs.field(factory=list)
    #: kmock matches each request against every request served so far (quadratic); by default forget a
    #: request once answered so that thousands of RayJobs stay fast. True keeps ``kmock.requests``.
    keep_requests: bool = False
    #: None: no authentication. Else the bearer tokens accepted (plus ``ADMIN_TOKEN``, the tests' own);
    #: any other request is answered 401, as an API server does once a service-account token has expired.
    tokens: set[str] | None = None
    #: every request as (monotonic time, method, path, bearer token, user agent, status), when ``record``
    record: bool = False
    seen: list[Seen] = attrs.field(factory=list)
    _rv: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _watch_epoch: int = attrs.field(default=0, init=False)
    #: versions at or below this are "compacted": a watch asked to resume from one gets 410 Gone
    compacted: int = attrs.field(default=0, init=False)
    #: writes take a version and are applied in one step, so that versions are in the order of the writes
    #: (a watch resumed from version N must find every later write above N)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _deleted_rv: dict[Any, int] = attrs.field(factory=dict, init=False)
    _background: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _builtin_payloads: int = attrs.field(default=-1, init=False)  # the emulator's own reactions

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = info
        self._builtin_payloads = len(self._payloads)

    # ---- fault injection
    def inject(self, method: str, plural: str | None = None, *, status: int = 500, times: int = 1,
               timeout: float = 0.0, subresource: str | None = "*", after: bool = False,
               retry_after: str | None = None, watch: bool | None = None) -> Fault:
        fault = Fault(method=method, plural=plural, status=status, times=times, timeout=timeout,
                      subresource=subresource, after=after, retry_after=retry_after, watch=watch)
        self.faults.append(fault)
        return fault

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def compact(self) -> int:
        """Forget history up to now, as etcd compaction does: resuming a watch from an older version is
        answered 410 Gone (the client must list again). Returns the compacted version."""
        self.compacted = self._last_rv
        return self.compacted

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer would)."""
        self._watch_epoch += 1
        for bus in list(self._buses.values()):  # wake every watch so that it sees the new epoch now
            task = asyncio.ensure_future(bus.put(_DROP))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # ---- request handling
    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await self._handle_tracked(request)
        finally:
            if not self.keep_requests:
                for i, r in enumerate(self._requests):
                    if r is request:
                        del self._requests[i]
                        break

    async def _handle_tracked(self, request: kmock.Request) -> Any:
        if not self.record and self.tokens is None:
            return await self._handle_authorized(request)
        token = _bearer(request)
        started = time.monotonic()
        status = 200
        try:
            if self.tokens is not None and token != ADMIN_TOKEN and token not in self.tokens:
                status = 401
                return _status_response(401, "Unauthorized", "Unauthorized")
            response = await self._handle_authorized(request)
            status = getattr(response, "status", 200)
            return response
        except kmock.KubernetesError as exc:
            status = int(getattr(exc, "status", 500) or 500)
            raise
        finally:
            if self.record:
                agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
                self.seen.append(Seen(started, request.method.value.upper(), request.url.path, token,
                                      agent, status))

    async def _handle_authorized(self, request: kmock.Request) -> Any:
        late: Fault | None = None
        for fault in self.faults:
            if fault.matches(request) and fault.after:
                fault.hits += 1
                late = fault
                break
            if fault.matches(request):
                fault.hits += 1
                if fault.timeout:
                    await asyncio.sleep(fault.timeout)
                if fault.retry_after is not None:
                    return _status_response(fault.status, "Injected", f"injected fault {fault.status}",
                                            {"Retry-After": fault.retry_after})
                raise kmock.KubernetesError(status=fault.status, reason="Injected",
                                            message=f"injected fault {fault.status}")
        if request.resource is not None and request.action in (
                kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            async with self._write_lock:
                response = await self._apply_write(request)
        else:
            response = await super()._handle(request)
        if request.resource is not None and request.action in (
                kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE) and self.listeners:
            data = request.data if isinstance(request.data, dict) else {}
            name = request.name or (data.get("metadata") or {}).get("name")
            namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
            for listener in self.listeners:
                listener(request.resource.plural or "", namespace, str(name), data)
        if late is not None:
            await asyncio.sleep(late.timeout)
            raise kmock.KubernetesError(status=late.status, reason="Injected",
                                        message=f"injected fault {late.status} after applying the request")
        return response

    async def _apply_write(self, request: kmock.Request) -> Any:
        if request.action == kmock.action.DELETE and request.name is not None:
            response = await super()._handle(request)
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and self.objects[key].deleted:  # type: ignore[operator,index]
                self._deleted_rv[key] = self._next_rv()
            return response
        if isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now_iso())
                meta["resourceVersion"] = str(self._next_rv())
                meta.setdefault("generation", 1)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                current = self.objects[key] if key in self.objects else None
                if current is not None and not current.deleted:
                    expected = (request.data.get("metadata") or {}).get("resourceVersion")
                    actual = (current.get("metadata") or {}).get("resourceVersion")
                    if expected is not None and expected != actual:
                        raise kmock.KubernetesError(
                            status=409, reason="Conflict",
                            message=f"the object has been modified (resourceVersion {expected} != {actual})")
                    meta = request.data.setdefault("metadata", {})
                    meta["resourceVersion"] = str(self._next_rv())
                    if "spec" in request.data and request.subresource is None:
                        meta["generation"] = int((current.get("metadata") or {}).get("generation", 1)) + 1
        return await super()._handle(request)

    # kmock finds an object by scanning all of them; with thousands of RayJobs, look it up by key.
    def _lookup(self, request: kmock.Request) -> Any:
        data = request.data if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace or (data.get("metadata") or {}).get("namespace"),
               request.name or (data.get("metadata") or {}).get("name"))
        return self.objects[key] if key in self.objects else None  # type: ignore[index,operator]

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._lookup(request)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        return self._lookup(request).last.raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self._lookup(request).last.raw

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self._lookup(request).last.raw

    def _version_of(self, key: Any, obj: Any) -> int:
        if obj.deleted:
            return self._deleted_rv.get(key, 0)
        try:
            return int((obj.raw.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            return 0

    async def _serve_list(self, request: kmock.Request) -> Any:  # type: ignore[override]
        """The objects and the list's ``resourceVersion`` (the newest write among them, deletions
        included): a watch from it sees every later write and none that the list already shows."""
        assert request.resource is not None
        resource = request.resource
        async with self._lock:
            items, version = [], 0
            for key, obj in self.objects.items():
                res, ns, _ = key
                if res != resource:
                    continue
                version = max(version, self._version_of(key, obj))
                if not obj.deleted and (request.namespace is None or ns == request.namespace):
                    items.append(obj.raw)
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": str(version)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:  # type: ignore[override]
        """A watch: the current objects as ``ADDED``, then every later event, until :meth:`drop_watches`.

        Not kmock's own watch, for two reasons measured under the operator benchmark's load:
        - kmock subscribes to the resource's event bus only *after* it has streamed the current objects, so
          whatever is written while that listing is on the wire never reaches this watch (lost events on
          every reconnect). Here the bus position is taken under the emulator's lock, together with the
          listing: nothing is lost and nothing is replayed older than the listing.
        - Each event costs no extra event-loop iteration (an earlier version raced every event against the
          drop signal with two fresh tasks; on a busy loop that throttled a watch to ~20 events/s, so the
          operator heard of a RayJob 10-16 s after it was created).
        """
        yield b""  # send the headers now: the client sees the stream open even if nothing happens
        assert request.resource is not None
        resource = request.resource
        bus = self._buses[resource]
        epoch = self._watch_epoch
        since_text = str(request.params.get("resourceVersion") or "")
        since = int(since_text) if since_text.isdigit() and since_text != "0" else None
        if since is not None and since < self.compacted:
            yield {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since} ({self.compacted})"}}
            return

        def wanted(namespace: str | None, name: str | None) -> bool:
            return (request.namespace is None or namespace == request.namespace) and \
                (request.name is None or name == request.name)

        async with self._lock:  # every write puts its event on the bus under this lock
            marker = await bus.mark()
            if since is None:  # no version: the current objects first, as ADDED
                initial = [{"type": "ADDED", "object": obj.raw} for (res, ns, name), obj in self.objects.items()
                           if res == resource and not obj.deleted and wanted(ns, name)]
            else:  # resumed: what changed after ``since``, each object once in its latest state, in order
                changed = sorted(
                    ((self._version_of(key, obj), key, obj) for key, obj in self.objects.items()
                     if key[0] == resource and wanted(key[1], key[2])), key=lambda c: c[0])
                initial = [_deleted_event(obj.last.raw, v) if obj.deleted else {"type": "MODIFIED", "object": obj.raw}
                           for v, _, obj in changed if v > since]
        try:
            for event in initial:
                yield event
            del initial
            async for event in bus.stream(since=marker):
                if self._watch_epoch != epoch:
                    return  # dropped: end the stream as a restarting API server would
                if event is _DROP:
                    continue
                meta = (event.get("object") or {}).get("metadata") or {}
                if wanted(meta.get("namespace"), meta.get("name")):
                    yield event
        finally:
            await bus.unmark(marker)

    # ---- helpers for tests
    def obj(self, plural_key: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(plural_key), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def objs(self, plural_key: str) -> list[dict[str, Any]]:
        res = kmock.resource(plural_key)
        return [obj.raw for (r, _, _), obj in self.objects.items() if r == res and not obj.deleted]


# ------------------------------------------------------------------------------------------ TLS


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key): the API server's, and the CA that a pod's
    ``ca.crt`` would hold."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmock-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "apiserver.crt", directory / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _TlsTestServer(aiohttp.test_utils.RawTestServer):
    def __init__(self, *args: Any, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = ssl_context

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        await super().start_server(loop=loop, ssl=self._tls, **kwargs)


def tls_server(handler: FakeApiServer, cert_path: Path, key_path: Path) -> kmock.Server:
    """A kmock server speaking HTTPS, as a real API server does; kmock's own client trusts its CA."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    return kmock.Server(
        handler,
        server_cls=functools.partial(_TlsTestServer, ssl_context=server_ctx),  # type: ignore[arg-type]
        client_fct=lambda url: aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=client_ctx)),
    )


# ------------------------------------------------------------------------------------------ API client


class Api:
    """A tiny HTTP client for tests: create/patch/delete through the API so that watches see them."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @staticmethod
    def path(plural_key: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        parts = plural_key.split("/")
        base = f"/api/{parts[0]}" if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
        plural = parts[-1]
        url = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        if name:
            url += f"/{name}"
        if sub:
            url += f"/{sub}"
        return url

    async def create(self, plural_key: str, body: dict[str, Any]) -> dict[str, Any]:
        ns = body.get("metadata", {}).get("namespace")
        async with self.server.post(self.path(plural_key, ns), json=body, headers=self.headers) as rsp:
            data: dict[str, Any] = await rsp.json()
            if rsp.status >= 400:
                raise RuntimeError(f"create {plural_key} failed: {rsp.status} {data}")
            return data

    async def patch(self, plural_key: str, namespace: str | None, name: str, patch: dict[str, Any],
                    sub: str | None = None) -> dict[str, Any]:
        async with self.server.patch(self.path(plural_key, namespace, name, sub), json=patch,
                                     headers={**self.headers, "Content-Type": "application/merge-patch+json"}
                                     ) as rsp:
            data: dict[str, Any] = await rsp.json()
            if rsp.status >= 400:
                raise RuntimeError(f"patch {plural_key} {namespace}/{name} failed: {rsp.status} {data}")
            return data

    async def delete(self, plural_key: str, namespace: str | None, name: str) -> None:
        async with self.server.delete(self.path(plural_key, namespace, name), headers=self.headers) as rsp:
            if rsp.status >= 400 and rsp.status != 404:
                raise RuntimeError(f"delete {plural_key} {namespace}/{name} failed: {rsp.status}")


# ------------------------------------------------------------------------------------------ the real CRD

KUBERAY_CRD = Path(__file__).resolve().parents[1] / "data" / "kuberay" / "ray.io_rayjobs.yaml"


def _close_schema(schema: Any) -> Any:
    """An API server prunes fields its structural schema does not declare; make them errors instead."""
    if isinstance(schema, dict):
        out = {k: _close_schema(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close_schema(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=2)
def rayjob_crd_validator(path: str | None = None) -> Any:
    """A JSON-schema validator for ``ray.io/v1`` RayJobs built from KubeRay's CRD (status included)."""
    import jsonschema
    import yaml

    crd_path = Path(path or os.environ.get("RAYQUEUE_KUBERAY_CRD") or KUBERAY_CRD)
    with open(crd_path) as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _close_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_violations(body: dict[str, Any]) -> list[str]:
    """Where ``body`` breaks KubeRay's RayJob CRD (or would lose fields to pruning)."""
    validator = rayjob_crd_validator()
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:200]}"
            for e in validator.iter_errors(body)]


# ------------------------------------------------------------------------------------------ fake KubeRay

RUNTIME_ANNOTATION = "rayqueue.test/runtime-seconds"
FINAL_ANNOTATION = "rayqueue.test/final-status"  # Complete (default), Failed or ValidationFailed


@dataclass
class _JobClock:
    started: float | None = None
    suspending_since: float | None = None


@dataclass
class FakeKubeRay:
    """Moves RayJob ``status`` like KubeRay's RayJob controller does, through the API server.

    Reconciles a RayJob when it is written (a listener on the API server, as KubeRay's watch would) and,
    while a job is in a timed phase (Initializing, Running, Suspending), every ``tick`` seconds; writes
    ``status`` with merge patches on the ``/status`` subresource.
    """

    server: FakeApiServer
    runtime: float = 1.0  # default seconds from Running to Complete
    tick: float = 0.02
    init_delay: float = 0.0  # seconds spent in Initializing
    suspend_delay: float = 0.0  # seconds spent in Suspending
    on_unsuspend: Callable[[dict[str, Any]], None] | None = None
    validate: bool = True  # check every RayJob it reconciles against KubeRay's CRD
    concurrency: int = 16
    paused: bool = False  # a slow KubeRay: reconcile nothing (changes stay queued) until set back to False
    violations: list[str] = field(default_factory=list)
    _checked: set[tuple[str, str]] = field(default_factory=set)
    clocks: dict[str, _JobClock] = field(default_factory=dict)
    unsuspended_at: dict[str, float] = field(default_factory=dict)  # "ns/name" -> wall time seen unsuspended
    finished_at: dict[str, float] = field(default_factory=dict)  # "ns/name" -> wall time it completed
    ran_for: dict[str, float] = field(default_factory=dict)  # "ns/name" -> seconds Running (last run)
    _dirty: set[tuple[str | None, str]] = field(default_factory=set)
    _timed: set[tuple[str | None, str]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeKubeRay:
        self.api = Api(self.server)
        self.server.listeners.append(self._changed)
        for job in self.server.objs(RAYJOBS):
            self._dirty.add((job["metadata"].get("namespace"), job["metadata"]["name"]))
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._changed in self.server.listeners:
            self.server.listeners.remove(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _changed(self, plural: str, namespace: str | None, name: str, data: Any) -> None:
        if plural == "rayjobs" and name:
            self._dirty.add((namespace, name))
            self._wake.set()

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(key: tuple[str | None, str]) -> None:
            async with sem:
                job = self.server.obj(RAYJOBS, key[0], key[1])
                if job is None:
                    self._timed.discard(key)
                    return
                try:
                    await self.reconcile(job)
                except Exception:  # the API may be injected with faults: try again on the next tick
                    self._timed.add(key)

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick)
            self._wake.clear()
            if self.paused:
                continue
            keys = self._dirty | self._timed
            self._dirty = set()
            if keys:
                await asyncio.gather(*(one(k) for k in keys))

    async def _status(self, job: dict[str, Any], **status: Any) -> None:
        """Write ``status`` for the version of the job that was read, as KubeRay does.

        KubeRay writes its status with an update that carries the ``resourceVersion`` it read
        (controller-runtime's ``Status().Update``), so a transition decided on a stale read fails with 409
        and is decided again from the fresh object: KubeRay never starts a job whose ``suspend: false``
        has been overwritten by ``suspend: true`` in the meantime.
        """
        meta = job["metadata"]
        status.setdefault("observedGeneration", int(meta.get("generation") or 1))
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": status}
        await self.api.patch(RAYJOBS, meta.get("namespace"), meta["name"], patch, sub="status")

    async def reconcile(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        spec = job.get("spec", {})
        status = job.get("status") or {}
        phase = status.get("jobDeploymentStatus", "")
        suspend = bool(spec.get("suspend", False))
        now = time.monotonic()
        clock = self.clocks.setdefault(key, _JobClock())
        if self.validate:
            version = (key, str(meta.get("resourceVersion")))
            if version not in self._checked:
                self._checked.add(version)
                self.violations.extend(f"{key}@{version[1]}: {v}" for v in crd_violations(job))
        tkey = (meta.get("namespace"), meta["name"])
        if phase in ("Initializing", "Running", "Suspending"):
            self._timed.add(tkey)
        else:
            self._timed.discard(tkey)
        if phase in ("Complete", "Failed", "ValidationFailed"):
            return
        if phase == "":
            if suspend:
                if not spec.get("shutdownAfterJobFinishes", False):
                    await self._status(job, jobDeploymentStatus="ValidationFailed",
                                       reason="ValidationFailed",
                                       message="The RayJob spec is invalid: suspend requires "
                                               "shutdownAfterJobFinishes: true")
                    return
                await self._status(job, jobDeploymentStatus="Suspended")
            else:
                await self._start(job, clock, now)
            return
        if phase == "Suspended":
            if not suspend:
                await self._start(job, clock, now)
            return
        if phase == "Initializing":
            if suspend:
                clock.suspending_since = now
                await self._status(job, jobDeploymentStatus="Suspending")
            elif now - (clock.started or now) >= self.init_delay:
                await self._status(job, jobDeploymentStatus="Running", jobStatus="RUNNING",
                                   startTime=_now_iso())
            return
        if phase == "Running":
            if suspend:
                clock.suspending_since = now
                await self._status(job, jobDeploymentStatus="Suspending")
                return
            runtime = float(meta.get("annotations", {}).get(RUNTIME_ANNOTATION, self.runtime))
            if now - (clock.started or now) >= runtime:
                final = meta.get("annotations", {}).get(FINAL_ANNOTATION, "Complete")
                job_status = "SUCCEEDED" if final == "Complete" else "FAILED"
                self.finished_at[key] = time.time()
                self.ran_for[key] = now - (clock.started or now)
                await self._status(job, jobDeploymentStatus=final, jobStatus=job_status, endTime=_now_iso())
            return
        if phase == "Suspending":
            if now - (clock.suspending_since or now) >= self.suspend_delay:
                clock.started = None
                await self._status(job, jobDeploymentStatus="Suspended", jobStatus="STOPPED")
            return

    async def _start(self, job: dict[str, Any], clock: _JobClock, now: float) -> None:
        meta = job["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        final = meta.get("annotations", {}).get(FINAL_ANNOTATION)
        if final == "ValidationFailed":
            await self._status(job, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                               message="RayJob spec validation failed (injected by the test)")
        else:
            await self._status(job, jobDeploymentStatus="Initializing", jobStatus="PENDING")
            clock.started = now
        # Counted once the status write landed: a write based on a stale read (the job suspended again
        # meanwhile) is refused with 409, and then KubeRay never started anything.
        if self.on_unsuspend is not None:
            self.on_unsuspend(job)
        self.unsuspended_at.setdefault(key, time.time())
