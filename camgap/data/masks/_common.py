"""What the mask modules share: their error, how many names a message shows, numpy views."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from camgap.errors import CamgapError

_SHOW = 5  # names shown in error messages


class MaskError(CamgapError, ValueError):
    """Bad mask input (missing masks, unreadable files, unknown source)."""


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
