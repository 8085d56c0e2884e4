"""The dashboard's routes, mounted on a front end's FastAPI app (``mount``), or on an app of their own
over a store alone (``history_app``).

Pages are rendered on the server with Jinja2 and carry their charts as inline SVG; the only script
(``static/dashboard.js``) swaps in table rows that the server pushes with server-sent events. Every
route follows the API's token rule: with a token set, a request needs ``Authorization: Bearer <token>``
or the cookie ``/login`` sets (a browser cannot add a header to a link).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from rayqueue.quota.quantity import MILLI, is_byte_resource
from rayqueue.scheduler.dashboard import charts, timeline
from rayqueue.scheduler.dashboard.history import LIVE, OUTCOMES, History, Search
from rayqueue.scheduler.dashboard.live import LiveSnapshot, LiveSource

HERE = Path(__file__).parent
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
COOKIE = "rayqueue_token"
PAGE_SIZE = 50
MAX_PAGE = 1_000_000
#: how often a live page's rows are recomputed for its server-sent events
STREAM_INTERVAL_S = 1.0
#: a comment line this often keeps proxies from closing a quiet stream
HEARTBEAT_S = 15.0
MAX_FILTER = 253
#: what the history page's charts cover when no time range is given
CHART_WINDOW_S = 7 * 86400.0


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(quantity=charts.quantity, duration=charts.duration, when=charts.when,
                       quota_bar=charts.quota_bar, resource_seconds=resource_seconds)
    return env


def resource_seconds(value: float, resource: str) -> str:
    """Milli-units x seconds as hours of the resource (GPU-hours, core-hours, GiB-hours)."""
    hours = value / MILLI / 3600
    if is_byte_resource(resource):
        return f"{hours / 2**30:.3g} GiB-h"
    return f"{hours:.3g} {resource}-h"


class BadInput(ValueError):
    pass


def parse_time(value: str | None, field: str, now: float) -> float | None:
    """A time filter: ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM`` (local time), or an age such as ``6h``, ``7d``."""
    if not value:
        return None
    text = value.strip()
    m = re.fullmatch(r"(\d{1,6})([smhd])", text)
    if m:
        return now - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise BadInput(f"history: {field} {value[:40]!r} is not a time (YYYY-MM-DD, YYYY-MM-DDTHH:MM, or an age like 6h, 7d)")


@dataclass
class Filters:
    team: str | None = None
    priority: str | None = None
    state: str | None = None

    def matches(self, queue: str, priority: int, priority_class: str | None, state: str) -> bool:
        if self.team and queue != self.team:
            return False
        if self.priority and self.priority not in (str(priority), priority_class):
            return False
        return not (self.state and state != self.state)

    def query(self) -> str:
        return urlencode({k: v for k, v in vars(self).items() if v})


class Dashboard:
    """The pages of one front end: its live source (None: history alone) and its store."""

    def __init__(self, history: History | None, live: LiveSource | None = None, title: str = "rayqueue") -> None:
        self.history = history
        self.live = live
        self.title = title
        self.env = environment()
        #: set when the front end shuts down: open event streams end, so the server can stop
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()

    def render(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(title=self.title, live=self.live is not None, **context)

    async def snapshot(self) -> LiveSnapshot | None:
        return await self.live.snapshot() if self.live is not None else None

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)  # SQL off the event loop

    # ------------------------------------------------------------------ quota tree

    def tree_rows(self, snap: LiveSnapshot | None, stored_tree: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One row per quota node (root first): per resource used / reserved / borrowed / min / max and
        how much of the use is on each kind of unit (ECS, ACS); and the units."""
        if snap is None:
            return _static_tree(stored_tree), []
        kinds = {u["name"]: str(u.get("resource") or "default").upper() for u in snap.status["units"]}
        by_path = {n["path"]: n for n in snap.status["nodes"]}
        on_kind: dict[str, dict[str, dict[str, int]]] = {}  # node path -> kind -> resource -> milli
        leaf_path = {n["name"]: n["path"] for n in snap.status["nodes"] if n["leaf"]}
        for job in snap.held:
            path = leaf_path.get(job.queue)
            kind = kinds.get(job.unit or "", "?")
            while path:
                slot = on_kind.setdefault(path, {}).setdefault(kind, {})
                for r, v in job.request.items():
                    slot[r] = slot.get(r, 0) + v
                path = path.rpartition("/")[0]
        rows = []
        for n in snap.status["nodes"]:
            reserved = snap.reserved.get(n["name"], {})
            rows.append({
                **n,
                "bars": [{
                    "resource": r,
                    "used": n["usage"].get(r, 0),
                    "min": n["min"].get(r, 0),
                    "max": n["max"].get(r),
                    "borrowed": n["borrowed"].get(r, 0),
                    "reserved": reserved.get(r, 0),
                    "kinds": {k: v.get(r, 0) for k, v in sorted(on_kind.get(n["path"], {}).items()) if v.get(r)},
                } for r in n["resources"]],
            })
        assert len(by_path) == len(rows)
        units = [{**u, "kind": kinds[u["name"]]} for u in snap.status["units"]]
        return rows, units

    # ------------------------------------------------------------------ queues

    async def queue_rows(self, f: Filters) -> list[dict[str, Any]]:
        """Pending jobs in queue order (position, reason, expected start), then those holding quota."""
        snap = await self.snapshot()
        rows: list[dict[str, Any]] = []
        if snap is not None:
            for p in snap.pending:
                if f.matches(p.queue, p.priority, p.priority_class, "Pending"):
                    rows.append({**vars(p), "state": "Pending", "unit": None, "forecast": snap.forecast})
            wanted = [s for s in LIVE if s != "Pending"]
        else:
            wanted = list(LIVE)
        if f.state and f.state not in wanted:
            return rows
        if self.history is None:  # no SQL history: the jobs holding quota as the engine knows them
            for h in snap.held if snap is not None else []:
                state = "Preempting" if h.preempting else "Admitted"
                if f.matches(h.queue, 0, None, state) and not f.priority:
                    rows.append({"id": h.id, "name": h.id, "queue": h.queue, "priority": "", "priority_class": None,
                                 "state": state, "unit": h.unit, "position": None, "expected_start": None,
                                 "forecast": False, "reason": None, "reason_code": None, "submitted_at": 0})
            return rows
        for j in await self._db(self.history.live_jobs, f.team, [f.state] if f.state else wanted):
            if f.matches(j["queue"], j["priority"], j["priority_class"], j["state"]):
                rows.append({**j, "position": None, "expected_start": None, "forecast": False})
        return rows

    def queue_fragment(self, rows: list[dict[str, Any]]) -> str:
        return self.render("queue_rows.html", rows=rows, now=time.time())

    # ------------------------------------------------------------------ routes

    def router(self, guard: Callable[[Request], None]) -> APIRouter:
        r = APIRouter(include_in_schema=False)

        async def page(request: Request, make: Callable[[], Awaitable[str]]) -> Response:
            try:
                guard(request)
            except HTTPException:
                return RedirectResponse(f"/login?{urlencode({'next': str(request.url.path)})}", status_code=303)
            try:
                return HTMLResponse(await make())
            except BadInput as exc:
                return HTMLResponse(self.render("error.html", message=str(exc)), status_code=400)
            except HTTPException as exc:
                return HTMLResponse(self.render("error.html", message=str(exc.detail)), status_code=exc.status_code)

        @r.get("/login")
        async def login(request: Request, token: str | None = Query(None, max_length=4096),
                        next: str = Query("/", max_length=2048)) -> Response:
            target = next if next.startswith("/") and not next.startswith("//") else "/"
            if token is None:
                return HTMLResponse(self.render("login.html", next=target))
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response

        @r.get("/static/{name}")
        async def static(request: Request, name: str) -> Response:
            guard(request)
            if name not in STATIC:
                raise HTTPException(404, f"no static file {name!r}")
            return PlainTextResponse((HERE / "static" / name).read_text(), media_type=STATIC[name])

        @r.get("/", response_class=HTMLResponse)
        async def tree_route(request: Request) -> Response:
            return await page(request, tree_page)

        async def tree_page() -> str:
            snap = await self.snapshot()
            stored = None if snap is not None or self.history is None else await self._db(self.history.stored_tree)
            rows, units = self.tree_rows(snap, stored)
            return self.render("tree.html", rows=rows, units=units, snap=snap, page="tree")

        @r.get("/queues", response_class=HTMLResponse)
        async def queues_route(request: Request) -> Response:
            return await page(request, lambda: queues_page(request, None))

        @r.get("/queues/{name}", response_class=HTMLResponse)
        async def queue_route(request: Request, name: str) -> Response:
            return await page(request, lambda: queues_page(request, name))

        async def queues_page(request: Request, name: str | None) -> str:
            f = _filters(request, team=name)
            rows = await self.queue_rows(f)
            snap = await self.snapshot()
            teams = sorted({n["name"] for n in snap.status["nodes"] if n["leaf"]}) if snap is not None \
                else await self._db(self.history.teams) if self.history is not None else []
            shown = sum(1 for r in rows if r["state"] == "Pending")
            waiting = sum(n for q, n in snap.pending_counts.items() if not f.team or q == f.team) \
                if snap is not None else None
            return self.render("queue.html", rows=rows, f=f, teams=teams, page="queues", now=time.time(),
                               stream=f"/stream/queues?{f.query()}", states=LIVE, shown=shown, waiting=waiting)

        @r.get("/stream/queues")
        async def stream_queues(request: Request) -> Response:
            guard(request)
            try:
                f = _filters(request)
            except BadInput as exc:
                return PlainTextResponse(str(exc), status_code=400)
            return StreamingResponse(self._stream(request, f), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        @r.get("/jobs/{job_id:path}", response_class=HTMLResponse)  # the operator's ids are namespace/name
        async def job_route(request: Request, job_id: str) -> Response:
            return await page(request, lambda: self.job_html(job_id))

        @r.get("/history", response_class=HTMLResponse)
        async def history_route(request: Request) -> Response:
            return await page(request, lambda: self.history_html(request))
        return r

    async def _stream(self, request: Request, f: Filters) -> AsyncIterator[str]:
        last = None
        beat = time.monotonic()
        yield "retry: 2000\n\n"
        while not self.closing.is_set() and not await request.is_disconnected():
            html = self.queue_fragment(await self.queue_rows(f))
            if html != last:
                last = html
                beat = time.monotonic()
                yield "event: rows\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
            elif time.monotonic() - beat > HEARTBEAT_S:
                beat = time.monotonic()
                yield ": alive\n\n"
            # woken at once by a shutdown: a browser tab left open must not hold the server up
            closing = asyncio.ensure_future(self.closing.wait())
            try:
                await asyncio.wait({closing}, timeout=STREAM_INTERVAL_S)
            finally:
                closing.cancel()

    def _history(self) -> History:
        if self.history is None:
            raise HTTPException(404, f"{self.title} keeps no SQL history: job pages and the history need one "
                                     "(the live pages are the quota tree and the queues)")
        return self.history

    async def job_html(self, job_id: str) -> str:
        history = self._history()
        job = await self._db(history.job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} in the history")
        events = await self._db(history.events, job_id)
        snapshots = await self._db(history.log_snapshots, job_id)
        request = _resources(job["request"])
        now = time.time()
        t = timeline.build(events, request, now)
        live_entry = None
        ray_link = None
        snap = await self.snapshot()
        if snap is not None:
            live_entry = next((p for p in snap.pending if p.id == job_id), None)
            if job["state"] in ("Admitted", "Running", "Preempting") and job["submission_id"] and self.live:
                ray_link = self.live.ray_job_url(job["submission_id"])
        unit_kind = None
        if snap is not None and job["unit"]:
            unit_kind = next((str(u.get("resource")).upper() for u in snap.status["units"] if u["name"] == job["unit"]),
                             None)
        manifest = await self._db(history.manifest, job_id)
        return self.render(
            "job.html", job=job, events=events, snapshots=snapshots, t=t, chart=charts.timeline_chart(t),
            request=request, live_entry=live_entry, ray_link=ray_link, unit_kind=unit_kind, page="job",
            manifest=_manifest_yaml(manifest), now=now,
            # a front end without driver logs (the operator) says where they are instead
            logs_note=getattr(self.live, "logs_note", None),
        )

    async def history_html(self, request: Request) -> str:
        history = self._history()
        q = request.query_params
        now = time.time()
        for key in ("team", "outcome", "name", "since", "until"):
            if len(q.get(key, "")) > MAX_FILTER:
                raise BadInput(f"history: {key} is longer than {MAX_FILTER} characters")
        outcome = q.get("outcome") or None
        if outcome and outcome not in OUTCOMES:
            raise BadInput(f"history: outcome {outcome[:40]!r} is not one of {', '.join(OUTCOMES)}")
        try:
            page_no = int(q.get("page") or 1)
        except ValueError:
            raise BadInput(f"history: page {q.get('page', '')[:20]!r} is not a number") from None
        if not 1 <= page_no <= MAX_PAGE:
            raise BadInput(f"history: page must be between 1 and {MAX_PAGE}")
        s = Search(team=q.get("team") or None, since=parse_time(q.get("since"), "since", now),
                   until=parse_time(q.get("until"), "until", now), outcome=outcome, name=q.get("name") or None)
        rows, total = await self._db(history.finished, s, PAGE_SIZE, (page_no - 1) * PAGE_SIZE)
        lo, hi = await self._db(history.time_range)
        end = s.until if s.until is not None else (hi or now)
        # Charts cover the last CHART_WINDOW_S of the history unless a range is asked for: a year of
        # history stays one index range, never a scan of every job.
        start = s.since if s.since is not None else max(lo or end - 86400, end - CHART_WINDOW_S)
        end = max(end, start + 60)
        bucket = max(60.0, (end - start) / 24)
        s = replace(s, since=start) if s.since is None else s
        wait_series: dict[str, list[tuple[float, float]]] = {}
        for row in await self._db(history.wait_by_team, s, start, bucket):
            wait_series.setdefault(row["team"], []).append((start + (row["bucket"] + 0.5) * bucket,
                                                            float(row["mean_wait"] or 0.0)))
        preempt_series: dict[str, list[tuple[float, float]]] = {}
        for row in await self._db(history.preemptions_by_team, s, start, bucket):
            preempt_series.setdefault(row["team"], []).append((start + (row["bucket"] + 0.5) * bucket,
                                                               float(row["preemptions"])))
        pages = max(1, math.ceil(total / PAGE_SIZE))
        base = {k: v for k, v in q.items() if k != "page" and v}
        return self.render(
            "history.html", rows=rows, total=total, page_no=page_no, pages=pages, q=q, outcomes=OUTCOMES,
            teams=await self._db(history.teams), page="history",
            wait_chart=charts.team_chart(wait_series, start, end, "mean wait to admission, per team", "seconds"),
            chart_range=(start, end),
            preempt_chart=charts.team_chart(preempt_series, start, end, "preemptions per team"),
            prev_url=f"/history?{urlencode({**base, 'page': page_no - 1})}" if page_no > 1 else None,
            next_url=f"/history?{urlencode({**base, 'page': page_no + 1})}" if page_no < pages else None,
        )


def _filters(request: Request, team: str | None = None) -> Filters:
    q = request.query_params
    values = {k: (q.get(k) or None) for k in ("team", "priority", "state")}
    for key, value in values.items():
        if value is not None and len(value) > MAX_FILTER:
            raise BadInput(f"queues: {key} is longer than {MAX_FILTER} characters")
    if values["state"] and values["state"] not in LIVE:
        raise BadInput(f"queues: state {values['state'][:40]!r} is not one of {', '.join(LIVE)}")
    return Filters(team=team or values["team"], priority=values["priority"], state=values["state"])


def _resources(text: str | None) -> dict[str, int]:
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _manifest_yaml(text: str | None) -> str:
    if not text:
        return ""
    try:
        return yaml.safe_dump(json.loads(text), sort_keys=False)
    except ValueError:
        return text


def _static_tree(text: str | None) -> list[dict[str, Any]]:
    """History alone: the stored tree's limits, without usage (which only a running front end knows)."""
    if not text:
        return []
    try:
        from rayqueue.quota.tree import QuotaTree

        tree = QuotaTree.from_yaml_text(text, "stored tree")
    except Exception:  # a stored tree an older version wrote: show none rather than fail the page
        return []
    rows = []
    for node in tree:
        resources = sorted(set(node.min) | set(node.max))
        rows.append({"name": node.name, "path": node.path, "depth": node.depth, "leaf": node.is_leaf,
                     "pending": None, "running": None,
                     "bars": [{"resource": r, "used": 0, "min": node.min.get(r, 0), "max": node.max.get(r),
                               "borrowed": 0, "reserved": 0, "kinds": {}} for r in resources]})
    return rows


def token_guard(token: str | None) -> Callable[[Request], None]:
    """The API's rule: no token, open; else the bearer header, or the cookie ``/login`` set."""

    def guard(request: Request) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        header = request.headers.get("authorization")
        if header is not None and hmac.compare_digest(header, expected):
            return
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie, token):
            return
        raise HTTPException(401, "missing or wrong token (Authorization: Bearer <token>, or log in at /login)")

    return guard


def mount(app: FastAPI, history: History | None, live: LiveSource | None = None, token: str | None = None,
          title: str = "rayqueue") -> Dashboard:
    """Add the dashboard's pages to ``app`` (at ``/``, beside its API)."""
    dash = Dashboard(history, live, title)
    app.include_router(dash.router(token_guard(token)))
    return dash


def history_app(url: str, token: str | None = None) -> FastAPI:
    """``rayqueue dashboard --db URL``: the pages over a store alone, read-only, for a post-mortem."""
    app = FastAPI(title="rayqueue dashboard (history)", docs_url=None, redoc_url=None, openapi_url=None)
    history = History(url)
    history.ping()
    mount(app, history, None, token, title="rayqueue (history)")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "mode": "history"}

    return app
