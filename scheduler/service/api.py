"""The HTTP API of the standalone service (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Every handler is ``async``: they all run on the event loop that owns the engine. With a token set
(required for a non-loopback bind), every route but ``/healthz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from rayqueue.quota.tree import QuotaTreeError
from rayqueue.scheduler.service.core import NotFound, Service, ServiceError, SubmitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Paging counts from the newest row (like `tail -n`): a page is the newest `limit` rows after skipping the
# `offset` newest ones, and it is returned oldest first, in the order of the unpaged list.
LIMIT_HELP = "At most this many {what}, the newest (after offset); all when left out"
OFFSET_HELP = "Skip this many of the newest {what} first (the next page back is offset + limit)"


class SubmitBody(BaseModel):
    yaml: str = Field(description="One or more YAML documents holding ray.io/v1 RayJobs")
    queue: str | None = Field(None, description="Leaf of the quota tree; overrides the rayqueue.io/queue label")
    priority: str | None = Field(None, description="Priority class name or integer; overrides the label")
    ignore_other_kinds: bool = Field(False, description="Skip ConfigMaps and other non-RayJob documents")
    source: str = Field("input", description="Where the YAML came from (a file name), used in messages")


class QuotaBody(BaseModel):
    yaml: str = Field(description="An ElasticQuotaTree document")
    dry_run: bool = Field(False, description="Only report the diff and its effect on running jobs")


def create_app(service: Service, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="rayqueue standalone",
        version="0.1.0",
        description="Queues KubeRay RayJobs under a hierarchical quota tree and runs them on a Ray cluster.",
    )

    def auth(authorization: str | None = Header(None)) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(status_code=401, detail="missing or wrong token (Authorization: Bearer <token>)")

    guarded = [Depends(auth)]

    @app.exception_handler(SubmitError)
    async def _submit_error(_: Request, exc: SubmitError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": "submission refused; nothing was accepted",
                                                      "problems": exc.problems})

    @app.exception_handler(QuotaTreeError)
    async def _tree_error(_: Request, exc: QuotaTreeError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": "quota tree refused; nothing was changed",
                                                      "problems": exc.violations})

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ServiceError)
    async def _conflict(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        return {"ok": service.started, "ray": service.ray.address}

    @app.post("/v1/jobs", status_code=201, dependencies=guarded, tags=["jobs"])
    async def submit(body: SubmitBody) -> dict[str, Any]:
        """Queue every RayJob in the YAML (all or none); answers each job's id and queue position."""
        accepted = service.submit_text(
            body.yaml,
            queue=body.queue,
            priority=body.priority,
            ignore_other_kinds=body.ignore_other_kinds,
            source=body.source,
        )
        return {"jobs": [asdict(a) for a in accepted]}

    @app.get("/v1/jobs", dependencies=guarded, tags=["jobs"])
    async def jobs(
        state: list[str] | None = Query(None, description="Only jobs in these states (repeatable)"),
        queue: str | None = Query(None, description="Only jobs of this leaf of the quota tree"),
        limit: int | None = Query(None, ge=1, description=LIMIT_HELP.format(what="jobs")),
        offset: int = Query(0, ge=0, description=OFFSET_HELP.format(what="jobs")),
    ) -> dict[str, Any]:
        """Jobs in submission order with their state, queue position, unit and times; ``total`` counts every
        job that matches the filters, so ``total - offset - len(jobs)`` older ones are left out."""
        views, total = service.job_views(state, queue, limit, offset)
        return {"jobs": views, "total": total, "offset": offset}

    @app.get("/v1/jobs/{ref}", dependencies=guarded, tags=["jobs"])
    async def explain(ref: str) -> dict[str, Any]:
        """Where the job stands: state, queue position, reason code and sentence, unit, times."""
        return service.explain(ref)

    @app.get("/v1/jobs/{ref}/logs", dependencies=guarded, tags=["jobs"])
    async def logs(ref: str) -> dict[str, Any]:
        return await service.logs(ref)

    @app.post("/v1/jobs/{ref}/cancel", dependencies=guarded, tags=["jobs"])
    async def cancel(ref: str) -> dict[str, Any]:
        row = service.cancel(ref)
        return {"id": row.id, "state": row.state}

    @app.delete("/v1/jobs/{ref}", dependencies=guarded, tags=["jobs"])
    async def delete(ref: str) -> dict[str, Any]:
        row = service.cancel(ref)
        return {"id": row.id, "state": row.state}

    @app.get("/v1/history", dependencies=guarded, tags=["jobs"])
    async def history(
        job: str | None = Query(None, description="One job's events (its id, or its name when unambiguous)"),
        limit: int | None = Query(None, ge=1, description=LIMIT_HELP.format(what="events")),
        offset: int = Query(0, ge=0, description=OFFSET_HELP.format(what="events")),
    ) -> dict[str, Any]:
        """State changes (submitted, admitted on unit, preempted, finished...) with their time, oldest first;
        ``total`` counts them all, so ``total - offset - len(events)`` older ones are left out."""
        events, total = service.history(job, limit, offset)
        return {"events": events, "total": total, "offset": offset}

    @app.get("/v1/status", dependencies=guarded, tags=["quota"])
    async def status() -> dict[str, Any]:
        """The quota tree with usage, min, max, borrowed, pending and running counts; the units."""
        return service.status()

    @app.get("/v1/quota", dependencies=guarded, tags=["quota"], response_class=PlainTextResponse)
    async def quota() -> str:
        return service.tree_yaml()

    @app.post("/v1/quota", dependencies=guarded, tags=["quota"])
    async def apply_quota(body: QuotaBody) -> dict[str, Any]:
        """Validate and apply a new tree while jobs run (``dry_run``: diff and effects only)."""
        return service.apply_tree(body.yaml, dry_run=body.dry_run)

    @app.get("/metrics", dependencies=guarded, tags=["service"])
    async def metrics() -> Response:
        service.refresh_metrics()
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
