"""WeightWatcher's data-free layer statistics (Martin & Mahoney 2021, "Predicting trends in the
quality of state-of-the-art neural networks without access to training or testing data", Nature
Communications), through the optional ``weightwatcher`` package (``pip install
camgap[weightwatcher]``).

``WeightWatcher(model).analyze()`` with its defaults fits a power law to the eigenvalue spectrum
of each Linear / Conv2d weight (a conv's kernel positions pooled into one spectrum) and reports,
per layer, ``alpha`` (the power-law exponent), ``alpha_weighted`` (alpha x log10 of the largest
eigenvalue) and ``log_norm`` (log10 of the squared Frobenius norm). Per model the value is the
mean over the analysed layers, as WeightWatcher's ``get_summary`` computes it, with one
difference: a layer whose power-law fit failed (status ``failed``; WeightWatcher writes -1 there)
is left out of the alpha means instead of averaging the -1 in. Layers with fewer eigenvalues than
WeightWatcher's ``min_evals`` are not analysed at all. A model with no layer left for a statistic
has no value for it: undefined, not failed. The package's version is part of the params.

Importing the package configures the root logger (``logging.basicConfig`` at INFO) and its fits
print to stdout; camgap removes that configuration and silences the prints, the package's log
warnings (a fit on few eigenvalues, no GPU for the SVD) and its Python warnings (pandas
deprecations) while it runs, so a measurement writes nothing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import math
import warnings

from torch import nn

from camgap.errors import InputError
from camgap.measures.registry import MeasureError, MeasureUndefined

STATS = ("alpha", "alpha_weighted", "log_norm")
FIT_STATS = ("alpha", "alpha_weighted")  # statistics of the power-law fit
INSTALL = "pip install camgap[weightwatcher]"


def available() -> bool:
    """Whether the weightwatcher package is installed (without importing it: that is slow)."""
    return importlib.util.find_spec("weightwatcher") is not None


def version() -> str:
    return importlib.metadata.version("weightwatcher")


def require() -> None:
    """Raise an InputError saying how to install the package when it is absent."""
    if not available():
        raise InputError(f"the weightwatcher measure needs the weightwatcher package: {INSTALL}")


@contextlib.contextmanager
def _quiet():
    """Keep the package's prints, log records, warnings and root-logger configuration out of
    camgap's output while it imports and runs."""
    root = logging.getLogger()
    handlers, level, disabled = list(root.handlers), root.level, logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # its log records reach no handler while it runs
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # its pandas deprecations, not camgap's to act on
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.disable(disabled)


def analyze(model: nn.Module):
    """WeightWatcher's per-layer details (a pandas frame) of ``model`` with its default settings."""
    require()
    with _quiet():
        import weightwatcher

        return weightwatcher.WeightWatcher(model=model).analyze()


def summarize(details) -> dict[str, float]:
    """Per statistic, the mean over the layers (fit statistics over the layers whose fit did not fail).
    Raises MeasureUndefined when a statistic has no layer."""
    if details is None or len(details) == 0:
        raise MeasureUndefined("weightwatcher analysed no layer (every weight matrix is below its min_evals)")
    fitted = details[details["status"] != "failed"] if "status" in details else details
    out = {}
    for stat in STATS:
        rows = fitted if stat in FIT_STATS else details
        values = rows[stat].astype(float)
        if len(values) == 0:
            raise MeasureUndefined(f"weightwatcher: every layer's power-law fit failed, no {stat}")
        value = float(values.mean())
        if not math.isfinite(value):
            raise MeasureError(f"weightwatcher: {stat} is not finite ({value})")
        out[stat] = value
    return out


def weightwatcher_summary(model: nn.Module) -> dict[str, float]:
    """``{"alpha", "alpha_weighted", "log_norm"}`` of ``model`` (module docstring)."""
    return summarize(analyze(model))
