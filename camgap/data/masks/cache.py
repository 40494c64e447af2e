"""The mask cache: masks depend only on the data, so a mask set is kept as packed bits in a
``.npz`` file named by ``cache_key`` and read back instead of computed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from camgap.io import atomic_write

from ._common import _as_numpy
from .folder import MASK_EXTENSIONS
from .stats import MaskResult, MaskStats

CACHE_VERSION = 1


def _sample_images_digest(images, h) -> None:
    """Hash a few whole images (first, evenly spaced, last): a regenerated dataset that
    kept its ids still gets new masks, without reading every image."""
    n = len(images)
    for k in sorted({int(round(x)) for x in np.linspace(0, n - 1, num=min(n, 8))}):
        h.update(np.ascontiguousarray(_as_numpy(images[k])).tobytes())


def cache_key(
    kind: str,
    arg: str | None,
    image_ids: Sequence[str],
    size: int,
    threshold,
    skip_bad: bool,
    resize: str = "resize",
    images=None,
) -> str:
    """Cache file name for a mask set: the source, its options and a fingerprint of the ids
    and the size (for folders also every matched file's name, size and mtime; for saliency a
    few of the images' bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, kind, arg, int(size), str(threshold), bool(skip_bad), resize]).encode())
    h.update("\n".join(map(str, image_ids)).encode())
    if kind == "folder":
        for p in sorted(Path(arg).rglob("*")):
            if p.suffix.lower() in MASK_EXTENSIONS and p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(arg).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if kind == "saliency" and images is not None and len(images):
        _sample_images_digest(images, h)
    label = {"saliency": f"saliency-{arg}", "folder": f"dir-{Path(arg or '').name}"}.get(kind, kind)
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
    return f"masks-{label}-{size}px-{h.hexdigest()[:20]}.npz"


def _save_cache(path: Path, res: MaskResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = res.masks.cpu().numpy()
    atomic_write(
        path,
        lambda f: np.savez(
            f,
            packed=np.packbits(m.reshape(len(m), -1), axis=1),
            shape=np.asarray(m.shape, dtype=np.int64),
            keep=res.keep.numpy(),
            valid=res.valid.numpy(),
            image_ids=np.asarray(res.image_ids, dtype=str),
            stats=np.asarray(res.stats.to_json()),
        ),
    )


def _load_cache(path: Path, image_ids: Sequence[str]) -> MaskResult | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(x) for x in z["shape"])
            n_bits = shape[1] * shape[2] if len(shape) == 3 else 0
            masks = np.unpackbits(z["packed"], axis=1, count=n_bits).astype(bool).reshape(shape)
            keep = torch.from_numpy(z["keep"].astype(np.int64))
            valid = torch.from_numpy(z["valid"].astype(bool))
            ids = [str(x) for x in z["image_ids"]]
            stats = MaskStats(**{**json.loads(str(z["stats"])), "cached": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a corrupt or foreign file: recompute and overwrite
    if len(valid) != len(image_ids) or ids != [str(image_ids[k]) for k in keep.tolist()]:
        return None
    return MaskResult(torch.from_numpy(masks), ids, keep, valid, stats)
