"""``rayqueue serve`` and the commands that talk to a running service over its HTTP API.

``serve`` runs the service in this process; ``submit``, ``status``, ``jobs``, ``explain``, ``logs``,
``cancel``, ``history`` and ``quota apply`` are thin HTTP clients (``--url`` / ``RAYQUEUE_URL``, and
``--token`` / ``RAYQUEUE_TOKEN`` when the service has one). Heavy imports stay inside the commands; the
tables they print are in ``tables``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console

from rayqueue.scheduler.service.tables import (
    history_table,
    jobs_table,
    page_note,
    services_table,
    state_text,
    status_tables,
    when,
)

DEFAULT_URL = "http://127.0.0.1:8266"
#: Rows `jobs` and `history` show unless told otherwise (`--limit 0`: all): a long-lived store holds
#: thousands of finished jobs, and a terminal needs the latest ones.
DEFAULT_LIMIT = 100

UrlOption = typer.Option(DEFAULT_URL, "--url", envvar="RAYQUEUE_URL", help="The service's address.")
TokenOption = typer.Option(None, "--token", envvar="RAYQUEUE_TOKEN", help="The service's API token, if set.")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


class Client:
    """The CLI's view of the HTTP API; errors become clear messages and exit codes."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        console = Console(stderr=True, highlight=False)
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            console.print(f"[red]no rayqueue service answers at {self.url}[/] (start one with `rayqueue serve`)")
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            console.print(f"[red]talking to {self.url} failed:[/] {exc}")
            raise typer.Exit(1) from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text}
            console.print(f"[bold red]error[/] ({resp.status_code}): {body.get('detail')}", markup=True)
            for problem in body.get("problems") or []:
                console.print(f"  - {problem}", markup=False, soft_wrap=True)
            raise typer.Exit(2 if resp.status_code == 422 else 1)
        if resp.status_code >= 300:  # a redirect or the like: not an answer of the API
            console.print(f"[bold red]error[/] ({resp.status_code}): unexpected answer from {self.url}{path}",
                          markup=True)
            raise typer.Exit(1)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text


def job_path(job: str, suffix: str = "") -> str:
    """``/v1/jobs/<job>``, the reference quoted (a ``/`` or ``?`` in it must not change the route); an
    empty reference is a one-line usage error."""
    if not job.strip():
        Console(stderr=True, highlight=False).print("[bold red]error:[/] JOB is empty: give a job id or name "
                                                    "(see `rayqueue jobs`)")
        raise typer.Exit(2)
    return f"/v1/jobs/{quote(job, safe='')}{suffix}"




def _page_params(limit: int, offset: int) -> dict[str, Any]:
    params: dict[str, Any] = {"offset": offset} if offset else {}
    if limit:
        params["limit"] = limit
    return params


# ------------------------------------------------------------------------------ commands


@contextlib.contextmanager
def _needs_ray(command: str) -> Iterator[None]:
    """The service's modules come with the [ray] extra; without it, one line says so (exit 1)."""
    from rayqueue.scheduler.extras import MissingExtra, ensure_extra, requires_extra

    try:
        with requires_extra("ray", command):
            yield
        # Ray itself runs as `ray start` and is imported only when a job is submitted: check it up front.
        ensure_extra("ray", command, "ray")
    except MissingExtra as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


def serve(
    tree: Path | None = typer.Option(None, "--tree", help="ElasticQuotaTree YAML (default: the last applied tree, "
                                     "else one leaf 'default')."),
    policy: Path | None = typer.Option(None, "--policy", help="ResourcePolicy YAML (units pinned by node labels)."),
    priority_classes: Path | None = typer.Option(None, "--priority-classes",
                                                 help="PriorityClass documents or a name: value mapping "
                                                 "(default: low=100, normal=500, high=1000)."),
    ray_address: str | None = typer.Option(None, "--ray-address", envvar="RAYQUEUE_RAY_ADDRESS",
                                           help="An existing Ray cluster's dashboard (http://host:8265); "
                                           "default: start a local head."),
    ray_token: str | None = typer.Option(None, "--ray-token", envvar="RAY_AUTH_TOKEN",
                                         help="With --ray-address: the cluster's token, if it runs Ray's token "
                                         "authentication (a local head always does, with a token of its own)."),
    num_gpus: int = typer.Option(0, "--num-gpus", help="Logical GPUs of the local Ray head."),
    num_cpus: int = typer.Option(8, "--num-cpus", help="Logical CPUs of the local Ray head."),
    unit_gpus: list[str] = typer.Option(None, "--unit-gpus", help="UNIT=N: also start a local Ray node with N "
                                        "logical GPUs labelled with that policy unit's nodeSelector (repeatable)."),
    db: str | None = typer.Option(None, "--db", envvar="RAYQUEUE_DB",
                                  help="SQL URL (default sqlite under --state-dir; postgresql+psycopg://...)."),
    state_dir: Path = typer.Option(Path(".rayqueue"), "--state-dir", help="Where the default SQLite file lives."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; a non-loopback one requires --token."),
    port: int = typer.Option(8266, "--port"),
    serve_port: int = typer.Option(8000, "--serve-port", help="Port of Ray Serve's HTTP proxy (127.0.0.1) for the "
                                   "RayServices' applications."),
    token: str | None = typer.Option(None, "--token", envvar="RAYQUEUE_TOKEN", help="API token (Bearer)."),
    poll_interval: float = typer.Option(0.2, "--poll-interval", help="Seconds between Ray status checks."),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="Largest HTTP request body in MiB "
                                      "(413 beyond it)."),
    ray_wait: float = typer.Option(180.0, "--ray-wait", min=1.0, help="Seconds to wait for the Ray head (the "
                                   "local one it starts, or --ray-address) to have an alive node."),
    reattach_wait: float = typer.Option(60.0, "--ray-reattach-wait", min=1.0, help="Seconds to wait for the local "
                                        "Ray head a crashed run left to answer before stopping it and starting "
                                        "a new one."),
    log_retention_days: float = typer.Option(30.0, "--log-retention-days", min=0.0,
                                             help="How long the log snapshots taken at preemption and at the end "
                                             "are kept for the dashboard (0: for ever)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the standalone service: queue RayJobs under the quota tree and run them on Ray."""
    from rayqueue.quota.tree import QuotaTreeError
    from rayqueue.scheduler.workloads.resourcepolicy import ResourcePolicyError

    with _needs_ray("rayqueue serve"):
        from rayqueue.scheduler.service.core import ServiceConfig, ServiceError
        from rayqueue.scheduler.service.raycluster import RayClusterError
        from rayqueue.scheduler.service.server import Runner, ServeOptions

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    console = _console()
    parsed: dict[str, int] = {}
    for item in unit_gpus or []:
        name, _, count = item.partition("=")
        if not name or not count.isdigit():
            console.print(f"[bold red]--unit-gpus {item!r}:[/] expected UNIT=N, e.g. acs=4")
            raise typer.Exit(2)
        parsed[name] = int(count)
    opts = ServeOptions(
        tree=tree, policy=policy, priority_classes=priority_classes, ray_address=ray_address, ray_token=ray_token,
        num_gpus=num_gpus,
        num_cpus=num_cpus, unit_gpus=parsed, db=db, state_dir=state_dir, host=host, port=port, token=token,
        config=ServiceConfig(poll_interval_s=poll_interval, max_body_bytes=int(max_body_mb * 2**20),
                             serve_http_port=serve_port,
                             log_retention_s=log_retention_days * 86400 if log_retention_days else None),
        ray_wait_s=ray_wait, reattach_wait_s=reattach_wait, say=lambda line: console.print(line, markup=False, soft_wrap=True),
    )
    runner = Runner(opts)

    async def main() -> None:
        try:
            await runner.start()
        except BaseException:
            await runner.shutdown()
            raise
        assert runner.service is not None
        console.print(
            f"rayqueue serving on [bold]{runner.url}[/] (dashboard {runner.url}/, API docs {runner.url}/docs), "
            f"Ray at {runner.service.ray.address}, state in {runner.store.url if runner.store else '-'}"
        )
        await runner.serve()
        console.print("rayqueue stopped")

    try:
        asyncio.run(main())
    except (QuotaTreeError, ResourcePolicyError) as exc:
        console.print(f"[bold red]cannot start:[/] {exc}", markup=True)
        raise typer.Exit(2) from None
    except (ServiceError, RayClusterError) as exc:
        console.print(f"[bold red]cannot start:[/] {exc}", markup=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def submit(
    files: list[Path] = typer.Argument(..., help="RayJob YAML files ('-' reads stdin); multi-document files too."),
    queue: str | None = typer.Option(None, "--queue", "-q", help="Quota leaf (overrides the rayqueue.io/queue label)."),
    priority: str | None = typer.Option(None, "--priority", "-p", help="Priority class or integer (overrides label)."),
    ignore_other_kinds: bool = typer.Option(False, "--ignore-other-kinds", help="Skip ConfigMaps and other kinds."),
    url: str = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Queue RayJobs; prints each job's id and its position in its queue. Every file goes in one request:
    all their RayJobs are queued, or none (the error names each refused document)."""
    client = Client(url, token)
    console = _console()
    sent = [{"source": str(path), "yaml": sys.stdin.read() if str(path) == "-" else _read(path)} for path in files]
    body = {"files": sent, "queue": queue, "priority": priority, "ignore_other_kinds": ignore_other_kinds}
    result = client.call("POST", "/v1/jobs", json=body)
    for job in result["jobs"]:
        where = (
            f"position {job['position']} in queue {job['queue']}" if job["position"] is not None
            else f"queue {job['queue']}"
        )
        why = job["reason"] or ""
        if job["state"] == "Pending" and job.get("reason_code"):
            why = f"{job['reason_code']}: {why}"  # the code is what `explain` and alerts name
        console.print(f"[bold]{job['id']}[/] {state_text(job['state'])}, {where}" + (f" - {why}" if why else ""),
                      soft_wrap=True)
        for note in job.get("notes") or []:
            console.print(f"  note: {note}", markup=False)


def _read(path: Path) -> str:
    """The file as text, bounded and UTF-8 like every manifest (the service checks the rest)."""
    from rayqueue.quota.manifests import DocumentError, decode, read_bytes

    try:
        return decode(read_bytes(path), str(path))
    except DocumentError as exc:
        Console(stderr=True, highlight=False).print(str(exc), markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def status(url: str = UrlOption, token: str | None = TokenOption) -> None:
    """The quota tree: usage / min / max per resource, borrowed, pending and running counts; the units."""
    data = Client(url, token).call("GET", "/v1/status")
    console = _console()
    for table in status_tables(data, width=console.width):
        console.print(table)


def jobs(
    state: list[str] = typer.Option(None, "--state", "-s", help="Only these states (repeatable)."),
    queue: str | None = typer.Option(None, "--queue", "-q"),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", "-n", min=0, help="Only the N most recently submitted "
                              "jobs (0: all)."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip the N most recently submitted jobs first."),
    url: str = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """The most recent jobs, in submission order, with their state, queue position, unit and times."""
    params: dict[str, Any] = _page_params(limit, offset)
    if state:
        params["state"] = state
    if queue:
        params["queue"] = queue
    data = Client(url, token).call("GET", "/v1/jobs", params=params)
    console = _console()
    console.print(jobs_table(data["jobs"], width=console.width))
    if data.get("services"):
        console.print(services_table(data["services"]))
    note = page_note("jobs", len(data["jobs"]), data["total"], offset)
    if note:
        console.print(note, markup=False, soft_wrap=True)


def explain(job: str = typer.Argument(..., help="Job id (or name)."), url: str = UrlOption,
            token: str | None = TokenOption) -> None:
    """Why a job waits (reason code and sentence), its position, unit and times."""
    e = Client(url, token).call("GET", job_path(job))
    console = _console()
    if e.get("kind") == "RayService":
        _explain_service(console, e)
        return
    console.print(f"[bold]{e['id']}[/] ({e['name']}) in queue [bold]{e['queue']}[/]: {state_text(e['state'])}")
    prio = f"{e['priority_class']} ({e['priority']})" if e["priority_class"] else str(e["priority"])
    console.print(f"  priority  {prio}", markup=False)
    console.print(f"  request   {e['request']} in {e['pods']} pods", markup=False)
    if e["position"] is not None:
        console.print(f"  position  {e['position']} of {e['pending_in_queue']} pending (0 = next)", markup=False)
    if e["reason_code"] or e["reason"]:
        console.print(f"  reason    {e['reason_code'] or '-'}: {e['reason'] or ''}", markup=False, soft_wrap=True)
    if e["expected_start"]:
        console.print(f"  expected  {when(e['expected_start'])}", markup=False)
    elif e["state"] == "Pending":
        console.print("  expected  unknown (it waits for jobs whose run time is not known: set their "
                      "rayqueue.io/expected-duration annotation or activeDeadlineSeconds)", markup=False, soft_wrap=True)
    if e["unit"]:
        console.print(f"  unit      {e['unit']} (Ray submission {e['submission_id']})", markup=False)
    for label, key in (("submitted", "submitted_at"), ("admitted", "admitted_at"), ("running", "running_at"),
                       ("finished", "finished_at")):
        if e[key]:
            console.print(f"  {label:<9} {when(e[key])}", markup=False)
    if e["preemptions"]:
        console.print(f"  preempted {e['preemptions']} time(s); attempt {e['attempt']}", markup=False)
    if e["ray_message"]:
        console.print(f"  ray       {e['ray_status']}: {e['ray_message']}", markup=False, soft_wrap=True)


def _explain_service(console: Console, e: dict[str, Any]) -> None:
    """A service (RayService -> Ray Serve): its replicas, what it uses and reserves, why it waits."""
    console.print(f"[bold]{e['id']}[/] (RayService {e['name']}) in queue [bold]{e['queue']}[/]: "
                  f"{state_text(e['state'])}")
    console.print(f"  serve     applications {', '.join(e['applications'])}", markup=False)
    console.print(f"  replicas  Serve asks {e['replicas']}, {e['granted']} granted, bounds "
                  f"{e.get('min_replicas', '?')}..{e.get('max_replicas', '?')}", markup=False)
    console.print(f"  used      {e.get('used') or '-'}; reserved {e.get('reserved') or '-'}", markup=False)
    if e.get("reason"):
        console.print(f"  reason    {e.get('reason_code') or '-'}: {e['reason']}", markup=False, soft_wrap=True)
    if e["preemptions"]:
        console.print(f"  preempted {e['preemptions']} batch job(s) for its scale-ups", markup=False)
    for label, key in (("submitted", "submitted_at"), ("admitted", "admitted_at"), ("finished", "finished_at")):
        if e.get(key):
            console.print(f"  {label:<9} {when(e[key])}", markup=False)


def logs(job: str = typer.Argument(...), url: str = UrlOption, token: str | None = TokenOption) -> None:
    """The driver's log: live from Ray while it runs, from the store once it ended."""
    data = Client(url, token).call("GET", job_path(job, "/logs"))
    if not data["logs"]:
        Console(stderr=True).print(f"no logs for {data['id']} ({data['state']})")
        return
    sys.stdout.write(data["logs"])


def cancel(job: str = typer.Argument(...), url: str = UrlOption, token: str | None = TokenOption) -> None:
    """Remove a pending job, or stop a running one and release its quota."""
    data = Client(url, token).call("POST", job_path(job, "/cancel"))
    _console().print(f"{data['id']} {state_text(data['state'])}")


def history(
    job: str | None = typer.Argument(None, help="One job or service (id or name); all when left out."),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", "-n", min=0, help="Only the last N events (0: all)."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip the last N events first."),
    url: str = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """What happened, after the fact: the latest state changes with their time, from SQL."""
    params: dict[str, Any] = _page_params(limit, offset)
    if job:
        params["job"] = job
    data = Client(url, token).call("GET", "/v1/history", params=params)
    console = _console()
    console.print(history_table(data["events"], width=console.width))
    note = page_note("events", len(data["events"]), data["total"], offset)
    if note:
        console.print(note, markup=False, soft_wrap=True)


def quota_apply(
    file: Path = typer.Argument(..., help="ElasticQuotaTree YAML."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the diff and its effect; change nothing."),
    url: str = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Validate and apply a new quota tree to the running service (jobs keep running)."""
    data = Client(url, token).call("POST", "/v1/quota", json={"yaml": _read(file), "dry_run": dry_run})
    console = _console()
    console.print("[bold]dry run[/]: nothing changed" if dry_run else "[bold green]applied[/]")
    for line in data["effects"]:
        style = "yellow" if line.startswith("!") else ""
        console.print(f"[{style}]{line}[/]" if style else line, markup=bool(style), soft_wrap=True)


def demo_command(
    keep: bool = typer.Option(False, "--keep-state", help="Keep .rayqueue/demo.db afterwards."),
) -> None:
    """Start the service on a local Ray cluster with two teams sharing 4 GPUs, run sample RayJobs, stop."""
    with _needs_ray("rayqueue demo"):
        from rayqueue.scheduler.service.demo import run_demo

    raise typer.Exit(run_demo(keep_state=keep))


def dashboard(
    db: str = typer.Option(..., "--db", envvar="RAYQUEUE_DB",
                           help="The store to read: a SQL URL (sqlite:///path/rayqueue.db, postgresql+psycopg://...) "
                           "or the path of a SQLite file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; a non-loopback one requires --token."),
    port: int = typer.Option(8267, "--port"),
    token: str | None = typer.Option(None, "--token", envvar="RAYQUEUE_TOKEN", help="Token the pages ask for."),
) -> None:
    """Serve the dashboard over a store alone, read-only: the history of every job (timelines, reasons,
    logs) for a post-mortem, with no Ray cluster and no service running."""
    with _needs_ray("rayqueue dashboard"):
        import uvicorn
        from sqlalchemy.exc import SQLAlchemyError

        from rayqueue.scheduler.dashboard.pages import history_app
        from rayqueue.scheduler.service.server import is_loopback, port_free

    console = _console()
    url = db
    path = Path(db.removeprefix("sqlite:///")) if "://" not in db or db.startswith("sqlite:///") else None
    if path is not None:
        if not path.is_file():  # SQLite would create an empty database there, and the pages would be empty
            console.print(f"cannot start: --db {db}: no such file (give a SQLite file or a SQL URL)",
                          markup=False, soft_wrap=True)
            raise typer.Exit(2)
        url = f"sqlite:///{path.resolve()}"
    if not is_loopback(host) and not token:
        console.print(f"[bold red]cannot start:[/] --host {host} is not a loopback address: set --token")
        raise typer.Exit(2)
    if not port_free(host, port):
        console.print(f"[bold red]cannot start:[/] port {port} on {host} is in use; pick --port")
        raise typer.Exit(1)
    try:
        app = history_app(url, token)
    except SQLAlchemyError as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        console.print(f"cannot start: --db {db}: {first}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"rayqueue dashboard (history, read-only) on [bold]http://{host}:{port}/[/] over {url}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("dashboard")(dashboard)
    app.command("submit")(submit)
    app.command("status")(status)
    app.command("jobs")(jobs)
    app.command("explain")(explain)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("history")(history)
    app.command("demo")(demo_command)
    quota = next((g.typer_instance for g in app.registered_groups if g.name == "quota"), None)
    if quota is None:
        quota = typer.Typer(name="quota", help="The quota tree.", no_args_is_help=True)
        app.add_typer(quota, name="quota")
    quota.command("apply")(quota_apply)
