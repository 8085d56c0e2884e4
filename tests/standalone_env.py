"""Helpers for the standalone-mode tests: RayJob manifests whose drivers finish when a test says so."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

GATE_SCRIPT = """\
import os, sys, time
gate_dir, name = sys.argv[1], sys.argv[2]
print("started", name, flush=True)
while not (os.path.exists(os.path.join(gate_dir, name)) or os.path.exists(os.path.join(gate_dir, "ALL"))):
    time.sleep(0.05)
print("finished", name, flush=True)
"""


class Gates:
    """Each job's driver runs until ``open(name)`` creates its file (``open_all`` ends every one)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "gates"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.script = root / "gate.py"
        self.script.write_text(GATE_SCRIPT)

    def entrypoint(self, name: str) -> str:
        return f"{sys.executable} {self.script} {self.dir} {name}"

    def open(self, name: str) -> None:
        (self.dir / name).touch()

    def open_all(self) -> None:
        (self.dir / "ALL").touch()


def rayjob(
    name: str,
    entrypoint: str,
    *,
    namespace: str | None = "team-a",
    gpus: int = 1,
    priority: str | None = None,
    queue: str | None = None,
    runtime_env: str | None = None,
) -> str:
    """A KubeRay RayJob (head + one GPU worker + the default submitter) as YAML."""
    meta = [f"  name: {name}"]
    if namespace:
        meta.append(f"  namespace: {namespace}")
    labels = []
    if priority is not None:
        labels.append(f'    rayqueue.io/priority-class: "{priority}"')
    if queue is not None:
        labels.append(f'    rayqueue.io/queue: "{queue}"')
    if labels:
        meta += ["  labels:", *labels]
    env = f"  runtimeEnvYAML: |\n{textwrap.indent(runtime_env, '    ')}" if runtime_env else ""
    meta_text = "\n".join(meta)
    return f"""\
apiVersion: ray.io/v1
kind: RayJob
metadata:
{meta_text}
spec:
  entrypoint: {entrypoint}
{env}
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.52.0
              resources:
                requests: {{cpu: 100m, memory: 128Mi}}
    workerGroupSpecs:
      - groupName: gpu
        replicas: 1
        rayStartParams: {{}}
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.52.0
                resources:
                  requests: {{cpu: 100m, memory: 128Mi}}
                  limits: {{nvidia.com/gpu: {gpus}}}
"""


def tree(*leaves: tuple[str, int, int], root_min: int | None = None, root_max: int | None = None,
         preemption: str | None = None) -> str:
    """An ElasticQuotaTree: leaves (name, min gpus, max gpus), namespace = leaf name; ``preemption`` sets
    every leaf's preemptionPolicy (the engine's default is LowerPriority)."""
    lines = [
        "apiVersion: scheduling.sigs.k8s.io/v1beta1",
        "kind: ElasticQuotaTree",
        "metadata: {name: test}",
        "spec:",
        "  root:",
        "    name: root",
    ]
    if root_min is not None:
        lines.append(f"    min: {{nvidia.com/gpu: {root_min}}}")
    if root_max is not None:
        lines.append(f"    max: {{nvidia.com/gpu: {root_max}}}")
    lines.append("    children:")
    for name, lo, hi in leaves:
        gpu = "nvidia.com/gpu"
        attributes = f", attributes: {{preemptionPolicy: {preemption}}}" if preemption else ""
        lines.append(f"      - {{name: {name}, namespaces: [{name}], min: {{{gpu}: {lo}}}, max: {{{gpu}: {hi}}}{attributes}}}")
    return "\n".join(lines) + "\n"


#: How long a test waits for an event before calling it a hang: generous, since a busy 2-core machine
#: running Ray is slow; the wait ends as soon as the event happens.
HANG_GUARD_S = 240.0


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = HANG_GUARD_S) -> None:
    """Wait until a ``rayqueue serve`` (or post-mortem) process answers ``/healthz``; fail with its log if
    it exits or stays silent."""
    import httpx  # the service's HTTP client: only the tests that start a server need it

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json().get("ok"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"serve did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


async def wait_until(check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = HANG_GUARD_S,
                     what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


#: The demo's Serve application (a module installed with rayqueue, importable by Ray's workers).
SERVE_APP = "rayqueue.scheduler.service.serve_app:app"


def rayservice(
    name: str,
    *,
    namespace: str = "serving",
    app: str = "predict",
    min_replicas: int = 1,
    max_replicas: int = 2,
    gpus: int = 1,
    upscale_delay_s: float = 0.5,
    downscale_delay_s: float = 2.0,
) -> str:
    """A KubeRay RayService whose serveConfigV2 runs the demo's Serve application: one deployment that
    autoscales between ``min_replicas`` and ``max_replicas``, each replica holding ``gpus`` logical GPUs."""
    return f"""\
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: {name}
  namespace: {namespace}
spec:
  serveConfigV2: |
    applications:
      - name: {app}
        route_prefix: /{app}
        import_path: {SERVE_APP}
        deployments:
          - name: Predictor
            max_ongoing_requests: 4
            autoscaling_config:
              min_replicas: {min_replicas}
              max_replicas: {max_replicas}
              target_ongoing_requests: 1
              upscale_delay_s: {upscale_delay_s}
              downscale_delay_s: {downscale_delay_s}
              look_back_period_s: 1
            ray_actor_options:
              num_cpus: 0.1
              num_gpus: {gpus}
  rayClusterConfig:
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.52.0
              resources:
                requests: {{cpu: 100m, memory: 128Mi}}
"""
