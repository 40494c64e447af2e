"""camgap: how well will a trained image classifier generalize? Grad-CAM / object-box IoU
on the training data (Du, Zhou, Dai 2024), model sets over hyperparameter grids, and the study.

The entry points most users need are importable from here::

    from camgap import score_model, ScoreOptions, create_model, load_checkpoint, read_layout, BoxDataset
    from camgap import score_checkpoint   # a checkpoint file on a dataset, as `camgap score` reads it
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "score_model": "camgap.measures.score",
    "ScoreOptions": "camgap.measures.score",
    "ScoreResult": "camgap.measures.score",
    "score_checkpoint": "camgap.scoring",
    "create_model": "camgap.models",
    "load_checkpoint": "camgap.models",
    "read_layout": "camgap.data",
    "BoxDataset": "camgap.data",
    "create_cam": "camgap.cam",
    "CamgapError": "camgap.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import on first use, so that `import camgap` (and `camgap --version`) stays light."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'camgap' has no attribute {name!r}")
