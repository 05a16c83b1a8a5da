"""Voxel grids (TRELLIS occupancy / logits) to meshes in the normalised object frame."""
from __future__ import annotations

import numpy as np

from jaxshape.geometry.mesh import extract_mesh


def voxel_field_mesh(values, bound: float = 0.5, iso: float = 0.0):
    """Mesh of an inside-positive voxel field ``[R, R, R]`` (e.g. decoder logits: occupied iff > 0) whose voxel
    ``i`` has centre ``(i + 0.5) / R · 2·bound − bound`` (TRELLIS: bound 0.5). The grid is padded with an outside
    value so the surface is closed at the border. Returns ``(vertices float32 [V, 3], faces int64 [F, 3])``."""
    g = np.asarray(values, np.float32)
    if g.ndim == 4 and g.shape[-1] == 1:
        g = g[..., 0]
    if g.ndim != 3 or len(set(g.shape)) != 1:
        raise ValueError(f"voxel field must be [R, R, R] (or [R, R, R, 1]), got shape {g.shape}")
    r = g.shape[0]
    finite = g[np.isfinite(g)]
    outside = np.float32(min(float(finite.min()) if finite.size else iso, iso) - 1.0)
    padded = np.pad(g, 1, constant_values=outside)
    v, f = extract_mesh(padded, iso=iso)
    if len(v) == 0:
        return v, f
    idx = (v.astype(np.float64) + 1.0) * (r + 1) / 2.0 - 1.0  # index in the unpadded grid
    return ((idx + 0.5) / r * 2 * bound - bound).astype(np.float32), f
