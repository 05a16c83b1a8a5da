"""PNG bytes <-> RGBA arrays: how the records store rendered or attached views (lossless, alpha kept)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(rgba: np.ndarray) -> bytes:
    """``uint8 [H, W, 4]`` (or ``[H, W, 3]``) -> PNG bytes (lossless)."""
    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"encode_png: expected uint8 [H, W, 3 or 4], got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA" if a.shape[-1] == 4 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any Pillow-readable) bytes -> ``uint8 [H, W, 4]`` RGBA (an image without alpha gets alpha 255)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"))
