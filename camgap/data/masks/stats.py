"""What a mask set is: ``MaskResult`` (the masks and which images they belong to) and
``MaskStats`` (its counts for the report and the cache)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from camgap.options import CheckedOptions, integer, number, option


# mask stats say a refusal in their own words ("mask stats: n_empty must be a count >= 0")
def _count(name: str, value: object) -> int:
    return integer(f"mask stats: {name}", value, 0, noun="a count")


def _share(name: str, value: object) -> float:
    return number(f"mask stats: {name}", value, 0, 1, nan=True, noun="a share")


def _ids(name: str, value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


@dataclass(frozen=True)
class MaskStats(CheckedOptions, Mapping):
    """Counts of a mask set for the report; each field declares its check beside it.

    ``source`` (``"boxes"``, ``"saliency:<method>"`` or the folder), ``n`` (input images),
    ``n_masks``, ``n_missing``, ``missing`` (the first few ids without a mask), ``n_empty``
    (all-False masks: IoU with them is undefined, the scorer reports and excludes those
    images), ``n_full`` (all-True masks), ``n_resized`` (external masks not at the input
    size), ``mean_area`` (mean foreground share), ``threshold`` (of the saliency maps),
    ``size``, ``cached`` (loaded from the cache). Read-only mapping access
    (``stats["n_empty"]``, ``stats.get(...)``) works too."""

    source: str = option(check=lambda n, v: str(v))
    n: int = option(check=_count)
    n_masks: int = option(check=_count)
    n_missing: int = option(0, _count)
    missing: tuple[str, ...] = option((), _ids)
    n_empty: int = option(0, _count)
    n_full: int = option(0, _count)
    n_resized: int = option(0, _count)
    mean_area: float = option(float("nan"), _share)
    threshold: str | float | None = option(None)
    size: int = option(0, _count)
    cached: bool = option(False, lambda n, v: bool(v))

    def __getitem__(self, key: str) -> object:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def to_json(self) -> str:
        """The cache's copy (without ``cached``)."""
        return json.dumps({k: list(v) if k == "missing" else v for k, v in self.items() if k != "cached"})


@dataclass
class MaskResult:
    """Masks for the images that have one, and counts for the report.

    ``masks[j]`` belongs to image ``image_ids[j]`` = input image ``keep[j]``; ``valid`` is a
    bool ``[N]`` over the input images; ``stats`` a :class:`MaskStats`."""

    masks: Tensor
    image_ids: list[str]
    keep: Tensor
    valid: Tensor
    stats: MaskStats

    def summary(self) -> str:
        s = self.stats
        parts = [f"masks from {s.source}: {s.n_masks} of {s.n} images"]
        if s.n_missing:
            parts.append(f"{s.n_missing} without a mask skipped (e.g. {', '.join(s.missing[:3])})")
        parts.append(f"{s.n_empty} empty (excluded from IoU), {s.n_full} all-foreground")
        if s.n_resized:
            parts.append(f"{s.n_resized} resized to {s.size}px")
        parts.append(f"mean area {s.mean_area:.1%}")
        if s.cached:
            parts.append("from cache")
        return "; ".join(parts)
