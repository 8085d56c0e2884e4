"""The HTTP API of the standalone service (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Every handler is ``async`` and runs on the event loop, which must stay free: ``/healthz`` answers while a
submission is parsed. Parsing and slow engine work (submissions, trees, forecasts) run in worker threads;
the engine is used by one of them at a time (``Service.engine_lock``). Bodies over the size limit are
refused with 413 while they are read, before anything parses them. With a token set (required for a
non-loopback bind), every route but ``/healthz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayqueue.quota.quantity import ManifestError
from rayqueue.quota.tree import QuotaTreeError
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.core import REJECTED, NotFound, Service, ServiceError, SubmitError

log = logging.getLogger("rayqueue.service.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Paging counts from the newest row (like `tail -n`): a page is the newest `limit` rows after skipping the
# `offset` newest ones, and it is returned oldest first, in the order of the unpaged list.
LIMIT_HELP = "At most this many {what}, the newest (after offset); all when left out"
OFFSET_HELP = "Skip this many of the newest {what} first (the next page back is offset + limit)"
#: Bounds of the paging parameters: far beyond any store, well inside SQLite's 64-bit integers.
MAX_LIMIT = 1_000_000
MAX_OFFSET = 1_000_000_000
#: A job id is a RayJob name (a DNS-1123 subdomain, at most 253 characters) plus a short suffix.
MAX_REF = 300
MAX_FILES = 1000


class SubmitFile(BaseModel):
    source: str = Field(description="Where the YAML came from (a file name), used in messages", max_length=4096)
    yaml: str = Field(description="One or more YAML documents holding ray.io/v1 RayJobs")


class SubmitBody(BaseModel):
    yaml: str | None = Field(None, description="One or more YAML documents holding ray.io/v1 RayJobs "
                             "(or `files`)")
    files: list[SubmitFile] | None = Field(None, max_length=MAX_FILES, description="Several files submitted as "
                                           "one: every RayJob of every file is queued, or none")
    queue: str | None = Field(None, description="Leaf of the quota tree; overrides the rayqueue.io/queue label",
                              max_length=253)
    priority: str | None = Field(None, description="Priority class name or integer; overrides the label",
                                 max_length=253)
    ignore_other_kinds: bool = Field(False, description="Skip ConfigMaps and other non-RayJob documents")
    source: str = Field("input", description="Where `yaml` came from (a file name), used in messages",
                        max_length=4096)

    @model_validator(mode="after")
    def _one_of(self) -> SubmitBody:
        if (self.yaml is None) == (self.files is None):
            raise ValueError("give either yaml or files (a list of {source, yaml}), not both or neither")
        return self

    def sources(self) -> list[tuple[str, str]]:
        if self.files is not None:
            return [(f.source, f.yaml) for f in self.files]
        return [(self.source, self.yaml or "")]


JOB_STATES = (*st.LIVE_STATES, *st.FINAL_STATES, REJECTED)
Ref = Path(..., min_length=1, max_length=MAX_REF, description="A job's id, or its name when unambiguous")


class QuotaBody(BaseModel):
    yaml: str = Field(description="An ElasticQuotaTree document")
    dry_run: bool = Field(False, description="Only report the diff and its effect on running jobs")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes ({limit / 2**20:g} MiB; "
                              "rayqueue serve --max-body-mb): refused unread")


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413: at once by its Content-Length, or as soon as a
    streamed (chunked) body passes the limit, so that a huge body is never read into memory or parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            error = BodyTooLarge(self.limit)
            status, detail = (413, error.detail) if declared.isdigit() else (400, "bad Content-Length header")
            await JSONResponse(status_code=status, content={"detail": detail},
                               headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)  # FastAPI answers an HTTPException raised while reading
            return message

        await self.app(scope, counted, send)


NOT_JSON = 'request body is not valid JSON: send UTF-8 JSON such as {"yaml": "..."}'


def _one_line(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line a person reads: where, what is wrong, and the value sent."""
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            parts.append(f"{NOT_JSON} (a JSON decode error at position {error.get('loc', ('', '?'))[-1]})")
            continue
        loc = [str(x) for x in error.get("loc", ())]
        where = {"query": "query parameter", "path": "path parameter", "body": "body field"}.get(loc[0], loc[0]) \
            if loc else "request"
        name = ".".join(loc[1:]) or "(the whole body)"
        got = error.get("input")
        shown = "" if got is None or isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
        parts.append(f"{where} {name}: {error.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "invalid request"


def create_app(service: Service, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="rayqueue standalone",
        version="0.1.0",
        description="Queues KubeRay RayJobs under a hierarchical quota tree and runs them on a Ray cluster.",
    )
    app.add_middleware(BodyLimit, limit=service.config.max_body_bytes)

    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hand-over per request for a
    # comparison of two short strings
    async def auth(authorization: str | None = Header(None)) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(status_code=401, detail="missing or wrong token (Authorization: Bearer <token>)")

    guarded = [Depends(auth)]

    @app.exception_handler(SubmitError)
    async def _submit_error(_: Request, exc: SubmitError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": exc.summary, "problems": exc.problems})

    @app.exception_handler(QuotaTreeError)
    async def _tree_error(_: Request, exc: QuotaTreeError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": "quota tree refused; nothing was changed",
                                                      "problems": exc.violations})

    @app.exception_handler(ManifestError)
    async def _manifest_error(_: Request, exc: ManifestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": "input refused; nothing was changed",
                                                      "problems": exc.violations})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _one_line(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body that is not text (bytes that are not UTF-8): say what is expected
            return JSONResponse(status_code=400, content={"detail": f"{NOT_JSON} (bytes that are not UTF-8)"})
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the client's fault: one line to the client, the traceback to the service's log
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        first = (str(exc).splitlines() or [""])[0][:200]
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {first}"})

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
        """Queue every RayJob of the YAML, or of every file in ``files`` (all or none); answers each job's
        id and queue position."""
        accepted = await service.submit(
            body.sources(),
            queue=body.queue,
            priority=body.priority,
            ignore_other_kinds=body.ignore_other_kinds,
        )
        return {"jobs": [asdict(a) for a in accepted]}

    @app.get("/v1/jobs", dependencies=guarded, tags=["jobs"])
    async def jobs(
        state: list[str] | None = Query(None, description="Only jobs in these states (repeatable): "
                                        + ", ".join(JOB_STATES)),
        queue: str | None = Query(None, max_length=253, description="Only jobs of this leaf of the quota tree"),
        limit: int | None = Query(None, ge=1, le=MAX_LIMIT, description=LIMIT_HELP.format(what="jobs")),
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP.format(what="jobs")),
    ) -> dict[str, Any]:
        """Jobs in submission order with their state, queue position, unit and times; ``total`` counts every
        job that matches the filters, so ``total - offset - len(jobs)`` older ones are left out."""
        unknown = [s for s in state or [] if s not in JOB_STATES]
        if unknown:
            raise HTTPException(422, f"query parameter state: {', '.join(map(repr, unknown))} is not a job state "
                                     f"(one of {', '.join(JOB_STATES)})")
        views, total = await service.locked(service.job_views, state, queue, limit, offset)
        services = [v for v in service.serving.views() if queue is None or v["queue"] == queue]
        return {"jobs": views, "total": total, "offset": offset, "services": services}

    @app.get("/v1/jobs/{ref}", dependencies=guarded, tags=["jobs"])
    async def explain(ref: str = Ref) -> dict[str, Any]:
        """Where the job stands: state, queue position, reason code and sentence, unit, times."""
        out: dict[str, Any] = await service.locked(service.explain, ref)  # a forecast can take a while
        return out

    @app.get("/v1/jobs/{ref}/logs", dependencies=guarded, tags=["jobs"])
    async def logs(ref: str = Ref) -> dict[str, Any]:
        return await service.logs(ref)

    @app.post("/v1/jobs/{ref}/cancel", dependencies=guarded, tags=["jobs"])
    async def cancel(ref: str = Ref) -> dict[str, Any]:
        async with service.engine_lock:
            row = service.cancel(ref)
        return {"id": row.id, "state": row.state}

    @app.delete("/v1/jobs/{ref}", dependencies=guarded, tags=["jobs"])
    async def delete(ref: str = Ref) -> dict[str, Any]:
        async with service.engine_lock:
            row = service.cancel(ref)
        return {"id": row.id, "state": row.state}

    @app.get("/v1/history", dependencies=guarded, tags=["jobs"])
    async def history(
        job: str | None = Query(None, max_length=MAX_REF,
                                description="One job's events (its id, or its name when unambiguous)"),
        limit: int | None = Query(None, ge=1, le=MAX_LIMIT, description=LIMIT_HELP.format(what="events")),
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP.format(what="events")),
    ) -> dict[str, Any]:
        """State changes (submitted, admitted on unit, preempted, finished...) with their time, oldest first;
        ``total`` counts them all, so ``total - offset - len(events)`` older ones are left out."""
        events, total = await asyncio.to_thread(service.history, job, limit, offset)  # the store only
        return {"events": events, "total": total, "offset": offset}

    @app.get("/v1/status", dependencies=guarded, tags=["quota"])
    async def status() -> dict[str, Any]:
        """The quota tree with usage, min, max, borrowed, pending and running counts; the units."""
        out: dict[str, Any] = await service.locked(service.status)
        return out

    @app.get("/v1/quota", dependencies=guarded, tags=["quota"], response_class=PlainTextResponse)
    async def quota() -> str:
        out: str = await service.locked(service.tree_yaml)
        return out

    @app.post("/v1/quota", dependencies=guarded, tags=["quota"])
    async def apply_quota(body: QuotaBody) -> dict[str, Any]:
        """Validate and apply a new tree while jobs run (``dry_run``: diff and effects only)."""
        return await service.apply_tree_async(body.yaml, dry_run=body.dry_run)

    @app.get("/metrics", dependencies=guarded, tags=["service"])
    async def metrics() -> Response:
        async with service.engine_lock:
            service.refresh_metrics()
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
