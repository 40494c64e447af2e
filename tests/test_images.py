"""decode_rgb: every file ImageNet throws at us decodes to uint8 RGB [3,H,W]."""

import io
import json
import os
import random
import resource
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from camgap.data import DataError, decode_rgb
from camgap.data import images as images_mod
from camgap.data.images import check_max_pixels, image_size
from camgap.errors import InputError
from tests.helpers.data import H, W, save_image

JPEG_TOL = 12  # max abs difference allowed after a quality-95 JPEG round trip


def _pattern() -> np.ndarray:
    """A smooth 16x20 RGB pattern (JPEG-friendly) with distinct channels."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([40 + 8 * x, 30 + 10 * y, 200 - 4 * x - 3 * y], -1).astype(np.uint8)


def _check(t: torch.Tensor):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    assert tuple(t.shape) == (3, H, W)
    assert t.is_contiguous()


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy().astype(int)


def test_png_exact(tmp_path):
    a = _pattern()
    t = decode_rgb(save_image(tmp_path / "a.png", array=a))
    _check(t)
    assert np.array_equal(_hwc(t), a)


@pytest.mark.parametrize("name", ["a.png", "a.JPEG"])
def test_interleaved_pixels_are_the_same_pixels(tmp_path, name):
    """contiguous=False keeps the decoder's interleaved layout (what load_item resizes: about 3x
    faster than a planar copy): the same values, channels-last in memory."""
    p = save_image(tmp_path / name, array=_pattern())
    t = decode_rgb(p, contiguous=False)
    assert t.shape == (3, H, W) and t.stride() == (1, 3 * W, 3)
    assert torch.equal(t, decode_rgb(p))


def test_rgb_jpeg_within_tolerance(tmp_path):
    a = _pattern()
    t = decode_rgb(save_image(tmp_path / "a.JPEG", array=a))
    _check(t)
    assert np.abs(_hwc(t) - a).max() <= JPEG_TOL


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    gray = np.tile(np.linspace(20, 230, W).astype(np.uint8), (H, 1))
    p = tmp_path / "g.JPEG"
    Image.fromarray(gray, mode="L").save(p, quality=95)
    assert Image.open(p).mode == "L"
    t = decode_rgb(p)
    _check(t)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert np.abs(t[0].numpy().astype(int) - gray).max() <= JPEG_TOL


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = save_image(tmp_path / "c.JPEG", color=(200, 40, 90), mode="CMYK")
    assert Image.open(p).mode == "CMYK"
    t = decode_rgb(p)
    _check(t)
    expected = np.array(Image.open(p).convert("RGB"), dtype=int)  # PIL's reading as reference
    assert np.abs(_hwc(t) - expected).max() <= 2
    assert np.abs(_hwc(t) - np.array([200, 40, 90])).max() <= JPEG_TOL


def test_png_named_jpeg(tmp_path):
    a = _pattern()
    p = tmp_path / "n01_123.JPEG"
    Image.fromarray(a).save(p, format="PNG")
    assert p.read_bytes()[:4] == b"\x89PNG"
    t = decode_rgb(p)
    _check(t)
    assert np.array_equal(_hwc(t), a)


def test_rgba_png_drops_alpha(tmp_path):
    a = _pattern()
    rgba = np.concatenate([a, np.full((H, W, 1), 77, np.uint8)], -1)
    p = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    t = decode_rgb(p)
    _check(t)
    assert np.array_equal(_hwc(t), a)


def test_palette_and_16bit_png(tmp_path):
    p = save_image(tmp_path / "p.png", color=(10, 200, 60), mode="P")
    t = decode_rgb(p)
    _check(t)
    assert np.array_equal(_hwc(t), np.array(Image.open(p).convert("RGB"), dtype=int))
    v = np.full((H, W), 0x1234 * 3, np.uint16)  # 0x369C -> high byte 0x36 = 54
    p16 = tmp_path / "d.png"
    Image.fromarray(v).save(p16)
    t = decode_rgb(p16)
    _check(t)
    assert t.unique().tolist() == [0x36]


def test_pil_fallback_when_torchvision_fails(tmp_path, monkeypatch):
    p = save_image(tmp_path / "c.JPEG", color=(200, 40, 90), mode="CMYK")

    def broken(*a, **k):
        raise RuntimeError("Unsupported color conversion request")

    monkeypatch.setattr(images_mod, "decode_image", broken)
    t = decode_rgb(p)
    _check(t)
    assert np.array_equal(_hwc(t), np.array(Image.open(p).convert("RGB"), dtype=int))


@pytest.mark.parametrize("content", [b"", b"definitely not an image", "truncated"])
def test_corrupt_file_raises_dataerror_naming_file(tmp_path, content):
    p = tmp_path / "bad_one.JPEG"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_pattern()).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    p.write_bytes(content)
    with pytest.raises(DataError) as ei:
        decode_rgb(p)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.path == str(p)
    assert str(err).startswith(f"{p}: ")
    assert err.problem


def test_missing_file_raises_dataerror(tmp_path):
    p = tmp_path / "nope.JPEG"
    with pytest.raises(DataError, match="nope.JPEG: image file not found"):
        decode_rgb(p)


def test_dataerror_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(DataError("/x/y.jpg", "broken")))
    assert (e.path, e.problem, str(e)) == ("/x/y.jpg", "broken", "/x/y.jpg: broken")


# --- files that must be refused by their header, never handed to a decoder that could crash


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _grey_png(width: int, height: int, depth: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)  # greyscale, not interlaced
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def truncated_1bit_png() -> bytes:
    """116 bytes: a valid 64x64 1-bit PNG whose zlib stream is cut inside IDAT (chunk lengths and
    CRCs consistent), so libpng fails with "Not enough image data": torchvision's PNG decoder
    dies with SIGSEGV on it (torchvision 0.29), PIL raises."""
    rng = random.Random(0)
    raw = b"".join(b"\0" + rng.randbytes(8) for _ in range(64))  # filter byte + 64 1-bit pixels
    head_and_tail = 8 + 25 + 12 + 12  # signature, IHDR, IDAT framing, IEND
    return _grey_png(64, 64, 1, zlib.compress(raw)[: 116 - head_and_tail])


def bomb_png(side: int = 30000) -> bytes:
    """A PNG declaring side x side 8-bit grey pixels whose IDAT is a few hundred bytes."""
    return _grey_png(side, side, 8, zlib.compress(b"\0" * (side + 1) * 16))


def _decode_in_child(path) -> tuple[int, str, float]:
    """decode_rgb in a forked child (torch already loaded, so it is quick): a crash fails the test
    instead of killing pytest. Returns (exit status, the DataError's text, MB its peak RSS grew by)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe and leave without running pytest's cleanup
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_rgb(path)
            text = "decoded"
        except DataError as e:
            text = str(e)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        os.write(write, json.dumps([text, grown_mb]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        reply = f.read()
    status = os.waitpid(pid, 0)[1]
    text, grown_mb = json.loads(reply) if reply else ("", 0.0)
    return status, text, grown_mb


def test_truncated_1bit_png_is_a_dataerror_not_a_crash(tmp_path):
    data = truncated_1bit_png()
    assert len(data) == 116
    p = tmp_path / "cut.png"
    p.write_bytes(data)
    status, text, _ = _decode_in_child(p)
    assert status == 0, f"decoding crashed (wait status {status})"
    assert text.startswith(f"{p}: corrupt or unsupported image (image file is truncated")
    with pytest.raises(DataError, match="corrupt or unsupported image"):
        decode_rgb(p)  # and in this process too, now that it is known not to crash


def test_bomb_header_is_refused_before_decoding(tmp_path):
    data = bomb_png()
    assert len(data) < 2000
    p = tmp_path / "bomb.png"
    p.write_bytes(data)
    status, text, grown_mb = _decode_in_child(p)
    assert status == 0
    assert text == (
        f"{p}: image header declares 30000x30000 pixels (900.0 megapixels), over the limit of "
        "100 megapixels and 16384 px a side; raise --max-pixels to read it"
    )
    assert grown_mb < 100  # a decode would hold 900 MB (2.7 GB as RGB)


def test_max_pixels_limit_and_side_limit(tmp_path):
    p = save_image(tmp_path / "a.png", array=_pattern())  # 20 x 16 = 320 pixels
    assert decode_rgb(p, max_pixels=320).shape == (3, H, W)
    with pytest.raises(DataError, match=r"declares 20x16 pixels .* limit of 0.000319 megapixels and 16384 px a side"):
        decode_rgb(p, max_pixels=319)
    strip = tmp_path / "strip.png"
    strip.write_bytes(_grey_png(16385, 1, 8, zlib.compress(b"\0" * 16386)))
    with pytest.raises(DataError, match="declares 16385x1 pixels"):
        decode_rgb(strip)
    assert decode_rgb(strip, max_pixels=16385**2).shape == (3, 1, 16385)  # a larger limit widens the side too
    assert image_size(p) == (W, H)


def test_max_pixels_must_be_positive():
    with pytest.raises(InputError, match="max_pixels must be a positive integer, got 0"):
        check_max_pixels(0)
