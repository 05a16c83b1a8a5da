"""A dependency-free preview renderer: shaded orthographic views of a mesh as a PNG (surface-point splatting with a
z-buffer; enough to eyeball samples during training, not a production renderer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ rz


def render_view(vertices, faces, size: int = 192, azimuth: float = 35.0, elevation: float = -60.0,
                samples: int = 200_000, seed: int = 0) -> np.ndarray:
    """``[size, size]`` uint8 grey image of the mesh seen along the rotated -z axis (z-up object frame)."""
    img = np.full((size, size), 255, np.uint8)
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) == 0:
        return img
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(n, axis=1)
    if area.sum() <= 0:
        return img
    n = n / np.maximum(area[:, None], 1e-30)
    rng = np.random.default_rng(seed)
    fid = rng.choice(len(f), size=samples, p=area / area.sum())
    u, w = rng.random((2, samples))
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    t = tri[fid]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + w[:, None] * (t[:, 2] - t[:, 0])
    rot = _rotation(azimuth, elevation)
    p = pts @ rot.T
    nn_ = n[fid] @ rot.T
    centre = (v.max(0) + v.min(0)) / 2 @ rot.T
    extent = max(np.ptp(v, axis=0).max(), 1e-9) * 0.6
    xy = ((p[:, :2] - centre[:2]) / extent * 0.5 + 0.5) * (size - 1)
    ix = np.clip(np.round(xy[:, 0]).astype(np.int64), 0, size - 1)
    iy = np.clip(np.round((size - 1) - xy[:, 1]).astype(np.int64), 0, size - 1)
    depth = p[:, 2]
    shade = np.abs(nn_[:, 2]) * 0.75 + 0.2  # two-sided Lambert toward the viewer
    order = np.argsort(depth)  # farthest first: later writes (nearer) win
    pix = iy[order] * size + ix[order]
    flat = img.reshape(-1)
    flat[pix] = np.clip(shade[order] * 255, 0, 255).astype(np.uint8)
    return img


def save_preview(vertices, faces, path: str | Path, size: int = 192) -> Path:
    """Write a PNG with three views (front-ish, side, top) of the mesh."""
    from PIL import Image

    views = [render_view(vertices, faces, size, az, el) for az, el in ((35, -60), (125, -60), (0, 0))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(views, axis=1)).save(path)
    return path
