"""Named registries for the seams: algorithms, reward components, PEFT methods, roles, ...

An entry is either an object or a lazy "module:attribute" path that is imported on first use,
so that listing the names (config validation, error messages) imports no heavy code.
`register` adds an entry from anywhere, e.g. an algorithm defined inside a test file.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownName(KeyError):
    """A name that is not registered; str() names the registry, the valid names and a close one."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """name -> object, with lazily imported "module:attribute" entries."""

    def __init__(self, kind: str, lazy: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = dict(lazy or {})

    def register(self, name: str, entry: T | str, *, replace: bool = False) -> T | str:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(
                f"unknown {self.kind} {name!r}{closest(name, self.names())}; valid: {', '.join(self.names())}"
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
