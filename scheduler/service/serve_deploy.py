"""A RayService's Serve applications in standalone mode, and Ray Serve's REST API.

What the engine charges for a RayService's ``serveConfigV2`` (``standalone_shape``: the deployment that
autoscales is the replica, every other deployment the head), the applications as deployed with the
scaling deployment capped at the reservation (``capped_applications``), and the blocking client of
Serve's declarative REST API on Ray's dashboard (``ServeApi``, ``serve_target``). No state, no engine:
``serving.py`` drives them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from rayqueue.quota.quantity import Resources
from rayqueue.scheduler.engine.services import ServiceSpec
from rayqueue.scheduler.service.raycluster import auth_headers
from rayqueue.scheduler.service.rayjobs import RayUnavailable, _short
from rayqueue.scheduler.workloads.serving import (
    MAX_SERVE_CONFIG_BYTES,
    ServeDeployment,
    ServiceRequest,
    ServingRejected,
)

SERVE_PATH = "/api/serve/applications/"


@dataclass(frozen=True)
class StandaloneShape:
    """What the engine charges for a RayService in standalone, and which Serve deployment scales."""

    spec: ServiceSpec
    replicas: int
    scaling: tuple[str, str] | None  # (application, deployment) whose replicas are the service's
    applications: tuple[dict[str, Any], ...]  # serveConfigV2's applications, as written
    notes: tuple[str, ...]


def standalone_shape(request: ServiceRequest, manifest: Mapping[str, Any]) -> StandaloneShape:
    """The service of a RayService's Serve applications (see the module's docstring)."""
    ident = f"RayService {request.name}"
    apps = _applications(manifest, ident)
    if not apps:
        raise ServingRejected(f"{ident}: spec.serveConfigV2 has no applications: standalone mode runs a "
                              "RayService as its Serve applications on the local Ray cluster")
    names = [str(a.get("name") or "default") for a in apps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ServingRejected(f"{ident}: spec.serveConfigV2: application {dupes[0]!r} appears twice")
    for i, app in enumerate(apps):
        if not isinstance(app.get("import_path"), str) or not app["import_path"].strip():
            raise ServingRejected(f"{ident}: spec.serveConfigV2: applications[{i}].import_path is required "
                                  "(module:attribute of the Serve application)")
    scaling = [d for d in request.deployments if d.max_replicas > d.min_replicas]
    chosen: ServeDeployment | None = scaling[0] if scaling else None
    head: Resources = {}
    notes: list[str] = []
    for d in request.deployments:
        if d is chosen:
            continue
        n = d.max_replicas
        if d in scaling:
            notes.append(f"deployment {d.application}/{d.name} also autoscales: charged at its max_replicas {n}")
        for r, v in d.per_replica.items():
            head[r] = head.get(r, 0) + v * n
    hot = request.spec.hot_reserve
    if chosen is None:
        spec = ServiceSpec(head=head, replica={}, min_replicas=0, max_replicas=0, head_pods=1)
        notes.append("no deployment autoscales (no autoscaling_config): nothing is reserved")
        return StandaloneShape(spec, 0, None, tuple(apps), tuple(notes))
    spec = ServiceSpec(head=head, replica=dict(chosen.per_replica), min_replicas=chosen.min_replicas,
                       max_replicas=chosen.max_replicas, hot_reserve=hot, head_pods=1, replica_pods=1)
    return StandaloneShape(spec, chosen.min_replicas, (chosen.application, chosen.name), tuple(apps), tuple(notes))


def _applications(manifest: Mapping[str, Any], ident: str) -> list[dict[str, Any]]:
    """serveConfigV2's applications (already validated by ``rayservice_request``), as plain data."""
    import yaml

    raw = (manifest.get("spec") or {}).get("serveConfigV2")
    if not isinstance(raw, str) or len(raw.encode("utf-8", "replace")) > MAX_SERVE_CONFIG_BYTES:
        raise ServingRejected(f"{ident}: spec.serveConfigV2 is required in standalone mode (the Serve applications)")
    doc = yaml.safe_load(raw)  # bounded and checked by rayservice_request's loader already
    apps = doc.get("applications") if isinstance(doc, Mapping) else None
    return [dict(a) for a in apps or [] if isinstance(a, Mapping)]


def capped_applications(shape: StandaloneShape, max_replicas: int) -> list[dict[str, Any]]:
    """The applications as deployed: the scaling deployment's ``max_replicas`` capped at what the engine
    reserved for the service (never more than asked)."""
    out: list[dict[str, Any]] = []
    for app in shape.applications:
        app = json.loads(json.dumps(app))  # a deep copy of plain YAML data
        if shape.scaling is not None and str(app.get("name") or "default") == shape.scaling[0]:
            for d in app.get("deployments") or []:
                if isinstance(d, dict) and str(d.get("name")) == shape.scaling[1]:
                    auto = d.get("autoscaling_config")
                    if isinstance(auto, dict):
                        auto["max_replicas"] = min(int(auto.get("max_replicas", 1)), max_replicas)
                        auto["min_replicas"] = min(int(auto.get("min_replicas", 1)), auto["max_replicas"])
                        auto.setdefault("initial_replicas", auto["min_replicas"])
                        auto["initial_replicas"] = min(max(int(auto["initial_replicas"]), auto["min_replicas"]),
                                                       auto["max_replicas"])
                    elif d.get("num_replicas") == "auto":
                        d["num_replicas"] = None
                        d["autoscaling_config"] = {"min_replicas": 1, "max_replicas": max(1, max_replicas)}
        out.append(app)
    return out


class ServeApi:
    """Ray Serve's REST API on the dashboard, blocking, every call bounded (run it in worker threads)."""

    def __init__(self, address: str, timeout_s: float = 30.0, auth_token: str | None = None) -> None:
        self.address = address.rstrip("/")
        self._http = httpx.Client(base_url=self.address, timeout=timeout_s, headers=auth_headers(auth_token))

    def applications(self) -> dict[str, Any]:
        """``{application: details}`` as Serve reports them (empty when Serve is not running)."""
        try:
            resp = self._http.get(SERVE_PATH)
        except httpx.HTTPError as exc:
            raise RayUnavailable(f"GET {self.address}{SERVE_PATH}: {exc!r}") from exc
        if resp.status_code != 200:
            raise RayUnavailable(f"GET {SERVE_PATH}: status {resp.status_code}: {_short(resp.text)}")
        apps = resp.json().get("applications") or {}
        return dict(apps) if isinstance(apps, Mapping) else {}

    def deploy(self, body: Mapping[str, Any]) -> None:
        """Declare the FULL set of applications (Serve deletes any left out)."""
        try:
            resp = self._http.put(SERVE_PATH, json=dict(body))
        except httpx.HTTPError as exc:
            raise RayUnavailable(f"PUT {self.address}{SERVE_PATH}: {exc!r}") from exc
        if resp.status_code != 200:
            raise RayUnavailable(f"PUT {SERVE_PATH}: status {resp.status_code}: {_short(resp.text)}")

    def close(self) -> None:
        self._http.close()


def serve_target(apps: Mapping[str, Any], scaling: tuple[str, str]) -> tuple[int, int] | None:
    """(target, running) replicas of one deployment as Serve reports them; None if Serve lacks it."""
    app = apps.get(scaling[0])
    if not isinstance(app, Mapping):
        return None
    dep = (app.get("deployments") or {}).get(scaling[1])
    if not isinstance(dep, Mapping):
        return None
    replicas = dep.get("replicas") or []
    running = sum(1 for r in replicas if isinstance(r, Mapping) and r.get("state") == "RUNNING")
    target = dep.get("target_num_replicas")
    return (int(target) if isinstance(target, int) else len(replicas)), running
