"""The parsers of `camgap`'s own commands, one function per command: each adds its command to
a subparsers object and returns its parser; `camgap.cli.build_parser` gives each its command
function. (`camgap zoo ...`: `camgap.zoo.cli`.) Plain values only: `--help` imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from camgap.cliutil import (
    CommaList,
    add_input_checks,
    add_location,
    add_progress_flag,
    add_threshold_flag,
    cam_names,
    seed_number,
    worker_count,
)
from camgap.data.preprocessing import CHANNEL_ORDERS

LAYOUTS = ["auto", "imagenet", "listfile", "kaggle", "coco", "csv"]


# Written out rather than read from camgap.cam.CAMS, which imports torch; a test checks it names
# every registered method and its alias without a dash.
CAM_HELP = (
    "CAM method: cam, gradcam, gradcam++, layercam, smoothgradcam++, xgradcam (also gradcampp = gradcam++, "
    "smoothgradcampp = smoothgradcam++, the reference release's names)"
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument(
        "--arch",
        help="architecture name: camgap's, any torchvision classifier, timm:<name> (list: "
        "`camgap models`); default: what the checkpoint records; not needed for a saved "
        "nn.Module",
    )
    p.add_argument(
        "--num-classes", type=int, help="default: what the checkpoint records, else the number of classes in the data"
    )
    p.add_argument("--width", type=int, help="small_resnet width (default: what the checkpoint records)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument(
        "--split",
        default="train",
        help="split to score: train (default; the paper's IoU) or test (held-out images: their boxes are "
        "needed, their labels are not, as the CAM is the predicted class's)",
    )
    p.add_argument("--input-size", type=int, help="image side (default: what the checkpoint records, else 224)")
    p.add_argument(
        "--resize",
        choices=["resize", "resize_crop"],
        help="direct resize of the whole image (reference behaviour) or resize + center crop "
        "(default: what the checkpoint records, else resize)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--cache", type=Path, help="cache folder for decoded images and masks (default ~/.cache/camgap/...)")
    add_input_checks(p)


def _add_cam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cam", default="gradcam", type=cam_names, help=CAM_HELP)
    p.add_argument(
        "--layer",
        help="target layer, dotted name (default: the last block before the global pooling "
        "of a known family, e.g. layer4 for ResNets)",
    )
    p.add_argument(
        "--reshape",
        choices=["tokens", "nhwc", "none"],
        help="how the target layer's output becomes a [C, H, W] map, for a model camgap does not know: tokens "
        "([B, N, C]: the class/distillation tokens the model records dropped, the rest a square grid), nhwc "
        "([B, H, W, C], as Swin's stages), none (already [B, C, H, W]) (default: the model family's: tokens "
        "for ViT/DeiT, nhwc for Swin, none for convolutional networks)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="score even when the target layer's map is under 3x3 at the input size (its CAM cannot locate anything)",
    )
    add_threshold_flag(p, "; the first is the headline")
    p.add_argument("--class-boxes-only", action="store_true", help="A_G from the boxes of the labelled class only")
    p.add_argument("--masks", default="boxes", help="A_G source: boxes, saliency, or a folder of PNG masks")


def _add_preprocessing_args(p: argparse.ArgumentParser) -> None:
    for flag, what in (("--mean", "mean"), ("--std", "std")):
        p.add_argument(
            flag,
            action=CommaList,
            convert=float,
            length=3,
            metavar="R,G,B",
            help=f"normalisation {what}, in the model's channel order (default: the checkpoint's, else ImageNet)",
        )
    p.add_argument(
        "--channel-order",
        choices=list(CHANNEL_ORDERS),
        help="channel order the model was trained on (default: the checkpoint's, else rgb)",
    )
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="read a checkpoint that holds pickled objects (a saved nn.Module) with weights_only=False; "
        "this can run code from the file: only for files you trust",
    )


def _add_score_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_data_args(p)
    _add_cam_args(p)
    _add_preprocessing_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=worker_count,
        default=0,
        help="processes that decode and resize the images while the model runs, at most one per CPU core; on a "
        "CPU the model runs on the cores they leave (default 0: this process; the same numbers, on a CPU to "
        "float rounding)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--per-image",
        type=Path,
        help="write the per-image table as batches finish: CSV, or Parquet for a .parquet name",
    )
    p.add_argument("--overlays", type=Path, help="write CAM overlay PNGs to this folder")
    p.add_argument("--n", type=int, default=16, help="number of overlays")


def add_score(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="IoU / IoU-B of one model on its training images")
    _add_score_args(p)
    add_progress_flag(p)
    return p


def add_synth(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="write the embedded synthetic dataset (train and test splits)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of every random choice (0 or more)")
    p.add_argument("--classes", type=int, default=10, help="number of target classes")
    p.add_argument("--train-per-class", type=int, default=50, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=50, help="test images per class")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument(
        "--context",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that an image's background carries a cue of its class, in train and test alike",
    )
    return p


def add_demo(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="the whole study on the embedded synthetic dataset, in minutes on a CPU")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder, reused when rerun, refused when it holds another kind of demo output (default: "
        "camgap-demo; camgap-demo-context50 with --context 0.5; camgap-demo-context with --experiment context, "
        "camgap-demo-seeds with --experiment seeds)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every stage, under 2 minutes on a 2-core CPU; its numbers are not a study",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--workers",
        type=worker_count,
        help="training worker processes, at most one per CPU (default: one per CPU core, 1 on a GPU)",
    )
    p.add_argument(
        "--seed",
        type=seed_number,
        default=0,
        help="another seed draws other data, another sample of the grid and other run seeds (0 or more)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--context",
        type=float,
        metavar="P",
        help="the demo on data where a share P of the images carry a cue of their class in the background",
    )
    which.add_argument(
        "--experiment",
        choices=("context", "seeds"),
        help="context: the demo at P = 0, 0.5 and 0.9 (each in a subfolder) and one table comparing them; "
        "seeds: the demo at --seed and the next two seeds and one leaderboard of every measure",
    )
    add_progress_flag(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="the runs' precision instead of the grid's (auto: bf16 where the device computes it natively, else "
        "fp32); recorded in each run's config",
    )
    return p


def add_masks(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "masks", help="export A_G masks (saliency or a mask folder) as PNGs, with their agreement with the boxes"
    )
    add_location(p, "data", "--data", "DIR", "dataset root", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--source", default="saliency", help="saliency, saliency:spectral_residual, boxes, or a folder of PNG masks"
    )
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument("--split", default="train")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize", default="resize", choices=["resize", "resize_crop"])
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--cache", type=Path)
    add_input_checks(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_progress_flag(p)
    return p


def add_study(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("study", help="tables, figures and an HTML report for a measured model set")
    add_location(
        p,
        "zoo",
        "--zoo",
        "ZOO",
        "model-set folder (from `camgap zoo build`, measured by `camgap zoo measure`)",
        type=Path,
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--subsets",
        action=CommaList,
        convert=float,
        default=[0.95, 0.9, 0.85, 0.8],
        metavar="ACC[,ACC...]",
        help="training-accuracy subsets, comma-separated: the models with train_acc >= each (0 = every "
        "model) (default: the paper's 0.95,0.9,0.85,0.8)",
    )
    p.add_argument(
        "--primary",
        metavar="K=V[,K=V...]",
        help="the measurement variant the headline tables use, e.g. cam=gradcam,threshold=0.1,masks=boxes "
        "(default: cam=gradcam,masks=boxes and each measure's own defaults)",
    )
    p.add_argument(
        "--measures",
        action=CommaList,
        metavar="M[,M...]",
        help="the measures shown as rows, comma-separated, e.g. iou,iou_b,spectral_norm (default: every measured one)",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument(
        "--cmi",
        choices=["jiang", "pgdl"],
        default="jiang",
        help="the CMI score's definition: jiang (Jiang et al. 2020, sec. 2.3; in [0, 1]) or pgdl (the PGDL "
        "competition's scoring program, x 100, comparable with its published scores) (default: jiang)",
    )
    p.add_argument(
        "--color-by",
        metavar="HPARAM",
        help="colour the IoU scatter by this hyperparameter, e.g. pretrained or optimizer (default: by architecture)",
    )
    p.add_argument("--no-overlays", action="store_true", help="skip the CAM overlay figure (Figure 2)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the headline (Table 3, Total: r, its interval and n per cell) as one JSON object",
    )
    add_progress_flag(p)
    return p


def add_predict(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict", help="predict a model's generalization gap from its IoU, fitted on a reference model set"
    )
    p.add_argument("--zoo", required=True, type=Path, help="measured reference model set")
    _add_score_args(p)  # read as `score` reads it: flag > checkpoint > default
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument(
        "--min-train-acc",
        type=float,
        default=0.8,
        help="fit on reference models with at least this training accuracy (the paper's model set: 0.8)",
    )
    add_progress_flag(p)
    return p


def add_models(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="the architecture names, with each one's default target layer",
        description="Architectures --arch and grids accept: camgap's, every torchvision "
        "classifier (untrained: weights=None) and, when timm is installed, timm's as "
        "timm:<name> (pretrained=False). Each is built once with its parameters on the "
        "meta device (no memory, a few seconds for all) to find its default target "
        "layer and whether Grad-CAM's closed form applies there.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these (e.g. timm:resnet18; default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p
