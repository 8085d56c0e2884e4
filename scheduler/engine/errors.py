"""Errors the engine raises on bad input from a front end.

Kept out of the compiled engine: mypyc cannot compile a subclass of ``KeyError``.
"""

from __future__ import annotations


class UnknownQueue(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateJob(ValueError):
    pass
