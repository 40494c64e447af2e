"""`camgap demo`: the whole study on the embedded synthetic dataset, on a laptop CPU.

generate the data -> build the model set (grids/demo.toml) -> measure every model ->
write the study -> print the headline table. Every stage is resumable: rerunning with the
same --out reuses the data, the trained models and the finished measurements.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from camgap.zoo.measure import DEFAULT_MEASURES

# name -> (synthetic data settings, grid, measure settings)
PRESETS = {
    "full": dict(
        data=dict(classes=6, train_per_class=50, test_per_class=50, size=28),
        grid="demo",
        measures=DEFAULT_MEASURES,  # the paper's five and the cheap baselines; not PAC-Bayes flatness
        cams=("gradcam", "gradcam++", "smoothgradcam++"),
        masks=("boxes", "saliency"),
    ),
    "quick": dict(
        data=dict(classes=4, train_per_class=40, test_per_class=20, size=32),
        grid="demo-quick",
        measures=("iou", "iou_b", "spectral_norm", "nuclear_norm", "effective_invariance"),
        cams=("gradcam",),
        masks=("boxes",),
    ),
}


# what --quick is, said in the terminal and in the report's title (README and --help say the same)
SMOKE_NOTE = "a smoke run of every stage, under 2 minutes on a 2-core CPU: its numbers are not a study"

# the paper's training-accuracy thresholds, plus every trained model (a small set has few above 80%)
SUBSETS = (0.95, 0.90, 0.85, 0.80, 0.0)


def context_title(context: float) -> str:
    """The report's title for the demo on data with a class cue in a share P of backgrounds."""
    return f"camgap demo, context experiment: a class cue in the background of P = {context:g} of the images"


def _title(quick: bool, context: float | None) -> str | None:
    """The report's title: the context and the smoke-run warning where they apply, else the default."""
    if context is None:
        return f"camgap demo --quick: {SMOKE_NOTE}" if quick else None
    return f"{context_title(context)} (--quick: {SMOKE_NOTE})" if quick else context_title(context)


@dataclass
class DemoResult:
    out: Path
    report: Path
    headline: str
    seconds: dict


class _Stages:
    """Each stage's wall time, logged as it ends (``seconds``)."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.seconds, self.clock = log, {}, time.perf_counter()

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.clock, 1)
        self.clock = now
        self.log(f"[demo] {name}: {self.seconds[name]:.1f} s")


def _demo_grid(preset: dict, seed: int, precision: str | None, log: Callable[[str], None]):
    """The preset's grid at ``seed``, with ``precision`` instead of the grid's when given (said)."""
    from camgap.zoo.grid import load_grid

    grid = dataclasses.replace(load_grid(preset["grid"]), seed=seed)
    if precision is not None:
        grid = dataclasses.replace(grid, train=dataclasses.replace(grid.train, precision=precision))
    log(f"[demo] precision: {grid.train.precision}" + (" (--precision)" if precision is not None else " (the grid's)"))
    return grid


def _write_study(out: Path, quick: bool, context: float | None, bootstrap: int, device: str):
    """The study of the demo's model set -> (report path, headline text)."""
    from camgap.study.report import headline, write_study
    from camgap.study.tables import paper_specs
    from camgap.zoo.measure import overlay_rows
    from camgap.zoo.registry import ZooDB

    with ZooDB.in_dir(out / "zoo", create=False) as reg:
        runs, measurements = reg.runs_frame(), reg.measurements_frame()
    report = write_study(
        runs,
        measurements,
        out / "study",
        overlays=overlay_rows(out / "zoo", device=device) or None,
        n_boot=bootstrap,
        subsets=SUBSETS,
        model_set=out / "zoo",
        **({"title": title} if (title := _title(quick, context)) else {}),
    )
    return report, headline(runs, measurements, subsets=SUBSETS, specs=paper_specs(measurements), n_boot=bootstrap)


def run_demo(
    out: str | Path = "camgap-demo",
    quick: bool = False,
    device: str = "auto",
    workers: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    precision: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    context: float | None = None,
) -> DemoResult:
    """The demo; ``seed`` draws other data, another sample of the grid and other run seeds (the
    same study, rerun), so that a reader can see how much its numbers move. ``precision``
    ("auto", "fp32", "bf16") replaces the grid's ``[train] precision``; it is part of each run's
    config, so other precisions are other runs of the model set. ``progress``: the build's and
    the measures' progress, shown as `camgap.progress` decides; ``context``: the share P of
    images whose background carries a cue of their class (`write_synthetic`), said in the
    report's title (None: the plain demo, P = 0 and not said)."""
    from camgap.data.synthetic import check_context, write_synthetic
    from camgap.machine import max_workers
    from camgap.zoo.build import build
    from camgap.zoo.executors import resolve_device, thread_budget
    from camgap.zoo.measure import measure_zoo

    preset, out, stages = PRESETS["quick" if quick else "full"], Path(out), _Stages(log)
    if quick:
        log(f"[demo] --quick: {SMOKE_NOTE}")
    device = resolve_device(device)

    log(f"[demo] 1/4 synthetic dataset -> {out / 'data'}")
    if context is not None:
        context = check_context(context)
        log(f"[demo] context experiment: P = {context:g} of the images carry a class cue in their background")
    write_synthetic(out / "data", **preset["data"], seed=seed, context=context or 0.0)
    stages.end("data")

    log(f"[demo] 2/4 model set (grid {preset['grid']}) -> {out / 'zoo'}")
    if workers is None:
        workers = 1 if device.startswith("cuda") else None  # on a CPU: one worker per core
    grid = _demo_grid(preset, seed, precision, log)
    build(grid, out / "data", out / "zoo", workers=workers, device=device, progress=progress, log=log)
    stages.end("build")

    log("[demo] 3/4 measures: " + ", ".join(preset["measures"]))
    # on a CPU one worker process per core, as the build: a model's measures are one thread's work
    cpu_workers = min(thread_budget(), max_workers())  # OMP_NUM_THREADS may exceed the usable CPUs
    measure_workers = workers if workers is not None else (0 if device.startswith("cuda") else cpu_workers)
    measure_zoo(out / "zoo", measures=preset["measures"], cams=preset["cams"], masks=preset["masks"],
                device=device, log=log, progress=progress, workers=measure_workers)  # fmt: skip
    stages.end("measure")

    log(f"[demo] 4/4 study -> {out / 'study'}")
    report, text = _write_study(out, quick, context, bootstrap, device)
    stages.end("study")
    seconds = stages.seconds
    seconds["total"] = round(sum(seconds.values()), 1)
    log("")
    log(text)
    log(f"\nreport: {report}  ({seconds['total']:.0f} s in all)")
    if quick:
        log(f"[demo] --quick: {SMOKE_NOTE}; `camgap demo` runs the study")
    return DemoResult(out, report, text, seconds)
