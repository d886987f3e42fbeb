"""A small named registry: ``register`` / ``get`` / ``names``.

One instance each for environments, agent architectures, explainers and metrics, so the CLI,
the benchmark runner and the tests enumerate the same names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a snake_case name to a builder; unknown names get an error listing the known ones."""

    def __init__(self, kind: str, *, plugins: tuple[str, ...] = ()) -> None:
        """``plugins``: modules (dotted names) that register more items into this registry;
        imported on first lookup, so a module above this registry's home floor can add to it
        without the home module importing it back (no import circle)."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._plugins = list(plugins)

    def _load_plugins(self) -> None:
        while self._plugins:
            import importlib

            importlib.import_module(self._plugins.pop(0))

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@EXPLAINERS.register("gradient")`` above a class or function."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        self._load_plugins()
        if not isinstance(name, str) or name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: Any) -> bool:
        self._load_plugins()
        return name in self._items
