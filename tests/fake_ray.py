"""A stand-in for Ray's Job Submission API, and a settle step, for the standalone tests that run the real
service and SQLite without a Ray cluster."""

from __future__ import annotations

import asyncio
from typing import Any

from rayqueue.scheduler.service.core import Service
from rayqueue.scheduler.service.rayjobs import RayStatus


class FakeRay:
    """Accepts every job (``start_state``, ``RUNNING`` unless a test's subclass says otherwise); ``stop``
    stops a pending or running one."""

    address = "fake://ray"
    auth_token = None
    start_state = "RUNNING"

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}

    def submit(self, sub: Any) -> bool:
        fresh = sub.submission_id not in self.jobs
        self.jobs.setdefault(sub.submission_id, self.start_state)
        return fresh

    def status(self, sid: str) -> RayStatus | None:
        s = self.jobs.get(sid)
        return None if s is None else RayStatus(s)

    def statuses(self, sids: list[str]) -> dict[str, RayStatus | None]:
        return {sid: self.status(sid) for sid in sids}

    def stop(self, sid: str) -> None:
        if self.jobs.get(sid) in ("PENDING", "RUNNING"):
            self.jobs[sid] = "STOPPED"

    def logs(self, sid: str) -> str | None:
        return f"driver output of {sid}\n" if sid in self.jobs else None

    def close(self) -> None:
        pass


async def settle(svc: Service, rounds: int = 100) -> None:
    """Let the release and deploy tasks run, then follow Ray (and Serve) once, until nothing is left in
    flight or ``rounds`` passes went by."""
    for _ in range(rounds):
        await asyncio.sleep(0)
        await svc.poll_once()
        if not svc.state.releasing and not svc.state.background:
            return
        await asyncio.sleep(0.002)
