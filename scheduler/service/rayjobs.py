"""Releasing an admitted RayJob to Ray through the Job Submission API, and following it.

How a RayJob's requests map onto Ray (see docs/standalone.md):

* the quota and the unit account the whole gang (head + workers + submitter), as in every mode;
* the Ray job's *entrypoint* (the driver) stands in for the head pod: ``entrypoint_num_cpus``,
  ``entrypoint_num_gpus`` and ``entrypoint_memory`` are the head pod's requests, so Ray reserves them
  for as long as the driver runs;
* the workers' share is not reserved up front: it is the room the driver's own tasks and actors use,
  and the quota guarantees it exists because the service never admits more than a unit's capacity;
* the submitter pod has no Ray counterpart (the service submits), its share stays counted in quota;
* the job is pinned to the unit it was placed on with ``entrypoint_label_selector`` = the unit's
  ``nodeSelector`` (Ray node labels, e.g. ``ray start --labels pool=ecs``).

The submission id is the job id (``<id>-r<n>`` after the n-th requeue), so a retry after a crash can
never start the same attempt twice: Ray refuses a second submission with the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from rayqueue.quota.manifests import DocumentError, load_document
from rayqueue.quota.quantity import CPU, GPU, MEMORY, MILLI
from rayqueue.scheduler.service.raycluster import auth_headers
from rayqueue.scheduler.workloads.rayjob import HEAD, RayJobRejected, RayJobRequest

log = logging.getLogger("rayqueue.service.rayjobs")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    """Everything ``JobSubmissionClient.submit_job`` is called with."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any] | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    label_selector: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entrypoint": self.entrypoint,
            "submission_id": self.submission_id,
            "runtime_env": self.runtime_env,
            "metadata": self.metadata,
        }
        if self.num_cpus:
            out["entrypoint_num_cpus"] = self.num_cpus
        if self.num_gpus:
            out["entrypoint_num_gpus"] = self.num_gpus
        if self.memory:
            out["entrypoint_memory"] = self.memory
        if self.label_selector:
            out["entrypoint_label_selector"] = dict(self.label_selector)
        return out


def runtime_env_of(request: RayJobRequest, ident: str) -> dict[str, Any] | None:
    """``spec.runtimeEnvYAML`` parsed; raises :class:`RayJobRejected` naming the field."""
    text = request.runtime_env_yaml
    if not text:
        return None
    try:
        env = load_document(text, "spec.runtimeEnvYAML")
    except DocumentError as exc:
        raise RayJobRejected(f"{ident}: {exc}") from exc
    if env is None:
        return None
    if not isinstance(env, dict):
        raise RayJobRejected(
            f"{ident}: spec.runtimeEnvYAML must be a mapping (pip, env_vars, working_dir, ...), "
            f"got {type(env).__name__}"
        )
    return env


def check_runnable(request: RayJobRequest, ident: str) -> None:
    """What standalone mode needs beyond a valid RayJob: an entrypoint and a readable runtime env."""
    if not request.entrypoint or not str(request.entrypoint).strip():
        raise RayJobRejected(f"{ident}: spec.entrypoint is required in standalone mode (the command Ray runs)")
    runtime_env_of(request, ident)


def submission_for(
    request: RayJobRequest,
    sid: str,
    *,
    job_id: str,
    queue: str,
    unit: str,
    node_selector: Mapping[str, str] | None = None,
) -> Submission:
    head: Mapping[str, int] = next((p.per_pod for p in request.pod_sets if p.role == HEAD), {})
    cpus = head.get(CPU, 0) / MILLI
    gpus = head.get(GPU, 0) / MILLI
    memory = head.get(MEMORY, 0) // MILLI
    return Submission(
        submission_id=sid,
        entrypoint=str(request.entrypoint),
        runtime_env=runtime_env_of(request, request.name),
        num_cpus=cpus or None,
        num_gpus=gpus or None,
        memory=memory or None,
        label_selector=dict(node_selector or {}),
        metadata={"rayqueue.io/job": job_id, "rayqueue.io/queue": queue, "rayqueue.io/unit": unit},
    )


@dataclass(frozen=True)
class RayStatus:
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str = ""
    start_time: float | None = None
    end_time: float | None = None
    driver_node_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class RayUnavailable(RuntimeError):
    """Ray did not answer: retry later (nothing is lost)."""


class RaySubmitRefused(RuntimeError):
    """Ray refused the job itself (bad runtime env, ...): retrying would not help."""


class RayJobs:
    """The Ray Job Submission REST API (``/api/jobs/``), blocking, every call bounded by a timeout.

    The service calls it from worker threads; a Ray dashboard that hangs makes a call fail with
    :class:`RayUnavailable` (retried later) instead of freezing the service or its shutdown. A runtime env
    with a local ``working_dir`` / ``py_modules`` is submitted through Ray's ``JobSubmissionClient``,
    which uploads the files first.
    """

    def __init__(self, address: str, timeout_s: float = 15.0, auth_token: str | None = None) -> None:
        self.address = address.rstrip("/")
        self.timeout_s = timeout_s
        self.auth_token = auth_token  # Ray's token authentication (RAY_AUTH_MODE=token), if the cluster uses it
        self._http = httpx.Client(base_url=self.address, timeout=timeout_s, headers=auth_headers(auth_token))
        self._client: Any = None

    def _c(self) -> Any:
        """Ray's own SDK client (uploads of local working dirs; tests and benchmarks)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address, headers=auth_headers(self.auth_token))
            except Exception as exc:  # ConnectionError, RuntimeError from the version check
                raise RayUnavailable(f"cannot reach Ray at {self.address}: {exc}") from exc
        return self._client

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RayUnavailable(f"{method} {self.address}{path}: {exc!r}") from exc

    def submit(self, sub: Submission) -> bool:
        """Submit; True if Ray accepted it now, False if this submission id already existed."""
        if _needs_upload(sub.runtime_env):
            return self._submit_with_sdk(sub)
        body = {k: v for k, v in sub.kwargs().items() if v is not None}
        resp = self._request("POST", "/api/jobs/", json=body)
        if resp.status_code == 200:
            return True
        text = resp.text
        if "already exists" in text:
            return False
        if 400 <= resp.status_code < 500 or "ValueError" in text or "TypeError" in text:
            raise RaySubmitRefused(_short(text))
        raise RayUnavailable(f"status {resp.status_code}: {_short(text)}")

    def _submit_with_sdk(self, sub: Submission) -> bool:
        try:
            self._c().submit_job(**sub.kwargs())
            return True
        except RuntimeError as exc:
            text = str(exc)
            if "already exists" in text:
                return False
            if "status code 4" in text or "ValueError" in text or "TypeError" in text:
                raise RaySubmitRefused(_short(text)) from exc
            raise RayUnavailable(_short(text)) from exc
        except OSError as exc:  # requests' ConnectionError, timeouts
            raise RayUnavailable(str(exc)) from exc
        except (ValueError, TypeError) as exc:  # the client's own checks of the runtime env
            raise RaySubmitRefused(str(exc)) from exc

    def status(self, sid: str) -> RayStatus | None:
        """The job's status, or None when Ray does not know this submission id."""
        resp = self._request("GET", f"/api/jobs/{sid}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RayUnavailable(f"status {resp.status_code}: {_short(resp.text)}")
        return _status(resp.json())

    def statuses(self, sids: list[str], batch_above: int = 16) -> dict[str, RayStatus | None]:
        """Many jobs' statuses: one listing when there are many, else one call per job."""
        if len(sids) <= batch_above:
            return {sid: self.status(sid) for sid in sids}
        resp = self._request("GET", "/api/jobs/")
        if resp.status_code != 200:
            raise RayUnavailable(f"status {resp.status_code}: {_short(resp.text)}")
        by_sid = {d["submission_id"]: _status(d) for d in resp.json() if d.get("submission_id")}
        return {sid: by_sid.get(sid) for sid in sids}

    def stop(self, sid: str) -> None:
        resp = self._request("POST", f"/api/jobs/{sid}/stop")
        if resp.status_code in (200, 404):
            return
        raise RayUnavailable(f"status {resp.status_code}: {_short(resp.text)}")

    def logs(self, sid: str) -> str | None:
        resp = self._request("GET", f"/api/jobs/{sid}/logs")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RayUnavailable(f"status {resp.status_code}: {_short(resp.text)}")
        return str(resp.json().get("logs") or "")

    def close(self) -> None:
        self._http.close()


def _status(d: Mapping[str, Any]) -> RayStatus:
    start, end = d.get("start_time"), d.get("end_time")
    return RayStatus(
        status=str(d.get("status")),
        message=str(d.get("message") or ""),
        start_time=start / 1000.0 if start else None,
        end_time=end / 1000.0 if end else None,
        driver_node_id=d.get("driver_node_id"),
    )


def _needs_upload(env: Mapping[str, Any] | None) -> bool:
    """A local path in working_dir / py_modules: Ray's SDK must upload it before submitting."""
    if not env:
        return False
    paths: list[Any] = [env.get("working_dir"), *(env.get("py_modules") or [])]
    return any(isinstance(p, str) and "://" not in p for p in paths)


def _short(text: str, limit: int = 600) -> str:
    """Ray's HTTP errors carry whole server tracebacks; keep the last meaningful line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and line.strip() != "."]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:limit]
    return (lines[-1] if lines else text)[:limit]
