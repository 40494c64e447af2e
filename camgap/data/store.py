"""TensorStore: decode and resize a dataset once into memory-mapped uint8 tensors.

A store lives in a cache directory shared by all runs and worker processes::

    cache_dir/images.u8     raw uint8 array [N, 3, S, S] (C order), read through np.memmap
    cache_dir/targets.npz   labels [N], boxes (flat [M, 4] float32 + offsets [N + 1]),
                            box labels (flat [M]), image ids, record index, fingerprint
    cache_dir/meta.json     N, S, resize mode, fingerprint, classes, skipped images
    cache_dir/.lock         advisory lock held while building (POSIX flock)

Every file is written to a temporary name and moved into place (``camgap.io.replacing``);
``meta.json`` is removed first and written last, so a directory with a ``meta.json``
always holds a complete store, and a crash mid-build leaves one that ``cached`` rebuilds.

The fingerprint hashes the records (absolute path, file size and mtime, label, boxes, box
labels, annotation size, image id), the input size, the resize mode, the classes and the
store format version: ``TensorStore.cached`` reuses a store only when it matches.

``.images`` is a torch tensor over a copy-on-write memory map (``mode="c"``): reads share
the page cache between processes; writes, if any, stay private to the process and never
reach the file. ``batches`` always yields fresh copies. Pickling a memmap-backed store
(to send it to a worker) pickles only its directory; the worker reopens it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from camgap.errors import CamgapError, InputError, MissingFileError
from camgap.io import file_lock, replacing

from .errors import DataError
from .images import check_max_pixels

__all__ = ["TensorStore", "StoreError", "records_fingerprint"]

FORMAT = "camgap-tensorstore"
FORMAT_VERSION = 1
IMAGES_NAME = "images.u8"
TARGETS_NAME = "targets.npz"
META_NAME = "meta.json"
LOCK_NAME = ".lock"


class StoreError(CamgapError, ValueError):
    """A cache directory that holds no complete, consistent store."""


# --- fingerprint -------------------------------------------------------------------------


def records_fingerprint(
    records: Sequence, input_size: int, resize: str = "resize", classes: Sequence[str] | None = None
) -> str:
    """SHA-256 of everything that determines a store's content (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, FORMAT_VERSION, int(input_size), resize, list(classes or [])]).encode())
    for r in records:
        path = os.path.abspath(os.fspath(r.path))
        try:
            st = os.stat(path)
            stat = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = None
        ann = getattr(r, "ann_size", None)
        row = [
            path,
            stat,
            int(r.label),
            [[float(c) for c in b] for b in r.boxes],
            [int(c) for c in r.box_labels],
            list(ann) if ann is not None else None,
            str(getattr(r, "image_id", "")),
        ]
        h.update(json.dumps(row).encode())
        h.update(b"\n")
    return h.hexdigest()


# --- helpers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(cache_dir: Path):
    """Exclusive advisory lock on ``cache_dir/.lock`` while one process builds the store."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / LOCK_NAME):
        yield


def _write_images(items, f, records: list, shape: tuple[int, int, int]) -> tuple[dict[str, list], list[dict]]:
    """Stream the decoded images into ``f`` as raw uint8; return the per-image columns of the
    targets file and the skipped files."""
    columns: dict[str, list] = {"labels": [], "boxes": [], "box_labels": [], "image_ids": [], "record_index": []}
    skipped: list[dict] = []
    for i, sample, problem in items:
        i = int(i)
        if sample is None:
            skipped.append({"index": i, "path": str(records[i].path), "problem": problem})
            continue
        image, label, bxs, bls = sample
        image = torch.as_tensor(image)
        if image.dtype != torch.uint8 or tuple(image.shape) != shape:
            raise StoreError(
                f"{records[i].path}: BoxDataset gave {tuple(image.shape)} {image.dtype}, expected {shape} torch.uint8"
            )
        f.write(image.contiguous().numpy().tobytes())
        columns["labels"].append(int(label))
        columns["boxes"].append(torch.as_tensor(bxs, dtype=torch.float32).reshape(-1, 4).numpy())
        columns["box_labels"].append(torch.as_tensor(bls, dtype=torch.int64).reshape(-1).numpy())
        columns["image_ids"].append(str(getattr(records[i], "image_id", i)))
        columns["record_index"].append(i)
    return columns, skipped


def _write_targets(f, fp: str, columns: dict[str, list]) -> None:
    """The targets file: labels, boxes flat with offsets, box labels, image ids, record index."""
    counts = np.array([len(b) for b in columns["boxes"]], dtype=np.int64)
    np.savez(
        f,
        fingerprint=np.array(fp),
        labels=np.array(columns["labels"], dtype=np.int64),
        record_index=np.array(columns["record_index"], dtype=np.int64),
        box_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=np.concatenate(columns["boxes"]).astype(np.float32).reshape(-1, 4),
        box_labels=np.concatenate(columns["box_labels"]).astype(np.int64),
        image_ids=np.array(columns["image_ids"], dtype=str),
    )


class _SafeItems(torch.utils.data.Dataset):
    """Wraps BoxDataset: item i -> (i, sample or None, problem) so bad files can be skipped."""

    def __init__(self, dataset, skip_bad: bool):
        self.dataset = dataset
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if not self.skip_bad:
            return i, self.dataset[i], None
        try:
            return i, self.dataset[i], None
        except DataError as e:
            return i, None, str(e)


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _reopen(cache_dir: str, device: str | None) -> TensorStore:
    store = TensorStore.open(cache_dir)
    return store if device is None else store.to_device(device)


# --- the store ---------------------------------------------------------------------------


class TensorStore:
    """Decoded, resized images ``[N, 3, S, S]`` uint8 with labels and boxes in input pixels.

    Build with ``TensorStore.build`` / ``TensorStore.cached``, reopen with
    ``TensorStore.open``. Indexing a store gives the same tuple as ``BoxDataset``;
    ``batches`` gives the same tuple as ``collate_boxes``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        boxes: list[torch.Tensor],
        box_labels: list[torch.Tensor],
        image_ids: list[str],
        record_index: torch.Tensor,
        meta: dict,
        cache_dir: Path,
        memmap: np.memmap | None = None,
    ):
        self.images = images
        self.labels = labels
        self.boxes = boxes
        self.box_labels = box_labels
        self.image_ids = image_ids
        self.record_index = record_index  # store index -> index into the records it was built from
        self.meta = meta
        self.cache_dir = Path(cache_dir)
        self._memmap = memmap

    # -- properties
    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def resize(self) -> str:
        return str(self.meta["resize"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def skipped(self) -> list[dict]:
        """Records left out by ``skip_bad``: ``{"index", "path", "problem"}`` each."""
        return list(self.meta.get("skipped", []))

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        where = "memmap" if self._memmap is not None else str(self.device)
        return f"TensorStore(n={len(self)}, size={self.input_size}, resize={self.resize!r}, {where}, {self.cache_dir})"

    def __getitem__(self, i: int):
        i = int(i)
        return (
            self.images[i].clone(),
            int(self.labels[i]),
            self.boxes[i].clone(),
            self.box_labels[i].clone(),
        )

    def __reduce__(self):
        device = None if self._memmap is not None else str(self.device)
        return (_reopen, (str(self.cache_dir), device))

    # -- construction
    @classmethod
    def build(
        cls,
        records: Sequence,
        cache_dir: str | os.PathLike,
        input_size: int = 224,
        resize: str = "resize",
        *,
        classes: Sequence[str] | None = None,
        skip_bad: bool = False,
        num_workers: int = 0,
        progress: bool = False,
        max_pixels: int | None = None,
    ) -> TensorStore:
        """Decode and resize ``records`` (through ``BoxDataset``) into ``cache_dir``; always builds.

        ``skip_bad`` leaves out records whose image fails to decode (listed in ``.skipped``;
        ``.record_index`` maps store rows back to records); otherwise the ``DataError``
        propagates. ``num_workers`` > 0 decodes in DataLoader worker processes. A file whose
        header declares more than ``max_pixels`` fails to decode.
        """
        cache_dir = Path(cache_dir)
        with _locked(cache_dir):
            return cls._build_locked(
                records, cache_dir, input_size, resize, classes, skip_bad, num_workers, progress, max_pixels
            )

    @classmethod
    def cached(
        cls,
        records: Sequence,
        cache_dir: str | os.PathLike,
        input_size: int = 224,
        resize: str = "resize",
        *,
        classes: Sequence[str] | None = None,
        skip_bad: bool = False,
        num_workers: int = 0,
        progress: bool = False,
        max_pixels: int | None = None,
    ) -> TensorStore:
        """Open the store in ``cache_dir`` when its fingerprint matches ``records``; else build it.

        A store that skipped files under another ``max_pixels`` is rebuilt (the limit decides
        which files it holds); one that skipped nothing holds the same images under any limit.
        Safe to call from several processes at once: one builds, the others wait and open.
        """
        cache_dir = Path(cache_dir)
        max_pixels = check_max_pixels(max_pixels)
        fp = records_fingerprint(records, input_size, resize, classes)
        with _locked(cache_dir):
            try:
                store = cls.open(cache_dir)
            except (StoreError, FileNotFoundError):
                store = None
            if store is not None and store.fingerprint == fp and bool(store.meta.get("skip_bad")) == bool(skip_bad):
                if not store.skipped or store.meta.get("max_pixels") == max_pixels:
                    return store
            return cls._build_locked(
                records, cache_dir, input_size, resize, classes, skip_bad, num_workers, progress, max_pixels, fp
            )

    @classmethod
    def _build_locked(
        cls,
        records,
        cache_dir: Path,
        input_size,
        resize,
        classes,
        skip_bad,
        num_workers,
        progress,
        max_pixels=None,
        fp=None,
    ) -> TensorStore:
        from camgap.data.dataset import BoxDataset

        records = list(records)
        max_pixels = check_max_pixels(max_pixels)
        if not records:
            raise InputError(f"no records to store in {cache_dir}: the dataset is empty")
        input_size = int(input_size)
        if fp is None:
            fp = records_fingerprint(records, input_size, resize, classes)
        t0 = time.perf_counter()
        dataset = _SafeItems(BoxDataset(records, input_size=input_size, resize=resize, max_pixels=max_pixels), skip_bad)
        items: Iterator = map(dataset.__getitem__, range(len(dataset)))
        if num_workers > 0:
            items = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers))
        if progress:
            from camgap.progress import progress_bar

            items = progress_bar(items, total=len(dataset), desc="decoding", unit="img")

        img_path, tgt_path, meta_path = (cache_dir / name for name in (IMAGES_NAME, TARGETS_NAME, META_NAME))
        with replacing(img_path, tgt_path, meta_path) as (img_tmp, tgt_tmp, meta_tmp):  # meta.json last
            with open(img_tmp, "wb") as f:
                columns, skipped = _write_images(items, f, records, (3, input_size, input_size))
            n = len(columns["labels"])
            if n == 0:
                raise InputError(f"no readable images among {len(records)} records ({len(skipped)} skipped)")
            with open(tgt_tmp, "wb") as f:
                _write_targets(f, fp, columns)
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "n": n,
                "n_records": len(records),
                "input_size": input_size,
                "resize": resize,
                "fingerprint": fp,
                "classes": list(classes) if classes is not None else None,
                "skip_bad": bool(skip_bad),
                "max_pixels": max_pixels,
                "skipped": skipped,
                "build_seconds": round(time.perf_counter() - t0, 3),
            }
            meta_tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            with contextlib.suppress(FileNotFoundError):
                meta_path.unlink()  # from here until the last replace the directory reads as incomplete
        if skipped:
            warnings.warn(
                f"{cache_dir}: skipped {len(skipped)} of {len(records)} images that failed to decode "
                f"(first: {skipped[0]['path']}: {skipped[0]['problem']})",
                stacklevel=3,
            )
        return cls.open(cache_dir)

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> TensorStore:
        """Open a built store (no decoding). Missing -> FileNotFoundError; inconsistent -> StoreError."""
        cache_dir = Path(cache_dir)
        meta_path = cache_dir / META_NAME
        if not meta_path.is_file():
            raise MissingFileError(f"{meta_path}: no tensor store here (missing or incomplete build)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise StoreError(f"{meta_path}: unreadable ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise StoreError(f"{meta_path}: not a {FORMAT} v{FORMAT_VERSION} store")
        n, s = int(meta["n"]), int(meta["input_size"])
        img_path = cache_dir / IMAGES_NAME
        expected = n * 3 * s * s
        try:
            actual = img_path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{img_path}: missing") from None
        if actual != expected:
            raise StoreError(f"{img_path}: {actual} bytes, expected {expected} for [{n}, 3, {s}, {s}] uint8")
        try:
            with np.load(cache_dir / TARGETS_NAME, allow_pickle=False) as z:
                t = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise StoreError(f"{cache_dir / TARGETS_NAME}: unreadable ({e})") from None
        if str(t["fingerprint"]) != meta["fingerprint"] or t["labels"].shape != (n,):
            raise StoreError(f"{cache_dir}: targets do not match meta.json (interrupted rebuild?)")
        mm = np.memmap(img_path, dtype=np.uint8, mode="c", shape=(n, 3, s, s))
        offsets = t["box_offsets"]
        flat_boxes = torch.from_numpy(t["boxes"])
        flat_labels = torch.from_numpy(t["box_labels"])
        counts = np.diff(offsets).tolist()
        return cls(
            images=torch.from_numpy(mm),
            labels=torch.from_numpy(t["labels"]),
            boxes=list(flat_boxes.split(counts)),
            box_labels=list(flat_labels.split(counts)),
            image_ids=[str(x) for x in t["image_ids"]],
            record_index=torch.from_numpy(t["record_index"]),
            meta=meta,
            cache_dir=cache_dir,
            memmap=mm,
        )

    # -- access
    def to_device(self, device: str | torch.device = "cpu") -> TensorStore:
        """An in-memory copy with all images (and labels) resident on ``device``.

        For datasets that fit: training keeps the whole set on the GPU/CPU and augments
        batches as tensors. Boxes stay on the CPU (as in ``batches``).
        """
        device = torch.device(device)
        images = self.images.to(device, copy=True)
        labels = self.labels.to(device, copy=True)
        return TensorStore(
            images, labels, self.boxes, self.box_labels, self.image_ids, self.record_index, self.meta, self.cache_dir
        )

    def batches(
        self,
        batch_size: int,
        device: str | torch.device = "cpu",
        indices: Sequence[int] | torch.Tensor | None = None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
        """Yield ``(images uint8 [B,3,S,S], labels int64 [B], boxes, box_labels)``.

        Images and labels are fresh tensors on ``device`` (non-blocking copies, from pinned
        memory for CUDA); boxes and box labels are lists of CPU tensors, as ``collate_boxes``
        gives them. ``indices`` selects (and orders) the images; ``shuffle`` permutes them
        with ``generator`` (a CPU ``torch.Generator``).
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        device = torch.device(device)
        n = len(self)
        if indices is None:
            order = torch.arange(n)
        else:
            order = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
            if order.numel() and (int(order.min()) < -n or int(order.max()) >= n):
                raise IndexError(f"indices out of range for a store of {n} images")
            order = order % max(n, 1)
        if shuffle:
            order = order[torch.randperm(order.numel(), generator=generator)]
        pin = device.type == "cuda" and self.images.device.type == "cpu"
        stop = order.numel() - (order.numel() % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            if self._memmap is not None:
                images = torch.from_numpy(self._gather(idx.numpy()))
            else:
                images = self.images.index_select(0, idx.to(self.images.device))
            labels = self.labels.index_select(0, idx.to(self.labels.device))
            if pin:
                images = images.pin_memory()
                labels = labels.pin_memory()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            idx_list = idx.tolist()
            boxes = [self.boxes[i].clone() for i in idx_list]
            box_labels = [self.box_labels[i].clone() for i in idx_list]
            yield images, labels, boxes, box_labels

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Copy rows ``idx`` out of the memmap (one slice copy when they are consecutive)."""
        if idx.size and idx[-1] - idx[0] == idx.size - 1 and (idx.size == 1 or np.all(np.diff(idx) == 1)):
            return np.array(self._memmap[idx[0] : idx[-1] + 1])
        return np.asarray(self._memmap[idx])
