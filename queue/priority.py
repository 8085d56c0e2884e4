"""Priority classes: names resolve to integers; an unknown name is an error on that job."""

from __future__ import annotations

from collections.abc import Mapping


class UnknownPriorityClass(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        known_text = ", ".join(sorted(known)) or "none defined"
        super().__init__(f"unknown priority class {name!r} (known: {known_text})")

    def __str__(self) -> str:
        return str(self.args[0])


class PriorityClasses:
    """Name -> integer map, given at start and later fed from Kubernetes ``PriorityClass`` objects."""

    def __init__(self, classes: Mapping[str, int] | None = None, default: int = 0) -> None:
        self._classes: dict[str, int] = dict(classes or {})
        self.default = default

    def set(self, name: str, value: int) -> None:
        self._classes[name] = int(value)

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    def names(self) -> dict[str, int]:
        return dict(self._classes)

    def resolve(self, value: str | int | None) -> tuple[int, str | None]:
        """(priority, class name); an integer (or integer string) is taken as is."""
        if value is None or value == "":
            return self.default, None
        if isinstance(value, bool):
            raise UnknownPriorityClass(str(value), list(self._classes))
        if isinstance(value, int):
            return value, None
        text = str(value).strip()
        if text in self._classes:
            return self._classes[text], text
        try:
            return int(text), None
        except ValueError:
            raise UnknownPriorityClass(text, list(self._classes)) from None
