"""What the pipelines share: checked parameter overrides and the pass-through of already preprocessed images."""
from __future__ import annotations

from typing import Optional

import numpy as np


def merged(defaults: dict, base: dict, given: dict, what: str = "sampler parameters") -> dict:
    """``{**base, **given}`` after checking that ``given`` names only keys of ``defaults``."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; known: {sorted(defaults)}")
    return {**base, **given}


def preprocessed_rgb(image, size: int) -> Optional[np.ndarray]:
    """An RGB array of the encoder's ``size`` as float32 in [0, 1] (uint8 divided by 255), else ``None``."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.shape[:2] == (size, size):
        return (arr.astype(np.float32) / 255) if arr.dtype == np.uint8 else arr.astype(np.float32)
    return None
