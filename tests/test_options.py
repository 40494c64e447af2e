"""camgap.options: the shared value checks, their wordings, and fields that declare their check."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest

from camgap.errors import CamgapError, InputError
from camgap.options import (
    OPTION_WORDS,
    CheckedOptions,
    Wording,
    check_of,
    field_checks,
    integer,
    number,
    option,
)


class _FileError(CamgapError, ValueError):
    pass


_FILE_WORDS = Wording(
    _FileError, "{name}: expected {what}, got {value!r}", outside="{name}: {value!r} is outside {interval}"
)


@pytest.mark.parametrize(
    "value, low, high, message",
    [
        (0, 1, None, "n must be an integer >= 1, got 0"),
        (2.5, 1, None, "n must be an integer >= 1, got 2.5"),
        (True, 0, None, "n must be an integer >= 0, got True"),  # a bool is not a count
        ("3", 0, None, "n must be an integer >= 0, got '3'"),
        (5, None, 4, "n must be an integer <= 4, got 5"),
        (-4, 1, 4096, "n must be an integer from 1 to 4096, got -4"),
        (1.0, None, None, "n must be an integer, got 1.0"),
    ],
)
def test_integer_refuses_with_the_bound_in_the_message(value, low, high, message):
    with pytest.raises(InputError) as e:
        integer("n", value, low, high)
    assert str(e.value) == message


def test_integer_accepts_numpy_integers_and_bounds_inclusive():
    assert integer("n", np.int64(3), 3) == 3 and type(integer("n", np.int32(3), 0)) is int
    assert integer("n", 4, 1, 4) == 4 and integer("n", -7) == -7


def test_integer_in_another_family_s_words():
    with pytest.raises(_FileError) as e:
        integer("g.toml: [t] classes", 1, 2, words=_FILE_WORDS)
    assert str(e.value) == "g.toml: [t] classes: expected an integer >= 2, got 1"
    with pytest.raises(_FileError, match=r"^w: expected an integer, got 'x'$"):
        integer("w", "x", words=_FILE_WORDS)
    with pytest.raises(InputError, match=r"^mask stats: n must be a count >= 0, got -1$"):
        integer("mask stats: n", -1, 0, noun="a count")


@pytest.mark.parametrize(
    "value, kw, message",
    [
        (0, {"low": 0, "high": 1, "open_low": True, "open_high": True}, "c must be a number in (0, 1), got 0"),
        (1.0, {"low": 0, "high": 1, "open_low": True, "open_high": True}, "c must be a number in (0, 1), got 1.0"),
        (True, {"low": 0, "high": 1, "open_low": True, "open_high": True}, "c must be a number in (0, 1), got True"),
        (math.nan, {"low": 0, "high": 1}, "c must be a number in [0, 1], got nan"),
        (1.5, {"low": 0, "high": 1, "nan": True, "noun": "a share"}, "c must be a share in [0, 1] (or NaN), got 1.5"),
        (-1, {"low": 0.0}, "c must be a number in [0.0, inf], got -1"),
    ],
)
def test_number_refuses_naming_the_interval(value, kw, message):
    with pytest.raises(InputError) as e:
        number("c", value, **kw)
    assert str(e.value) == message


def test_number_bounds_and_nan():
    assert number("c", 0, 0, 1) == 0.0 and number("c", 1, 0, 1) == 1.0  # closed by default
    assert number("c", np.float32(0.5), 0, 1, open_low=True, open_high=True) == 0.5
    assert math.isnan(number("c", math.nan, 0, 1, nan=True))
    assert number("c", 1e300) == 1e300
    with pytest.raises(InputError):
        number("c", math.inf)  # finite only, also without bounds


def test_number_in_a_family_with_its_own_outside_sentence():
    # the wrong kind names only the kind; a number outside names the interval and the value as a float
    with pytest.raises(_FileError, match=r"^lr: expected a number, got 'x'$"):
        number("lr", "x", 0.0, open_low=True, words=_FILE_WORDS)
    with pytest.raises(_FileError, match=r"^lr: expected a number, got inf$"):
        number("lr", math.inf, 0.0, words=_FILE_WORDS)
    with pytest.raises(_FileError) as e:
        number("lr", 0, 0.0, open_low=True, words=_FILE_WORDS)
    assert str(e.value) == "lr: 0.0 is outside (0.0, inf]"
    with pytest.raises(_FileError) as e:
        number("m", 1, 0.0, 1.0, open_high=True, words=_FILE_WORDS)
    assert str(e.value) == "m: 1.0 is outside [0.0, 1.0)"
    assert OPTION_WORDS.error is InputError


@dataclasses.dataclass(frozen=True)
class _Settings(CheckedOptions):
    size: int = option(check=functools.partial(integer, low=1))  # required
    share: float = option(0.5, functools.partial(number, low=0, high=1))
    tags: list = option(check=lambda n, v: list(v), factory=list)
    note: str | None = option(None)  # no check: taken as given

    what = "test option"


def test_checked_options_run_every_declared_check():
    s = _Settings(size=np.int64(3), tags=("a",))
    assert s.size == 3 and type(s.size) is int and s.tags == ["a"] and s.note is None and s.share == 0.5
    assert _Settings(size=1).tags == [] and _Settings(size=1).tags is not _Settings(size=1).tags
    with pytest.raises(InputError, match=r"^size must be an integer >= 1, got 0$"):
        _Settings(size=0)
    with pytest.raises(TypeError):
        _Settings()  # size has no default
    with pytest.raises(TypeError, match=r"unknown test option\(s\) \['colour'\]"):
        _Settings.of(_Settings(size=1), colour=2)
    assert _Settings.of(_Settings(size=1), share=1) == _Settings(size=1, share=1.0)


def test_field_checks_and_check_of():
    checks = field_checks(_Settings)
    assert list(checks) == ["size", "share", "tags", "note"] and checks["note"] is None
    assert check_of(_Settings, "share")("share", 1) == 1.0
