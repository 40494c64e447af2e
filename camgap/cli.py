"""`camgap` command line: score, synth, masks, zoo, study, predict, models, demo.

Every command names the data with `--data DIR` and the model set with `--zoo ZOO`; lists are
comma-separated (`--threshold 0.1,0.3`); `--json` prints the result as one JSON object on stdout,
everything else (progress, notes, warnings) goes to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from camgap import __version__
from camgap.cliutil import (
    CommaList,
    add_input_checks,
    add_location,
    add_progress_flag,
    cam_names,
    finish_args,
    wants_progress,
)
from camgap.data.preprocessing import CHANNEL_ORDERS, IMAGENET_MEAN, IMAGENET_STD
from camgap.errors import CamgapError, InputError, MissingFileError

if TYPE_CHECKING:  # torch, pandas and what imports them load in the commands: `--help` stays fast
    import torch

    from camgap.measures.score import ScoreOptions


def resolve_device(name: str) -> torch.device:
    import torch

    from camgap.zoo.executors import resolve_device as resolve

    return torch.device(resolve(name))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--layout", default="auto", choices=["auto", "imagenet", "listfile", "kaggle", "coco", "csv"])
    p.add_argument("--split", default="train", help="split to score (the training images; default train)")
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


# Written out rather than read from camgap.cam.CAMS, which imports torch; a test checks it names
# every registered method and its alias without a dash.
CAM_HELP = (
    "CAM method: cam, gradcam, gradcam++, layercam, smoothgradcam++, xgradcam (also gradcampp = gradcam++, "
    "smoothgradcampp = smoothgradcam++, the reference release's names)"
)


def _add_score_args(p: argparse.ArgumentParser) -> None:
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
    _add_data_args(p)
    p.add_argument("--cam", default="gradcam", type=cam_names, help=CAM_HELP)
    p.add_argument(
        "--layer",
        help="target layer, dotted name (default: the last block before the global pooling "
        "of a known family, e.g. layer4 for ResNets)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="score even when the target layer's map is under 3x3 at the input size (its CAM cannot locate anything)",
    )
    p.add_argument(
        "--threshold",
        action=CommaList,
        convert=float,
        default=[0.1],
        metavar="RHO[,RHO...]",
        help="CAM thresholds rho, comma-separated, each in [0, 1); the first is the headline",
    )
    p.add_argument("--class-boxes-only", action="store_true", help="A_G from the boxes of the labelled class only")
    p.add_argument("--masks", default="boxes", help="A_G source: boxes, saliency, or a folder of PNG masks")
    p.add_argument(
        "--mean",
        action=CommaList,
        convert=float,
        length=3,
        metavar="R,G,B",
        help="normalisation mean, in the model's channel order (default: the checkpoint's, else ImageNet)",
    )
    p.add_argument(
        "--std",
        action=CommaList,
        convert=float,
        length=3,
        metavar="R,G,B",
        help="normalisation std, in the model's channel order (default: the checkpoint's, else ImageNet)",
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
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--per-image", type=Path, help="write the per-image table (CSV)")
    p.add_argument("--overlays", type=Path, help="write CAM overlay PNGs to this folder")
    p.add_argument("--n", type=int, default=16, help="number of overlays")


# flag > what the checkpoint records > these documented defaults (`score` and `predict` alike:
# a new model is never scored with the reference set's preprocessing, which need not be its own)
PREPROCESSING_DEFAULTS: dict[str, object] = {
    "input_size": 224,
    "resize": "resize",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "channel_order": "rgb",
}
_MODEL_FIELDS = ("arch", "width", "num_classes")


def _score_flags(args: argparse.Namespace) -> dict:
    """The model and preprocessing settings given on the command line (None: not given)."""
    return {k: getattr(args, k) for k in (*_MODEL_FIELDS, *PREPROCESSING_DEFAULTS)}


def _same_setting(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=1e-6) for x, y in zip(a, b))
    return a == b


def resolve_settings(
    flags: dict, recorded: dict, fallback: dict[str, tuple[object, str]], where: Path | str
) -> tuple[dict, dict]:
    """(value, source) of each field of `fallback`: the flag, else what the checkpoint records,
    else the fallback's (value, source). A flag that contradicts the checkpoint wins, with a
    warning naming both values."""
    values, sources = {}, {}
    for key, (default, default_source) in fallback.items():
        flag, rec = flags.get(key), recorded.get(key)
        if flag is not None:
            if rec is not None and not _same_setting(flag, rec):
                warnings.warn(
                    f"--{key.replace('_', '-')} {flag} contradicts the checkpoint's {key} {rec} "
                    f"({where}); using {flag} (the flag)",
                    UserWarning,
                    stacklevel=2,
                )
            values[key], sources[key] = flag, "flag"
        elif rec is not None:
            values[key], sources[key] = rec, "checkpoint"
        else:
            values[key], sources[key] = default, default_source
    return values, sources


def _model_settings(flags: dict, record: dict, classes: list[str], path: Path) -> tuple[dict, dict]:
    """Architecture, its options and the number of outputs: flag > checkpoint > (none / the data)."""
    from camgap.models import short_list

    recorded = dict(record)
    recorded["width"] = (record.get("arch_kwargs") or {}).get("width")
    values, sources = resolve_settings(
        flags, recorded, {"arch": (None, "none"), "width": (None, "none"), "num_classes": (len(classes), "data")}, path
    )
    kwargs = dict(record.get("arch_kwargs") or {}) if values["arch"] == record.get("arch") else {}
    source = "checkpoint" if kwargs else "none"
    if values["width"] is not None:
        kwargs["width"], source = values["width"], sources["width"]
    values["arch_kwargs"], sources["arch_kwargs"] = kwargs, source
    del values["width"], sources["width"]
    if record.get("classes") and list(record["classes"]) != list(classes):
        warnings.warn(
            f"{path}: the checkpoint's classes {short_list([str(c) for c in record['classes']], 4)} differ "
            f"from the data's {short_list([str(c) for c in classes], 4)}: label i of the data may not be "
            "output i of the model",
            UserWarning,
            stacklevel=2,
        )
    return values, sources


def score_checkpoint(
    checkpoint: Path,
    data: Path,
    options: ScoreOptions | None = None,
    *,
    layout: str = "auto",
    split: str = "train",
    flags: dict | None = None,
    unsafe: bool = False,
    layer: str | None = None,
    masks: str = "boxes",
    skip_bad: bool = False,
    cache: Path | None = None,
    device: str = "auto",
    box_units: str | None = None,
    max_pixels: int | None = None,
    force: bool = False,
):
    """Score a checkpoint file on the training images of a dataset, as `camgap score` does.

    `options` are the scoring settings (CAM, thresholds, batches, overlays, ...); their model-
    dependent fields (target layer, device, mean, std, channel order) are set here from `layer`,
    `device` and the resolved preprocessing. `flags` holds the settings given explicitly
    (`_score_flags`: arch, width, num_classes, input_size, resize, mean, std, channel_order;
    None = not given); each missing one comes from
    the checkpoint, else from PREPROCESSING_DEFAULTS.
    A target-layer map under 3x3 at the chosen input size is a MapTooSmallError naming the
    input size to use, before any image is read (`force`: a warning, and scoring goes on).
    `box_units` and `max_pixels` are read_layout's and decode_rgb's (None: pixels, checked; 100 MP).
    Returns (ScoreResult, settings, classes); settings holds "model" and "preprocessing", each
    with the chosen values and a "source" per field (flag, checkpoint, default, ...), and
    "target_map" (the layer's map, [h, w])."""
    from camgap.data import BoxDataset, read_layout
    from camgap.data.dataset import count_dropped_boxes
    from camgap.measures.score import ScoreOptions, check_map_size, score_model
    from camgap.models import (
        checkpoint_record,
        default_target_layer,
        get_layer,
        model_from_checkpoint,
        read_checkpoint,
    )

    flags = flags or {}
    fallback = {k: (v, "default") for k, v in PREPROCESSING_DEFAULTS.items()}
    skipped: list | None = [] if skip_bad else None
    records, classes = read_layout(data, layout, split, skipped=skipped, box_units=box_units)
    obj = read_checkpoint(checkpoint, unsafe=unsafe)
    record = checkpoint_record(obj)
    model_cfg, model_src = _model_settings(flags, record, classes, checkpoint)
    prep, prep_src = resolve_settings(flags, record, fallback, checkpoint)
    num_classes = int(model_cfg["num_classes"])
    if len(classes) > num_classes:
        raise InputError(
            f"{data}: the data has {len(classes)} classes but the model has {num_classes} outputs "
            f"(labels up to {len(classes) - 1} would be outside the model's classes)"
        )
    model = model_from_checkpoint(obj, checkpoint, model_cfg["arch"], num_classes, **model_cfg["arch_kwargs"])
    if model_cfg["arch"] is None:  # a saved module as is: its class, its own outputs
        model_cfg["arch"], model_src["arch"] = type(model).__name__, "saved nn.Module"
        if model_src["num_classes"] == "data":
            model_cfg["num_classes"], model_src["num_classes"] = None, "saved nn.Module"
    torch_device = resolve_device(device)
    size, resize = int(prep["input_size"]), str(prep["resize"])
    layer_name, target = (layer, get_layer(model, layer)) if layer else default_target_layer(model)
    target_map = check_map_size(model.to(torch_device), target, layer_name, size, force=force, where=str(checkpoint))
    dataset = BoxDataset(records, input_size=size, resize=resize, skip_bad=skip_bad, max_pixels=max_pixels)
    cache_dir = _cache_dir(cache, data, split, size, resize)
    ref_masks, mask_ids = _reference_masks(masks, dataset, torch_device, cache_dir, size, resize, skip_bad)
    n_without_mask = 0
    if ref_masks is not None and skip_bad:  # images left out of the masks (bad file, no mask file)
        have = set(mask_ids)
        kept = [r for r in records if r.image_id in have]
        n_without_mask = len(records) - len(kept)
        dataset = BoxDataset(kept, input_size=size, resize=resize, skip_bad=True, max_pixels=max_pixels)
    options = ScoreOptions.of(
        options,
        target_layer=target if layer else None,
        device=torch_device,
        mean=prep["mean"],
        std=prep["std"],
        channel_order=prep["channel_order"],
    )
    result = score_model(model, dataset, options, masks=ref_masks, mask_ids=mask_ids)
    result.n_skipped += len(skipped or []) + n_without_mask
    result.n_boxes_dropped = count_dropped_boxes(dataset.records, max_pixels)
    settings = {
        "model": model_cfg | {"source": model_src},
        "preprocessing": prep | {"source": prep_src},
        "target_map": target_map,
    }
    return result, _json_safe(settings), classes


def _score_options(args: argparse.Namespace, keep_overlays: int = 0) -> ScoreOptions:
    """The scoring settings of `camgap score` and `camgap predict` from their flags, checked
    before anything is read (a threshold outside [0, 1) stops here)."""
    from camgap.measures.score import ScoreOptions

    return ScoreOptions(
        cam=args.cam,
        thresholds=args.threshold,
        batch_size=args.batch_size,
        num_workers=args.workers,
        class_boxes_only=args.class_boxes_only,
        keep_overlays=keep_overlays,
        progress=wants_progress(args),
    )


def _score_from_args(args: argparse.Namespace, options: ScoreOptions):
    """`score_checkpoint` of the checkpoint and data that `camgap score` / `camgap predict` name
    with their flags, scored with `options`: both read a checkpoint alike."""
    return score_checkpoint(
        args.checkpoint,
        args.data,
        options,
        layout=args.layout,
        split=args.split,
        flags=_score_flags(args),
        unsafe=args.unsafe_load,
        layer=args.layer,
        masks=args.masks,
        skip_bad=args.skip_bad,
        cache=args.cache,
        device=args.device,
        box_units=args.box_units,
        max_pixels=args.max_pixels,
        force=args.force,
    )


def _json_safe(obj):
    """NaN (no reference region anywhere) becomes null: strict JSON has no NaN; tuples become lists."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _settings_lines(settings: dict) -> list[str]:
    """What was chosen and where it came from, for the text output."""
    m, p = settings["model"], settings["preprocessing"]
    ms, ps = m["source"], p["source"]
    opts = f" {m['arch_kwargs']}" if m["arch_kwargs"] else ""
    outputs = "its own" if m["num_classes"] is None else m["num_classes"]
    return [
        f"model: {m['arch']}{opts} ({ms['arch']}), {outputs} outputs ({ms['num_classes']})",
        f"preprocessing: input {p['input_size']} ({ps['input_size']}), {p['resize']} ({ps['resize']}), "
        f"mean {p['mean']} ({ps['mean']}), std {p['std']} ({ps['std']}), "
        f"channels {p['channel_order']} ({ps['channel_order']})",
    ]


def cmd_score(args: argparse.Namespace) -> int:
    options = _score_options(args, keep_overlays=args.n if args.overlays else 0)
    thresholds = options.thresholds
    result, settings, classes = _score_from_args(args, options)
    if args.per_image:
        args.per_image.parent.mkdir(parents=True, exist_ok=True)
        result.per_image.to_csv(args.per_image, index=False)
    if args.overlays:
        from camgap.viz import save_overlays

        save_overlays(result.overlays, args.overlays, thresholds[0], classes)
    summary = result.summary() | settings | {"masks": args.masks, "checkpoint": str(args.checkpoint)}
    if args.json:
        print(json.dumps(_json_safe(summary)))
        return 0
    print(
        f"IoU^Model   = {summary['iou']:.4f}   (threshold {thresholds[0]:g}, {args.cam} at {summary['target_layer']})"
    )
    print(f"IoU-B^Model = {summary['iou_b']:.4f}")
    for t, v in summary["by_threshold"].items():
        if len(thresholds) > 1:
            print(f"  rho={t}: IoU {v['iou']:.4f}  IoU-B {v['iou_b']:.4f}")
    print(
        f"images scored {summary['n_images']}, skipped {summary['n_skipped']}, "
        f"without reference {summary['n_no_reference']}, boxes outside their image {summary['n_boxes_dropped']}, "
        f"train accuracy {summary['accuracy']:.4f}"
    )
    print("\n".join(_settings_lines(settings)))
    return 0


def _cache_dir(cache: Path | None, data: Path, split: str, input_size: int, resize: str) -> Path:
    """Where decoded tensors and masks of a dataset are cached: `cache`, else the user cache."""
    import hashlib
    import os

    if cache:
        root = Path(cache)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "camgap"
        root = base / hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:16]
    return root / f"{split}-{input_size}-{resize}"


def _reference_masks(source: str, dataset, device, cache: Path, input_size: int, resize: str, skip_bad: bool):
    """Masks for A_G when `source` is not `boxes`: computed once per dataset and cached."""
    if source == "boxes":
        return None, None
    from camgap.data.masks import compute_masks
    from camgap.data.store import TensorStore

    store = TensorStore.cached(
        dataset.records, cache, input_size, resize, skip_bad=skip_bad, max_pixels=dataset.max_pixels
    )
    result = compute_masks(
        source,
        store.images,
        store.boxes,
        list(store.image_ids),
        input_size,
        cache_dir=cache,
        skip_bad=skip_bad,
        resize=resize,
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
        context=args.context,
    )
    print(f"synthetic dataset written to {out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from camgap.params import parse_label
    from camgap.study.report import check_color_by, headline_text, read_total_block, write_study
    from camgap.study.tables import DEFAULT_PRIMARY, discover_specs
    from camgap.zoo.measure import overlay_rows
    from camgap.zoo.registry import Registry

    zoo = Path(args.zoo)
    primary = {**DEFAULT_PRIMARY, **parse_label(args.primary)} if args.primary else None
    if not (zoo / Registry.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({Registry.FILENAME} missing)")
    with Registry.in_dir(zoo, create=False) as reg:
        runs, measurements = reg.runs_frame(), reg.measurements_frame()
    if measurements.empty:
        raise InputError(f"{zoo}: no measurements yet; run `camgap zoo measure --zoo {zoo}` first")
    check_color_by(runs, args.color_by)
    specs = None
    if args.measures:
        unknown = sorted(set(args.measures) - set(measurements["measure"]))
        if unknown:
            raise InputError(
                f"{zoo}: no measurement of {', '.join(unknown)}; measured: "
                f"{', '.join(sorted(set(measurements['measure'])))}"
            )
        specs = discover_specs(measurements, primary or DEFAULT_PRIMARY, args.measures)
    overlays = None if args.no_overlays else overlay_rows(zoo, device=resolve_device(args.device))
    report = write_study(
        runs,
        measurements,
        args.out,
        overlays=overlays or None,
        n_boot=args.bootstrap,
        subsets=args.subsets,
        primary=primary,
        specs=specs,
        seed=args.seed,
        cmi=args.cmi,
        color_by=args.color_by,
        command=" ".join(sys.argv),
        model_set=zoo,
    )
    total = read_total_block(Path(report).parent / "tables" / "table3_long.csv")
    if args.json:
        print(
            json.dumps(
                _json_safe(
                    {
                        "table": "Table 3, Total: Pearson r with the generalization gap, "
                        "trained models with train_acc >= each subset's threshold",
                        "confidence": 0.95,
                        "cells": total,
                        "report": str(report),
                    }
                )
            )
        )
        return 0
    print(headline_text(total))
    print(f"report: {report}")
    return 0


def _reference_fit(zoo: Path, min_train_acc: float, cam: str, threshold: float, masks: str):
    """The reference set (`study.predict.ReferenceSet`): the OLS fit gap ~ IoU over its trained
    models with at least `min_train_acc`, their architectures, input sizes and target layers,
    and the dataset they were trained on."""
    from camgap.measures.registry import score_params
    from camgap.study.predict import ReferenceSet, fit_gap
    from camgap.study.tables import wide_table
    from camgap.zoo.registry import Registry

    if not (Path(zoo) / Registry.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({Registry.FILENAME} missing)")
    with Registry.in_dir(zoo, create=False) as reg:
        runs, measurements, meta = reg.runs_frame(), reg.measurements_frame(), reg.meta()
    trained = runs[(runs.status == "done") & runs.trained]
    reference = trained[trained.train_acc >= min_train_acc]
    if reference.empty:
        raise InputError(f"{zoo}: no trained model with train accuracy >= {min_train_acc:g} is done{_below(trained)}")
    params = score_params(cam, threshold, masks)  # the same A_G source as the new model's IoU
    wide = wide_table(reference, measurements, [("iou", params, "iou")])
    if wide["iou"].notna().sum() < 3:
        raise InputError(
            f"{zoo}: fewer than 3 trained models have an IoU measured with {params}; "
            f"run `camgap zoo measure --zoo {zoo} --cam {cam} --threshold "
            f"{threshold:g} --masks {masks}` first"
        )
    fitted = wide[wide["iou"].notna() & wide["gap"].notna()]
    sizes = {json.loads(c).get("input_size") for c in fitted["config"]} - {None}
    return ReferenceSet(
        fit=fit_gap(wide["iou"], wide["gap"], name="iou"),
        archs=tuple(sorted(set(fitted["arch"]))),
        input_sizes=tuple(sorted(int(v) for v in sizes)),
        target_layers=_default_layers(set(fitted["arch"])),
        data=_zoo_data(meta),
    )


def _below(trained) -> str:
    """Where the trained models' accuracies lie, and the --min-train-acc that would keep some."""
    if trained.empty:
        return " (the set has no trained model done)"
    best = float(trained.train_acc.max())
    return (
        f" (the best of its {len(trained)} trained models reaches {best:.3f}); --min-train-acc "
        f"{math.floor(best * 100 + 1e-9) / 100:g} fits on models below the paper's 0.8, which have not "
        "fitted their training set"
    )


def _default_layers(archs: set[str]) -> tuple[str, ...]:
    """The target layers `zoo measure` scored these architectures at (each one's default)."""
    from camgap.models import describe_model

    return tuple(sorted({describe_model(a)["target_layer"] or "(none)" for a in archs}))


def _zoo_data(meta: dict):
    """The dataset a model set was built on, as its registry records it (`zoo build`)."""
    from camgap.study.predict import DataInfo

    info = json.loads(meta["data"]) if meta.get("data") else {}
    classes = info.get("classes")
    return DataInfo(
        meta.get("data_root"), tuple(map(str, classes)) if classes is not None else None, info.get("n_train")
    )


def _scored_data(args: argparse.Namespace, classes: list[str], result):
    """The dataset the new model was scored on, comparable with `_zoo_data`."""
    from camgap.study.predict import DataInfo

    n = result.n_images + result.n_skipped if args.split == "train" else None
    return DataInfo(str(Path(args.data).expanduser().resolve()), tuple(map(str, classes)), n)


def cmd_predict(args: argparse.Namespace) -> int:
    from camgap.study.predict import predict_gap

    options = _score_options(args)
    thresholds = options.thresholds
    reference = _reference_fit(args.zoo, args.min_train_acc, args.cam, thresholds[0], args.masks)
    fit = reference.fit
    with warnings.catch_warnings(record=True) as caught:  # into the notes, and --json's "warnings"
        warnings.simplefilter("always")
        result, settings, classes = _score_from_args(args, options)
    notes = [" ".join(str(w.message).split()) for w in caught]
    iou, train_acc = result.iou(), result.train_acc
    prediction = predict_gap(fit, iou, confidence=args.confidence, train_acc=train_acc)
    model, prep = settings["model"], settings["preprocessing"]
    notes += reference.mismatches(
        model["arch"], int(prep["input_size"]), result.target_layer, _scored_data(args, classes, result)
    )
    notes += prediction.warnings
    if train_acc < args.min_train_acc:
        notes.append(
            f"the model's training accuracy {train_acc:.3f} is below {args.min_train_acc:g}: it has not "
            "fitted its training set, and the reference fit covers only models that have"
        )
    if args.json:
        for note in notes:
            print(f"camgap: warning: {note}", file=sys.stderr)
        print(
            json.dumps(
                _json_safe(
                    {
                        "prediction": prediction.gap,
                        "interval": [prediction.low, prediction.high],
                        "confidence": prediction.confidence,
                        "clipped": prediction.clipped,
                        "possible_range": prediction.possible,
                        "interval_coverage": prediction.coverage,
                        "interval_kind": prediction.interval_kind,
                        "outside_range": prediction.outside_range,
                        "fit": {
                            "n": fit.n,
                            "r": fit.r,
                            "loo_coverage": prediction.loo_coverage,
                            "intercept": fit.intercept,
                            "slope": fit.slope,
                            "zoo": str(args.zoo),
                            "min_train_acc": args.min_train_acc,
                            "warnings": fit.warnings(),
                        },
                        "reference": {
                            "archs": reference.archs,
                            "input_sizes": reference.input_sizes,
                            "target_layers": reference.target_layers,
                            "data": reference.data.describe(),
                        },
                        "iou": iou,
                        "train_acc": train_acc,
                        "n_images": result.n_images,
                        "cam": args.cam,
                        "threshold": thresholds[0],
                        "target_layer": result.target_layer,
                        "checkpoint": str(args.checkpoint),
                        **settings,
                        "warnings": notes,
                    }
                )
            )
        )
        return 0
    print(
        f"IoU^Model = {iou:.4f} on {result.n_images} training images "
        f"({args.cam} at {result.target_layer}, rho {thresholds[0]:g})"
    )
    print(
        f"reference: {fit.n} trained models of {args.zoo} with train acc >= {args.min_train_acc:g}, "
        f"gap = {fit.intercept:.2f} {'-' if fit.slope < 0 else '+'} {abs(fit.slope):.2f} * IoU (r = {fit.r:.3f})"
    )
    print("\n".join(_settings_lines(settings)))
    print(prediction.headline())
    for note in notes:
        print(f"WARNING: {note}")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from camgap.data import read_layout
    from camgap.data.masks import boxes_to_masks, compute_masks, export_masks, mask_quality
    from camgap.data.store import TensorStore

    skipped: list | None = [] if args.skip_bad else None
    records, _ = read_layout(
        args.data, args.layout, args.split, skipped=skipped, missing_ok=True, box_units=args.box_units
    )
    cache = _cache_dir(args.cache, args.data, args.split, args.input_size, args.resize)
    store = TensorStore.cached(
        records,
        cache,
        args.input_size,
        args.resize,
        skip_bad=args.skip_bad,
        progress=wants_progress(args),
        max_pixels=args.max_pixels,
    )
    result = compute_masks(
        args.source,
        store.images,
        store.boxes,
        list(store.image_ids),
        args.input_size,
        cache_dir=cache,
        skip_bad=args.skip_bad,
        resize=args.resize,
    )
    paths = export_masks(result.masks, result.image_ids, args.out)
    stats = result.stats
    summary = {
        "n_written": len(paths),
        "out": str(args.out),
        "source": args.source,
        "n_empty": int(stats.get("n_empty", 0)),
        "n_full": int(stats.get("n_full", 0)),
        "n_missing": int(stats.get("n_missing", 0)),
        "agreement_with_boxes": None,
    }
    if any(len(b) for b in store.boxes):
        keep = list(result.keep) if result.keep is not None else list(range(len(store)))
        box_masks = boxes_to_masks([store.boxes[i] for i in keep], args.input_size)
        quality = mask_quality(result.masks, box_masks)
        summary["agreement_with_boxes"] = {
            "mean_iou": float(quality["mean_iou"]),
            "miss_share": float(quality["miss_share"]),
            "n": int(quality["n"]),
        }
    if args.json:
        print(json.dumps(_json_safe(summary)))
        return 0
    print(f"{len(paths)} masks written to {args.out} ({args.source})")
    print(f"empty masks {summary['n_empty']}, full-image masks {summary['n_full']}, missing {summary['n_missing']}")
    if summary["agreement_with_boxes"]:
        q = summary["agreement_with_boxes"]
        print(
            f"agreement with the boxes: mean IoU {q['mean_iou']:.3f}, "
            f"masks missing the object entirely {100 * q['miss_share']:.1f}% (n={q['n']})"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The architecture names, grouped, with each one's default target layer and closed form."""
    from camgap.models import describe_model, list_models, list_timm_models, timm_available

    if args.names:
        rows = [describe_model(n) for n in args.names]
        timm_names: list[str] = []
    else:
        rows = [describe_model(n) for n in list_models()]
        timm_names = list_timm_models()
    if args.json:
        print(json.dumps({"models": rows, "timm": {"installed": timm_available(), "names": timm_names}}))
        return 0
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    width = max((len(r["name"]) for r in rows), default=0)
    for group in ("camgap", "torchvision", "timm"):
        if group not in groups:
            continue
        print(f"{group}:")
        for r in groups[group]:
            layer = r["target_layer"] or "(none: give --layer)"
            closed = {True: "closed form", False: "autograd", None: ""}[r["closed_form"]]
            print(f"  {r['name']:<{width}}  {layer:<22} {closed}".rstrip())
    if timm_names:
        print(
            f"timm: {len(timm_names)} architectures as timm:<name>, e.g. {', '.join(timm_names[:3])} (not built "
            "for this list; `camgap models timm:<name>` shows one's target layer)"
        )
    elif not args.names:
        print("timm: not installed (pip install 'camgap[timm]' for timm:<name> architectures)")
    logging.getLogger("camgap").info(
        "target layer: where Grad-CAM looks by default (--layer overrides); closed "
        "form: the layer gradient is the head's weights, no backward pass"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from camgap.data.synthetic import check_context

    if args.context is not None:
        check_context(args.context)  # before the imports that take seconds
    from camgap.demo import run_demo
    from camgap.experiments import default_out, run_context_experiment

    out = args.out or default_out(args.context, args.experiment)
    settings = dict(
        quick=args.quick,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        progress=wants_progress(args),
        precision=args.precision,
    )
    if args.experiment == "context":
        run_context_experiment(out, **settings)
    else:
        run_demo(out, **settings, context=args.context)
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


def _torch_version() -> str:
    """torch's version from its installed metadata: importing torch takes seconds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camgap", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"camgap {__version__} (torch {_torch_version()})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv: debug)")
    parser.add_argument(
        "-q", "--quiet", action="count", default=0, help="only warnings and errors on stderr (-qq: errors only)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_DefaultsParser)

    p = sub.add_parser("score", help="IoU / IoU-B of one model on its training images")
    _add_score_args(p)
    add_progress_flag(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("synth", help="write the embedded synthetic dataset (train and test splits)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
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
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="the whole study on the embedded synthetic dataset, in minutes on a CPU")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder, reused when rerun (default: camgap-demo; camgap-demo-context50 with --context 0.5; "
        "camgap-demo-context with --experiment context)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every stage, under 2 minutes on a 2-core CPU; its numbers are not a study",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="training worker processes (default: one per CPU core, 1 on a GPU)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="another seed draws other data, another sample of the grid and other run seeds",
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
        choices=("context",),
        help="context: the demo at P = 0, 0.5 and 0.9 (each in a subfolder) and one table comparing them",
    )
    add_progress_flag(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="the runs' precision instead of the grid's (auto: bf16 where the device computes it natively, else "
        "fp32); recorded in each run's config",
    )
    p.set_defaults(func=cmd_demo)

    from camgap.zoo.cli import add_zoo_commands

    add_zoo_commands(sub)

    p = sub.add_parser(
        "masks", help="export A_G masks (saliency or a mask folder) as PNGs, with their agreement with the boxes"
    )
    add_location(p, "data", "--data", "DIR", "dataset root", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--source", default="saliency", help="saliency, saliency:spectral_residual, boxes, or a folder of PNG masks"
    )
    p.add_argument("--layout", default="auto", choices=["auto", "imagenet", "listfile", "kaggle", "coco", "csv"])
    p.add_argument("--split", default="train")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize", default="resize", choices=["resize", "resize_crop"])
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--cache", type=Path)
    add_input_checks(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_progress_flag(p)
    p.set_defaults(func=cmd_masks)

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
    p.set_defaults(func=cmd_study)

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
    p.set_defaults(func=cmd_predict)

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
    p.set_defaults(func=cmd_models)
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


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line on stderr, as errors are."""
    return "camgap: warning: " + " ".join(str(message).split()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            warnings.formatwarning = _warning_line
            args = parser.parse_args(argv)  # an old spelling warns here
            _configure_logging(args.verbose - args.quiet)
            if args.verbose - args.quiet < -1:
                warnings.simplefilter("ignore")
            return args.func(finish_args(parser, args))
    except KeyboardInterrupt:
        print("camgap: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `camgap models | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CamgapError, OSError) as exc:  # anything else is a bug: keep its traceback
        print(f"camgap: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CamgapError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split("\n")).strip()


if __name__ == "__main__":
    sys.exit(main())
