"""Data layer: layouts on disk -> records -> uint8 images with boxes at the input size."""

from .dataset import IMAGENET_MEAN, IMAGENET_STD, BoxDataset, collate_boxes, normalize
from .errors import DataError
from .images import decode_rgb
from .layouts import Record, detect_layout, read_layout

__all__ = [
    "Record",
    "DataError",
    "read_layout",
    "detect_layout",
    "BoxDataset",
    "collate_boxes",
    "normalize",
    "decode_rgb",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
