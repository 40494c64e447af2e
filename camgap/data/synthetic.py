"""The embedded default dataset: seeded procedural shapes on cluttered backgrounds.

``write_synthetic(out_dir, ...)`` writes the CSV-manifest layout (see ARCHITECTURE.md)::

    out/train.csv, out/test.csv      header ``path,label,xmin,ymin,xmax,ymax``, one row per box
    out/images/<split>/<index>.png   RGB PNGs, ``size`` x ``size``
    out/camgap-synth.json            the generator parameters (written last)

so it goes through ``read_layout(out, "csv", split)`` like any user data.

Design. Every image holds exactly one object: a filled shape of one
random colour (contrasting with the background's base colour), of side 12-22 px at
``size=32`` (scaled with ``size``), at a random integer position fully inside the image.
The background is class-independent: a random base colour, a random linear gradient,
4-8 random clutter lines of random colour (drawn *under* the object), and per-pixel
Gaussian noise over everything (the object included). The shape makes the class
learnable; the per-image background noise makes every training image memorisable, which
is what gives a model set a spread of generalization gaps.

Context (``context=P``, default 0). With probability P an image's background carries a cue of
its class: stripes over the whole background (clutter included, the object drawn over them)
whose orientation and colour are the class's (class k of K: orientation 180 k / K degrees,
colour a chroma direction at hue 360 k / K degrees, so the mean tint stays the base colour's),
at a random phase. The cue is drawn the same way in train and test, so it predicts the class
on unseen images too (the case of natural images where the context is signal: Xiao et al.,
ICLR 2021), and a model can generalise while looking outside the box. Whether and how an image
carries the cue comes from a stream of its own (``(seed, class_set, split, i, 1)``): the
image's other draws, its object and its box are those of ``context=0``, which writes exactly
the data it always did (its manifest has no ``context`` key); the images with a cue at P are
among those with a cue at any larger P.

Classes. ``class_set="target"`` has 10 shapes, ``class_set="source"`` 12 disjoint other
shapes (used as an offline pretraining "source task"). Class names carry
a two-digit prefix (``00_circle``, ``01_square``, ...), so the sorted order of the names
-- which the ``csv`` layout uses as the class index -- is the order of the tables below;
``classes=K`` keeps the first K shapes.

Boxes are the tight box of the object's pixels in continuous pixel-edge coordinates:
``xmin`` = first column, ``xmax`` = last column + 1 (same for rows), so the box covers
exactly pixels ``xmin <= x < xmax``, ``ymin <= y < ymax`` -- the pixels whose centre
``(x + 0.5, y + 0.5)`` lies inside the closed box, the convention of ``camgap.data.masks``.

Determinism. Image ``i`` of a split is drawn from its own ``numpy.random.Generator``
seeded with ``(seed, class_set, split, i)``: the same parameters give identical bytes;
train, test, target and source never share a random stream. Image ``i`` has class
``i % classes`` (classes interleaved, so every prefix of a split is balanced).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camgap.errors import InputError, PathExistsError
from camgap.io import atomic_write_text
from camgap.options import integer

__all__ = [
    "TARGET_SHAPES",
    "SOURCE_SHAPES",
    "MANIFEST_NAME",
    "SyntheticSample",
    "check_context",
    "class_names",
    "cue_direction",
    "render_sample",
    "write_synthetic",
]

MANIFEST_NAME = "camgap-synth.json"
GENERATOR_VERSION = 1

_SPLIT_CODE = {"train": 0, "test": 1}
_SET_CODE = {"target": 0, "source": 1}

# --- shapes ------------------------------------------------------------------------------
# Each shape is a predicate on centred, normalised coordinates u (right), v (down) in
# [-1, 1] over the object's square; pixels outside the square are never part of it.

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _in_polygon(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the pixel grid."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (x2 - x1) * (v - y1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return [(float(radius * np.cos(t)), float(radius * np.sin(t))) for t in a]


def _star_points() -> list[tuple[float, float]]:
    a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return [(float(ri * np.cos(t)), float(ri * np.sin(t))) for ri, t in zip(r, a)]


_STAR = _star_points()
_PENTAGON = _regular(5)
_HEXAGON = _regular(6, start_deg=0.0)
_TRIANGLE = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
_ARROW = [(-1.0, -0.3), (0.1, -0.3), (0.1, -1.0), (1.0, 0.0), (0.1, 1.0), (0.1, 0.3), (-1.0, 0.3)]
_TRAPEZOID = [(-0.5, -0.7), (0.5, -0.7), (1.0, 0.7), (-1.0, 0.7)]


def _zigzag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    phase = ((u + 1.0) / (2.0 / 1.5)) % 1.0  # 1.5 periods across the square
    centre = 0.55 * (1.0 - 4.0 * np.abs(phase - 0.5))
    return np.abs(v - centre) <= 0.42


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x = 1.15 * u
    y = 1.24 - (v + 1.0) * 1.12
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


TARGET_SHAPES: dict[str, ShapeFn] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.ones(u.shape, dtype=bool),
    "triangle": lambda u, v: _in_polygon(u, v, _TRIANGLE),
    "cross": lambda u, v: (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "star": lambda u, v: _in_polygon(u, v, _STAR),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "bar": lambda u, v: np.abs(v) <= 0.3,
    "hollow_square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) >= 0.55,
    "L": lambda u, v: (u <= -0.35) | (v >= 0.35),
}

SOURCE_SHAPES: dict[str, ShapeFn] = {
    "pentagon": lambda u, v: _in_polygon(u, v, _PENTAGON),
    "hexagon": lambda u, v: _in_polygon(u, v, _HEXAGON),
    "arrow": lambda u, v: _in_polygon(u, v, _ARROW),
    "heart": _heart,
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "T": lambda u, v: (v <= -0.4) | (np.abs(u) <= 0.3),
    "x": lambda u, v: (np.abs(u - v) <= 0.45) | (np.abs(u + v) <= 0.45),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.64),
    "trapezoid": lambda u, v: _in_polygon(u, v, _TRAPEZOID),
    "zigzag": _zigzag,
    "dome": lambda u, v: u * u + ((v - 1.0) / 2.0) ** 2 <= 1.0,
    "hourglass": lambda u, v: np.abs(u) <= np.abs(v),
}

_SHAPE_SETS = {"target": TARGET_SHAPES, "source": SOURCE_SHAPES}


def class_names(class_set: str = "target", classes: int | None = None) -> list[str]:
    """Class names of a class set, in class-index order (= sorted order), first ``classes``."""
    shapes = _shape_set(class_set)
    names = [f"{i:02d}_{name}" for i, name in enumerate(shapes)]
    if classes is not None:
        if not 1 <= classes <= len(names):
            raise InputError(f"classes must be between 1 and {len(names)} for class_set={class_set!r}, got {classes}")
        names = names[:classes]
    return names


def _shape_set(class_set: str) -> dict[str, ShapeFn]:
    try:
        return _SHAPE_SETS[class_set]
    except KeyError:
        raise InputError(f"class_set must be 'target' or 'source', got {class_set!r}") from None


# --- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image with its ground truth (``mask`` = the object's pixels)."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    label: int
    class_name: str
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (pixel edges, exclusive max)
    context: bool = False  # whether the background carries the class's cue


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _segment_distance(px, py, x1, y1, x2, y2):
    """Distance of pixel centres (px, py [H, W]) to segments (x1.. [L, 1, 1]) -> [L, H, W]."""
    dx, dy = x2 - x1, y2 - y1
    length2 = np.maximum(dx * dx + dy * dy, 1e-9)
    t = np.clip(((px - x1) * dx + (py - y1) * dy) / length2, 0.0, 1.0)
    ex = px - (x1 + t * dx)
    ey = py - (y1 + t * dy)
    return np.sqrt(ex * ex + ey * ey)


# the cue: stripes of period CUE_PERIOD px at size 32 (scaled with the size), amplitude
# CUE_AMPLITUDE grey levels along the class's chroma direction: well above the sensor noise
# (18), so a small CNN picks it up within the demo's few epochs
CUE_PERIOD = 6.0
CUE_AMPLITUDE = 45.0
# an orthonormal basis of the chroma plane (orthogonal to grey): a cue changes colour, not brightness
_CHROMA = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.sqrt([[2.0], [6.0]])


def cue_direction(label: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The cue of class ``label`` of ``classes``: (unit wave vector (x, y) across the stripes,
    unit RGB colour direction)."""
    theta = np.pi * label / classes
    hue = 2.0 * np.pi * label / classes
    return np.array([np.cos(theta), np.sin(theta)]), np.cos(hue) * _CHROMA[0] + np.sin(hue) * _CHROMA[1]


def _cue(rng: np.random.Generator, label: int, classes: int, size: int) -> np.ndarray:
    """The additive cue [3, size, size] of one image (class ``label``), at a random phase."""
    py, px = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    wave, colour = cue_direction(label, classes)
    period = CUE_PERIOD * size / 32.0
    phase = rng.uniform(0.0, 2.0 * np.pi)
    stripes = np.sin(2.0 * np.pi * (wave[0] * px + wave[1] * py) / period + phase)
    return CUE_AMPLITUDE * colour[:, None, None] * stripes[None]


def _render(
    rng: np.random.Generator, shape: ShapeFn, size: int, cue: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 32.0
    py, px = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # background: base colour + random linear gradient
    base = rng.uniform(0.0, 255.0, size=3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    amp = rng.uniform(-40.0, 40.0, size=3)
    ramp = ((px - size / 2) * np.cos(angle) + (py - size / 2) * np.sin(angle)) / size
    img = base[:, None, None] + amp[:, None, None] * ramp[None]

    # clutter lines (under the object)
    n_lines = int(rng.integers(4, 9))
    ends = rng.uniform(0.0, size, size=(n_lines, 4))
    colours = rng.uniform(0.0, 255.0, size=(n_lines, 3))
    x1, y1, x2, y2 = (ends[:, k, None, None] for k in range(4))
    on_line = _segment_distance(px, py, x1, y1, x2, y2) <= 0.6 * max(scale, 1.0)
    for k in range(n_lines):
        img[:, on_line[k]] = colours[k][:, None]
    if cue is not None:  # over the whole background; the object is drawn over it
        img += cue

    # the object
    lo, hi = max(2, round(12 * scale)), max(3, round(22 * scale))
    side = int(rng.integers(lo, min(hi, size) + 1))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    colour = rng.uniform(0.0, 255.0, size=3)
    for _ in range(64):  # contrast with the background's base colour (bounded, deterministic)
        if np.abs(colour - base).mean() >= 60.0:
            break
        colour = rng.uniform(0.0, 255.0, size=3)
    half = side / 2.0
    u = (px - (x0 + half)) / half
    v = (py - (y0 + half)) / half
    inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    mask = np.asarray(shape(u, v), dtype=bool) & inside
    if not mask.any():  # only possible for tiny sizes: keep the object non-empty
        mask[min(int(y0 + half), size - 1), min(int(x0 + half), size - 1)] = True
    img[:, mask] = colour[:, None]

    # sensor noise over everything
    img += rng.normal(0.0, 18.0, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(image), mask


def render_sample(
    seed: int,
    index: int,
    split: str = "train",
    class_set: str = "target",
    classes: int = 10,
    size: int = 32,
    context: float = 0.0,
) -> SyntheticSample:
    """Render image ``index`` of a split exactly as ``write_synthetic`` writes it."""
    if split not in _SPLIT_CODE:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    context = check_context(context)
    names = class_names(class_set, classes)
    shapes = list(_shape_set(class_set).values())
    label = index % classes
    key = [int(seed), _SET_CODE[class_set], _SPLIT_CODE[split], int(index)]
    cue = None
    if context > 0:  # its own stream, so that the image's other draws are those of context=0
        cue_rng = np.random.default_rng([*key, 1])
        if cue_rng.random() < context:
            cue = _cue(cue_rng, label, classes, size)
    image, mask = _render(np.random.default_rng(key), shapes[label], size, cue)
    return SyntheticSample(image, mask, label, names[label], _tight_box(mask), cue is not None)


# --- writing -----------------------------------------------------------------------------


def _params(seed, classes, train_per_class, test_per_class, size, class_set, context) -> dict:
    params = {
        "generator": "camgap-synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "class_set": class_set,
        "classes": classes,
        "class_names": class_names(class_set, classes),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "size": size,
    }
    if context > 0:  # absent at 0: the manifests written before context existed still match
        params["context"] = context
    return params


def check_context(value) -> float:
    """The context probability P, a number in [0, 1] (an InputError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"context must be a probability between 0 and 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails here too
        raise InputError(f"context must be a probability between 0 and 1, got {value!r}")
    return float(value)


_OURS = {"images", "train.csv", "test.csv", MANIFEST_NAME}


def write_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    classes: int = 10,
    train_per_class: int = 50,
    test_per_class: int = 50,
    size: int = 32,
    class_set: str = "target",
    context: float = 0.0,
) -> Path:
    """Write the synthetic dataset in the CSV-manifest layout under ``out_dir``; return it.
    ``context``: the probability P that an image's background carries its class's cue (see
    the module's docstring); 0 writes the data of a camgap without this option.

    Rerunning with the same parameters is a no-op. ``out_dir`` holding a dataset written
    with other parameters, or holding other files, is a ``FileExistsError``.
    """
    seed = integer("seed", seed, 0)
    classes = integer("classes", classes, 1)
    train_per_class = integer("train_per_class", train_per_class, 1)
    test_per_class = integer("test_per_class", test_per_class, 1)
    size = integer("size", size, 16)
    context = check_context(context)
    params = _params(seed, classes, train_per_class, test_per_class, size, class_set, context)

    out = Path(out_dir)
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PathExistsError(f"{manifest}: unreadable synthetic-dataset manifest ({e})") from None
        if old != params:
            diff = {k: (old.get(k), params.get(k)) for k in params.keys() | old.keys() if old.get(k) != params.get(k)}
            details = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in sorted(diff.items()))
            raise PathExistsError(
                f"{out} holds a synthetic dataset written with other parameters ({details}); "
                "use another --out directory or delete it"
            )
        if (out / "train.csv").is_file() and (out / "test.csv").is_file():
            return out
    elif out.exists():
        if not out.is_dir():
            raise PathExistsError(f"{out} exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS and not p.name.startswith("."))
        if foreign:
            raise PathExistsError(
                f"{out} is not empty and holds no synthetic dataset ({', '.join(foreign[:5])}); "
                "use an empty or new directory"
            )

    # (re)generate: an interrupted earlier write leaves only our own files, replaced here
    if manifest.exists():
        manifest.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        img_dir = out / "images" / split
        if img_dir.exists():
            shutil.rmtree(img_dir)
        img_dir.mkdir(parents=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "xmin", "ymin", "xmax", "ymax"])
        for i in range(classes * per_class):
            s = render_sample(seed, i, split, class_set, classes, size, context)
            rel = f"images/{split}/{i:05d}.png"
            Image.fromarray(s.image).save(out / rel, format="PNG", compress_level=1)
            writer.writerow([rel, s.class_name, *s.box])
        atomic_write_text(out / f"{split}.csv", buf.getvalue())
    atomic_write_text(manifest, json.dumps(params, indent=2) + "\n")
    return out
