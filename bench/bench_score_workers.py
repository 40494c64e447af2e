"""Score throughput at dataset scale: `score --workers 0` against `--workers N` on decoded JPEGs,
and the model-only bound (the same images pre-decoded in memory, through the same score_model).

Writes `--images` JPEGs (500x375 smooth noise from a seeded generator, one box each, a csv
layout) into a temporary folder, then scores them with a small_resnet (width 8, the demo's) at
64 px as `camgap score` does (a BoxDataset, the per-image table streamed to a CSV, no logits
kept). Such a model makes the pass decode-bound: decoding and resizing one JPEG costs about as
much CPU time as its CAM pass, or more (both are printed). Every pass gives the same per-image
table (checked).

Printed: images/s of each pass, and the CPU time per image of decoding alone and of the
model-only pass; on C cores no schedule beats C / (decode + model CPU time) images/s, which
is the bound that decoding in workers can approach when the model-only bound is out of reach.

    python bench/bench_score_workers.py [--images 2000] [--workers 0,2] [--batch-size 64] [--width 8]
    python bench/bench_score_workers.py --device cuda --arch resnet18 --size 224 --workers 0,8   # bench/gpu_check.sh
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from camgap.data import BoxDataset, read_layout
from camgap.data.dataset import collate_boxes
from camgap.measures.score import ScoreOptions, score_model
from camgap.models import create_model

N_CLASSES, WIDTH, HEIGHT = 10, 500, 375


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """`n` noise JPEGs of WIDTHxHEIGHT (quality 90) and train.csv with one box per image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        # smooth noise: a 25x19 grid upsampled, so the JPEG is photo-like, not incompressible
        small = rng.integers(0, 256, (HEIGHT // 20, WIDTH // 20, 3), dtype=np.uint8)
        Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR).save(
            root / "images" / f"{i:05d}.jpg", quality=90
        )
        x0, y0 = int(rng.integers(0, WIDTH // 2)), int(rng.integers(0, HEIGHT // 2))
        rows.append((f"images/{i:05d}.jpg", f"c{i % N_CLASSES}", x0, y0, x0 + WIDTH // 3, y0 + HEIGHT // 3))
    pd.DataFrame(rows, columns=["path", "label", "xmin", "ymin", "xmax", "ymax"]).to_csv(
        root / "train.csv", index=False
    )
    return root


class InMemory:
    """The decoded images held in memory, read as a TensorStore is (`batches`, `image_ids`)."""

    def __init__(self, dataset: BoxDataset):
        self.images, self.labels, self.boxes, self.box_labels = collate_boxes([dataset[i] for i in range(len(dataset))])
        self.image_ids = list(dataset.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def batches(self, batch_size, device="cpu", **_):
        for s in range(0, len(self), batch_size):
            sl = slice(s, s + batch_size)
            yield self.images[sl].to(device), self.labels[sl].to(device), self.boxes[sl], self.box_labels[sl]


def timed(fn, repeats: int) -> tuple[float, object]:
    """The best of `repeats` wall times of `fn()`, and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def cpu_time(fn) -> tuple[float, object]:
    """The CPU time of `fn()` on one thread (torch's idle threads spin at their barriers and
    would count), and its result."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.process_time()
        out = fn()
        return time.process_time() - t, out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", default="0,2", help="comma-separated worker counts to time")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--arch", default="small_resnet", help="any `camgap models` architecture (random weights)")
    ap.add_argument("--width", type=int, default=8, help="small_resnet width")
    ap.add_argument("--size", type=int, default=64, help="input size")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.arch == "small_resnet" else {}
    model = create_model(args.arch, N_CLASSES, **kwargs).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "data", args.images)
        records, _ = read_layout(root, "csv", "train")
        dataset = BoxDataset(records, input_size=args.size)
        decode_cpu, memory = cpu_time(lambda: InMemory(dataset))  # also warms the page cache

        def score(data, workers: int):
            options = ScoreOptions(
                batch_size=args.batch_size,
                num_workers=workers,
                device=args.device,
                per_image_out=Path(tmp) / f"per_image-{workers}.csv",
                keep_logits=False,
            )
            return lambda: score_model(model, data, options).per_image

        rates, tables = {}, {}
        for workers in (int(w) for w in args.workers.split(",")):
            seconds, tables[workers] = timed(score(dataset, workers), args.repeats)
            rates[f"--workers {workers}"] = args.images / seconds
        seconds, bound_table = timed(score(memory, 0), args.repeats)
        rates["model only (pre-decoded)"] = args.images / seconds
        model_cpu, _ = cpu_time(score(memory, 0))
    for workers, table in tables.items():
        # beside workers the model runs on fewer threads (camgap.measures.inputs.decoding_split),
        # which may round its floats otherwise: exact at torch's own thread count only
        same = workers == 0 or torch.get_num_threads() <= 1
        pd.testing.assert_frame_equal(table, bound_table, check_exact=same, rtol=1e-5)
    report(args, rates, 1000 * decode_cpu / args.images, 1000 * model_cpu / args.images)


def report(args, rates: dict[str, float], decode_ms: float, model_ms: float) -> None:
    bound, cores = rates["model only (pre-decoded)"], os.cpu_count() or 1
    print(
        f"{args.arch}{f' width {args.width}' if args.arch == 'small_resnet' else ''}, {args.images} JPEGs "
        f"{WIDTH}x{HEIGHT} -> {args.size} px, batch "
        f"{args.batch_size}, device {args.device}, {cores} cores, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    print(f"{'pass':<26} {'images/s':>9} {'x workers 0':>12} {'bound / this':>13}")
    first = next(iter(rates.values()))
    for name, ips in rates.items():
        print(f"{name:<26} {ips:9.1f} {ips / first:11.2f}x {bound / ips:12.2f}x")
    print(
        f"CPU time per image on one thread: decoding {decode_ms:.2f} ms, model-only pass {model_ms:.2f} ms; "
        f"{cores} cores allow at most {1000 * cores / (decode_ms + model_ms):.0f} images/s with decoding"
    )
    print("every pass gave the same per-image table (to float rounding where the model's thread count differed)")
    print(
        "rerun: python bench/bench_score_workers.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    )


if __name__ == "__main__":
    main()
