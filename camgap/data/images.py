"""Decode any image file to a uint8 RGB tensor ``[3, H, W]``.

Real ImageNet files include grayscale JPEGs, CMYK JPEGs and a PNG saved with a ``.JPEG``
name; all of them decode to RGB here.  The bytes are decoded by ``torchvision.io``
(format sniffed from the content, not the file name); when torchvision cannot decode a file
(a format or colour model its build does not support) PIL's ``.convert("RGB")`` is the
fallback.  A file neither can decode raises :class:`DataError` naming the file.
EXIF orientation is *not* applied (torchvision / PIL ImageFolder convention; annotation
boxes are in the stored pixel frame).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from camgap.errors import InputError

try:  # torchvision >= 0.29 deprecates its decoders (TorchCodec); PIL remains the fallback
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - a torchvision without image ops
    ImageReadMode = decode_image = None  # type: ignore[assignment]

from .errors import DataError

__all__ = ["decode_rgb", "DataError"]


def _to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    if img.dtype == torch.uint16:  # 16-bit PNG: keep the high byte
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    elif img.dtype != torch.uint8:
        raise TypeError(f"unexpected decoded dtype {img.dtype}")
    if img.ndim != 3:
        raise InputError(f"unexpected decoded shape {tuple(img.shape)}")
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    elif img.shape[0] == 4:
        img = img[:3]
    if img.shape[0] != 3:
        raise InputError(f"unexpected decoded shape {tuple(img.shape)}")
    return img.contiguous()


def _decode_pil(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = im.convert("RGB")
    arr = np.array(rgb, dtype=np.uint8, copy=True)  # [H, W, 3], writable
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Read ``path`` and return its pixels as a contiguous ``torch.uint8`` tensor ``[3, H, W]``.

    Raises :class:`DataError` ``(path, problem)`` when the file is missing, empty, unreadable
    or not a decodable image.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read image file ({e.strerror or e})") from None
    if not data:
        raise DataError(path, "empty image file (0 bytes)")

    tv_error: Exception | None = None
    if decode_image is not None:
        try:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                img = _to_uint8_rgb(decode_image(buf, mode=ImageReadMode.RGB))
        except Exception as e:  # noqa: BLE001 - unsupported colour model / format on this build, corrupt data
            tv_error = e
        else:
            if img.shape[1] > 0 and img.shape[2] > 0:
                return img
            tv_error = ValueError("decoded to an empty image")

    try:
        img = _decode_pil(data)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file: all mean "cannot decode"
        problem = str(e).strip() or type(e).__name__
        tv_msg = str(tv_error).strip().splitlines()[-1] if tv_error else ""
        if "," in tv_msg and ".cpp" in tv_msg:  # drop torchvision's source location prefix
            tv_msg = tv_msg.rsplit(",", 1)[-1].strip()
        detail = f"{problem}" + (f"; torchvision: {tv_msg}" if tv_msg else "")
        raise DataError(path, f"corrupt or unsupported image ({detail})") from None
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise DataError(path, "corrupt or unsupported image (empty image)")
    return img
