"""Score a checkpoint file on a dataset, as `camgap score` and `camgap predict` do.

`score_checkpoint(checkpoint, data, options)` reads the checkpoint (weights only unless
`unsafe`), chooses each model and preprocessing setting (the caller's flag, else what the
checkpoint records, else `PREPROCESSING_DEFAULTS`; `settings` says which), builds the reference
masks for a source other than boxes (cached with the decoded images), and runs `score_model`.
`reference_set` is the measured model set a new model's IoU is compared with (`camgap predict`);
`write_masks` is `camgap masks`.

The heavy libraries load inside the functions: importing this module costs nothing, so
`camgap --help` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from camgap.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from camgap.errors import InputError, MissingFileError

if TYPE_CHECKING:
    import torch

    from camgap.measures.score import ScoreOptions, ScoreResult
    from camgap.study.predict import DataInfo, ReferenceSet

# flag > what the checkpoint records > these documented defaults (`score` and `predict` alike:
# a new model is never scored with the reference set's preprocessing, which need not be its own)
PREPROCESSING_DEFAULTS: dict[str, object] = {
    "input_size": 224,
    "resize": "resize",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "channel_order": "rgb",
}
MODEL_FIELDS = ("arch", "width", "num_classes", "reshape")
# every setting `score_checkpoint` takes from `flags`
SETTING_FIELDS = (*MODEL_FIELDS, *PREPROCESSING_DEFAULTS)


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device (`auto`: a GPU when there is one)."""
    import torch

    from camgap.zoo.executors import resolve_device as resolve

    return torch.device(resolve(name))


def json_safe(obj):
    """NaN (no reference region anywhere) becomes null: strict JSON has no NaN; tuples become lists."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


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
    from camgap.checkpoints import short_list

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


def _checkpoint_model(checkpoint: Path, data: Path, flags: dict, classes: list[str], unsafe: bool):
    """(model, settings) of a checkpoint file: the model it holds, built with the chosen model
    settings, and the model and preprocessing settings with a source per field."""
    from camgap.checkpoints import checkpoint_record, read_checkpoint
    from camgap.models import model_from_checkpoint

    obj = read_checkpoint(checkpoint, unsafe=unsafe)
    record = checkpoint_record(obj)
    model_cfg, model_src = _model_settings(flags, record, classes, checkpoint)
    fallback = {k: (v, "default") for k, v in PREPROCESSING_DEFAULTS.items()}
    prep, prep_src = resolve_settings(flags, record, fallback, checkpoint)
    num_classes = int(model_cfg["num_classes"])
    if len(classes) > num_classes:
        raise InputError(
            f"{data}: the data has {len(classes)} classes but the model has {num_classes} outputs "
            f"(labels up to {len(classes) - 1} would be outside the model's classes)"
        )
    model = model_from_checkpoint(obj, checkpoint, model_cfg["arch"], num_classes, **model_cfg["arch_kwargs"])
    _model_input_size(model, prep, prep_src, checkpoint)
    if model_cfg["arch"] is None:  # a saved module as is: its class, its own outputs
        model_cfg["arch"], model_src["arch"] = type(model).__name__, "saved nn.Module"
        if model_src["num_classes"] == "data":
            model_cfg["num_classes"], model_src["num_classes"] = None, "saved nn.Module"
    settings = {"model": model_cfg | {"source": model_src}, "preprocessing": prep | {"source": prep_src}}
    return model, settings


def _model_input_size(model, prep: dict, sources: dict, checkpoint: Path) -> None:
    """A model that takes one input size only (a ViT's patch grid, `fixed_input_size`): that
    size where neither flag nor checkpoint names one (its source "model"); another size is an
    InputError naming both, before any image is read (the model's forward would assert)."""
    from camgap.models import fixed_input_size

    own = fixed_input_size(model)
    if own is None:
        return
    name = type(model).__name__
    if own[0] != own[1]:
        raise InputError(f"{checkpoint}: the {name} takes {own[1]}x{own[0]} images only; camgap scores square images")
    if sources["input_size"] == "default":
        prep["input_size"], sources["input_size"] = own[0], "model"
    elif int(prep["input_size"]) != own[0]:
        given = "--input-size" if sources["input_size"] == "flag" else "the checkpoint's input_size"
        raise InputError(
            f"{checkpoint}: the {name} takes {own[0]}x{own[0]} images only (its patch embedding is built for "
            f"that size), not {given} {prep['input_size']}: give --input-size {own[0]}, or build the model at "
            "the size you want (timm: img_size=...)"
        )


def _map_reshape(model, layer_name: str, flag: str | None, model_settings: dict):
    """How the target layer's output becomes a map (`camgap.cam.base.MapReshape`): the flag, else
    the model family's layout, else none; recorded in `model_settings` with its source. A flag
    that contradicts the family's layout wins, with a warning naming both."""
    from camgap.cam.base import resolve_reshape
    from camgap.cam.layers import family_reshape

    family = family_reshape(model)
    if flag is not None and family is not None and flag != family:
        warnings.warn(
            f"--reshape {flag} contradicts the {family} layout of the {type(model).__name__} family; "
            f"using {flag} (the flag)",
            UserWarning,
            stacklevel=3,
        )
    reshape = resolve_reshape(model, layer_name, flag)
    model_settings["reshape"] = reshape.describe()
    model_settings["source"]["reshape"] = "flag" if flag is not None else "model family" if family else "default"
    return reshape


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
    """Score a checkpoint file on one split of a dataset, as `camgap score` does: `split` train
    (the paper's IoU) or test (held-out images: their boxes are needed, their labels are not, as
    the CAM is the predicted class's).

    `options` are the scoring settings (CAM, thresholds, batches, overlays, ...); their model-
    dependent fields (target layer, device, mean, std, channel order) are set here from `layer`,
    `device` and the resolved preprocessing. `flags` holds the settings given explicitly (None =
    not given); each missing one comes from the checkpoint, else from PREPROCESSING_DEFAULTS.
    A target-layer map under 3x3 at the chosen input size is a MapTooSmallError naming the
    input size to use, before any image is read (`force`: a warning, and scoring goes on).
    `box_units` and `max_pixels` are read_layout's and decode_rgb's (None: pixels, checked; 100 MP).
    Returns (ScoreResult, settings, classes); settings holds "model" and "preprocessing", each
    with the chosen values and a "source" per field (flag, checkpoint, default, ...),
    "target_map" (the layer's map, [h, w]), "split" and "device"; "model" also says how the layer's
    output became that map ("reshape": none, tokens with the prefix tokens dropped, or nhwc)."""
    from camgap.cam.layers import default_target_layer, get_layer
    from camgap.data import BoxDataset, read_layout
    from camgap.data.dataset import count_dropped_boxes
    from camgap.measures.mapsize import check_map_size
    from camgap.measures.score import ScoreOptions, score_model

    skipped: list | None = [] if skip_bad else None
    # a held-out split needs no labels: the CAM is the predicted class's (an unlabelled image: label -1)
    records, classes = read_layout(
        data, layout, split, skipped=skipped, box_units=box_units, unlabeled_ok=split != "train"
    )
    _check_boxes(records, data, split, masks, max_pixels)
    _check_class_boxes(records, data, split, masks, options)
    flags = flags or {}
    model, settings = _checkpoint_model(checkpoint, data, flags, classes, unsafe)
    prep = settings["preprocessing"]
    torch_device = resolve_device(device)
    size, resize = int(prep["input_size"]), str(prep["resize"])
    layer_name, target = (layer, get_layer(model, layer)) if layer else default_target_layer(model)
    reshape = _map_reshape(model, layer_name, flags.get("reshape"), settings["model"])
    target_map = check_map_size(
        model.to(torch_device), target, layer_name, size, force=force, where=str(checkpoint), reshape=reshape
    )
    dataset = BoxDataset(records, input_size=size, resize=resize, skip_bad=skip_bad, max_pixels=max_pixels)
    ref_masks, mask_ids = _reference_masks(masks, dataset, cache_dir(cache, data, split, size, resize), skip_bad)
    n_without_mask = 0
    if ref_masks is not None and skip_bad:  # images left out of the masks (bad file, no mask file)
        have = set(mask_ids)
        kept = [r for r in records if r.image_id in have]
        n_without_mask = len(records) - len(kept)
        dataset = BoxDataset(kept, input_size=size, resize=resize, skip_bad=True, max_pixels=max_pixels)
    # --reshape goes to the CAM; without it the CAM takes the family's layout itself, as resolved here
    cam_kwargs = dict(getattr(options, "cam_kwargs", None) or {}) | {"reshape": reshape.kind}
    options = ScoreOptions.of(
        options,
        target_layer=target if layer else None,
        device=torch_device,
        mean=prep["mean"],
        std=prep["std"],
        channel_order=prep["channel_order"],
        **({"cam_kwargs": cam_kwargs} if flags.get("reshape") else {}),
    )
    result = score_model(model, dataset, options, masks=ref_masks, mask_ids=mask_ids)
    result.n_skipped += len(skipped or []) + n_without_mask
    result.n_boxes_dropped = count_dropped_boxes(dataset.records, max_pixels)
    settings |= {"target_map": target_map, "split": split, "device": str(torch_device)}
    return result, json_safe(settings), classes


def _check_class_boxes(records, data: Path, split: str, masks: str, options: ScoreOptions | None) -> None:
    """--class-boxes-only draws A_G from the boxes of the image's labelled class: an image without a
    known label has none to draw from (an InputError before the model runs)."""
    from camgap.data.layouts import UNLABELED

    if masks != "boxes" or not getattr(options, "class_boxes_only", False):
        return
    n = sum(r.label == UNLABELED for r in records)
    if n:
        raise InputError(
            f"{data}: {n} of the {len(records)} images of the {split} split have no known label, and "
            "--class-boxes-only draws A_G from the boxes of the labelled class: give their labels, or drop "
            "--class-boxes-only (A_G from all their boxes)"
        )


def _check_boxes(records, data: Path, split: str, masks: str, max_pixels: int | None) -> None:
    """With A_G from the boxes, a split without a box inside its image has no IoU (every image
    would be "without reference" and the headline NaN): an InputError before the model runs."""
    from camgap.data.dataset import any_box_inside, count_dropped_boxes

    if masks != "boxes":
        return
    instead = "give the split's boxes, or --masks saliency|DIR"
    if not any(r.boxes for r in records):
        raise InputError(
            f"{data}: no image of the {split} split has a box: its IoU compares the CAM with the boxes ({instead})"
        )
    if not any_box_inside(records, max_pixels):
        raise InputError(
            f"{data}: every box of the {split} split ({count_dropped_boxes(records, max_pixels)}) lies wholly outside "
            "its image: its IoU compares the CAM with the boxes (check their coordinates and --box-units, or give "
            "--masks saliency|DIR)"
        )


def cache_dir(cache: Path | None, data: Path, split: str, input_size: int, resize: str) -> Path:
    """Where decoded tensors and masks of a dataset are cached: `cache`, else the user cache."""
    if cache:
        root = Path(cache)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "camgap"
        root = base / hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:16]
    return root / f"{split}-{input_size}-{resize}"


def _dataset_masks(source: str, records, cache: Path, input_size: int, resize: str, skip_bad: bool, **store_kw):
    """(TensorStore, MaskResult): the decoded images, cached, and A_G from `source`, cached beside them."""
    from camgap.data.masks import compute_masks
    from camgap.data.store import TensorStore

    store = TensorStore.cached(records, cache, input_size, resize, skip_bad=skip_bad, **store_kw)
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
    return store, result


def _reference_masks(source: str, dataset, cache: Path, skip_bad: bool):
    """Masks for A_G when `source` is not `boxes`: computed once per dataset and cached."""
    if source == "boxes":
        return None, None
    _, result = _dataset_masks(
        source, dataset.records, cache, dataset.input_size, dataset.resize, skip_bad, max_pixels=dataset.max_pixels
    )
    return result.masks, list(result.image_ids)


def write_masks(
    data: Path,
    out: Path,
    source: str = "saliency",
    *,
    layout: str = "auto",
    split: str = "train",
    input_size: int = 224,
    resize: str = "resize",
    skip_bad: bool = False,
    cache: Path | None = None,
    box_units: str | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
) -> dict:
    """`camgap masks`: A_G of every image of a split from `source`, written to `out` as PNGs.
    Returns the summary: masks written, empty, full-image and missing ones, and their agreement
    with the boxes where the data has boxes (None otherwise)."""
    from camgap.data import read_layout
    from camgap.data.masks import boxes_to_masks, export_masks, mask_quality

    skipped: list | None = [] if skip_bad else None
    records, _ = read_layout(  # a mask needs no label: held-out images without one are kept (label -1)
        data, layout, split, skipped=skipped, missing_ok=True, box_units=box_units, unlabeled_ok=split != "train"
    )
    cache = cache_dir(cache, data, split, input_size, resize)
    store, result = _dataset_masks(
        source, records, cache, input_size, resize, skip_bad, progress=progress, max_pixels=max_pixels
    )
    paths = export_masks(result.masks, result.image_ids, out)
    stats = result.stats
    summary = {
        "n_written": len(paths),
        "out": str(out),
        "source": source,
        "n_empty": int(stats.get("n_empty", 0)),
        "n_full": int(stats.get("n_full", 0)),
        "n_missing": int(stats.get("n_missing", 0)),
        "agreement_with_boxes": None,
    }
    if any(len(b) for b in store.boxes):
        keep = list(result.keep) if result.keep is not None else list(range(len(store)))
        quality = mask_quality(result.masks, boxes_to_masks([store.boxes[i] for i in keep], input_size))
        summary["agreement_with_boxes"] = {
            "mean_iou": float(quality["mean_iou"]),
            "miss_share": float(quality["miss_share"]),
            "n": int(quality["n"]),
        }
    return summary


def reference_set(zoo: Path, min_train_acc: float, cam: str, threshold: float, masks: str) -> ReferenceSet:
    """The reference set (`study.predict.ReferenceSet`): the OLS fit gap ~ IoU over its trained
    models with at least `min_train_acc`, their architectures, input sizes and target layers,
    and the dataset they were trained on."""
    from camgap.measures.registry import score_params
    from camgap.study.predict import ReferenceSet, fit_gap
    from camgap.study.tables import wide_table
    from camgap.zoo.registry import ZooDB

    if not (Path(zoo) / ZooDB.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({ZooDB.FILENAME} missing)")
    with ZooDB.in_dir(zoo, create=False) as reg:
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


def _zoo_data(meta: dict) -> DataInfo:
    """The dataset a model set was built on, as its registry records it (`zoo build`)."""
    from camgap.study.predict import DataInfo

    info = json.loads(meta["data"]) if meta.get("data") else {}
    classes = info.get("classes")
    return DataInfo(
        meta.get("data_root"), tuple(map(str, classes)) if classes is not None else None, info.get("n_train")
    )


def scored_data(data: Path, split: str, classes: list[str], result: ScoreResult) -> DataInfo:
    """The dataset a new model was scored on, comparable with the reference set's."""
    from camgap.study.predict import DataInfo

    n = result.n_images + result.n_skipped if split == "train" else None
    return DataInfo(str(Path(data).expanduser().resolve()), tuple(map(str, classes)), n)
