"""Decode any image file to a uint8 RGB tensor ``[3, H, W]``, after checking its header.

Every file is opened with PIL first, which reads only its header: a file PIL does not
recognise, or whose declared size is over the limit (``max_pixels``, default 100 megapixels,
and a side of at most ``max(16384, sqrt(max_pixels))`` px), is a :class:`DataError` naming
it before a single pixel is decoded, so a 100 KB file declaring 30000 x 30000 pixels costs
nothing.

The pixels are then decoded by PIL, except JPEGs, which ``torchvision.io`` decodes (about
1.7x faster here, and bit-identical to PIL's) with PIL as the fallback when it cannot (e.g.
CMYK on some builds).  torchvision's PNG decoder is never used: a libpng error inside it
(a truncated zlib stream, a bad CRC, a bad filter byte) kills the process with SIGSEGV,
while PIL raises.  Real ImageNet files include grayscale JPEGs, CMYK JPEGs and a PNG saved
with a ``.JPEG`` name; all decode to RGB here (format sniffed from the content).  16-bit
images keep their high byte.  EXIF orientation is *not* applied (torchvision / PIL
ImageFolder convention; annotation boxes are in the stored pixel frame).
"""

from __future__ import annotations

import contextlib
import io
import math
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

__all__ = ["decode_rgb", "image_size", "open_checked", "check_max_pixels", "DataError", "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE_LIMIT = 16384


def check_max_pixels(value: object) -> int:
    """A pixel limit is a positive integer (``--max-pixels``); None is the default limit."""
    if value is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"max_pixels must be a positive integer, got {value!r}")
    return int(value)


def side_limit(max_pixels: int) -> int:
    """The largest side a file may declare: 16384 px, or more when ``max_pixels`` allows a larger square."""
    return max(MIN_SIDE_LIMIT, math.isqrt(max_pixels))


@contextlib.contextmanager
def _own_bomb_check():
    """PIL's own guard (a warning above 89 MP, an error above 179 MP, with no size in it) is
    replaced by ours while a header is read, so that the limit is the user's and the message
    names the size.  camgap decodes in one thread per process (DataLoader workers are
    processes), so the swap races with no other decode."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _problem(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


def open_checked(path: str | Path, data: bytes | None = None, max_pixels: int | None = None):
    """A PIL image of ``path`` (or of its bytes ``data``) whose header has been read and checked
    against the size limit; nothing is decoded yet.  Raises :class:`DataError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = check_max_pixels(max_pixels)
    source = io.BytesIO(data) if data is not None else path
    try:
        with _own_bomb_check():
            im = Image.open(source)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except UnidentifiedImageError:
        raise DataError(path, "corrupt or unsupported image (not a format PIL recognises)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad header: all mean "cannot read"
        raise DataError(path, f"corrupt or unsupported image ({_problem(e)})") from None
    width, height = im.size
    side = side_limit(max_pixels)
    if width * height > max_pixels or max(width, height) > side:
        im.close()
        raise DataError(
            path,
            f"image header declares {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over the "
            f"limit of {max_pixels / 1e6:g} megapixels and {side} px a side; raise --max-pixels to read it",
        )
    if width == 0 or height == 0:
        im.close()
        raise DataError(path, "corrupt or unsupported image (empty image)")
    return im


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` from the file's header alone (checked like :func:`decode_rgb`)."""
    with open_checked(path, max_pixels=max_pixels) as im:
        return im.size


def _high_byte(arr: np.ndarray) -> np.ndarray:
    """16-bit (or wider integer) greyscale -> uint8, keeping the high byte of 16 bits."""
    return (arr.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)


def _pil_pixels(im) -> torch.Tensor:
    """[3, H, W] uint8, channels-last in memory (a view of PIL's interleaved pixels)."""
    im.load()
    if im.mode.startswith("I"):  # 16-bit greyscale PNG/TIFF: "I;16", "I;16B", "I"
        grey = _high_byte(np.asarray(im))
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    else:
        arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _check_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise InputError(f"unexpected decoded tensor {tuple(img.shape)} {img.dtype}")
    return img


def _torchvision_jpeg(data: bytes) -> torch.Tensor:
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _check_uint8_rgb(decode_image(buf, mode=ImageReadMode.RGB))


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read image file ({e.strerror or e})") from None
    if not data:
        raise DataError(path, "empty image file (0 bytes)")
    return data


def decode_rgb(path: str | Path, max_pixels: int | None = None, contiguous: bool = True) -> torch.Tensor:
    """Read ``path`` and return its pixels as a ``torch.uint8`` tensor ``[3, H, W]``.

    Both decoders give interleaved (channels-last) pixels; ``contiguous=False`` keeps them so,
    a view with strides ``(1, 3W, 3)``: resizing that layout is about 3x faster than resizing a
    planar copy, with the same values, so a caller that resizes next makes the small result
    contiguous instead of the full image.

    Raises :class:`DataError` ``(path, problem)`` when the file is missing, empty, unreadable,
    larger than ``max_pixels`` (by its header; None: 100 megapixels) or not a decodable image.
    """
    path = Path(path)
    data = _read_bytes(path)
    with open_checked(path, data, max_pixels) as im:
        size = im.size
        if im.format == "JPEG" and decode_image is not None:
            try:
                img = _torchvision_jpeg(data)
            except Exception:  # noqa: BLE001 - a colour model this build lacks: PIL decodes it below
                img = None
            if img is not None and tuple(img.shape[1:]) == size[::-1]:
                return img.contiguous() if contiguous else img
        try:
            img = _pil_pixels(im)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad pixel data: all mean "cannot decode"
            raise DataError(path, f"corrupt or unsupported image ({_problem(e)})") from None
    return img.contiguous() if contiguous else img
