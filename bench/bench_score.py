"""Score throughput: camgap vs pytorch-grad-cam vs Captum vs a plain inference pass.

Same resnet18 (random weights, 20 classes), same images at 224x224, same batches, in one run.
Each peer produces the normalised, upsampled Grad-CAM of the predicted class at layer4;
camgap also thresholds it and computes IoU / IoU-B against the boxes.

    python bench/bench_score.py [--images 64] [--batch-size 16] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from camgap.cam import upsample_normalize
from camgap.data.dataset import IMAGENET_MEAN, IMAGENET_STD, normalize
from camgap.measures.score import score_model
from camgap.models import create_model


class InMemory:
    """A TensorStore look-alike over tensors already in memory (the benchmark's data)."""

    def __init__(self, images, labels, boxes):
        self.images, self.labels, self.boxes = images, labels, boxes
        self.box_labels = [torch.full((len(b),), int(y)) for b, y in zip(boxes, labels)]
        self.image_ids = [f"img{i:05d}" for i in range(len(images))]

    def __len__(self):
        return len(self.images)

    def batches(self, batch_size, device="cpu", **_):
        for s in range(0, len(self.images), batch_size):
            sl = slice(s, s + batch_size)
            yield (self.images[sl].to(device), self.labels[sl].to(device), self.boxes[sl], self.box_labels[sl])


def make_data(n: int, size: int, seed: int = 0) -> InMemory:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 20, (n,), generator=g)
    xy = torch.randint(0, size // 2, (n, 2), generator=g).float()
    boxes = [torch.cat([p, p + size / 3]).reshape(1, 4) for p in xy]
    return InMemory(images, labels, boxes)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("resnet18", 20).eval().to(device)
    data = make_data(args.images, 224)
    batches = [(normalize(x, IMAGENET_MEAN, IMAGENET_STD), y) for x, y, *_ in data.batches(args.batch_size, device)]

    def plain():
        with torch.no_grad():
            for x, _ in batches:
                model(x).argmax(1)

    def camgap():
        score_model(model, data, cam="gradcam", batch_size=args.batch_size, device=device)

    def gradcam_lib():
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            for x, _ in batches:
                cam(input_tensor=x, targets=None)

    def captum():
        lgc = LayerGradCam(model, model.layer4)
        for x, _ in batches:
            with torch.no_grad():
                pred = model(x).argmax(1)
            attr = lgc.attribute(x, target=pred, relu_attributions=True)
            upsample_normalize(attr[:, 0].detach(), (224, 224))

    results = {}
    for name, fn in [
        ("plain inference", plain),
        ("camgap score", camgap),
        ("pytorch-grad-cam", gradcam_lib),
        ("captum", captum),
    ]:
        results[name] = args.images / timed(fn, args.repeats)
    base = results["camgap score"]
    print(
        f"resnet18, {args.images} images 224x224, batch {args.batch_size}, device {device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print(f"{'method':<18} {'images/s':>9} {'camgap speed-up':>16}")
    for name, ips in results.items():
        print(f"{name:<18} {ips:9.1f} {base / ips:15.2f}x")
    print(f"camgap / plain inference time ratio: {results['plain inference'] / base:.3f} (goal <= 1.15)")
    print(
        "rerun: python bench/bench_score.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    )


if __name__ == "__main__":
    main()
