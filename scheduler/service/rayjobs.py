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

import yaml

from rayqueue.quota.quantity import CPU, GPU, MEMORY, MILLI
from rayqueue.scheduler.rayjob import HEAD, RayJobRejected, RayJobRequest

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
        env = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RayJobRejected(f"{ident}: spec.runtimeEnvYAML is not valid YAML: {exc}") from exc
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

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class RayUnavailable(RuntimeError):
    """Ray did not answer: retry later (nothing is lost)."""


class RaySubmitRefused(RuntimeError):
    """Ray refused the job itself (bad runtime env, ...): retrying would not help."""


class RayJobs:
    """A thin, blocking wrapper around ``JobSubmissionClient``; the service calls it from threads."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: Any = None

    def _c(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as exc:  # ConnectionError, RuntimeError from the version check
                raise RayUnavailable(f"cannot reach Ray at {self.address}: {exc}") from exc
        return self._client

    def submit(self, sub: Submission) -> bool:
        """Submit; True if Ray accepted it now, False if this submission id already existed."""
        client = self._c()
        try:
            client.submit_job(**sub.kwargs())
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
        client = self._c()
        try:
            info = client.get_job_info(sid)
        except RuntimeError as exc:
            if "status code 404" in str(exc) or "does not exist" in str(exc):
                return None
            raise RayUnavailable(_short(str(exc))) from exc
        except OSError as exc:
            raise RayUnavailable(str(exc)) from exc
        status = getattr(info.status, "value", str(info.status))
        return RayStatus(
            status=status,
            message=info.message or "",
            start_time=(info.start_time / 1000.0) if info.start_time else None,
            end_time=(info.end_time / 1000.0) if info.end_time else None,
        )

    def statuses(self, sids: list[str], batch_above: int = 16) -> dict[str, RayStatus | None]:
        """Many jobs' statuses: one ``list_jobs`` call when there are many, else one call per job."""
        if len(sids) <= batch_above:
            return {sid: self.status(sid) for sid in sids}
        try:
            listed = self._c().list_jobs()
        except RuntimeError as exc:
            raise RayUnavailable(_short(str(exc))) from exc
        except OSError as exc:
            raise RayUnavailable(str(exc)) from exc
        by_sid = {}
        for info in listed:
            if info.submission_id:
                by_sid[info.submission_id] = RayStatus(
                    status=getattr(info.status, "value", str(info.status)),
                    message=info.message or "",
                    start_time=(info.start_time / 1000.0) if info.start_time else None,
                    end_time=(info.end_time / 1000.0) if info.end_time else None,
                )
        return {sid: by_sid.get(sid) for sid in sids}

    def stop(self, sid: str) -> None:
        try:
            self._c().stop_job(sid)
        except RuntimeError as exc:
            if "status code 404" in str(exc) or "does not exist" in str(exc):
                return
            raise RayUnavailable(_short(str(exc))) from exc
        except OSError as exc:
            raise RayUnavailable(str(exc)) from exc

    def logs(self, sid: str) -> str | None:
        try:
            return str(self._c().get_job_logs(sid))
        except RuntimeError as exc:
            if "status code 404" in str(exc) or "does not exist" in str(exc):
                return None
            raise RayUnavailable(_short(str(exc))) from exc
        except OSError as exc:
            raise RayUnavailable(str(exc)) from exc


def _short(text: str, limit: int = 600) -> str:
    """Ray's HTTP errors carry whole server tracebacks; keep the last meaningful line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and line.strip() != "."]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:limit]
    return (lines[-1] if lines else text)[:limit]
