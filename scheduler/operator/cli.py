"""``rayqueue operator``: run the Kubernetes operator (kopf) for KubeRay RayJobs."""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("operator")(operator)


def operator(
    context: Annotated[str | None, typer.Option(help="kubeconfig context (default: in-cluster, else current)")]
    = None,
    server: Annotated[str | None, typer.Option(help="API server URL, bypassing kubeconfig (plain token auth)")]
    = None,
    token: Annotated[str | None, typer.Option(envvar="RAYQUEUE_TOKEN", help="bearer token with --server")]
    = None,
    tree_name: Annotated[str | None, typer.Option(help="the ElasticQuotaTree to follow (default: any)")] = None,
    tree_namespace: Annotated[str | None, typer.Option(help="its namespace (default: any)")] = None,
    policy_name: Annotated[str | None, typer.Option(help="the ResourcePolicy to follow (default: any)")] = None,
    policy_namespace: Annotated[str | None, typer.Option(help="its namespace")] = None,
    peering: Annotated[str, typer.Option(help="kopf ClusterKopfPeering name used for HA")] = "rayqueue",
    standalone: Annotated[bool, typer.Option(help="no peering: this instance always admits")] = False,
    priority: Annotated[int, typer.Option(help="peering priority; the highest live instance admits; "
                                          "-1: random (distinct replicas of one Deployment)")] = 0,
    identity: Annotated[str | None, typer.Option(help="this instance's name (default: $POD_NAME or host)")]
    = None,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: off)")] = 8080,
    dashboard_port: Annotated[int, typer.Option(help="read-only dashboard pages port (0: off)")] = 0,
    history_db: Annotated[str | None, typer.Option(help="SQL history of each RayJob for the dashboard's job and "
                                                   "history pages: a SQLite file or SQLAlchemy URL (default: none)")]
    = None,
    webhook_port: Annotated[int, typer.Option(help="admission webhook HTTPS port (0: no webhooks)")] = 9443,
    webhook_cert: Annotated[str | None, typer.Option(help="TLS certificate file for the webhook server")]
    = None,
    webhook_key: Annotated[str | None, typer.Option(help="TLS private key file for the webhook server")] = None,
    webhook_host: Annotated[str | None, typer.Option(help="DNS name the API server calls the webhook by")]
    = None,
    queueing: Annotated[str, typer.Option(help="default queueing strategy: BestEffortFIFO or StrictFIFO")]
    = "BestEffortFIFO",
    preemption: Annotated[str, typer.Option(help="default preemption policy: LowerPriority or Never")]
    = "LowerPriority",
    reclaim: Annotated[bool, typer.Option(help="preempt borrowed work to give queues their min back")] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Admit KubeRay RayJobs against the ElasticQuotaTree (watches RayJobs, trees, policies, nodes)."""
    import asyncio
    import logging

    from rayqueue.scheduler.engine import EngineConfig
    from rayqueue.scheduler.extras import MissingExtra, requires_extra

    try:
        with requires_extra("operator", "rayqueue operator"):
            from kubernetes_asyncio.config import ConfigException

            from rayqueue.scheduler.operator.controller import OperatorConfig
            from rayqueue.scheduler.operator.handlers import Operator, WebhookConfig
            from rayqueue.scheduler.operator.kube import Connection
    except MissingExtra as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None

    if queueing not in ("BestEffortFIFO", "StrictFIFO"):
        raise typer.BadParameter(f"--queueing must be BestEffortFIFO or StrictFIFO, got {queueing!r}")
    if preemption not in ("Never", "LowerPriority"):
        raise typer.BadParameter(f"--preemption must be Never or LowerPriority, got {preemption!r}")
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if priority < 0:
        import random

        priority = random.randint(1, 2**31 - 1)
    config = OperatorConfig(
        tree_name=tree_name, tree_namespace=tree_namespace,
        policy_name=policy_name, policy_namespace=policy_namespace,
        engine=EngineConfig(default_queueing=queueing,  # type: ignore[arg-type]
                            default_preemption=preemption,  # type: ignore[arg-type]
                            reclaim=reclaim),
        peering=None if standalone else peering,
        history_url=history_url(history_db),
        priority=priority,
        identity=identity or os.environ.get("POD_NAME") or socket.gethostname(),
    )
    webhook = None
    if webhook_port:
        webhook = WebhookConfig(port=webhook_port, host=webhook_host, certfile=webhook_cert,
                                pkeyfile=webhook_key)

    async def main() -> None:
        # kubernetes_asyncio loads a kubeconfig (exec plugins included) asynchronously: in the operator's loop
        try:
            connection = Connection(server=server, token=token) if server else \
                await Connection.from_environment(context)
        except (ConfigException, OSError) as exc:
            typer.echo(f"rayqueue operator: no Kubernetes API to connect to (in-cluster service account or "
                       f"kubeconfig{f' context {context}' if context else ''}): {exc}", err=True)
            raise typer.Exit(2) from None
        from rayqueue.scheduler.operator.history import HistoryError

        try:
            op = Operator(connection, config, webhook=webhook, metrics_port=metrics_port or None)
        except HistoryError as exc:
            typer.echo(f"rayqueue operator: {exc}", err=True)
            raise typer.Exit(2) from None
        if dashboard_port:
            from rayqueue.scheduler.operator.dashboard import serve_dashboard

            await serve_dashboard(op.controller, dashboard_port)  # stops with the operator's loop
        typer.echo(f"rayqueue operator {config.identity}: API {connection.server} ({connection.source}), "
                   f"{'standalone' if standalone else f'peering {peering!r} priority {priority}'}, "
                   f"metrics :{metrics_port or 'off'}, webhooks :{webhook_port or 'off'}")
        await op.run()

    asyncio.run(main())


def history_url(value: str | None) -> str | None:
    """``--history-db``: a SQLAlchemy URL as given, anything else a SQLite file (its folder made)."""
    if not value:
        return None
    if "://" in value:
        return value
    from pathlib import Path

    path = Path(value)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"--history-db {value}: cannot create its folder: {exc}") from None
    return f"sqlite:///{path}"
