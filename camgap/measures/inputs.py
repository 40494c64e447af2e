"""What `score_model` reads: a TensorStore, a BoxDataset or a user's Dataset of
``(image, label, boxes)``, as batches of uint8 images with their labels, boxes and ids.

With ``num_workers`` > 0 the images are decoded and resized in DataLoader worker processes
while the model runs (batches in order, pinned memory for a GPU). A worker sends its bad-file
error and its warnings back with the batch instead of raising there, and this process re-emits
them item by item: the error is the same one-line ``CamgapError`` naming the file (a worker's
own traceback would be a RuntimeError), raised at the same image, after the same warnings, as
without workers."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from camgap import machine
from camgap.data.dataset import collate_boxes
from camgap.errors import CamgapError, InputError
from camgap.options import integer

# (images uint8 [B,3,S,S], labels [B], boxes list[[n,4]], box_labels list[[n]], image ids)
Batch = tuple[Tensor, Tensor, list[Tensor], list[Tensor], list[str]]


def iter_batches(data, batch_size: int, device: torch.device, num_workers: int = 0) -> Iterator[Batch]:
    """Batches from a TensorStore (already decoded; anything with `batches()` and `image_ids`),
    a BoxDataset, or a plain Dataset of (image, label, boxes) (see `as_scoring_data`), the
    last two decoded on the fly by a DataLoader."""
    data = as_scoring_data(data)
    if hasattr(data, "batches"):
        ids = list(data.image_ids)
        start = 0
        for images, labels, boxes, box_labels in data.batches(batch_size, device=device):
            yield images, labels, boxes, box_labels, ids[start : start + len(labels)]
            start += len(labels)
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(data),
        batch_size=batch_size,
        collate_fn=_collate_indexed,
        num_workers=num_workers,
        pin_memory=num_workers > 0 and device.type == "cuda",
    )
    for images, labels, packed, index, notes in loader:
        for note in notes:
            note.deliver()
        ids = [data.image_ids[i] for i in index]
        boxes, box_labels = packed.unpack()
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True), boxes, box_labels, ids


def check_workers(name: str, value: object) -> int:
    """Decoding worker processes: 0 (this process) up to one per CPU (`camgap.machine`): each
    worker is a copy of this process decoding on a core of its own; more decode no faster, and a
    mistyped million would exhaust the machine's memory before the first batch."""
    n = integer(name, value, low=0)
    if problem := machine.too_many_workers(n):
        raise InputError(f"{name}: {problem}")
    return n


@contextlib.contextmanager
def decoding_split(data, num_workers: int, batch_size: int, device: torch.device) -> Iterator[tuple[int, int]]:
    """Yields (decoding worker processes, torch intra-op threads of the model) for a pass over
    `data`: no workers for data already decoded (a TensorStore), and no more than there are
    batches (a worker decodes whole batches); on a CPU, beside N workers, the
    model gets the cores they leave, at least one (never more than torch had), and torch's own
    count is restored after. Torch's default, a thread per core, oversubscribes the cores: its
    threads spin at every barrier while the workers wait for a core, and the pass ran slower
    with 2 workers than with none (BENCHMARKS.md)."""
    threads = torch.get_num_threads()
    workers = 0 if hasattr(as_scoring_data(data), "batches") else min(num_workers, -(-len(data) // batch_size))
    if workers == 0 or device.type != "cpu":
        yield workers, threads
        return
    torch.set_num_threads(max(1, min(threads, machine.cpu_count() - workers)))
    try:
        yield workers, torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


ACCEPTED_DATA = (
    "a camgap BoxDataset, a TensorStore, or a torch.utils.data.Dataset yielding (image, label, boxes): "
    "image uint8 [3,S,S] or float in [0,1], label an int, boxes float [n,4] xyxy in input pixels"
)


def as_scoring_data(data):
    """`data` as something `iter_batches` reads: a TensorStore or BoxDataset as is, a plain
    Dataset of (image, label, boxes) wrapped in `TripletDataset`; anything else is a TypeError
    naming what is accepted."""
    from camgap.data.dataset import BoxDataset

    if hasattr(data, "batches") and hasattr(data, "image_ids"):
        return data
    if isinstance(data, (BoxDataset, TripletDataset)):
        return data
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return TripletDataset(data)
    raise TypeError(f"cannot score on a {type(data).__name__}: expected {ACCEPTED_DATA}")


class TripletDataset(torch.utils.data.Dataset):
    """A user's Dataset of ``(image, label, boxes)`` as BoxDataset items ``(image, label, boxes,
    box_labels)``: every box belongs to the image's labelled class. Images must all have one
    square size (the CAM, the masks and the IoU share one grid); the first item sets it and is
    checked here, before any model runs. Ids are the dataset's `image_ids`, else the indices."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        self.image_ids = [str(i) for i in getattr(dataset, "image_ids", range(len(dataset)))]
        if len(self.image_ids) != len(dataset):
            raise InputError(f"the dataset has {len(dataset)} items but {len(self.image_ids)} image_ids")
        first = self._item(0)[0] if len(dataset) else None
        self.shape, self.dtype = (tuple(first.shape), first.dtype) if first is not None else (None, None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self._item(i)

    def _item(self, i: int):
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            size = f" of {len(item)}" if isinstance(item, (tuple, list)) else ""
            raise TypeError(f"item {i} of the dataset is a {type(item).__name__}{size}: expected {ACCEPTED_DATA}")
        image, label, boxes = item
        image = torch.as_tensor(image)
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
            raise InputError(f"item {i}: image of shape {tuple(image.shape)}; expected a square [3, S, S] image")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise InputError(f"item {i}: image of dtype {image.dtype}; expected uint8 (0..255) or float (0..1)")
        if getattr(self, "shape", None) not in (None, tuple(image.shape)):
            raise InputError(
                f"item {i}: image of shape {tuple(image.shape)}, item 0's is {self.shape}: "
                "all images must have one size"
            )
        image = image.float() if image.is_floating_point() else image
        if getattr(self, "dtype", None) not in (None, image.dtype):
            raise InputError(
                f"item {i}: a {image.dtype} image, item 0's is {self.dtype}: all images must be "
                "uint8 (0..255) or all float (0..1)"
            )
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.numel() and (boxes.dim() != 2 or boxes.shape[1] != 4):
            raise InputError(f"item {i}: boxes of shape {tuple(boxes.shape)}; expected [n, 4] xyxy")
        boxes = boxes.reshape(-1, 4)
        label = int(label)
        return image, label, boxes, torch.full((len(boxes),), label, dtype=torch.int64)


@dataclass
class _WorkerNote:
    """What loading one item in a worker process said: its warnings (message, category,
    filename, line) and the CamgapError it raised, if any."""

    warnings: list[tuple[str, type[Warning], str, int]]
    error: CamgapError | None = None

    def deliver(self) -> None:
        """Re-emit the warnings here (this process's filters and format apply), then raise the error."""
        for message, category, filename, lineno in self.warnings:
            warnings.warn_explicit(message, category, filename, lineno)
        if self.error is not None:
            raise self.error


class _Indexed(torch.utils.data.Dataset):
    """Pairs each item with its index so image ids survive skipped (None) items; in a worker
    process, also with the `_WorkerNote` of loading it (None in this process)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if torch.utils.data.get_worker_info() is None:
            return i, self.dataset[i], None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # this process's filters decide when it re-emits them
            try:
                item, error = self.dataset[i], None
            except CamgapError as exc:
                item, error = None, exc
        said = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
        return i, item, _WorkerNote(said, error)


def _collate_indexed(items):
    """The batch of the items up to the first that failed (`_WorkerNote.deliver` raises there),
    and the notes to deliver before it is scored."""
    notes = [note for _, _, note in items if note is not None]
    failed = next((k for k, note in enumerate(notes) if note.error is not None), None)
    if failed is not None:
        items, notes = [], notes[: failed + 1]
    kept = [(i, item) for i, item, _ in items if item is not None]
    if not kept:
        empty = torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        return *empty, _Boxes.pack([], []), [], notes
    images, labels, boxes, box_labels = collate_boxes([item for _, item in kept])[:4]
    return images, labels, _Boxes.pack(boxes, box_labels), [i for i, _ in kept], notes


@dataclass
class _Boxes:
    """A batch's boxes as three tensors, not two per image: a worker process sends each tensor
    through its own shared-memory segment, so 2B small tensors cost more than decoding the batch."""

    boxes: Tensor  # float32 [sum n_i, 4]
    labels: Tensor  # int64 [sum n_i]
    counts: Tensor  # int64 [B]: n_i

    @classmethod
    def pack(cls, boxes: list[Tensor], box_labels: list[Tensor]) -> _Boxes:
        counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
        if not boxes:
            return cls(torch.empty(0, 4), torch.empty(0, dtype=torch.int64), counts)
        return cls(torch.cat(boxes), torch.cat(box_labels), counts)

    def unpack(self) -> tuple[list[Tensor], list[Tensor]]:
        """The per-image lists again, as views of the two tensors."""
        sizes = self.counts.tolist()
        return list(self.boxes.split(sizes)), list(self.labels.split(sizes))
