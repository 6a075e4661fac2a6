"""Named entries of one kind: the one registration mechanism of the library.

Training methods (`patchmix.methods`), data sets (`patchmix.data`) and backbones
(`patchmix.model`) are each a `Registry`. An entry is added by the module that defines it, and
the package's ``__init__`` imports its built-in modules in order, so registration order is
import order: the order tables, figures and the command line list them. A configuration holds
names only; a name is looked up where it is resolved (`Registry.get`, as timm's
``create_model`` does), and an unknown one is a ValueError listing the registered names.

This module imports nothing of the project, like `patchmix.config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (``"method"``, ``"data set"``, ``"backbone"``) by name, in
    registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name` (a name may be registered once); returns `entry`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget `name` (for tests that register their own); a missing name is ignored."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as `name`; a ValueError naming the registered ones if none."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from "
                             f"{', '.join(self._entries) or '(none registered)'}") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def values(self) -> tuple[T, ...]:
        """The registered entries, in registration order."""
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
