"""`camgap` command line: score, synth, masks, zoo, study, predict, demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from camgap import __version__
from camgap.errors import CamgapError, InputError, MissingFileError


def resolve_device(name: str) -> torch.device:
    from camgap.zoo.executors import resolve_device as resolve

    return torch.device(resolve(name))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--layout", default="auto", choices=["auto", "imagenet", "listfile", "kaggle", "coco", "csv"])
    p.add_argument("--split", default="train", help="split to score (the training images; default train)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize", default="resize", choices=["resize", "resize_crop"],
                   help="direct resize of the whole image (reference behaviour) or resize + center crop")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--cache", type=Path, help="cache folder for decoded images and masks (default ~/.cache/camgap/...)")


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--arch", help="architecture name (see `camgap models`); not needed for a saved nn.Module")
    p.add_argument("--num-classes", type=int, help="default: the number of classes in the data")
    p.add_argument("--width", type=int, help="small_resnet width")
    _add_data_args(p)
    p.add_argument("--cam", default="gradcam", help="cam, gradcam, gradcam++, smoothgradcam++, layercam, xgradcam")
    p.add_argument("--layer", help="target layer, dotted name (default: layer4 / the last conv stage)")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.1], help="one or more CAM thresholds rho")
    p.add_argument("--class-boxes-only", action="store_true", help="A_G from the boxes of the labelled class only")
    p.add_argument("--masks", default="boxes", help="A_G source: boxes, saliency, or a folder of PNG masks")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default ImageNet)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std (default ImageNet)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--per-image", type=Path, help="write the per-image table (CSV)")
    p.add_argument("--overlays", type=Path, help="write CAM overlay PNGs to this folder")
    p.add_argument("--n", type=int, default=16, help="number of overlays")


def _score_summary(args: argparse.Namespace) -> dict:
    """Score the checkpoint as `camgap score` asks; writes --per-image / --overlays; returns the summary."""
    from camgap.data import BoxDataset, read_layout
    from camgap.data.dataset import IMAGENET_MEAN, IMAGENET_STD
    from camgap.measures.score import score_model
    from camgap.models import get_layer, load_checkpoint

    skipped: list | None = [] if args.skip_bad else None
    records, classes = read_layout(args.data, args.layout, args.split, skipped=skipped)
    num_classes = args.num_classes or len(classes)
    if len(classes) > num_classes:
        raise InputError(
            f"{args.data}: the data has {len(classes)} classes but the model has {num_classes} outputs "
            f"(labels up to {len(classes) - 1} would be outside the model's classes)"
        )
    arch_kwargs = {"width": args.width} if args.width else {}
    model = load_checkpoint(args.checkpoint, args.arch, num_classes, **arch_kwargs)
    device = resolve_device(args.device)
    dataset = BoxDataset(records, input_size=args.input_size, resize=args.resize, skip_bad=args.skip_bad)
    masks, mask_ids = _reference_masks(args, dataset, device)
    n_without_mask = 0
    if masks is not None and args.skip_bad:  # images left out of the masks (bad file, no mask file)
        have = set(mask_ids)
        kept = [r for r in records if r.image_id in have]
        n_without_mask = len(records) - len(kept)
        dataset = BoxDataset(kept, input_size=args.input_size, resize=args.resize, skip_bad=True)
    layer = get_layer(model, args.layer) if args.layer else None
    result = score_model(
        model,
        dataset,
        cam=args.cam,
        thresholds=args.threshold,
        target_layer=layer,
        batch_size=args.batch_size,
        device=device,
        mean=args.mean or IMAGENET_MEAN,
        std=args.std or IMAGENET_STD,
        class_boxes_only=args.class_boxes_only,
        masks=masks,
        mask_ids=mask_ids,
        keep_overlays=args.n if args.overlays else 0,
        progress=sys.stderr.isatty() or not args.json,
        num_workers=args.workers,
    )
    result.n_skipped += len(skipped or []) + n_without_mask
    if args.per_image:
        args.per_image.parent.mkdir(parents=True, exist_ok=True)
        result.per_image.to_csv(args.per_image, index=False)
    if args.overlays:
        from camgap.viz import save_overlays

        save_overlays(result.overlays, args.overlays, args.threshold[0], classes)
    return result.summary() | {"masks": args.masks, "checkpoint": str(args.checkpoint)}


def _json_safe(obj):
    """NaN (no reference region anywhere) becomes null: strict JSON has no NaN."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def cmd_score(args: argparse.Namespace) -> int:
    summary = _score_summary(args)
    if args.json:
        print(json.dumps(_json_safe(summary)))
    else:
        print(f"IoU^Model   = {summary['iou']:.4f}   (threshold {args.threshold[0]:g}, {args.cam})")
        print(f"IoU-B^Model = {summary['iou_b']:.4f}")
        for t, v in summary["by_threshold"].items():
            if len(args.threshold) > 1:
                print(f"  rho={t}: IoU {v['iou']:.4f}  IoU-B {v['iou_b']:.4f}")
        print(f"images scored {summary['n_images']}, skipped {summary['n_skipped']}, "
              f"without reference {summary['n_no_reference']}, train accuracy {summary['accuracy']:.4f}")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    """Where decoded tensors and masks of a dataset are cached: --cache, else the user cache."""
    import hashlib
    import os

    if getattr(args, "cache", None):
        root = Path(args.cache)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "camgap"
        root = base / hashlib.sha256(str(Path(args.data).resolve()).encode()).hexdigest()[:16]
    return root / f"{args.split}-{args.input_size}-{args.resize}"


def _reference_masks(args, dataset, device):
    """Masks for A_G when --masks is not `boxes`: computed once per dataset and cached."""
    if args.masks == "boxes":
        return None, None
    from camgap.data.masks import compute_masks
    from camgap.data.store import TensorStore

    cache = _cache_dir(args)
    store = TensorStore.cached(dataset.records, cache, args.input_size, args.resize, skip_bad=args.skip_bad)
    result = compute_masks(
        args.masks, store.images, store.boxes, list(store.image_ids), args.input_size,
        cache_dir=cache, skip_bad=args.skip_bad, resize=args.resize,
    )
    return result.masks, list(result.image_ids)


def cmd_synth(args: argparse.Namespace) -> int:
    from camgap.data.synthetic import write_synthetic

    out = write_synthetic(
        args.out,
        seed=args.seed,
        classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        size=args.size,
    )
    print(f"synthetic dataset written to {out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from camgap.study.report import headline, write_study
    from camgap.study.tables import paper_specs
    from camgap.zoo.measure import overlay_rows
    from camgap.zoo.registry import Registry

    zoo = Path(args.zoo)
    if not (zoo / Registry.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({Registry.FILENAME} missing)")
    with Registry.in_dir(zoo, create=False) as reg:
        runs, measurements = reg.runs_frame(), reg.measurements_frame()
    if measurements.empty:
        raise InputError(f"{zoo}: no measurements yet; run `camgap zoo measure {zoo}` first")
    overlays = None if args.no_overlays else overlay_rows(zoo, device=resolve_device(args.device))
    report = write_study(runs, measurements, args.out, overlays=overlays or None, n_boot=args.bootstrap)
    print(headline(runs, measurements, specs=paper_specs(measurements)))
    print(f"report: {report}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from camgap.study.predict import fit_gap, predict_gap
    from camgap.study.tables import wide_table
    from camgap.zoo.measure import score_params
    from camgap.zoo.registry import Registry

    if not (Path(args.zoo) / Registry.FILENAME).exists():
        raise MissingFileError(f"{args.zoo}: no model set here ({Registry.FILENAME} missing)")
    with Registry.in_dir(args.zoo, create=False) as reg:
        runs, measurements = reg.runs_frame(), reg.measurements_frame()
    reference = runs[(runs.status == "done") & runs.trained & (runs.train_acc >= args.min_train_acc)]
    if reference.empty:
        raise InputError(f"{args.zoo}: no trained model with train accuracy >= {args.min_train_acc:g} is done")
    # preprocess the new model's images as the reference models' were, unless told otherwise
    zoo_cfg = json.loads(reference.iloc[0]["config"])
    for key in ("input_size", "resize", "mean", "std"):
        if getattr(args, key) is None:
            setattr(args, key, zoo_cfg[key])
    params = score_params(args.cam, args.threshold[0], args.masks)  # the same A_G source as the new model's IoU
    wide = wide_table(reference, measurements, [("iou", params, "iou")])
    if wide["iou"].notna().sum() < 3:
        raise InputError(f"{args.zoo}: fewer than 3 trained models have an IoU measured with {params}; "
                         f"run `camgap zoo measure {args.zoo} --cam {args.cam} --threshold {args.threshold[0]:g} "
                         f"--masks {args.masks}` first")
    fit = fit_gap(wide["iou"], wide["gap"], name="iou")
    args.json, args.per_image, args.overlays = True, None, None
    summary = _score_summary(args)
    prediction = predict_gap(fit, summary["iou"], confidence=args.confidence)
    print(f"IoU^Model = {summary['iou']:.4f} on {summary['n_images']} training images ({args.cam}, rho {args.threshold[0]:g})")
    print(f"reference: {fit.n} trained models of {args.zoo} with train acc >= {args.min_train_acc:g}, gap = {fit.intercept:.2f} + {fit.slope:.2f} * IoU (r = {fit.r:.3f})")
    print(prediction.text())
    if summary["accuracy"] < args.min_train_acc:
        print(f"WARNING: the model's training accuracy {summary['accuracy']:.3f} is below {args.min_train_acc:g}: "
              "it has not fitted its training set, and the reference fit covers only models that have")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from camgap.data import read_layout
    from camgap.data.masks import boxes_to_masks, compute_masks, export_masks, mask_quality
    from camgap.data.store import TensorStore

    skipped: list | None = [] if args.skip_bad else None
    records, _ = read_layout(args.data, args.layout, args.split, skipped=skipped, missing_ok=True)
    cache = _cache_dir(args)
    store = TensorStore.cached(records, cache, args.input_size, args.resize, skip_bad=args.skip_bad)
    result = compute_masks(args.source, store.images, store.boxes, list(store.image_ids), args.input_size,
                           cache_dir=cache, skip_bad=args.skip_bad, resize=args.resize)
    paths = export_masks(result.masks, result.image_ids, args.out)
    print(f"{len(paths)} masks written to {args.out} ({args.source})")
    stats = result.stats
    print(f"empty masks {stats.get('n_empty', 0)}, full-image masks {stats.get('n_full', 0)}, "
          f"missing {stats.get('n_missing', 0)}")
    if any(len(b) for b in store.boxes):
        keep = list(result.keep) if result.keep is not None else list(range(len(store)))
        box_masks = boxes_to_masks([store.boxes[i] for i in keep], args.input_size)
        quality = mask_quality(result.masks, box_masks)
        print(f"agreement with the boxes: mean IoU {quality['mean_iou']:.3f}, "
              f"masks missing the object entirely {100 * quality['miss_share']:.1f}% (n={quality['n']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from camgap.demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device, workers=args.workers)
    return 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default
    or there is none to name (a required option, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


class _DefaultsParser(argparse.ArgumentParser):
    """Subcommand parsers whose help shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camgap", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"camgap {__version__} (torch {torch.__version__})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_DefaultsParser)

    p = sub.add_parser("score", help="IoU / IoU-B of one model on its training images")
    _add_score_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("synth", help="write the embedded synthetic dataset (train and test splits)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--classes", type=int, default=10, help="number of target classes")
    p.add_argument("--train-per-class", type=int, default=50, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=50, help="test images per class")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="the whole study on the embedded synthetic dataset, in minutes on a CPU")
    p.add_argument("--out", type=Path, default=Path("camgap-demo"), help="output folder (reused when rerun)")
    p.add_argument("--quick", action="store_true", help="a 2-minute smoke run of every stage")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, help="training worker processes (default 2 on a CPU, 1 on a GPU)")
    p.set_defaults(func=cmd_demo)

    from camgap.zoo.cli import add_zoo_commands

    add_zoo_commands(sub)

    p = sub.add_parser("masks", help="export A_G masks (saliency or a mask folder) as PNGs, with their agreement with the boxes")
    p.add_argument("data", type=Path, help="dataset root")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--source", default="saliency", help="saliency, saliency:spectral_residual, boxes, or a folder of PNG masks")
    p.add_argument("--layout", default="auto", choices=["auto", "imagenet", "listfile", "kaggle", "coco", "csv"])
    p.add_argument("--split", default="train")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize", default="resize", choices=["resize", "resize_crop"])
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--cache", type=Path)
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("study", help="tables, figures and an HTML report for a measured model set")
    p.add_argument("zoo", type=Path, help="model-set folder (from `camgap zoo build`, measured by `camgap zoo measure`)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--no-overlays", action="store_true", help="skip the CAM overlay figure (Figure 2)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("predict", help="predict a model's generalization gap from its IoU, fitted on a reference model set")
    p.add_argument("--zoo", required=True, type=Path, help="measured reference model set")
    _add_score_args(p)
    p.set_defaults(input_size=None, resize=None)  # default: the reference set's preprocessing
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--min-train-acc", type=float, default=0.8,
                   help="fit on reference models with at least this training accuracy (the paper's model set: 0.8)")
    p.set_defaults(func=cmd_predict)
    return parser


EXIT_CODES = """exit codes:
  0    success (a measure that is undefined for a model by its definition is not a failure)
  1    `zoo status`: the model set has integrity problems
  2    bad input or an unusable state: one line on stderr names the file or value and the problem
  3    `zoo build`: runs failed for good; `zoo measure`: measurements failed (see `zoo status`)
  130  interrupted (Ctrl-C): finished work is kept, rerun the same command to resume
  any other code, with a traceback, is a bug in camgap: please report it"""


def _configure_logging(verbosity: int) -> None:
    """Results go to stdout; progress, notes and warnings to stderr through `logging`."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose - args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("camgap: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except (CamgapError, OSError) as exc:  # anything else is a bug: keep its traceback
        print(f"camgap: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CamgapError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split("\n")).strip()


if __name__ == "__main__":
    sys.exit(main())
