"""``compute_masks``: A_G for every image from one mask source, through the cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from camgap.errors import InputError

from ._common import _SHOW
from .cache import _load_cache, _save_cache, cache_key
from .sources import MASK_SOURCES, FoundMasks, MaskRequest, MaskSource, parse_source
from .stats import MaskResult, MaskStats


def _area_counts(masks: Tensor) -> dict[str, int | float]:
    """The MaskStats fields that come from the masks themselves."""
    flat = masks.reshape(len(masks), masks[0].numel() if len(masks) else 0)
    any_ = flat.any(1)
    all_ = flat.all(1) if flat.shape[1] else torch.zeros(len(masks), dtype=torch.bool)
    area = flat.float().mean(1) if flat.shape[1] else torch.zeros(len(masks))
    return {
        "n_masks": len(masks),
        "n_empty": int((~any_).sum()),
        "n_full": int(all_.sum()),
        "mean_area": float(area.mean()) if len(masks) else float("nan"),
    }


def compute_masks(
    source: str | os.PathLike,
    images=None,
    boxes: Sequence | None = None,
    image_ids: Sequence[str] | None = None,
    size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    threshold: str | float = "otsu",
    resize: str = "resize",
) -> MaskResult:
    """A_G for every image from one mask source (module docstring): bool ``[M,S,S]`` + stats.

    ``images``: uint8 ``[N,3,S,S]`` (tensor, array or memmap; needed for saliency, and gives
    ``size`` when it is None). ``boxes``: list of ``[n,4]`` xyxy input-pixel boxes (needed for
    ``"boxes"``). ``image_ids``: ``N`` ids (needed for folders and for the cache; default
    ``"0".."N-1"``). ``threshold``: ``"otsu"`` or a float for saliency maps. ``resize``: how
    the images were resized (``BoxDataset``'s ``resize``), applied to external masks of
    another size. Saliency and folder masks are cached in ``cache_dir`` when given; a second
    call with the same data loads the packed file and computes nothing.
    Missing external masks raise ``MaskError`` unless ``skip_bad`` (then ``keep``/``valid``
    say which images have one)."""
    kind, option = parse_source(source)
    src = MASK_SOURCES.get(kind)
    request = _request(option, images, boxes, image_ids, size, skip_bad, threshold, resize)
    src.check(request)
    path = _cache_path(cache_dir, kind, src, request)
    hit = _load_cache(path, request.image_ids) if path is not None and path.is_file() else None
    if hit is not None:
        return hit
    res = _result(src.compute(request), request)
    if path is not None:
        _save_cache(path, res)
    return res


def _request(option, images, boxes, image_ids, size, skip_bad, threshold, resize) -> MaskRequest:
    """``compute_masks``'s arguments as a source's request: ids as strings (default
    ``"0".."N-1"``), one per image, and the input size (default: the images')."""
    n = len(images) if images is not None else (len(boxes) if boxes is not None else len(image_ids or []))
    if image_ids is None:
        image_ids = [str(i) for i in range(n)]
    image_ids = [str(i) for i in image_ids]
    if len(image_ids) != n:
        raise InputError(f"{len(image_ids)} image ids for {n} images")
    if size is None:
        if images is None:
            raise InputError("compute_masks needs size= when no images are given")
        size = int(images.shape[-1])
    return MaskRequest(option, images, boxes, image_ids, size, skip_bad, threshold, resize)


def _cache_path(cache_dir, kind: str, src: MaskSource, request: MaskRequest) -> Path | None:
    """Where this mask set is cached; None when its source is not cached or no cache_dir is given."""
    if not src.cached or cache_dir is None:
        return None
    r = request
    images = r.images if src.uses_images else None
    threshold = r.threshold if src.uses_images else None
    return Path(cache_dir) / cache_key(kind, r.option, r.image_ids, r.size, threshold, r.skip_bad, r.resize, images)


def _result(found: FoundMasks, request: MaskRequest) -> MaskResult:
    """A source's answer with its validity over the input images and its stats."""
    n = len(request.image_ids)
    valid = torch.zeros(n, dtype=torch.bool)
    valid[found.keep] = True
    stats = MaskStats(
        source=found.name,
        n=n,
        n_missing=len(found.missing),
        missing=found.missing[:_SHOW],
        n_resized=found.n_resized,
        threshold=found.threshold,
        size=request.size,
        **_area_counts(found.masks),
    )
    return MaskResult(found.masks, [request.image_ids[k] for k in found.keep.tolist()], found.keep, valid, stats)
