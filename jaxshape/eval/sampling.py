"""Seeded surface samples of meshes, occupancy grids and SDF grids, for the metrics of :mod:`jaxshape.eval.metrics`.

* Meshes: area-weighted face choice and the reflected barycentric rule (``jaxshape.data.vecset.sample_surface``),
  normals = unit face normals (outward for a consistently oriented mesh).  A ``seed`` fixes the draw:
  ``numpy.random.default_rng(seed)``.
* Occupancy grids ``[R, R, R]`` (voxel ``i`` has centre ``(i + 0.5) / R * 2 * bound - bound``, so the voxels tile
  ``[-bound, bound]^3``): the surface is the **marching-cubes** mesh of the 0/1 field at iso 0.5 from
  ``jaxshape.geometry.voxel_field_mesh`` (the grid is padded with empty voxels, so it is closed at the border).  On a
  flat voxel face it lies exactly on the voxel boundary; at voxel edges and corners it cuts across them (within one
  voxel of the exact cube boundary), i.e. it is the surface TRELLIS-style meshing of the grid gives.
* SDF grids ``[R+1, R+1, R+1]``, **inside positive** (the project's TSDF convention; negate an outside-positive
  SDF): samples at the grid points ``linspace(-bound, bound, R+1)`` per axis (``jaxshape.geometry.grid_points``
  order, indexed ``[ix, iy, iz]``); marching cubes at ``iso`` via ``jaxshape.geometry.extract_mesh`` (non-finite
  values follow its PyMCubes semantics), vertices scaled from ``[-1, 1]`` to ``[-bound, bound]``.

Outputs are in the frame of the input (mesh coordinates / ``bound``); map them with
``jaxshape.eval.to_unit_cube(points, mesh_bound)`` before computing metrics in the project's unit-cube frame.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from jaxshape.data.vecset import sample_surface
from jaxshape.geometry.mesh import extract_mesh
from jaxshape.geometry.voxels import voxel_field_mesh

__all__ = ["sample_surface_points", "occupancy_to_points", "sdf_grid_to_points"]


def _count(n):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"n must be a positive int (number of samples), got {n!r}")
    return int(n)


def _seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _bound(bound):
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    return float(bound)


def _cubic(name, grid, extra=0):
    g = np.asarray(grid)
    if g.ndim != 3 or len(set(g.shape)) != 1 or g.shape[0] < 1 + extra:
        need = "[R+1, R+1, R+1] with R >= 1" if extra else "[R, R, R]"
        raise ValueError(f"{name} must be a cubic grid {need}, got shape {g.shape}")
    if g.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a boolean or real array, got dtype {g.dtype}")
    return g


def sample_surface_points(vertices, faces, n: int, *, seed: int):
    """Area-uniform samples of a triangle mesh's surface, deterministic for a ``seed``.

    ``vertices``: ``[V, 3]`` finite floats; ``faces``: ``[F, 3]`` integer indices into ``vertices``; ``n``: positive
    int.  Returns ``(points [n, 3] float32, normals [n, 3] float32)``: a face is drawn with probability proportional
    to its area, a point uniformly inside it (reflected barycentric rule), and its unit face normal
    (``cross(v1 - v0, v2 - v0)`` normalised: outward for a consistently, outward-oriented mesh) is returned with it.
    ``numpy.random.default_rng(seed)`` drives the draw, so equal seeds give identical samples.  A mesh without
    faces or with zero total area raises ``ValueError``.
    """
    n, seed = _count(n), _seed(seed)
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[-1] != 3 or v.dtype.kind not in "fiu":
        raise ValueError(f"vertices must be a real array [V, 3], got shape {v.shape} dtype {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise ValueError("vertices contains NaN or Inf coordinates")
    if f.ndim != 2 or f.shape[-1] != 3 or (f.size and f.dtype.kind not in "iu"):
        raise ValueError(f"faces must be an integer array [F, 3], got shape {f.shape} dtype {f.dtype}")
    if f.shape[0] == 0:
        raise ValueError("faces is empty: the mesh has no faces to sample")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise ValueError(f"faces must index vertices in [0, {v.shape[0]}), got range [{f.min()}, {f.max()}]")
    v, f = v.astype(np.float64), f.astype(np.int64)
    t = v[f]
    areas = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
    if not areas.sum() > 0:
        raise ValueError("faces span zero total area: the mesh is empty (degenerate) and cannot be sampled")
    p, nrm, _ = sample_surface(v, f, n, np.random.default_rng(seed), areas=areas)
    return p.astype(np.float32), nrm.astype(np.float32)


def occupancy_to_points(occ, n: int, *, seed: int, bound: float = 0.5):
    """Surface samples of an occupancy grid: ``occ [R, R, R]`` boolean or 0/1 (voxel centres
    ``(i + 0.5) / R * 2 * bound - bound``, tiling ``[-bound, bound]^3``) -> ``(points [n, 3] float32, normals
    [n, 3] float32)``, outward normals.

    The surface is the marching-cubes mesh of the 0/1 field at iso 0.5 (``jaxshape.geometry.voxel_field_mesh``;
    see the module docstring), then sampled by :func:`sample_surface_points` with ``seed``.  A grid with no
    occupied voxel raises ``ValueError``.
    """
    g = _cubic("occ", occ)
    n, seed, bound = _count(n), _seed(seed), _bound(bound)
    if g.dtype != bool:
        if not np.all((g == 0) | (g == 1)):
            raise ValueError("occ must be boolean or contain only 0/1 values")
        g = g != 0
    if not g.any():
        raise ValueError("occ has no occupied voxel: the surface is empty")
    v, f = voxel_field_mesh(g.astype(np.float32), bound=bound, iso=0.5)
    return sample_surface_points(v, f, n, seed=seed)


def sdf_grid_to_points(sdf, n: int, *, seed: int, bound: float, iso: float = 0.0):
    """Surface samples of the ``iso`` level set of an inside-positive SDF grid ``sdf [R+1, R+1, R+1]`` sampled at
    ``linspace(-bound, bound, R+1)`` per axis -> ``(points [n, 3] float32, normals [n, 3] float32)``, outward
    normals.

    Marching cubes via ``jaxshape.geometry.extract_mesh(sdf, iso=iso)`` (vertices mapped from ``[-1, 1]`` to
    ``[-bound, bound]``), then :func:`sample_surface_points` with ``seed``.  If the level set does not cross the
    grid (empty mesh) ``ValueError`` is raised.
    """
    g = _cubic("sdf", sdf, extra=1)
    n, seed, bound = _count(n), _seed(seed), _bound(bound)
    if isinstance(iso, bool) or not isinstance(iso, numbers.Real) or not math.isfinite(iso):
        raise ValueError(f"iso must be a finite number, got {iso!r}")
    v, f = extract_mesh(g.astype(np.float32), iso=float(iso))
    if len(f) == 0:
        raise ValueError(f"sdf: the iso-surface at iso={iso:g} does not cross the grid (empty mesh)")
    return sample_surface_points(v.astype(np.float64) * bound, f, n, seed=seed)
