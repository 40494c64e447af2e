"""Settings whose fields declare their own checks, and the value checks they share.

A settings class (``StudyOptions``, ``ScoreOptions``, ``MaskStats``) is a frozen dataclass
deriving from :class:`CheckedOptions`; each field is ``option(default, check)`` with
``check(name, value) -> normalised value``, raising an error that names the field.
``__post_init__`` runs every check in one loop, so a bad value fails where the settings are
built, before anything is computed, and every function that takes the settings can trust them.
Checks must accept their own output (``dataclasses.replace`` runs them again). The grid tables
of ``camgap.zoo.config`` declare their checks the same way but run them on the raw table
(``field_checks``), where the file and key are known.

The checks (``integer``, ``number``) are one set for every family of settings. A family keeps
its own sentences (users read them and tests assert them): a :class:`Wording` gives its error
class and sentence; ``OPTION_WORDS`` is the default one (``"seed must be an integer >= 0, got
-1"``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from camgap.errors import InputError

Check = Callable[[str, Any], Any]
Opts = TypeVar("Opts", bound="CheckedOptions")


# --- value checks --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wording:
    """How one family of settings says that a value was refused.

    ``wrong`` is formatted with ``name``, ``what`` (e.g. ``an integer >= 1``, ``a number in
    (0, 1)``) and ``value`` (as given). ``outside``, when set, is the sentence for a number of
    the right type outside its interval, formatted with ``name``, ``value`` (as a float) and
    ``interval``; ``wrong`` then names only the kind (``a number``)."""

    error: type[Exception] = InputError
    wrong: str = "{name} must be {what}, got {value!r}"
    outside: str | None = None


OPTION_WORDS = Wording()


def is_integer(value: object) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's integers too


def integer(
    name: str,
    value: object,
    low: int | None = None,
    high: int | None = None,
    *,
    noun: str = "an integer",
    words: Wording = OPTION_WORDS,
) -> int:
    """``value`` as an int in ``[low, high]`` (a bound of None is open); a bool is not an integer."""
    if is_integer(value) and (low is None or value >= low) and (high is None or value <= high):  # type: ignore[operator]
        return int(value)  # type: ignore[call-overload]
    if low is not None and high is not None:
        what = f"{noun} from {low} to {high}"
    else:
        what = noun + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    raise words.error(words.wrong.format(name=name, what=what, value=value))


def _interval(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f"{'(' if open_low else '['}{lo}, {hi}{')' if open_high else ']'}"


def _inside(v: float, low: float | None, high: float | None, open_low: bool, open_high: bool) -> bool:
    above = low is None or (v > low if open_low else v >= low)
    below = high is None or (v < high if open_high else v <= high)
    return above and below


def number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    nan: bool = False,
    noun: str = "a number",
    words: Wording = OPTION_WORDS,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (closed unless
    ``open_low``/``open_high``; a bound of None is open); NaN passes only with ``nan``. A bool
    is not a number."""
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's floats too
    v = float(value) if numeric else math.nan  # type: ignore[arg-type]
    if numeric and math.isnan(v) and nan:
        return v
    if numeric and math.isfinite(v) and _inside(v, low, high, open_low, open_high):
        return v
    interval = _interval(low, high, open_low, open_high)
    if words.outside is None:
        what = f"{noun} in {interval}" + (" (or NaN)" if nan else "")
        raise words.error(words.wrong.format(name=name, what=what, value=value))
    if not (numeric and math.isfinite(v)):
        raise words.error(words.wrong.format(name=name, what=noun, value=value))
    raise words.error(words.outside.format(name=name, value=v, interval=interval))


# --- fields that declare their check ---------------------------------------------------------


def option(
    default: object = dataclasses.MISSING, check: Check | None = None, *, factory: Callable[[], Any] | None = None
) -> Any:
    """A field with its default (or ``factory``; neither: a required field) and the check that
    normalises and validates its value (None: taken as given)."""
    meta = {"check": check} if check is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_checks(cls: type) -> dict[str, Check | None]:
    """Each field of ``cls`` and the check it declares (None: none)."""
    return {f.name: f.metadata.get("check") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def check_of(cls: type, name: str) -> Check:
    """The check declared for field ``name`` of ``cls``."""
    return next(f.metadata["check"] for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]


class CheckedOptions:
    """Mixin of a frozen dataclass whose fields are all declared with :func:`option`."""

    what: ClassVar[str] = "option"  # how messages name a field: "study option", "score option"

    def __post_init__(self) -> None:
        for name, check in field_checks(type(self)).items():
            if check is not None:
                object.__setattr__(self, name, check(name, getattr(self, name)))

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
