"""The Ray side of standalone mode: a local Ray head we start and stop ourselves, or an existing one.

A local head is ``ray start --head --block`` in its own process group, its dashboard (the Job API) on
127.0.0.1, every port picked free (so tests and several services never collide), its own temp dir,
logical GPUs and node labels from our config. Ray turns a loopback ``--node-ip-address`` into the
machine's address and its GCS, raylet and client server listen on every interface, so the head runs
with Ray's token authentication (``RAY_AUTH_MODE=token``) and a fresh random token: without it anyone
who can reach the machine could run code on the cluster. The token is kept with the head's record in
the store; every call to the dashboard sends it, and job drivers inherit it.

The head survives a crash of the service on purpose: running Ray jobs keep running, and the restarted
service finds it again (its address is kept in the store) and re-attaches.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rayqueue.quota.quantity import CPU, GPU, MEMORY, MILLI, Resources
from rayqueue.scheduler.engine.capacity import NodeCapacity, matches

log = logging.getLogger("rayqueue.service.ray")

MARKER_ENV = "RAYQUEUE_LOCAL_RAY"

TPU = "google.com/tpu"
#: Ray resource name -> Kubernetes resource name (and the scale to milli-units).
RAY_TO_K8S = {"CPU": (CPU, MILLI), "GPU": (GPU, MILLI), "memory": (MEMORY, MILLI), "TPU": (TPU, MILLI)}


#: How often a wait for Ray says what it still waits for.
PROGRESS_EVERY_S = 5.0
#: `ray start` gives its raylet a fixed 30 s to register, which a busy machine can miss: start it again.
START_ATTEMPTS = 3

Progress = Callable[[str], None]


class RayClusterError(RuntimeError):
    pass


def _quiet(_: str) -> None:
    pass


class Ticker:
    """Says ``what`` (a callable: it changes as the wait goes on) every few seconds of a wait."""

    def __init__(self, progress: Progress | None, timeout: float) -> None:
        self.progress = progress or _quiet
        self.timeout = timeout
        self.started = time.monotonic()
        self.next = self.started + PROGRESS_EVERY_S

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.timeout - self.waited

    def tick(self, what: Callable[[], str]) -> None:
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + PROGRESS_EVERY_S
            self.progress(f"waiting for {what()} ({self.waited:.0f}s of {self.timeout:.0f}s)")


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def dashboard_url(address: str) -> str:
    """``127.0.0.1:8265`` or ``http://...``: the Ray dashboard (Job Submission API) URL."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


def auth_headers(token: str | None) -> dict[str, str]:
    """What Ray's token authentication expects on every dashboard call (nothing without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_alive(url: str, timeout: float = 2.0, token: str | None = None) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=timeout, headers=auth_headers(token)).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class LocalRayInfo:
    """What a restarted service needs to find (and later stop) the head it started."""

    dashboard_url: str
    gcs_address: str
    pgid: int
    temp_dir: str
    num_cpus: int
    num_gpus: int
    labels: dict[str, str] = field(default_factory=dict)
    #: process groups of the extra local nodes (one per ResourcePolicy unit started with --unit-gpus)
    worker_pgids: list[int] = field(default_factory=list)
    #: Ray's token authentication for this head (None: a head recorded before tokens were used)
    auth_token: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LocalRayInfo:
        return cls(**json.loads(text))


class LocalRayCluster:
    """A single-node Ray cluster on 127.0.0.1 owned by this process (or by a crashed predecessor)."""

    def __init__(self, info: LocalRayInfo, process: subprocess.Popen[bytes] | None = None) -> None:
        self.info = info
        self.process = process

    @property
    def url(self) -> str:
        return self.info.dashboard_url

    @property
    def auth_token(self) -> str | None:
        return self.info.auth_token

    @classmethod
    def start(
        cls,
        num_cpus: int = 8,
        num_gpus: int = 0,
        labels: Mapping[str, str] | None = None,
        resources: Mapping[str, float] | None = None,
        object_store_mb: int = 256,
        timeout: float = 180.0,
        auth_token: str | None = None,
        progress: Progress | None = None,
    ) -> LocalRayCluster:
        """Start the head and wait up to ``timeout`` seconds until it has an alive node, saying what it waits
        for every few seconds through ``progress``. ``ray start`` itself gives up after a fixed 30 s on a
        busy machine ("timed out during startup"): it is then started again, on fresh ports, while time is
        left. ``auth_token`` defaults to a fresh random one (see the module's docstring)."""
        ticker = Ticker(progress, timeout)
        for attempt in range(1, START_ATTEMPTS + 1):
            cluster = cls._start_once(num_cpus, num_gpus, labels, resources, object_store_mb, auth_token)
            try:
                cluster.wait_ready(ticker)
                log.info("started a local Ray head at %s (temp dir %s)", cluster.url, cluster.info.temp_dir)
                return cluster
            except RayStartExited as exc:
                last = attempt == START_ATTEMPTS or ticker.left() < 10
                cluster.stop(keep_logs=last)
                if last:
                    raise RayClusterError(f"{exc}; its logs are kept in {cluster.info.temp_dir}") from None
                ticker.progress(f"`ray start` exited early ({exc.reason}); starting the local Ray head again "
                                f"(attempt {attempt + 1} of {START_ATTEMPTS})")
            except BaseException:
                cluster.stop(keep_logs=True)
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _start_once(
        cls,
        num_cpus: int,
        num_gpus: int,
        labels: Mapping[str, str] | None,
        resources: Mapping[str, float] | None,
        object_store_mb: int,
        auth_token: str | None,
    ) -> LocalRayCluster:
        ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
        if ray_bin is None:
            raise RayClusterError("the `ray` command is not installed (pip install 'ray[default]')")
        # Short path: Ray's unix sockets live under it (108-byte limit).
        temp_dir = tempfile.mkdtemp(prefix="rq-", dir="/tmp")
        gcs, dash, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr, client = free_ports(9)
        cmd = [
            ray_bin, "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(gcs),
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash),
            "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(env_agent),
            "--metrics-export-port", str(metrics),
            "--node-manager-port", str(node_mgr),
            "--object-manager-port", str(obj_mgr),
            "--ray-client-server-port", str(client),
            "--num-cpus", str(num_cpus),
            "--num-gpus", str(num_gpus),
            "--object-store-memory", str(object_store_mb * 2**20),
            "--temp-dir", temp_dir,
            "--disable-usage-stats",
            "--include-dashboard", "true",
        ]  # fmt: skip
        if labels:
            cmd += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        if resources:
            cmd += ["--resources", json.dumps(dict(resources))]
        token = auth_token or secrets.token_urlsafe(32)
        env = _ray_env(temp_dir, token)
        log_path = Path(temp_dir) / "ray-start.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        info = LocalRayInfo(
            dashboard_url=f"http://127.0.0.1:{dash}",
            gcs_address=f"127.0.0.1:{gcs}",
            pgid=process.pid,
            temp_dir=temp_dir,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            labels=dict(labels or {}),
            auth_token=token,
        )
        return cls(info, process)

    def add_node(
        self, labels: Mapping[str, str], num_gpus: int = 0, num_cpus: int = 2, object_store_mb: int = 128,
        timeout: float = 180.0, progress: Progress | None = None,
    ) -> None:
        """Another local node joining this head, with node labels (a ResourcePolicy unit's nodeSelector);
        started again when `ray start` gives up early (see :meth:`start`)."""
        ticker = Ticker(progress, timeout)
        for attempt in range(1, START_ATTEMPTS + 1):
            process = self._add_node_once(labels, num_gpus, num_cpus, object_store_mb)
            while ticker.left() > 0:
                if process.poll() is not None:
                    break
                if any(matches(n.get("labels") or {}, labels) and not n.get("is_head_node")
                       for n in alive_nodes(self.url, token=self.auth_token)):
                    return
                ticker.tick(lambda: f"the local {labels} Ray node to join {self.url}")
                time.sleep(0.3)
            else:
                raise RayClusterError(f"the local {labels} node did not join within {timeout:.0f}s; its logs are "
                                      f"under {self.info.temp_dir}; --ray-wait waits longer")
            if attempt == START_ATTEMPTS or ticker.left() < 10:
                raise RayClusterError(f"`ray start` of a {labels} node exited with {process.returncode}; its logs "
                                      f"are under {self.info.temp_dir}")
            try:
                os.killpg(process.pid, signal.SIGKILL)  # what the failed start left of its group
            except ProcessLookupError:
                pass
            ticker.progress(f"`ray start` of the {labels} node exited early; starting it again")
        raise AssertionError("unreachable")

    def _add_node_once(
        self, labels: Mapping[str, str], num_gpus: int, num_cpus: int, object_store_mb: int
    ) -> subprocess.Popen[bytes]:
        ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray") or "ray"
        node_mgr, obj_mgr, env_agent, agent_http, agent_grpc, metrics = free_ports(6)
        temp_dir = Path(self.info.temp_dir) / f"n{len(self.info.worker_pgids) + 1}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            ray_bin, "start", "--block",
            "--address", self.info.gcs_address,
            "--node-ip-address", "127.0.0.1",
            "--node-manager-port", str(node_mgr),
            "--object-manager-port", str(obj_mgr),
            "--runtime-env-agent-port", str(env_agent),
            "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics),
            "--num-cpus", str(num_cpus),
            "--num-gpus", str(num_gpus),
            "--object-store-memory", str(object_store_mb * 2**20),
            "--temp-dir", str(temp_dir),
            "--disable-usage-stats",
        ]  # fmt: skip
        if labels:
            cmd += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        with open(temp_dir / "ray-start.log", "wb") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_ray_env(self.info.temp_dir, self.auth_token),
                start_new_session=True,
            )
        self.info.worker_pgids.append(process.pid)
        return process

    @classmethod
    def reattach(cls, info: LocalRayInfo, timeout: float = 180.0, progress: Progress | None = None
                 ) -> LocalRayCluster | None:
        """The head a crashed service left running, once it answers with an alive node; None when none of
        its processes is left, or when they do not answer within ``timeout`` (then they are stopped: the
        caller starts a new head). A busy head is waited for, not mistaken for a dead one."""
        cluster = cls(info)
        ticker = Ticker(progress, timeout)
        while True:
            if not head_processes(info.temp_dir):
                return None
            if cluster.ready():
                return cluster
            if ticker.left() <= 0:
                cluster.stop()
                return None
            ticker.tick(lambda: f"the local Ray head a previous run left at {info.dashboard_url} to answer")
            time.sleep(0.3)

    @property
    def log_path(self) -> Path:
        return Path(self.info.temp_dir) / "ray-start.log"

    def ready(self) -> bool:
        return dashboard_alive(self.url, timeout=2.0, token=self.auth_token) and bool(
            alive_nodes(self.url, token=self.auth_token)
        )

    def waiting_for(self) -> str:
        """What a wait for this head still lacks, with where to look."""
        if not dashboard_alive(self.url, timeout=2.0, token=self.auth_token):
            what = f"its dashboard at {self.url} to answer"
        else:
            what = f"an alive node in Ray at {self.url}"
        return f"the local Ray head: {what}; its log: {self.log_path}"

    def wait_ready(self, ticker: Ticker) -> None:
        while True:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
                raise RayStartExited(self.process.returncode, tail[0] if tail else "no output")
            if self.ready():
                return
            if ticker.left() <= 0:
                raise RayClusterError(
                    f"the local Ray head did not come up within {ticker.timeout:.0f}s ({self.waiting_for()}); "
                    f"check that log and Ray's own under {self.info.temp_dir}/session_latest/logs, and that the "
                    f"ports it was given are free (GCS {self.info.gcs_address}, dashboard {self.url}); "
                    "--ray-wait waits longer"
                )
            ticker.tick(self.waiting_for)
            time.sleep(0.3)

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every process of this head and its extra nodes (their process groups), remove the temp dir
        (unless ``keep_logs``: a head that failed to start leaves its logs for the user to read)."""
        # A head found again after a crash is not our child: its recorded process groups may belong to
        # someone else by now, so only the processes that carry its marker are stopped.
        groups = [*self.info.worker_pgids, self.info.pgid] if self.process is not None else []
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)  # SIGTERM drains for 30 s; nothing of ours needs it
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                raise RayClusterError(f"cannot stop the Ray head (process group {pgid}): {exc}") from exc
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _kill_strays(self.info.temp_dir)
        if not keep_logs:
            shutil.rmtree(self.info.temp_dir, ignore_errors=True)


class RayStartExited(RayClusterError):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"`ray start` exited with {code}: {reason}")


def _ray_env(temp_dir: str, auth_token: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("RAY_AUTH_")]:
        del env[key]  # the user's settings for another cluster must not leak into ours
    if auth_token:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = auth_token
    # Job drivers inherit this environment: put this interpreter first so `python` has ray.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_enable_worker_prestart"] = "0"  # no idle workers eating a small machine's cores
    env["RAY_prestart_worker_first_driver"] = "0"
    # A busy machine answers late: Ray's defaults would declare a node dead (5 missed 10 s health checks),
    # a worker lost (60 s to register) or the dashboard failed (60 s to start). The user's settings win.
    for key, value in BUSY_MACHINE_SETTINGS.items():
        env.setdefault(key, value)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every process of this head (drivers too) inherits the marker: stop() finds strays by it.
    env[MARKER_ENV] = temp_dir
    return env


BUSY_MACHINE_SETTINGS = {
    "RAY_health_check_failure_threshold": "30",
    "RAY_health_check_timeout_ms": "30000",
    "RAY_worker_register_timeout_seconds": "300",
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
}


def head_processes(temp_dir: str) -> list[int]:
    """The processes of a local head (its raylet, GCS, dashboard, workers, drivers): found by its temp dir
    in their command line or by the marker in their environment, never by a process group id that the
    system may have given to someone else since."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline or f"{MARKER_ENV}={temp_dir}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _kill_strays(temp_dir: str) -> None:
    """Processes of this head that left its process group (job drivers)."""
    for pid in head_processes(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ------------------------------------------------------------------------------ capacity


def alive_nodes(url: str, timeout: float = 5.0, token: str | None = None) -> list[dict[str, Any]]:
    """Alive Ray nodes with their total resources and labels (dashboard state API, no driver needed)."""
    try:
        resp = httpx.get(
            f"{url}/api/v0/nodes",
            params={"limit": 1000, "filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"},
            timeout=timeout,
            headers=auth_headers(token),
        )
    except httpx.HTTPError:
        return []
    if resp.status_code != 200:
        return []
    body = resp.json()
    result = ((body.get("data") or {}).get("result") or {}).get("result") or []
    return [n for n in result if n.get("state") == "ALIVE"]


def node_resources(node: Mapping[str, Any]) -> Resources:
    """A Ray node's total resources in our units (CPU -> cpu, GPU -> nvidia.com/gpu, memory)."""
    out: Resources = {}
    for ray_name, value in (node.get("resources_total") or {}).items():
        mapped = RAY_TO_K8S.get(ray_name)
        if mapped is not None:
            name, scale = mapped
            out[name] = out.get(name, 0) + int(round(float(value) * scale))
    return out


def node_capacities(nodes: list[dict[str, Any]]) -> list[NodeCapacity]:
    """Ray's alive nodes as capacity sees them (labels, resources in our units)."""
    return [
        NodeCapacity(str(n.get("node_id") or n.get("node_name") or ""), dict(n.get("labels") or {}), node_resources(n))
        for n in nodes
    ]
