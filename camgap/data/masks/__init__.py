"""Object regions A_G for the score: boxes, external PNG masks, or built-in saliency.

The score compares the thresholded CAM region A_L with an object region A_G. A_G comes
from one of three *mask sources*, all giving a boolean mask per image at the model's input
size ``S``:

``"boxes"``
    The union of the image's annotated boxes (``boxes_to_masks``). Cheap, never cached.
``"saliency"`` / ``"saliency:fine_grained"`` / ``"saliency:spectral_residual"``
    An unsupervised static saliency map from OpenCV's contrib module (``cv2.saliency``),
    binarised with Otsu's threshold (or a fixed threshold). Needs no download and no GPU;
    install with ``pip install camgap[saliency]``. ``"saliency"`` means
    ``"saliency:fine_grained"``, which finds the object on the synthetic dataset more often
    than spectral residual (BENCHMARKS.md has the numbers; tests/test_masks.py asserts a bound).
a directory
    One mask image per image, from any detector (e.g. the MCCL co-salient detector of the
    paper), matched by file stem == ``image_id`` (see ``read_mask_folder`` for the rules).

Each kind is a :class:`MaskSource` in the ``MASK_SOURCES`` registry (``camgap.registry``),
one module per source (``boxes``, ``saliency``, ``folder``) beside the source API
(``sources``), Otsu's threshold (``otsu``), the result types (``stats``), the cache
(``cache``) and the quality report and export (``quality``). ``parse_source`` turns a source
string into ``(kind, option)`` and ``compute_masks`` (``compute``) asks that source, caches
what it found and counts it in a :class:`MaskStats`.

Masks depend only on the data, never on the model, so ``compute_masks`` caches them in
``cache_dir`` (a packed-bit ``.npz`` keyed by the source, the threshold, the input size and
a fingerprint of the image ids; see ``cache_key``): scoring a model set with saliency masks
costs one mask computation, then no more than scoring with boxes.

Pixel convention (shared with the boxes of ``BoxDataset`` and the synthetic dataset): pixel
``(y, x)`` covers ``[x, x+1) x [y, y+1)`` in input pixels, and lies inside a box
``(xmin, ymin, xmax, ymax)`` when its centre lies inside the closed box:
``xmin <= x + 0.5 <= xmax`` and ``ymin <= y + 0.5 <= ymax``.
"""

from __future__ import annotations

from ._common import MaskError
from .boxes import box_mask, boxes_to_masks
from .cache import cache_key
from .compute import compute_masks
from .folder import FolderMasks, read_mask_folder
from .otsu import binarize, otsu_threshold
from .quality import export_masks, mask_quality
from .saliency import DEFAULT_SALIENCY, SALIENCY_METHODS, saliency_maps, saliency_masks
from .sources import MASK_SOURCES, FoundMasks, MaskRequest, MaskSource, parse_source
from .stats import MaskResult, MaskStats

__all__ = [
    "MaskError",
    "MaskResult",
    "MaskStats",
    "MaskSource",
    "MaskRequest",
    "FoundMasks",
    "FolderMasks",
    "MASK_SOURCES",
    "SALIENCY_METHODS",
    "DEFAULT_SALIENCY",
    "box_mask",
    "boxes_to_masks",
    "otsu_threshold",
    "binarize",
    "saliency_maps",
    "saliency_masks",
    "read_mask_folder",
    "compute_masks",
    "mask_quality",
    "export_masks",
    "parse_source",
    "cache_key",
]
