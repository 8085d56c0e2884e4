"""The operator serves the dashboard on a port of its own, read-only: the live pages (quota tree, queues)
from its in-memory engine, and the job and history pages from the SQL history it writes when started with
``--history-db`` (``history.py``; see docs/dashboard.md). Without one, only the live pages answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rayqueue.scheduler.dashboard.live import LiveSnapshot, engine_snapshot
from rayqueue.scheduler.engine.forecast import forecast_starts
from rayqueue.scheduler.operator.controller import Controller

#: A reading of the engine is shared by every viewer for this long (seconds).
SNAPSHOT_TTL_S = 1.0
#: The forecast runs on the operator's event loop (under the controller's lock): a small backlog only,
#: and reused this long.
FORECAST_LIMIT = 500
FORECAST_TTL_S = 15.0


class OperatorLive:
    """The dashboard's live source over the operator's engine."""

    ray_dashboard_url: str | None = None  # each RayJob has its own Ray cluster; KubeRay knows its dashboard
    #: the job page says why it shows no log: the driver's log is in the RayJob's own Ray cluster
    logs_note = ("The operator keeps no driver logs: they live in the RayJob's Ray cluster "
                 "(kubectl logs on its submitter or head pod) and go with it.")

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._cached: LiveSnapshot | None = None
        self._starts: tuple[float, dict[str, float | None]] | None = None

    def ray_job_url(self, submission_id: str) -> str | None:
        return None

    async def snapshot(self) -> LiveSnapshot:
        if self._cached is not None and time.monotonic() - self._cached.taken_at <= SNAPSHOT_TTL_S:
            return self._cached
        async with self.controller.lock:  # the engine is read between two decisions, never during one
            engine = self.controller.engine
            if engine is None:  # not the leader, or no tree yet
                snap = LiveSnapshot(taken_at=time.monotonic(), status={"tree": "", "nodes": [], "units": []})
            else:
                now = self.controller.clock()
                waiting = sum(len(q.pending) for q in engine.queue_views())
                if waiting <= FORECAST_LIMIT and (self._starts is None
                                                  or time.monotonic() - self._starts[0] > FORECAST_TTL_S):
                    self._starts = (time.monotonic(), forecast_starts(engine, now))
                snap = engine_snapshot(engine, now, forecast_limit=FORECAST_LIMIT,
                                       starts=self._starts[1] if self._starts is not None else {})
        self._cached = snap
        return snap


def dashboard_app(controller: Controller, token: str | None = None, history_url: str | None = None) -> Any:
    from fastapi import FastAPI

    from rayqueue.scheduler.dashboard.history import History
    from rayqueue.scheduler.dashboard.pages import mount

    app = FastAPI(title="rayqueue operator dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    writer = controller.history
    history = History(engine=writer.store.engine) if writer is not None else History(history_url) if history_url \
        else None
    mount(app, history, OperatorLive(controller), token, title="rayqueue operator")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "leader": controller.leader}

    return app


async def serve_dashboard(controller: Controller, port: int, host: str = "0.0.0.0", token: str | None = None,
                          history_url: str | None = None) -> asyncio.Task[None]:
    """Serve the pages on ``port`` in the operator's event loop; cancel the task to stop."""
    import contextlib
    from collections.abc import Iterator

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # kopf owns SIGTERM / SIGINT: the pages stop with the operator's loop

    server = Server(uvicorn.Config(dashboard_app(controller, token, history_url), host=host, port=port,
                                   log_level="warning", lifespan="off"))
    return asyncio.create_task(server.serve(), name="rayqueue-dashboard")
