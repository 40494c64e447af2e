"""The embedded synthetic dataset (camgap.data.synthetic)."""

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camgap.cli import main
from camgap.data.synthetic import (
    MANIFEST_NAME,
    SOURCE_SHAPES,
    TARGET_SHAPES,
    class_names,
    render_sample,
    write_synthetic,
)
from camgap.errors import InputError

SMALL = dict(classes=4, train_per_class=3, test_per_class=2)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "d", seed=3, **SMALL)


def test_layout_and_counts(small):
    assert (small / MANIFEST_NAME).is_file()
    for split, per_class in (("train", 3), ("test", 2)):
        rows = _rows(small / f"{split}.csv")
        assert list(rows[0].keys()) == ["path", "label", "xmin", "ymin", "xmax", "ymax"]
        assert len(rows) == 4 * per_class  # one object, one box, one row per image
        assert Counter(r["label"] for r in rows) == {n: per_class for n in class_names("target", 4)}
        assert len({r["path"] for r in rows}) == len(rows)
        for r in rows:
            assert r["path"].startswith(f"images/{split}/")
            with Image.open(small / r["path"]) as im:
                assert im.mode == "RGB" and im.size == (32, 32)


def test_read_layout_csv(small):
    layouts = pytest.importorskip("camgap.data.layouts")
    for split, per_class in (("train", 3), ("test", 2)):
        records, classes = layouts.read_layout(small, "csv", split)
        assert classes == ["00_circle", "01_square", "02_triangle", "03_cross"]
        assert len(records) == 4 * per_class
        assert Counter(r.label for r in records) == {k: per_class for k in range(4)}
        by_id = {r.image_id: r for r in records}
        for i in range(4 * per_class):
            s = render_sample(3, i, split, "target", 4, 32)
            r = by_id[f"{i:05d}"]
            assert r.label == s.label == i % 4
            assert r.boxes == (tuple(float(c) for c in s.box),)
            assert r.box_labels == (s.label,)


def test_boxes_are_tight_boxes_of_the_object_mask(small):
    for split in ("train", "test"):
        for i, r in enumerate(_rows(small / f"{split}.csv")):
            s = render_sample(3, i, split, "target", 4, 32)
            assert r["path"] == f"images/{split}/{i:05d}.png"
            assert r["label"] == s.class_name
            # the file holds exactly the rendered image
            np.testing.assert_array_equal(np.asarray(Image.open(small / r["path"])), s.image)
            x0, y0, x1, y1 = (int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert (x0, y0, x1, y1) == s.box
            ys, xs = np.nonzero(s.mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            # every pixel of the object lies in the box; each box edge touches the object
            inside = np.zeros_like(s.mask)
            inside[y0:y1, x0:x1] = True
            assert not (s.mask & ~inside).any()
            assert s.mask[y0].any() and s.mask[y1 - 1].any()
            assert s.mask[:, x0].any() and s.mask[:, x1 - 1].any()
            # object side 12..22 px at size 32
            assert 12 - 2 <= max(x1 - x0, y1 - y0) <= 22


def test_every_shape_renders_distinct_nonempty_masks():
    for class_set, shapes in (("target", TARGET_SHAPES), ("source", SOURCE_SHAPES)):
        k = len(shapes)
        masks = [render_sample(0, i, "train", class_set, k, 64).mask for i in range(k)]
        assert all(m.sum() >= 20 for m in masks)
    # shape identity on the normalised square: all shapes differ by > 5 % of the pixels
    v, u = np.mgrid[-1:1:33j, -1:1:33j]
    grids = [np.asarray(fn(u, v), dtype=bool) for fn in (*TARGET_SHAPES.values(), *SOURCE_SHAPES.values())]
    for a in range(len(grids)):
        for b in range(a + 1, len(grids)):
            assert (grids[a] != grids[b]).mean() > 0.05, (a, b)


def test_determinism(tmp_path):
    a = write_synthetic(tmp_path / "a", seed=7, **SMALL)
    b = write_synthetic(tmp_path / "b", seed=7, **SMALL)
    c = write_synthetic(tmp_path / "c", seed=8, **SMALL)
    assert _all_bytes(a) == _all_bytes(b)
    ba, bc = _all_bytes(a), _all_bytes(c)
    assert ba.keys() == bc.keys()
    pngs = [k for k in ba if k.endswith(".png")]
    assert sum(ba[k] != bc[k] for k in pngs) == len(pngs)  # every image differs


def test_streams_differ_between_splits_and_class_sets():
    train = render_sample(0, 0, "train", "target")
    test = render_sample(0, 0, "test", "target")
    source = render_sample(0, 0, "train", "source")
    assert not np.array_equal(train.image, test.image)
    assert not np.array_equal(train.image, source.image)
    # same stream -> same bytes
    np.testing.assert_array_equal(train.image, render_sample(0, 0, "train", "target").image)
    # the stream of image i does not depend on how many images or classes there are
    assert render_sample(0, 5, "train", "target", classes=3).label == 2


def test_class_sets_disjoint_and_sorted():
    target, source = class_names("target"), class_names("source")
    assert len(target) == 10 and len(source) >= 10
    strip = lambda names: {n.split("_", 1)[1] for n in names}  # noqa: E731
    assert (
        strip(target)
        == set(TARGET_SHAPES)
        == {"circle", "square", "triangle", "cross", "ring", "star", "diamond", "bar", "hollow_square", "L"}
    )
    assert not strip(target) & strip(source)
    for names in (target, source):
        assert names == sorted(names)  # sorted order == class index
        assert [int(n[:2]) for n in names] == list(range(len(names)))
    assert class_names("target", 3) == target[:3]
    with pytest.raises(ValueError):
        class_names("target", 11)
    with pytest.raises(ValueError):
        class_names("nope")


def test_source_class_set_written(tmp_path):
    out = write_synthetic(tmp_path / "src", seed=0, classes=12, train_per_class=1, test_per_class=1, class_set="source")
    rows = _rows(out / "train.csv")
    assert sorted(r["label"] for r in rows) == class_names("source")
    assert json.loads((out / MANIFEST_NAME).read_text())["class_set"] == "source"


def test_size_scales_objects(tmp_path):
    sides = [max(s.box[2] - s.box[0], s.box[3] - s.box[1]) for s in (render_sample(1, i, size=64) for i in range(40))]
    assert 24 - 4 <= min(sides) and max(sides) <= 44
    assert render_sample(1, 0, size=64).image.shape == (64, 64, 3)


def test_rerun_same_params_is_noop_and_other_params_error(tmp_path):
    out = write_synthetic(tmp_path / "d", seed=1, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_synthetic(tmp_path / "d", seed=1, **SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(FileExistsError, match="seed"):
        write_synthetic(tmp_path / "d", seed=2, **SMALL)
    with pytest.raises(FileExistsError, match="train_per_class"):
        write_synthetic(tmp_path / "d", seed=1, classes=4, train_per_class=5, test_per_class=2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched


def test_foreign_directory_and_bad_params_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic(tmp_path / "x", **SMALL)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"
    for bad in (
        dict(classes=0),
        dict(classes=11),
        dict(train_per_class=0),
        dict(size=8),
        dict(seed=-1),
        dict(class_set="other"),
    ):
        with pytest.raises(ValueError):
            write_synthetic(tmp_path / "y", **{**SMALL, **bad})


def test_interrupted_write_is_redone(tmp_path):
    out = write_synthetic(tmp_path / "d", seed=1, **SMALL)
    (out / MANIFEST_NAME).unlink()  # as if killed before the manifest was written
    (out / "images" / "train" / "00000.png").write_bytes(b"partial")
    write_synthetic(out, seed=1, **SMALL)
    assert _all_bytes(out) == _all_bytes(write_synthetic(tmp_path / "ref", seed=1, **SMALL))


# --- context: a class cue in the background ----------------------------------------------

CTX = dict(classes=6, size=28)
# decoded pixels, CSVs and manifests of two datasets as camgap wrote them before `context`
# existed (numpy's Generator streams are the same on every platform)
PINNED = {
    "target": "dd0d45c2b4dbcab72b6d2f95f17a6b6636a02145c52b5f5fa8d5281e82230a50",
    "source": "9e62479a024b8c6e140fcb518fac61026dc5296e78232c13293c1ddabfb4b5b7",
}


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


def _cue_strength(image: np.ndarray, outside: np.ndarray, label: int, classes: int, size: int) -> float:
    """|Fourier coefficient| of the background's projection on class `label`'s colour direction
    at its stripe frequency: the stripes as the module docstring defines them (orientation
    180 k / K degrees, hue 360 k / K degrees in the chroma plane, period 6 px at size 32)."""
    theta, hue = np.pi * label / classes, 2 * np.pi * label / classes
    e1, e2 = np.array([1.0, -1.0, 0.0]) / np.sqrt(2), np.array([1.0, 1.0, -2.0]) / np.sqrt(6)
    colour = np.cos(hue) * e1 + np.sin(hue) * e2
    py, px = np.mgrid[0:size, 0:size] + 0.5
    proj = image.astype(float) @ colour
    proj = proj - proj[outside].mean()
    wave = np.exp(-2j * np.pi * (np.cos(theta) * px + np.sin(theta) * py) / (6.0 * size / 32))
    return float(abs((proj * wave)[outside].sum()))


def _cue_class(s, classes: int, size: int) -> int:
    """The class whose cue is strongest in the pixels outside the box."""
    x0, y0, x1, y1 = s.box
    outside = np.ones((size, size), dtype=bool)
    outside[y0:y1, x0:x1] = False
    return int(np.argmax([_cue_strength(s.image, outside, k, classes, size) for k in range(classes)]))


def test_context_zero_writes_the_data_of_before(tmp_path):
    target = write_synthetic(tmp_path / "t", seed=3, **SMALL, context=0)
    source = write_synthetic(
        tmp_path / "s", seed=0, classes=12, train_per_class=1, test_per_class=1, size=28, class_set="source", context=0
    )
    assert _pixel_digest(target) == PINNED["target"]
    assert _pixel_digest(source) == PINNED["source"]
    assert "context" not in json.loads((target / MANIFEST_NAME).read_text())
    assert _all_bytes(target) == _all_bytes(write_synthetic(tmp_path / "d", seed=3, **SMALL))  # the default


def test_context_one_puts_the_class_cue_in_every_background():
    n = 6 * 8
    with_cue = [render_sample(5, i, "test", "target", context=1.0, **CTX) for i in range(n)]
    without = [render_sample(5, i, "test", "target", context=0.0, **CTX) for i in range(n)]
    assert all(s.context for s in with_cue) and not any(s.context for s in without)
    # the cue outside the box names the class of every image; without it, about chance
    assert [_cue_class(s, 6, 28) for s in with_cue] == [s.label for s in with_cue]
    assert np.mean([_cue_class(s, 6, 28) == s.label for s in without]) < 0.4
    # the cue is stripes in colour, not a tint: each image's mean colour moves by little
    shift = [np.abs(a.image.mean((0, 1)) - b.image.mean((0, 1))).max() for a, b in zip(with_cue, without)]
    assert np.median(shift) < 10


def test_context_leaves_the_object_and_its_box_as_they_are():
    for i in range(24):
        a = render_sample(2, i, "train", "target", context=1.0, **CTX)
        b = render_sample(2, i, "train", "target", context=0.0, **CTX)
        assert a.box == b.box and a.label == b.label
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.image[a.mask], b.image[b.mask])  # the object's pixels
        assert not np.array_equal(a.image, b.image)


def test_context_rate_is_p_and_nested_in_larger_p():
    n = 400
    half = [render_sample(1, i, "train", "target", context=0.5, **CTX) for i in range(n)]
    most = [render_sample(1, i, "train", "target", context=0.9, **CTX) for i in range(n)]
    cued = np.array([s.context for s in half])
    assert 0.42 <= cued.mean() <= 0.58 and 0.85 <= np.mean([s.context for s in most]) <= 0.95
    assert all(m.context for h, m in zip(half, most) if h.context)  # P = 0.5's cues are among P = 0.9's
    for i in np.flatnonzero(~cued)[:10]:  # an image without a cue is the image of context=0
        np.testing.assert_array_equal(half[i].image, render_sample(1, int(i), "train", "target", **CTX).image)


def test_context_same_seed_same_data_and_recorded(tmp_path):
    a = write_synthetic(tmp_path / "a", seed=4, **SMALL, context=0.5)
    b = write_synthetic(tmp_path / "b", seed=4, **SMALL, context=0.5)
    assert _all_bytes(a) == _all_bytes(b)
    assert json.loads((a / MANIFEST_NAME).read_text())["context"] == 0.5
    assert _all_bytes(a) != _all_bytes(write_synthetic(tmp_path / "c", seed=4, **SMALL))
    with pytest.raises(FileExistsError, match="context: 0.5 there, 0.9 asked"):
        write_synthetic(a, seed=4, **SMALL, context=0.9)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_context_must_be_a_probability(tmp_path, bad):
    with pytest.raises(InputError, match=r"^context must be a probability between 0 and 1, got "):
        write_synthetic(tmp_path / "d", **SMALL, context=bad)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"classes": True}, "classes must be an integer >= 1, got True"),
        ({"train_per_class": 2.5}, "train_per_class must be an integer >= 1, got 2.5"),
        ({"test_per_class": 0}, "test_per_class must be an integer >= 1, got 0"),
        ({"size": np.int64(8)}, "size must be an integer >= 16, got np.int64(8)"),
    ],
)
def test_counts_must_be_integers(tmp_path, bad, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        write_synthetic(tmp_path / "d", **{**SMALL, **bad})
    assert not (tmp_path / "d").exists()


def test_numpy_integer_counts_are_written_as_ints(tmp_path):
    out = write_synthetic(tmp_path / "d", **{**SMALL, "classes": np.int64(4)}, size=np.int32(16))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["classes"] == 4 and manifest["size"] == 16


def test_synth_cli_context(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "1",
                 "--test-per-class", "1", "--context", "0.9"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "d" / MANIFEST_NAME).read_text())["context"] == 0.9
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "e"), "--context", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "context must be a probability between 0 and 1, got 2.0" in err
