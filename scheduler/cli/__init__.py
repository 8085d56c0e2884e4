"""The ``rayqueue`` command line: one typer app; each front end registers its own commands."""

from __future__ import annotations

import importlib

import typer

from rayqueue.scheduler.process import tune_gc

app = typer.Typer(
    name="rayqueue",
    help="Batch queueing and hierarchical quota scheduling for Ray jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Each module exposes ``register(app: typer.Typer) -> None``; imported lazily inside the commands
# themselves where the import is heavy (ray, kopf), so `rayqueue --help` stays fast.
FRONT_END_MODULES = [
    "rayqueue.scheduler.cli.quota",
    "rayqueue.simulations.cli",
    "rayqueue.scheduler.service.cli",
    "rayqueue.scheduler.operator.cli",
]


def _register_front_ends() -> None:
    for name in FRONT_END_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a front end not written yet
                continue
            raise
        module.register(app)


_register_front_ends()


def main() -> None:
    tune_gc()
    app()
