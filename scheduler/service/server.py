"""Running the standalone service: Ray (local or attached), the store, the engine and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayqueue.queue.priority import PriorityClasses
from rayqueue.quota.manifests import DocumentError, read_documents
from rayqueue.quota.tree import QuotaTree
from rayqueue.scheduler.service.core import (
    DEFAULT_PRIORITY_CLASSES,
    TREE_SETTING,
    Service,
    ServiceConfig,
    ServiceError,
    default_tree,
)
from rayqueue.scheduler.service.raycluster import (
    LocalRayCluster,
    LocalRayInfo,
    Ticker,
    alive_nodes,
    dashboard_alive,
    dashboard_url,
    head_processes,
)
from rayqueue.scheduler.service.rayjobs import RayJobs
from rayqueue.scheduler.service.store import Store, default_db_url
from rayqueue.scheduler.workloads.resourcepolicy import Units, load_resource_policy

if TYPE_CHECKING:
    from rayqueue.scheduler.service.dashboard import ServiceLive

log = logging.getLogger("rayqueue.service")

DEFAULT_PORT = 8266
LOCAL_RAY_SETTING = "local_ray"


@dataclass
class ServeOptions:
    tree: Path | None = None
    policy: Path | None = None
    priority_classes: Path | None = None
    ray_address: str | None = None
    #: Ray's token authentication of an existing cluster (--ray-address); a local head makes its own
    ray_token: str | None = None
    num_gpus: int = 0
    num_cpus: int = 8
    #: extra local Ray nodes, one per named ResourcePolicy unit: unit name -> logical GPUs
    unit_gpus: dict[str, int] = field(default_factory=dict)
    db: str | None = None
    state_dir: Path = Path(".rayqueue")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    config: ServiceConfig = field(default_factory=ServiceConfig)
    #: how long to wait for Ray (a local head starting, or --ray-address) to have an alive node
    ray_wait_s: float = 180.0
    #: how long the head a crashed run left may take to answer before it is stopped and replaced
    reattach_wait_s: float = 60.0
    #: where progress lines go (waiting for Ray, re-using or stopping a head a crashed run left)
    say: Callable[[str], None] = log.warning


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_priority_classes(path: Path | None) -> PriorityClasses:
    """Kubernetes ``PriorityClass`` documents, or a plain ``{name: value}`` mapping; defaults otherwise."""
    if path is None:
        return PriorityClasses(DEFAULT_PRIORITY_CLASSES)
    classes: dict[str, int] = {}
    try:
        docs = [d for d in read_documents(path) if d is not None]
    except DocumentError as exc:
        raise ServiceError(f"cannot read priority classes: {exc}") from exc
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ServiceError(f"{path} (document {i}): expected a mapping")
        if doc.get("kind") == "PriorityClass":
            name = (doc.get("metadata") or {}).get("name")
            value = doc.get("value")
            if not name or not isinstance(value, int) or isinstance(value, bool):
                raise ServiceError(f"{path} (document {i}): a PriorityClass needs metadata.name and an integer value")
            classes[str(name)] = value
        else:
            for name, value in doc.items():
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ServiceError(f"{path}: priority class {name!r}: value {value!r} must be an integer")
                classes[str(name)] = value
    return PriorityClasses(classes)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _make_server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a caught SIGTERM after its shutdown, which would kill us before we stop the
        Ray head we started; the runner handles signals itself."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


def _Server(config: Any) -> Any:
    return _make_server_class()(config)


class Runner:
    """Owns everything ``rayqueue serve`` starts, and stops what it started."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.store: Store | None = None
        self.local_ray: LocalRayCluster | None = None
        self.service: Service | None = None
        self.server: Any = None
        self._server_task: asyncio.Task[None] | None = None
        self.dashboard: ServiceLive | None = None

    @property
    def url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.port}"

    def check(self) -> None:
        opts = self.opts
        if not is_loopback(opts.host) and not opts.token:
            raise ServiceError(
                f"--host {opts.host} is not a loopback address: set --token (or RAYQUEUE_TOKEN) so that only "
                "holders of the token can submit jobs"
            )
        if not port_free(opts.host, opts.port):
            raise ServiceError(f"port {opts.port} on {opts.host} is in use (another rayqueue serve?); pick --port")

    async def start(self) -> Service:
        self.check()
        opts = self.opts
        db_url = opts.db or default_db_url(opts.state_dir)
        self.store = store = Store(db_url)
        tree_yaml: str | None = None
        if opts.tree is not None:
            tree = QuotaTree.from_yaml(opts.tree)
            tree_yaml = opts.tree.read_text()
        else:
            stored = store.get_setting(TREE_SETTING)
            tree = QuotaTree.from_yaml_text(stored, "stored tree") if stored else default_tree()
        units: Units | None = load_resource_policy(opts.policy) if opts.policy is not None else None
        priorities = load_priority_classes(opts.priority_classes)
        if opts.ray_address:
            address, ray_token = dashboard_url(opts.ray_address), opts.ray_token
            await asyncio.to_thread(self._wait_for_nodes, address, ray_token)
        else:
            local = await asyncio.to_thread(self._local_ray, store, units)
            self.local_ray = local
            address, ray_token = local.url, local.auth_token
        ray = RayJobs(address, auth_token=ray_token)
        self.service = Service(store, ray, tree, units, priorities, opts.config, tree_yaml=tree_yaml)
        await self.service.start()
        import uvicorn

        from rayqueue.scheduler.service.api import create_app

        app = create_app(self.service, opts.token)
        from rayqueue.scheduler.service.dashboard import attach

        self.dashboard = attach(app, self.service, opts.token, address)[1]
        config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", lifespan="off")
        self.server = _Server(config)
        return self.service

    def _wait_for_nodes(self, address: str, token: str | None) -> None:
        """An existing Ray cluster may still be starting: wait for an alive node, saying so every few seconds."""
        ticker = Ticker(self.opts.say, self.opts.ray_wait_s)
        while not alive_nodes(address, token=token):
            if ticker.left() <= 0:
                answers = dashboard_alive(address, token=token)
                raise ServiceError(
                    f"Ray at {address} has no alive node after {self.opts.ray_wait_s:.0f}s: its dashboard "
                    + ("answers, but lists no alive node" if answers else "does not answer")
                    + " (is the cluster up? check the address and port, --ray-token, and the head's logs under "
                    "/tmp/ray/session_latest/logs on its machine; --ray-wait waits longer)"
                )
            ticker.tick(lambda: f"Ray at {address} to have an alive node")
            time.sleep(0.5)

    def _local_ray(self, store: Store, units: Units | None) -> LocalRayCluster:
        """The local head a previous (crashed) run left, or a new one; either way the console says which."""
        say = self.opts.say
        saved = store.get_setting(LOCAL_RAY_SETTING)
        if saved:
            info = LocalRayInfo.from_json(saved)
            left = head_processes(info.temp_dir)
            found = LocalRayCluster.reattach(info, self.opts.reattach_wait_s, say) if left else None
            if found is not None:
                say(f"re-using the local Ray head a previous run left at {info.dashboard_url} "
                    f"({len(left)} processes, temp dir {info.temp_dir}): its jobs keep running")
                return found
            if left:
                say(f"stopped the local Ray head a previous run left at {info.dashboard_url}: it did not answer "
                    f"within {self.opts.reattach_wait_s:.0f}s ({len(left)} processes); starting a new one")
            else:
                say(f"the local Ray head a previous run left at {info.dashboard_url} is gone; starting a new one "
                    "(jobs that ran on it are run again)")
            store.set_setting(LOCAL_RAY_SETTING, None)
        extra = dict(self.opts.unit_gpus)
        if extra and units is None:
            raise ServiceError("--unit-gpus needs --policy (it starts a local node per ResourcePolicy unit)")
        if units is not None:
            unknown = sorted(set(extra) - set(units.by_name))
            if unknown:
                raise ServiceError(f"--unit-gpus: no unit {', '.join(unknown)} in the policy "
                                   f"(units: {', '.join(units.by_name)})")
            for name in extra:
                if not units.by_name[name].node_selector:
                    raise ServiceError(f"--unit-gpus {name}: the unit has no nodeSelector to label its node with")
        first = units.units[0] if units is not None else None
        labels = dict(first.node_selector) if first is not None else {}
        head_gpus = extra.pop(first.name, self.opts.num_gpus) if first is not None else self.opts.num_gpus
        say(f"starting a local Ray head ({self.opts.num_cpus} CPUs, {head_gpus} GPUs; up to "
            f"{self.opts.ray_wait_s:.0f}s, --ray-wait)")
        cluster = LocalRayCluster.start(num_cpus=self.opts.num_cpus, num_gpus=head_gpus, labels=labels,
                                        timeout=self.opts.ray_wait_s, progress=say)
        try:
            for name, gpus in extra.items():
                assert units is not None
                cluster.add_node(units.by_name[name].node_selector, num_gpus=gpus, num_cpus=self.opts.num_cpus,
                                 timeout=self.opts.ray_wait_s, progress=say)
        except BaseException:
            cluster.stop()
            raise
        store.set_setting(LOCAL_RAY_SETTING, cluster.info.to_json())
        return cluster

    async def serve(self) -> None:
        """Serve until SIGINT / SIGTERM, then stop cleanly (and stop the Ray head we started)."""
        assert self.server is not None
        loop = asyncio.get_running_loop()
        server = self.server

        def stop() -> None:
            if self.dashboard is not None and self.dashboard.pages is not None:
                self.dashboard.pages.close()  # its open event streams would hold uvicorn's graceful stop up
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            await server.serve()
        finally:
            await self.shutdown()

    async def serve_in_background(self) -> None:
        assert self.server is not None
        self._server_task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._server_task.done():
                self._server_task.result()
                raise ServiceError("the HTTP server did not start")
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        if self.dashboard is not None:
            await self.dashboard.stop()  # first: its open event streams would hold the HTTP server up
        if self.server is not None and self._server_task is not None:
            self.server.should_exit = True
            done, _ = await asyncio.wait({self._server_task}, timeout=10)
            if not done:
                self._server_task.cancel()
            self._server_task = None
        if self.service is not None:
            await self.service.stop()
            self.service.ray.close()
            if self.local_ray is not None:
                self.service.interrupt_running("rayqueue stopped and took its local Ray cluster down")
        if self.local_ray is not None:
            await asyncio.to_thread(self.local_ray.stop)
            if self.store is not None:
                self.store.set_setting(LOCAL_RAY_SETTING, None)
            self.local_ray = None
        if self.store is not None:
            self.store.close()
