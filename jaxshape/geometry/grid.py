"""Regular query grids and SDF-grid decoding (dense and PartPacker-style hierarchical).

Conventions (reference §1.9):

* ``grid_points(R)``: ``np.linspace(-1, 1, R+1, dtype=float32)`` per axis, ``meshgrid(indexing="ij")``,
  flattened C-order (x slowest, z fastest) -> ``(R+1)**3`` points.  Decoded values are reshaped to
  ``[R+1, R+1, R+1]`` and indexed ``[ix, iy, iz]``.
* Fields are *inside positive* (TSDF-like, ≈ -1 outside, ≈ +1 inside).
* ``query_fn`` maps a float32 array ``[N, 3]`` to ``[N]`` values; it may be a jitted JAX function (its output is
  converted with ``np.asarray``).  Every call receives exactly ``max_points_per_query`` points (the last chunk is
  padded by repeating its final point and the result sliced), so a jitted function compiles once.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["grid_points", "decode_dense", "decode_hierarchical", "hierarchical_levels"]

QueryFn = Callable[[np.ndarray], Any]

# Fill value of unqueried cells at intermediate hierarchical levels (participates in the next sign test, as upstream).
UNQUERIED_FILL = -100.0
# |G| below this marks a coarse cell for refinement (upstream constant).
NEAR_SURFACE_THRESHOLD = 0.95


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------
def _check_pos_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} (type {type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _is_float_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


# ----------------------------------------------------------------------------------------------------------------
# grid
# ----------------------------------------------------------------------------------------------------------------
def grid_points(resolution: int, bounds: float = 1.0) -> np.ndarray:
    """Regular grid ``[(R+1)**3, 3]`` float32 over ``[-bounds, bounds]^3`` (ij indexing, C order)."""
    r = _check_pos_int("resolution", resolution)
    if not np.isfinite(bounds) or bounds <= 0:
        raise ValueError(f"bounds must be a positive finite number, got {bounds!r}")
    ax = np.linspace(-bounds, bounds, r + 1, dtype=np.float32)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    return np.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], axis=-1)


def _query_chunked(query_fn: QueryFn, points: np.ndarray, chunk: int) -> np.ndarray:
    """Evaluate ``query_fn`` on ``points`` [N, 3] in fixed-size chunks of ``chunk`` points -> float32 [N]."""
    if not callable(query_fn):
        raise TypeError(f"query_fn must be callable, got {type(query_fn).__name__}")
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = points.shape[0]
    out = np.empty((n,), dtype=np.float32)
    for start in range(0, n, chunk):
        block = points[start:start + chunk]
        m = block.shape[0]
        if m < chunk:  # pad to a fixed size so a jitted query_fn sees one shape only
            block = np.concatenate([block, np.repeat(block[-1:], chunk - m, axis=0)], axis=0)
        vals = np.asarray(query_fn(block))
        if vals.shape != (chunk,):
            raise ValueError(
                f"query_fn must map points of shape ({chunk}, 3) to values of shape ({chunk},); "
                f"got output shape {vals.shape}")
        if not _is_float_dtype(vals.dtype):
            raise TypeError(f"query_fn must return a floating-point array, got dtype {vals.dtype}")
        out[start:start + m] = vals[:m].astype(np.float32)
    return out


def decode_dense(query_fn: QueryFn, resolution: int, *, max_points_per_query: int = 8192) -> np.ndarray:
    """Query the full ``(R+1)**3`` grid in chunks; returns float32 ``[R+1, R+1, R+1]``."""
    r = _check_pos_int("resolution", resolution)
    chunk = _check_pos_int("max_points_per_query", max_points_per_query)
    vals = _query_chunked(query_fn, grid_points(r), chunk)
    return vals.reshape(r + 1, r + 1, r + 1)


# ----------------------------------------------------------------------------------------------------------------
# hierarchical
# ----------------------------------------------------------------------------------------------------------------
def hierarchical_levels(resolution: int, min_resolution: int = 64) -> list[int]:
    """``R, R/2, ...`` while ``>= min_resolution``, coarsest first (512 -> [64,128,256,512]; 384 -> [96,192,384])."""
    r = _check_pos_int("resolution", resolution)
    rmin = _check_pos_int("min_resolution", min_resolution)
    if rmin > r:
        raise ValueError(f"min_resolution ({rmin}) must be <= resolution ({r})")
    levels = []
    while r >= rmin:
        levels.append(r)
        if r // 2 >= rmin and r % 2 != 0:
            raise ValueError(
                f"resolution ({resolution}) must be divisible by 2 at every hierarchical level down to "
                f"min_resolution ({min_resolution}): level {r} is odd but level {r // 2} >= min_resolution would "
                f"follow (use e.g. resolution = min_resolution * 2**k)")
        r //= 2
    return levels[::-1]


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation with a ``size**3`` cube and zero padding (== ones-conv, padding size//2, nonzero)."""
    h = size // 2
    out = mask
    for axis in range(3):
        acc = out.copy()
        n = out.shape[axis]
        for s in range(1, h + 1):
            if s >= n:
                break
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(0, n - s)
            hi[axis] = slice(s, n)
            acc[tuple(lo)] |= out[tuple(hi)]
            acc[tuple(hi)] |= out[tuple(lo)]
        out = acc
    return out


def _refine_mask(G: np.ndarray) -> np.ndarray:
    """Coarse cells to refine: any 6-neighbour sign change of ``G >= 0`` (both sides) OR ``|G| < 0.95``."""
    s = G >= 0
    m = np.abs(G) < NEAR_SURFACE_THRESHOLD
    for axis in range(3):
        n = G.shape[axis]
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis] = slice(0, n - 1)
        b[axis] = slice(1, n)
        diff = s[tuple(a)] != s[tuple(b)]
        m[tuple(a)] |= diff
        m[tuple(b)] |= diff
    return m


def decode_hierarchical(query_fn: QueryFn, resolution: int, *, min_resolution: int = 64,
                        max_points_per_query: int = 8192, return_stats: bool = False):
    """PartPacker hierarchical decoding (reference §1.9).

    Dense query at the coarsest level, then at each finer level only the points near coarse cells with a sign
    change or ``|G| < 0.95``.  Unqueried cells are ``-100`` at intermediate levels and ``NaN`` in the result.

    Returns float32 ``[R+1]*3`` (``NaN`` = not queried), plus a stats dict if ``return_stats``:
    ``levels``, ``queried_per_level``, ``total_queried``, ``dense_points`` = ``(R+1)**3`` and
    ``ratio`` = ``total_queried / dense_points``.
    """
    r_final = _check_pos_int("resolution", resolution)
    chunk = _check_pos_int("max_points_per_query", max_points_per_query)
    levels = hierarchical_levels(r_final, min_resolution)

    r0 = levels[0]
    G = _query_chunked(query_fn, grid_points(r0), chunk).reshape(r0 + 1, r0 + 1, r0 + 1)
    queried = np.ones(G.shape, dtype=bool)
    per_level = [int(G.size)]
    for r in levels[1:]:
        m = _refine_mask(G)
        if r < 512:
            m = _dilate(m, 3)
        mf = np.zeros((r + 1,) * 3, dtype=bool)
        mf[::2, ::2, ::2] = m
        mf = _dilate(mf, 3 if r < 512 else 5)
        idx = np.nonzero(mf)
        pts = (np.stack(idx, axis=-1).astype(np.float32) * np.float32(2.0) / np.float32(r)
               - np.float32(1.0)).astype(np.float32)
        G = np.full((r + 1,) * 3, UNQUERIED_FILL, dtype=np.float32)
        if pts.shape[0]:
            G[idx] = _query_chunked(query_fn, pts, chunk)
        queried = mf
        per_level.append(int(pts.shape[0]))
    G = np.where(queried, G, np.float32(np.nan)).astype(np.float32)

    if not return_stats:
        return G
    dense = (r_final + 1) ** 3
    stats = {
        "levels": list(levels),
        "queried_per_level": per_level,
        "total_queried": int(sum(per_level)),
        "dense_points": int(dense),
        "ratio": float(sum(per_level)) / float(dense),
    }
    return G, stats
