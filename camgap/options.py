"""Frozen settings objects whose fields declare their own checks.

A settings class (``StudyOptions``, ``ScoreOptions``) is a frozen dataclass deriving from
:class:`CheckedOptions`; each field is ``option(default, check)`` with ``check(name, value) ->
normalised value``, raising ``InputError`` that names the field. ``__post_init__`` runs every
check in one loop, so a bad value fails where the settings are built, before anything is
computed, and every function that takes the settings can trust them. Checks must accept their
own output (``dataclasses.replace`` runs them again)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

Check = Callable[[str, Any], Any]
Opts = TypeVar("Opts", bound="CheckedOptions")


def option(default: object, check: Check) -> Any:
    """A field with its default and the check that normalises and validates its value."""
    return dataclasses.field(default=default, metadata={"check": check})


class CheckedOptions:
    """Mixin of a frozen dataclass whose fields are all declared with :func:`option`."""

    what: ClassVar[str] = "option"  # how messages name a field: "study option", "score option"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))

    @classmethod
    def of(cls: type[Opts], options: Opts | None = None, **settings: object) -> Opts:
        """``options`` (default: the defaults) with the given fields replaced: the keyword form
        of the functions that take these settings. An unknown keyword is a TypeError, as for a
        function's unknown keyword argument."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"unknown {cls.what}(s) {unknown}")
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, got a {type(options).__name__}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **settings) if settings else base  # type: ignore[type-var]
