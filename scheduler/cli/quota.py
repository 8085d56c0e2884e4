"""``rayqueue quota validate|diff`` and ``rayqueue request``: check a tree and a RayJob before applying.

Nothing here decides anything: the tree's own loader validates, :func:`diff_trees` compares, and
:func:`rayjob_request` counts; these commands only render what they say.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from rayqueue.quota.quantity import describe
from rayqueue.quota.tree import QuotaNode, QuotaTree, QuotaTreeError, diff_trees
from rayqueue.scheduler.workloads.rayjob import (
    K8S_JOB_MODE,
    RayJobRejected,
    RayJobRequest,
    load_rayjob_documents,
    rayjob_request,
)

quota_app = typer.Typer(
    name="quota",
    help="Check an ElasticQuotaTree before you apply it.",
    no_args_is_help=True,
    add_completion=False,
)


def _console() -> Console:
    return Console(highlight=False)


def _load_tree(path: Path, console: Console) -> QuotaTree:
    try:
        return QuotaTree.from_yaml(path)
    except QuotaTreeError as exc:
        if len(exc.violations) == 1:  # one problem, one line
            console.print("[bold red]INVALID[/] ", end="")
            console.print(f"{path}: {exc.violations[0]}", markup=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        console.print(f"[bold red]INVALID[/] {path}: {len(exc.violations)} problem(s)", markup=True)
        for violation in exc.violations:
            console.print(f"  - {violation}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _node_label(node: QuotaNode) -> Text:
    """The node's name, then one line each for min, max, namespaces and attributes."""
    label = Text(node.name, style="bold")
    if node.min:
        label.append(f"\nmin: {describe(node.min)}")
    if node.max:
        label.append(f"\nmax: {describe(node.max)}")
    if not node.min and not node.max:
        label.append("\nno min, no max (unbounded)")
    if node.namespaces:
        label.append(f"\nnamespaces: {', '.join(node.namespaces)}", style="cyan")
    if node.attributes:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(node.attributes.items()))
        label.append(f"\n{attrs}", style="magenta")
    return label


def tree_view(tree: QuotaTree) -> Tree:
    """A rich tree of the quota nodes, each with its min/max, namespaces and attributes."""

    def add(parent: Tree, node: QuotaNode) -> None:
        branch = parent.add(_node_label(node))
        for child in node.children:
            add(branch, child)

    root = Tree(_node_label(tree.root))
    for child in tree.root.children:
        add(root, child)
    return root


@quota_app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="ElasticQuotaTree YAML (one document of that kind)."),
) -> None:
    """Print the tree with each node's min/max, or every violation (exit code 1)."""
    console = _console()
    tree = _load_tree(file, console)
    console.print(
        f"[bold green]OK[/] {file}: ElasticQuotaTree {tree.name!r}, {len(tree.nodes)} nodes, "
        f"{len(tree.leaves)} leaves (queues)"
    )
    console.print(tree_view(tree))


@quota_app.command("diff")
def diff(
    old: Path = typer.Argument(..., help="The tree in force."),
    new: Path = typer.Argument(..., help="The edited tree."),
) -> None:
    """What changes from OLD to NEW (nodes added, removed, moved; min/max, namespaces, attributes).

    Both files must be valid trees (exit code 1 otherwise). To see what the change does to running
    and queued jobs, preview it against a live scheduler instead.
    """
    console = _console()
    before = _load_tree(old, console)
    after = _load_tree(new, console)
    lines = diff_trees(before, after)
    if not lines:
        console.print(f"no differences between {old} and {new}", markup=False)
        return
    console.print(f"{len(lines)} change(s) from {old} to {new}:", markup=False)
    styles = {"+": "green", "-": "red", "~": "yellow"}
    for line in lines:
        style = styles.get(line[:1], "")
        console.print(line, style=style, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------ request


def request_table(requests: list[tuple[str, RayJobRequest]]) -> Table:
    """One row per RayJob: where it queues, how many pods, and their total request."""
    table = Table(title="RayJob requests (each gang is admitted whole)", title_justify="left")
    names = []
    for _source, req in requests:
        name = f"{req.namespace}/{req.name}" if req.namespace else req.name
        names.append(name + ("*" if req.generate_name else ""))
    # The names keep their width (an 80-column terminal folds the other cells, not a name in two).
    table.add_column("RayJob", overflow="fold", min_width=max((len(n) for n in names), default=0))
    table.add_column("queue", overflow="fold")
    table.add_column("priority", overflow="fold")
    table.add_column("pods", justify="right")
    table.add_column("total request", overflow="fold")
    for name, (_source, req) in zip(names, requests, strict=True):
        if req.submission_mode != K8S_JOB_MODE:
            name += f" ({req.submission_mode})"
        table.add_row(
            name,
            req.queue or "(by namespace)",
            req.priority_class or "-",
            str(req.pods),
            describe(req.total) or "nothing",
        )
    return table


def pod_set_table(req: RayJobRequest) -> Table:
    table = Table(title=f"{req.name}: pods", title_justify="left")
    for column in ("group", "role", "pods", "per pod", "total"):
        longest = max((len(p.name) for p in req.pod_sets), default=0) if column == "group" else None
        table.add_column(column, justify="right" if column == "pods" else "left", overflow="fold", min_width=longest)
    for pod_set in req.pod_sets:
        table.add_row(
            pod_set.name,
            pod_set.role,
            str(pod_set.count),
            describe(pod_set.per_pod) or "nothing",
            describe(pod_set.total) or "nothing",
        )
    return table


def request(
    files: list[Path] = typer.Argument(..., help="RayJob YAML files ('-' reads stdin); other kinds are skipped."),
    pods: bool = typer.Option(False, "--pods", "-p", help="Also show each job's head, worker groups and submitter."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check each RayJob against the CRD schema."),
) -> None:
    """Print each RayJob's pod count and total request, or why it cannot be queued (exit code 1)."""
    console = _console()
    found: list[tuple[str, RayJobRequest]] = []
    problems: list[str] = []
    for file in files:
        source = "stdin" if str(file) == "-" else str(file)
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as exc:
            problems.append(f"{source}: cannot read: {exc.strerror}")
            continue
        try:
            docs: list[dict[str, Any]] = load_rayjob_documents(text, source)
        except RayJobRejected as exc:
            problems.append(exc.message)
            continue
        if not docs:
            problems.append(f"{source}: no RayJob document found")
        for doc in docs:
            try:
                found.append((source, rayjob_request(doc, validate=validate)))
            except RayJobRejected as exc:
                problems.append(f"{source}: {exc.message}")
    if found:
        console.print(request_table(found))
        for _, req in found:
            if pods:
                console.print(pod_set_table(req))
            for note in req.notes:
                console.print(f"note: {req.name}: {note}", markup=False, soft_wrap=True)
    for problem in problems:
        console.print("[bold red]REJECTED[/] ", end="")
        console.print(problem, markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(quota_app, name="quota")
    app.command("request")(request)
