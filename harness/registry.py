"""A registry of named objects that raises on collisions and answers unknown names helpfully."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

from harness.errors import HarnessError, UnknownNameError

T = TypeVar("T")


class DuplicateNameError(HarnessError):
    pass


class Registry(Generic[T]):
    """Objects of one sort (`what`: "method", "suite", ...) by name, in registration order."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            other = getattr(self._items[name], "plugin", "?")
            new = getattr(obj, "plugin", "?")
            raise DuplicateNameError(
                f"{self.what} {name!r} is registered twice: by {other!r} and by {new!r}; "
                "one of the plugins must rename it"
            )
        self._items[name] = obj

    def remove(self, name: str) -> None:
        """Forget a name (a broken plugin's registrations are withdrawn all together)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.what, name, self._items) from None

    def names(self, pattern: str | None = None) -> list[str]:
        names = list(self._items)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)
