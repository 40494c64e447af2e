"""Which runs may share a pack (``camgap.zoo.packed``: K runs trained as one grouped computation).

The one rule, followed by the grid (a run's pack size, part of its config and id), the build
(which runs train together) and a pack's trainer (``config.check_pack``, over the same
``PACK_SHARED_CONFIG``):

* an architecture packs when ``packed.packable`` accepts its model (a ResNet of the torchvision
  layout); ``[train] pack = "auto"`` packs those by ``PACK_AUTO`` and trains any other alone;
* trained runs with one ``pack_key`` (pack size and every ``PACK_SHARED_CONFIG`` field) share packs,
  in grid order, in chunks of the pack size. A function of the grid alone, so the same runs share a
  pack on every build and resume: their float results depend on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from camgap.params import canonical_json
from camgap.zoo.config import PACK_SHARED_CONFIG, GridError, RunConfig

__all__ = ["PACK_AUTO", "pack_size", "packable_arch", "pack_key", "pack_plan", "pack_id"]

PACK_AUTO = 8  # runs per pack for `[train] pack = "auto"`


class _Runs(Protocol):
    """A ``Grid``, as this module sees it (the grid imports this module: no import back)."""

    def runs(self) -> list: ...


@functools.lru_cache(maxsize=64)
def _packable(arch: str, options_json: str) -> bool:
    # torch and the model zoo load only when a grid asks to pack: reading a grid stays light
    from camgap.models import create_model_skeleton
    from camgap.zoo.packed import packable

    return packable(create_model_skeleton(arch, 2, **json.loads(options_json)))


def packable_arch(arch: str, options: Mapping[str, Any]) -> bool:
    """Whether ``PackedResNet`` can pack models of ``arch`` built with these arch options."""
    return _packable(arch, canonical_json(dict(options)))


def pack_size(setting: int | str, arch: str, options: Mapping[str, Any]) -> int:
    """Runs of ``arch`` trained as one computation for ``[train] pack = setting``: 1, ``PACK_AUTO``
    for "auto" where the arch packs (else 1), or the number given (``GridError`` where it does not)."""
    if setting == 1:
        return 1
    if not packable_arch(arch, options):
        if setting == "auto":
            return 1
        raise GridError(
            f"[train] pack = {setting}: {arch} cannot be packed (only ResNets of the torchvision "
            'layout can); use pack = 1 or "auto"'
        )
    return PACK_AUTO if setting == "auto" else int(setting)


def pack_key(cfg: RunConfig) -> tuple | None:
    """What runs must share to train in one pack (their pack size and ``PACK_SHARED_CONFIG``), or
    None for a run that trains alone (untrained, or a pack size of 1)."""
    size = int(cfg.pack or 1)
    if not cfg.trained or size <= 1:
        return None
    return (size, *(canonical_json(getattr(cfg, name)) for name in PACK_SHARED_CONFIG))


def pack_id(members: Iterable[str]) -> str:
    """A pack's id: from its runs' ids, in order."""
    return "pack-" + hashlib.sha256(",".join(members).encode()).hexdigest()[:16]


def pack_plan(g: _Runs) -> dict[str, str]:
    """run id -> the id of its pack, for every run of ``g`` that trains in one: runs of one
    ``pack_key``, in grid order, in chunks of the pack size (the runs of a pack that are still to
    do train together)."""
    groups: dict[tuple, list[str]] = {}
    for spec in g.runs():
        key = pack_key(spec.config)
        if key is not None:
            groups.setdefault(key, []).append(spec.run_id)
    plan: dict[str, str] = {}
    for (size, *_), ids in groups.items():
        for i in range(0, len(ids), size):
            members = ids[i : i + size]
            plan.update(dict.fromkeys(members, pack_id(members)))
    return plan
