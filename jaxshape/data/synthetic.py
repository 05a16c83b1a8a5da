"""A tiny exact synthetic shape source (random spheres and boxes) for tests and smoke runs: no files, no mesh
libraries, deterministic per example index, and a checkpointable iterator. Real training reads prepared records
(``jaxshape.data.prepare``) or the embedded procedural set (``jaxshape.data.procedural``)."""
from __future__ import annotations

import numpy as np

from .iterators import EpochShuffledIterator
from .vecset import fps_reference

CLASSES = ("sphere", "box")


def _shape(index: int, seed: int):
    rng = np.random.default_rng([seed, index])
    kind = int(rng.integers(len(CLASSES)))
    centre = rng.uniform(-0.1, 0.1, 3)
    size = rng.uniform(0.2, 0.4, 3) if kind == 1 else np.full(3, rng.uniform(0.2, 0.4))
    return kind, centre, size, rng


def _sdf(kind, centre, size, p):
    """Inside-positive signed distance of a sphere (radius size[0]) or an axis-aligned box (half extents size)."""
    q = p - centre
    if kind == 0:
        return size[0] - np.linalg.norm(q, axis=-1)
    d = np.abs(q) - size
    outside = np.linalg.norm(np.maximum(d, 0), axis=-1)
    inside = np.minimum(d.max(-1), 0)
    return -(outside + inside)


def _surface(kind, centre, size, n, rng):
    if kind == 0:
        d = rng.normal(size=(n, 3))
        return centre + size[0] * d / np.linalg.norm(d, axis=1, keepdims=True)
    p = rng.uniform(-1, 1, (n, 3))
    axis = rng.integers(3, size=n)
    p[np.arange(n), axis] = np.sign(p[np.arange(n), axis] + 1e-12)
    return centre + p * size


def synthetic_example(index: int, seed: int, *, resolution: int = 32, num_points: int = 512, num_salient: int = 128,
                 num_fps: int = 64, num_fps_salient: int = 32, num_queries: int = 512, tau: float = 0.05,
                 parts: bool = False) -> dict:
    """One example with every field both families read (TRELLIS frame [-0.5, 0.5]; vecset frame scaled to
    [-0.95, 0.95] by 1.9x).

    ``parts``: also PartPacker's two-volume encoder inputs (``<key>_part0`` / ``_part1``, ``part_empty``): volume 0
    is the shape, volume 1 a small sphere beside a box (not in the whole-object fields) and empty for a sphere."""
    kind, centre, size, rng = _shape(index, seed)
    c = (np.arange(resolution) + 0.5) / resolution - 0.5
    grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
    shell = np.abs(_sdf(kind, centre, size, grid)) <= np.sqrt(3) / (2 * resolution)
    s = 1.9
    pts = _surface(kind, centre, size, num_points, rng) * s
    sal = _surface(kind, centre, size, num_salient, rng) * s
    q = np.concatenate([rng.uniform(-1.05, 1.05, (num_queries // 2, 3)),
                        _surface(kind, centre, size, num_queries - num_queries // 2, rng) * s
                        + rng.normal(scale=0.02, size=(num_queries - num_queries // 2, 3))])
    sdf = _sdf(kind, centre * s, size * s, q)
    out = {
        "occupancy": shell[..., None].astype(np.float32),
        "pointcloud": pts.astype(np.float32),
        "pointcloud_dorases": sal.astype(np.float32),
        "fps_indices": fps_reference(pts, num_fps).astype(np.int32),
        "fps_indices_dorases": fps_reference(sal, num_fps_salient).astype(np.int32),
        "query_points": q.astype(np.float32),
        "query_gt": (np.clip(sdf, -tau, tau) / tau).astype(np.float32),
        "class_label": np.int32(kind),
    }
    if parts:
        sat_c, sat_r = centre + np.array([0.0, 0.0, size[2] + 0.1]), np.full(3, 0.08)
        volumes = [(pts, sal), None if kind == 0 else (_surface(0, sat_c, sat_r, num_points, rng) * s,
                                                        _surface(0, sat_c, sat_r, num_salient, rng) * s)]
        for k, vol in enumerate(volumes):
            p, q_ = vol if vol is not None else (np.zeros_like(pts), np.zeros_like(sal))
            out[f"pointcloud_part{k}"] = p.astype(np.float32)
            out[f"pointcloud_dorases_part{k}"] = q_.astype(np.float32)
            out[f"fps_indices_part{k}"] = (fps_reference(p, num_fps) if vol is not None
                                           else np.zeros(num_fps)).astype(np.int32)
            out[f"fps_indices_dorases_part{k}"] = (fps_reference(q_, num_fps_salient) if vol is not None
                                                   else np.zeros(num_fps_salient)).astype(np.int32)
        out["part_empty"] = np.array([0, kind == 0], np.int8)
    return out


class SyntheticIterator(EpochShuffledIterator):
    """Batches of :func:`synthetic_example` (keys restricted to ``fields``), shuffled per epoch by ``seed``."""

    def __init__(self, batch_size: int, *, num_examples: int = 64, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, fields=None, **example_kwargs):
        super().__init__(num_examples, batch_size, seed=seed, process_index=process_index,
                         process_count=process_count)
        self.fields, self.kwargs = fields, example_kwargs

    def make_batch(self, indices):
        examples = [synthetic_example(int(i), self.seed, **self.kwargs) for i in indices]
        keys = [k for k in examples[0] if self.fields is None or k in self.fields]
        return {k: np.stack([e[k] for e in examples]) for k in keys}
