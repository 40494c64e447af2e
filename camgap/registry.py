"""One string registry with one behaviour, for architectures, CAM methods, measures and mask
sources (timm's ``create_model`` style: grids and command lines name things by string).

A duplicate name is an error (two plugins silently replacing each other is a bug); an unknown
name raises ``UnknownNameError`` (a ``KeyError`` and a ``CamgapError``) listing the known names.
Aliases resolve to a registered name and are listed with it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from camgap.errors import InputError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> T``; ``kind`` names what is registered in messages ("architecture", "CAM method")."""

    def __init__(self, kind: str, normalize: Callable[[str], str] = str.lower):
        self.kind = kind
        self._normalize = normalize
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("gradcam++", "gradcampp")``."""

        def wrap(item: T) -> T:
            self.add(name, item, *aliases)
            return item

        return wrap

    def add(self, name: str, item: T, *aliases: str) -> None:
        key = self._normalize(name)
        for label, n in ((self.kind, name), *((f"{self.kind} alias", a) for a in aliases)):
            if self._normalize(n) in self._items or self._normalize(n) in self._aliases:
                raise InputError(f"{label} {n!r} is registered already")
        self._items[key] = item
        self._aliases.update({self._normalize(a): key for a in aliases})

    def resolve(self, name: str) -> str:
        """The registered name that ``name`` (or an alias of it) stands for."""
        key = self._normalize(str(name))
        key = self._aliases.get(key, key)
        if key not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def aliases(self, name: str) -> list[str]:
        key = self.resolve(name)
        return sorted(a for a, k in self._aliases.items() if k == key)

    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(str(name))
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
