"""decode_rgb: every file ImageNet throws at us decodes to uint8 RGB [3,H,W]."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from camgap.data import DataError, decode_rgb
from camgap.data import images as images_mod
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
