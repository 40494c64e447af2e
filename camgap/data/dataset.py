"""Records -> network-sized uint8 images with their boxes in input pixel coordinates.

Preprocessing (``resize=``):

``"resize"`` (default, the reference behaviour)
    the whole image is resized to ``S x S`` (bilinear, antialias), so no part of a box is
    cropped away; boxes scale by ``S / W`` and ``S / H``.
``"resize_crop"``
    the shorter side is resized to ``int(S / 0.875)`` (torchvision ``Resize(int)``), then a
    centre crop of ``S x S``; boxes move with the image, are clamped to the crop, and boxes
    cropped away entirely are dropped.

Both go through ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes`` (XYXY) so the
boxes follow the image exactly.  Before the transform, boxes are rescaled from
``Record.ann_size`` to the decoded size when the two differ, clamped to the image, and boxes of
zero or negative area are dropped with a ``warnings.warn`` naming the file.

Normalisation with mean/std is *not* done here: images stay uint8 (a quarter of the bytes to
move) and :func:`normalize` runs on the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from camgap.errors import InputError

from .errors import DataError
from .images import check_max_pixels, decode_rgb, image_size
from .layouts import Record
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZE_MODES",
    "CROP_RATIO",
    "normalize",
    "BoxDataset",
    "collate_boxes",
    "load_item",
    "prepare_boxes",
    "count_dropped_boxes",
    "any_box_inside",
    "make_transform",
]

CROP_RATIO = 0.875

Item = tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]


def normalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` or ``[3,H,W]`` (0..255) -> float ``(x/255 - mean) / std``.

    Runs on the images' device; ``mean``/``std`` are per-channel sequences (or tensors).
    A floating input is taken to be in 0..1 already. The result has torch's default dtype
    (float32 unless changed), so that a float64 model, as the exactness tests train, gets float64 inputs.
    """
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise InputError(f"expected images [B,3,H,W] or [3,H,W], got {tuple(images.shape)}")
    x = images.to(torch.get_default_dtype())
    if not images.is_floating_point():
        x = x / 255.0
    shape = (3, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x - m) / s


def make_transform(input_size: int, resize: str = "resize") -> v2.Transform:
    """The v2 transform of one preprocessing mode (applied to ``(Image, BoundingBoxes)``)."""
    if resize == "resize":
        return v2.Resize((input_size, input_size), antialias=True)
    if resize == "resize_crop":
        return v2.Compose([v2.Resize(int(input_size / CROP_RATIO), antialias=True), v2.CenterCrop(input_size)])
    raise InputError(f"unknown resize mode {resize!r}; expected one of {RESIZE_MODES}")


def _keep_positive(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _frame_boxes(record: Record, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Record boxes rescaled to a ``width x height`` image and clamped to it, their labels, and
    which boxes keep a positive area (the others lie wholly outside the image)."""
    boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(record.box_labels, dtype=torch.int64).reshape(-1)
    if labels.numel() != boxes.shape[0]:
        raise DataError(record.path, f"{boxes.shape[0]} boxes but {labels.numel()} box labels")
    if boxes.shape[0] == 0:
        return boxes, labels, torch.ones(0, dtype=torch.bool)
    if record.ann_size is not None and tuple(record.ann_size) != (width, height):
        aw, ah = record.ann_size
        if aw <= 0 or ah <= 0:
            raise DataError(record.path, f"invalid annotation size {record.ann_size}")
        boxes = boxes * torch.tensor([width / aw, height / ah, width / aw, height / ah])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes, labels, _keep_positive(boxes)


def prepare_boxes(record: Record, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Record boxes -> float32 ``[n,4]`` in the decoded image's pixel frame, plus labels.

    Rescales from ``record.ann_size`` when it differs from ``(width, height)``, clamps to the
    image, and drops (with a warning naming the file) boxes of zero or negative area.
    """
    boxes, labels, keep = _frame_boxes(record, width, height)
    if not bool(keep.all()):
        dropped = [
            tuple(round(v, 2) for v in b) for b in torch.tensor(record.boxes, dtype=torch.float64)[~keep].tolist()
        ]
        warnings.warn(
            f"{record.path}: dropped {len(dropped)} degenerate box(es) (zero or "
            f"negative area after clamping to the {width}x{height} image): {dropped}",
            stacklevel=3,
        )
        boxes, labels = boxes[keep], labels[keep]
    return boxes, labels


def count_dropped_boxes(records: Sequence[Record], max_pixels: int | None = None) -> int:
    """How many boxes of ``records`` :func:`prepare_boxes` drops (wholly outside their image),
    from each image's header alone; an unreadable file counts none (it is reported when decoded)."""
    n = 0
    for record in records:
        if not record.boxes:
            continue
        try:
            width, height = image_size(record.path, max_pixels)
            n += int((~_frame_boxes(record, width, height)[2]).sum())
        except DataError:
            continue
    return n


def any_box_inside(records: Sequence[Record], max_pixels: int | None = None) -> bool:
    """Whether some record keeps a box inside its image (:func:`prepare_boxes` drops the rest),
    from the headers of the records with boxes, up to the first that keeps one; an unreadable
    file counts as keeping its boxes (it is reported when decoded)."""
    for record in records:
        if not record.boxes:
            continue
        try:
            width, height = image_size(record.path, max_pixels)
        except DataError:
            return True
        if bool(_frame_boxes(record, width, height)[2].any()):
            return True
    return False


def load_item(
    record: Record,
    input_size: int = 224,
    resize: str = "resize",
    transform: v2.Transform | None = None,
    max_pixels: int | None = None,
) -> Item:
    """Decode, transform and return ``(image uint8 [3,S,S], label, boxes [n,4], labels [n])``.

    Raises :class:`DataError` for a bad file or one larger than ``max_pixels`` (by its header).
    """
    if transform is None:
        transform = make_transform(input_size, resize)
    image = decode_rgb(record.path, max_pixels, contiguous=False)  # resized first, made contiguous after
    h, w = int(image.shape[-2]), int(image.shape[-1])
    boxes, box_labels = prepare_boxes(record, w, h)
    bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
    out_img, out_bb = transform(tv_tensors.Image(image), bb)
    out_img = out_img.as_subclass(torch.Tensor).contiguous()
    out_boxes = out_bb.as_subclass(torch.Tensor).to(torch.float32)
    oh, ow = out_img.shape[-2:]
    if out_boxes.shape[0]:
        out_boxes = out_boxes.clone()
        out_boxes[:, 0::2] = out_boxes[:, 0::2].clamp(0, ow)
        out_boxes[:, 1::2] = out_boxes[:, 1::2].clamp(0, oh)
        keep = _keep_positive(out_boxes)  # boxes cropped away entirely
        out_boxes, box_labels = out_boxes[keep], box_labels[keep]
    return out_img, int(record.label), out_boxes.reshape(-1, 4), box_labels


class BoxDataset(Dataset):
    """``records`` -> ``(image uint8 [3,S,S], label int, boxes float32 [n,4] xyxy in input
    pixels, box_labels int64 [n])``.

    ``input_size`` S; ``resize`` ``"resize"`` (whole image to SxS, default) or
    ``"resize_crop"`` (shorter side to ``int(S/0.875)``, centre crop S).  ``image_ids`` and
    ``labels`` list the records' ids and labels in order.  A file whose header declares more
    than ``max_pixels`` is a bad file (:mod:`camgap.data.images`).

    Bad files raise :class:`DataError` (path, problem).  With ``skip_bad=True`` a bad item
    instead warns, is appended to ``self.skipped`` as ``(path, problem)``, and
    ``__getitem__`` returns ``None``; :func:`collate_boxes` drops the ``None`` items, so a
    batch may hold fewer than ``batch_size`` images (possibly none: B = 0).
    ``self.skipped`` is exact only with ``num_workers=0`` (workers fill their own copies);
    with any number of workers the exact skip count is ``len(dataset)`` minus the number of
    images the loader yielded over one full pass.
    """

    def __init__(
        self,
        records: Sequence[Record],
        input_size: int = 224,
        resize: str = "resize",
        skip_bad: bool = False,
        max_pixels: int | None = None,
    ):
        if int(input_size) <= 0:
            raise InputError(f"input_size must be positive, got {input_size}")
        self.records = list(records)
        self.input_size = int(input_size)
        self.resize = resize
        self.skip_bad = bool(skip_bad)
        self.max_pixels = check_max_pixels(max_pixels)
        self.transform = make_transform(self.input_size, resize)
        self.image_ids = [r.image_id for r in self.records]
        self.labels = [int(r.label) for r in self.records]
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Item | None:
        record = self.records[i]
        try:
            return load_item(record, self.input_size, self.resize, self.transform, self.max_pixels)
        except DataError as e:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipping {e}", stacklevel=2)
            self.skipped.append((e.path, e.problem))
            return None


def collate_boxes(
    batch: Sequence[Item | None],
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Stack a list of items: ``(images uint8 [B,3,S,S], labels int64 [B], boxes list of
    float32 [n_i,4], box_labels list of int64 [n_i])``.

    ``None`` items (bad files skipped by ``BoxDataset(skip_bad=True)``) are dropped; when all
    are, the result has B = 0 (images ``[0,3,0,0]``) and callers should skip it.
    """
    items = [b for b in batch if b is not None]
    if not items:
        return (torch.empty((0, 3, 0, 0), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), [], [])
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.int64)
    return images, labels, [it[2] for it in items], [it[3] for it in items]
