"""`camgap` command line: score, synth, masks, zoo, study, predict, models, demo.

Every command names the data with `--data DIR` and the model set with `--zoo ZOO`; lists are
comma-separated (`--threshold 0.1,0.3`); `--json` prints the result as one JSON object on stdout,
everything else (progress, notes, warnings) goes to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from camgap import __version__
from camgap.cliparsers import CAM_HELP as CAM_HELP  # the --cam help, which a test checks against the registry
from camgap.cliparsers import add_demo, add_masks, add_models, add_predict, add_score, add_study, add_synth
from camgap.cliutil import RESUMABLE, DefaultsParser, finish_args, one_line_warnings, run_command, wants_progress
from camgap.errors import InputError, MissingFileError
from camgap.scoring import SETTING_FIELDS, json_safe
from camgap.zoo.cli import add_zoo_commands

if TYPE_CHECKING:  # torch, pandas and what imports them load in the commands: `--help` stays fast
    from camgap.measures.score import ScoreOptions


# ---- score and predict read a checkpoint alike ------------------------------------------------


def _score_options(args: argparse.Namespace) -> ScoreOptions:
    """The scoring settings of `camgap score` and `camgap predict` from their flags, checked
    before anything is read (a threshold outside [0, 1) stops here). The per-image table is
    written as batches finish and no logits are kept: memory stays flat in the images."""
    from camgap.measures.score import ScoreOptions

    return ScoreOptions(
        cam=args.cam,
        thresholds=args.threshold,
        batch_size=args.batch_size,
        num_workers=args.workers,
        class_boxes_only=args.class_boxes_only,
        keep_overlays=args.n if args.overlays else 0,
        progress=wants_progress(args),
        per_image_out=args.per_image,
        keep_logits=False,
    )


def _save_overlays(args: argparse.Namespace, result, classes: list[str]) -> None:
    if args.overlays:
        from camgap.viz import save_overlays

        save_overlays(result.overlays, args.overlays, result.thresholds[0], classes)


def _score_from_args(args: argparse.Namespace, options: ScoreOptions):
    """`score_checkpoint` of the checkpoint and data that `camgap score` / `camgap predict` name
    with their flags, scored with `options`: both read a checkpoint alike."""
    from camgap.scoring import score_checkpoint

    return score_checkpoint(
        args.checkpoint,
        args.data,
        options,
        layout=args.layout,
        split=args.split,
        flags={k: getattr(args, k) for k in SETTING_FIELDS},
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


def _settings_lines(settings: dict) -> list[str]:
    """What was chosen and where it came from, for the text output."""
    m, p = settings["model"], settings["preprocessing"]
    ms, ps = m["source"], p["source"]
    opts = f" {m['arch_kwargs']}" if m["arch_kwargs"] else ""
    outputs = "its own" if m["num_classes"] is None else m["num_classes"]
    reshape = f", target layer output reshaped: {m['reshape']} ({ms['reshape']})" if "reshape" in m else ""
    return [
        f"model: {m['arch']}{opts} ({ms['arch']}), {outputs} outputs ({ms['num_classes']}){reshape}",
        f"preprocessing: input {p['input_size']} ({ps['input_size']}), {p['resize']} ({ps['resize']}), "
        f"mean {p['mean']} ({ps['mean']}), std {p['std']} ({ps['std']}), "
        f"channels {p['channel_order']} ({ps['channel_order']})",
    ]


def _accuracy(summary: dict) -> str:
    """The accuracy over the labelled images; n/a when none is (a held-out split without labels)."""
    n_labelled = summary["n_images"] - summary["n_unlabeled"]
    if not n_labelled:
        return "n/a (no image has a known label)"
    over = f" (over the {n_labelled} labelled images)" if summary["n_unlabeled"] else ""
    return f"{summary['accuracy']:.4f}{over}"


def cmd_score(args: argparse.Namespace) -> int:
    args.started = time.time()  # what Ctrl-C finds newer than this is this run's (`_score_interrupted`)
    options = _score_options(args)
    thresholds = options.thresholds
    result, settings, classes = _score_from_args(args, options)
    kept = f"; the per-image table is whole in {args.per_image}" if args.per_image else ""
    args.interrupted = f"the scoring pass had finished{kept}; a rerun scores every image again"  # for Ctrl-C from here
    _save_overlays(args, result, classes)
    summary = result.summary() | settings | {"masks": args.masks, "checkpoint": str(args.checkpoint)}
    if args.json:
        print(json.dumps(json_safe(summary)))
        return 0
    print(
        f"IoU^Model   = {summary['iou']:.4f}   (threshold {thresholds[0]:g}, {args.cam} at {summary['target_layer']})"
    )
    print(f"IoU-B^Model = {summary['iou_b']:.4f}")
    for t, v in summary["by_threshold"].items():
        if len(thresholds) > 1:
            print(f"  rho={t}: IoU {v['iou']:.4f}  IoU-B {v['iou_b']:.4f}")
    print(
        f"{args.split} images scored {summary['n_images']}, skipped {summary['n_skipped']}, "
        f"without reference {summary['n_no_reference']}, boxes outside their image {summary['n_boxes_dropped']}, "
        f"unlabeled {summary['n_unlabeled']}, {args.split} accuracy {_accuracy(summary)}"
    )
    print("\n".join(_settings_lines(settings)))
    if summary["num_workers"]:
        where = " (the cores the workers leave)" if settings["device"] == "cpu" else ""  # a GPU keeps torch's
        print(
            f"decoding: {summary['num_workers']} worker processes beside the model's "
            f"{summary['model_threads']} torch thread(s){where}"
        )
    return 0


def _reference_fit(zoo: Path, min_train_acc: float, cam: str, threshold: float, masks: str):
    """`camgap predict`'s reference set (`camgap.scoring.reference_set`)."""
    from camgap.scoring import reference_set

    return reference_set(zoo, min_train_acc, cam, threshold, masks)


def _prediction_notes(args: argparse.Namespace, reference, prediction, result, settings: dict, classes) -> list[str]:
    """What the new model does not share with the reference set, and what limits the prediction."""
    from camgap.scoring import scored_data

    model, prep = settings["model"], settings["preprocessing"]
    notes = reference.mismatches(
        model["arch"], int(prep["input_size"]), result.target_layer, scored_data(args.data, args.split, classes, result)
    )
    notes += prediction.warnings
    if result.train_acc < args.min_train_acc:
        notes.append(
            f"the model's training accuracy {result.train_acc:.3f} is below {args.min_train_acc:g}: it has not "
            "fitted its training set, and the reference fit covers only models that have"
        )
    return notes


def _prediction_json(args: argparse.Namespace, reference, prediction, result, threshold: float) -> dict:
    """`camgap predict --json` without the settings and warnings."""
    fit = reference.fit
    return {
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
        "iou": result.iou(),
        "train_acc": result.train_acc,
        "n_images": result.n_images,
        "cam": args.cam,
        "threshold": threshold,
        "target_layer": result.target_layer,
        "checkpoint": str(args.checkpoint),
    }


def cmd_predict(args: argparse.Namespace) -> int:
    from camgap.study.predict import predict_gap

    if args.split != "train":
        raise InputError(
            f"--split {args.split}: predict fits the gap on the IoU over training images, as its reference "
            f"set's IoU is; the held-out IoU is `camgap score --split {args.split}`"
        )
    options = _score_options(args)
    threshold = options.thresholds[0]
    reference = _reference_fit(args.zoo, args.min_train_acc, args.cam, threshold, args.masks)
    fit = reference.fit
    with warnings.catch_warnings(record=True) as caught:  # into the notes, and --json's "warnings"
        warnings.simplefilter("always")
        result, settings, classes = _score_from_args(args, options)
    notes = [" ".join(str(w.message).split()) for w in caught]
    _save_overlays(args, result, classes)
    prediction = predict_gap(fit, result.iou(), confidence=args.confidence, train_acc=result.train_acc)
    notes += _prediction_notes(args, reference, prediction, result, settings, classes)
    if args.json:
        for note in notes:
            print(f"camgap: warning: {note}", file=sys.stderr)
        summary = _prediction_json(args, reference, prediction, result, threshold) | settings | {"warnings": notes}
        print(json.dumps(json_safe(summary)))
        return 0
    print(
        f"IoU^Model = {result.iou():.4f} on {result.n_images} training images "
        f"({args.cam} at {result.target_layer}, rho {threshold:g})"
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


# ---- the other commands ---------------------------------------------------------------------


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


def _study_specs(zoo: Path, measurements, measures: list[str] | None, primary: dict | None):
    """The rows `--measures` asks for (None: every measured one); an unmeasured one is an error."""
    from camgap.study.tables import DEFAULT_PRIMARY, discover_specs

    if not measures:
        return None
    measured = set(measurements["measure"])
    unknown = sorted(set(measures) - measured)
    if unknown:
        raise InputError(f"{zoo}: no measurement of {', '.join(unknown)}; measured: {', '.join(sorted(measured))}")
    return discover_specs(measurements, primary or DEFAULT_PRIMARY, measures)


def cmd_study(args: argparse.Namespace) -> int:
    from camgap.params import parse_label
    from camgap.scoring import resolve_device
    from camgap.study.report import check_color_by, headline_text, read_total_block, write_study
    from camgap.study.tables import DEFAULT_PRIMARY
    from camgap.zoo.measure import overlay_rows
    from camgap.zoo.registry import ZooDB

    zoo = Path(args.zoo)
    primary = {**DEFAULT_PRIMARY, **parse_label(args.primary)} if args.primary else None
    if not (zoo / ZooDB.FILENAME).exists():
        raise MissingFileError(f"{zoo}: no model set here ({ZooDB.FILENAME} missing)")
    with ZooDB.in_dir(zoo, create=False) as reg:
        runs, measurements = reg.runs_frame(), reg.measurements_frame()
    if measurements.empty:
        raise InputError(f"{zoo}: no measurements yet; run `camgap zoo measure --zoo {zoo}` first")
    check_color_by(runs, args.color_by)
    specs = _study_specs(zoo, measurements, args.measures, primary)
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
        headline = {
            "table": "Table 3, Total: Pearson r with the generalization gap, "
            "trained models with train_acc >= each subset's threshold",
            "confidence": 0.95,
            "cells": total,
            "report": str(report),
        }
        print(json.dumps(json_safe(headline)))
        return 0
    print(headline_text(total))
    print(f"report: {report}")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from camgap.scoring import write_masks

    summary = write_masks(
        args.data,
        args.out,
        args.source,
        layout=args.layout,
        split=args.split,
        input_size=args.input_size,
        resize=args.resize,
        skip_bad=args.skip_bad,
        cache=args.cache,
        box_units=args.box_units,
        max_pixels=args.max_pixels,
        progress=wants_progress(args),
    )
    if args.json:
        print(json.dumps(json_safe(summary)))
        return 0
    print(f"{summary['n_written']} masks written to {args.out} ({args.source})")
    print(f"empty masks {summary['n_empty']}, full-image masks {summary['n_full']}, missing {summary['n_missing']}")
    if summary["agreement_with_boxes"]:
        q = summary["agreement_with_boxes"]
        print(
            f"agreement with the boxes: mean IoU {q['mean_iou']:.3f}, "
            f"masks missing the object entirely {100 * q['miss_share']:.1f}% (n={q['n']})"
        )
    return 0


def _print_models(rows: list[dict], timm_names: list[str], named: bool) -> None:
    """The `camgap models` listing: by group, each name with its target layer and closed form."""
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
            if r.get("reshape") in ("tokens", "nhwc"):
                closed = f"autograd ({r['reshape']} -> [C, h, w]; no closed form: a backward pass is needed)"
            print(f"  {r['name']:<{width}}  {layer:<22} {closed}".rstrip())
    if timm_names:
        print(
            f"timm: {len(timm_names)} architectures as timm:<name>, e.g. {', '.join(timm_names[:3])} (not built "
            "for this list; `camgap models timm:<name>` shows one's target layer)"
        )
    elif not named:
        print("timm: not installed (pip install 'camgap[timm]' for timm:<name> architectures)")


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
    _print_models(rows, timm_names, bool(args.names))
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
    from camgap.experiments import check_out, default_out, run_context_experiment, run_seeds_experiment

    out = args.out or default_out(args.context, args.experiment)
    check_out(out, args.experiment)
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
    elif args.experiment == "seeds":
        run_seeds_experiment(out, **settings)
    else:
        run_demo(out, **settings, context=args.context)
    return 0


def _torch_version() -> str:
    """torch's version from its installed metadata: importing torch takes seconds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


EXIT_CODES = """exit codes:
  0    success (a measure that is undefined for a model by its definition is not a failure)
  1    `zoo status`: the model set has integrity problems
  2    bad input or an unusable state: one line on stderr names the file or value and the problem
  3    `zoo build`: runs failed for good; `zoo measure`: measurements failed (see `zoo status`)
  130  interrupted (Ctrl-C): one line says what is kept; demo, zoo build and zoo measure resume
       when the same command is rerun, the other commands start over
  any other code, with a traceback, is a bug in camgap: please report it"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camgap", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"camgap {__version__} (torch {_torch_version()})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv: debug)")
    parser.add_argument(
        "-q", "--quiet", action="count", default=0, help="only warnings and errors on stderr (-qq: errors only)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=DefaultsParser)
    # `interrupted`: what Ctrl-C keeps (`interrupted_note`); only the demo resumes of these
    add_score(sub).set_defaults(func=cmd_score, interrupted=_score_interrupted)
    add_synth(sub).set_defaults(func=cmd_synth, interrupted="synth does not resume: a rerun writes the dataset again")
    add_demo(sub).set_defaults(func=cmd_demo, interrupted=RESUMABLE)
    add_zoo_commands(sub)  # each `zoo` command brings its own function, and says itself what Ctrl-C keeps
    add_masks(sub).set_defaults(
        func=cmd_masks,
        interrupted="masks does not resume: a rerun writes every mask again (from the decoded images and "
        "masks cached by a run that finished computing them)",
    )
    add_study(sub).set_defaults(func=cmd_study, interrupted="study does not resume: a rerun computes it again")
    add_predict(sub).set_defaults(
        func=cmd_predict, interrupted="predict does not resume: a rerun scores the model again"
    )
    add_models(sub).set_defaults(func=cmd_models, interrupted="nothing to keep")
    return parser


def _score_interrupted(args: argparse.Namespace) -> str:
    """Ctrl-C in score's pass: it starts over; the rows it had scored are in the per-image
    table's .partial file (`measures.tablefile`)."""
    note = "score does not resume: a rerun scores every image again"
    if args.per_image is not None:
        from camgap.measures.tablefile import TableFile

        partial = TableFile(args.per_image).partial
        # a .partial left by an earlier run is not this run's rows
        fresh = partial.exists() and partial.stat().st_mtime >= getattr(args, "started", 0.0)
        kept = f"the rows scored so far are in {partial}" if fresh else "no row was scored yet"
        note += f"; {kept}"
    return note


def interrupted_note(args: argparse.Namespace | None) -> str:
    """What Ctrl-C of the command in `args` keeps, said on its line (None: before a command was parsed)."""
    if args is None:
        return "nothing was started"
    note = getattr(args, "interrupted", RESUMABLE)
    return note(args) if callable(note) else note


def _configure_logging(verbosity: int) -> None:
    """Results go to stdout; progress, notes and warnings to stderr through `logging`."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parsed: list[argparse.Namespace] = []  # the command, for the line that Ctrl-C prints

    def body() -> int:
        with one_line_warnings():
            args = parser.parse_args(argv)  # an old spelling warns here
            parsed.append(args)
            _configure_logging(args.verbose - args.quiet)
            if args.verbose - args.quiet < -1:
                warnings.simplefilter("ignore")
            return args.func(finish_args(parser, args))

    return run_command(body, interrupted=lambda: interrupted_note(parsed[-1] if parsed else None))


if __name__ == "__main__":
    sys.exit(main())
