"""Data layer: layouts on disk -> records -> uint8 images with boxes at the input size.

The names below are imported on first use, so that `camgap.data.preprocessing` (plain values)
is read without importing torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Record": "camgap.data.layouts",
    "DataError": "camgap.data.errors",
    "read_layout": "camgap.data.layouts",
    "detect_layout": "camgap.data.layouts",
    "BoxDataset": "camgap.data.dataset",
    "collate_boxes": "camgap.data.dataset",
    "normalize": "camgap.data.dataset",
    "decode_rgb": "camgap.data.images",
    "IMAGENET_MEAN": "camgap.data.preprocessing",
    "IMAGENET_STD": "camgap.data.preprocessing",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'camgap.data' has no attribute {name!r}")
