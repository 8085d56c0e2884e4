"""A small CPU-only Ray Serve application for the demo, the tests and the benchmark (not imported by the
service: Ray's workers import it by ``import_path: rayqueue.scheduler.service.serve_app:app``).

Each request stands in for an inference call: it holds the replica for ``WORK_S`` seconds (an await, so a
2-core machine is not burnt), so the number of requests in flight grows with the load and Serve's
autoscaler adds replicas (``target_ongoing_requests``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve

WORK_S = 0.05


@serve.deployment
class Predictor:
    async def __call__(self, request: Any) -> dict[str, Any]:
        await asyncio.sleep(WORK_S)
        return {"ok": True, "replica": os.getpid()}


app = Predictor.bind()  # type: ignore[attr-defined]  # added by @serve.deployment
