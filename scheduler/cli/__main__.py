"""``python -m rayqueue.scheduler.cli``: the same as the ``rayqueue`` command."""

from rayqueue.scheduler.cli import main

main()
