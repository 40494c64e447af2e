"""The mask source API: what a source is asked (``MaskRequest``), what it answers
(``FoundMasks``), the ``MASK_SOURCES`` registry and ``parse_source``. Each source module
(``boxes``, ``saliency``, ``folder``) registers itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from camgap.registry import Registry

from ._common import MaskError


@dataclass(frozen=True)
class MaskRequest:
    """What a mask source is asked for: ``option`` (the saliency method, the folder), the
    images' uint8 pixels, boxes and ids, the input size and how the images were resized."""

    option: str | None
    images: Any
    boxes: Sequence | None
    image_ids: list[str]
    size: int
    skip_bad: bool
    threshold: str | float
    resize: str


@dataclass(frozen=True)
class FoundMasks:
    """A source's answer: masks of the images ``keep``, the ids it had none for, how many it
    resized, and its name and threshold for the stats."""

    masks: Tensor
    keep: Tensor
    missing: list[str]
    n_resized: int
    name: str
    threshold: str | float | None = None


def _no_check(request: MaskRequest) -> None:
    return None


@dataclass(frozen=True)
class MaskSource:
    """One kind of A_G. ``compute`` makes the masks; ``check`` refuses a request before any
    cache lookup; ``options`` are the names it accepts after a colon (``saliency:<method>``;
    the first is the default); ``cached``: ``compute_masks`` keeps its masks in ``cache_dir``,
    their key covering the threshold and a sample of the images when ``uses_images``."""

    compute: Callable[[MaskRequest], FoundMasks]
    check: Callable[[MaskRequest], None] = _no_check
    options: tuple[str, ...] = ()
    cached: bool = True
    uses_images: bool = False


#: kind -> MaskSource: "boxes", "saliency" and "folder" (any other source string is a folder).
MASK_SOURCES: Registry[MaskSource] = Registry("mask source", normalize=str)
FOLDER = "folder"


def parse_source(source: str | os.PathLike) -> tuple[str, str | None]:
    """``"boxes"`` -> ``("boxes", None)``; ``"saliency[:method]"`` -> ``("saliency", method)``;
    anything else is a mask folder -> ``("folder", str(path))`` (it must exist)."""
    s = str(source)
    name, sep, option = s.partition(":")
    if name != FOLDER and name in MASK_SOURCES:
        src = MASK_SOURCES.get(name)
        if src.options:
            option = option or src.options[0]
            if option not in src.options:
                raise MaskError(f"unknown {name} method {option!r}; choose one of {', '.join(src.options)}")
            return name, option
        if not sep:
            return name, None
    path = Path(s).expanduser()
    if not path.is_dir():
        named = [
            f"'{n}[:{'|'.join(MASK_SOURCES.get(n).options)}]'" if MASK_SOURCES.get(n).options else f"'{n}'"
            for n in MASK_SOURCES.names()
            if n != FOLDER
        ]
        raise MaskError(f"mask source {s!r} is neither {', '.join(named)} nor an existing folder")
    return FOLDER, str(path.resolve())
