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


def _project(points, frame_points, rot, size: int):
    """Pixel columns, rows and depths (larger is nearer) of ``points`` rotated by ``rot``, framed so that
    ``frame_points`` fill 5/6 of the image."""
    p = points @ rot.T
    centre = (frame_points.max(0) + frame_points.min(0)) / 2 @ rot.T
    extent = max(np.ptp(frame_points, axis=0).max(), 1e-9) * 0.6
    xy = ((p[:, :2] - centre[:2]) / extent * 0.5 + 0.5) * (size - 1)
    ix = np.clip(np.round(xy[:, 0]).astype(np.int64), 0, size - 1)
    iy = np.clip(np.round((size - 1) - xy[:, 1]).astype(np.int64), 0, size - 1)
    return ix, iy, p[:, 2]


def render_view(vertices, faces, size: int = 192, azimuth: float = 35.0, elevation: float = -60.0,
                samples: int = 200_000, seed: int = 0, face_colors=None) -> np.ndarray:
    """``[size, size]`` uint8 grey image of the mesh seen along the rotated -z axis (z-up object frame); with
    ``face_colors [F, 3]`` uint8, an RGB ``[size, size, 3]`` image of the shaded colours."""
    colors = None if face_colors is None else np.asarray(face_colors, np.float64).reshape(-1, 3)
    img = np.full((size, size) if colors is None else (size, size, 3), 255, np.uint8)
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
    ix, iy, depth = _project(pts, v, rot, size)
    nn_ = n[fid] @ rot.T
    shade = np.abs(nn_[:, 2]) * 0.75 + 0.2  # two-sided Lambert toward the viewer
    order = np.argsort(depth)  # farthest first: later writes (nearer) win
    pix = iy[order] * size + ix[order]
    if colors is None:
        flat = img.reshape(-1)
        flat[pix] = np.clip(shade[order] * 255, 0, 255).astype(np.uint8)
    else:
        if len(colors) != len(f):
            raise ValueError(f"face_colors must have one row per face ({len(f)}), got {len(colors)}")
        flat = img.reshape(-1, 3)
        flat[pix] = np.clip(shade[order, None] * colors[fid[order]], 0, 255).astype(np.uint8)
    return img


def save_preview(vertices, faces, path: str | Path, size: int = 192) -> Path:
    """Write a PNG with three views (front-ish, side, top) of the mesh."""
    from PIL import Image

    views = [render_view(vertices, faces, size, az, el) for az, el in ((35, -60), (125, -60), (0, 0))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(views, axis=1)).save(path)
    return path


def render_points(points, size: int = 192, azimuth: float = 35.0, elevation: float = -60.0) -> np.ndarray:
    """``[size, size]`` uint8 grey image of a point set seen as :func:`render_view` sees a mesh (nearer darker),
    for shapes known only by surface samples (vecset references)."""
    img = np.full((size, size), 255, np.uint8)
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) == 0:
        return img
    ix, iy, d = _project(p, p, _rotation(azimuth, elevation), size)
    shade = 0.75 - 0.6 * (d - d.min()) / max(np.ptp(d), 1e-9)  # larger d is nearer: near dark, far light
    order = np.argsort(d)
    val = np.clip(shade[order] * 255, 0, 255).astype(np.uint8)
    r = 1 if len(p) * 40 < size * size else 0  # sparse sets: 3x3 splats
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = np.clip(iy[order] + dy, 0, size - 1), np.clip(ix[order] + dx, 0, size - 1)
            img.reshape(-1)[yy * size + xx] = val
    return img
