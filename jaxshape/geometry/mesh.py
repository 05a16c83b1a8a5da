"""Mesh extraction from inside-positive SDF grids, trimesh conversion and export (reference §1.9, §7.14-15).

* Marching cubes (``skimage.measure.marching_cubes``) at ``iso`` on a ``[R+1]^3`` grid; vertices are mapped with
  the exact PartPacker map ``2*v/R - 1`` (grid index -> [-1, 1]).
* Faces are oriented so normals point **outward** for an inside-positive field (positive signed volume), the same
  result as PyMCubes upstream.  skimage's winding for this case is the opposite, so faces are reversed.
* NaN cells (unqueried cells of hierarchical decoding) follow PyMCubes semantics: a NaN corner counts as *inside*
  (``NaN <= iso`` is false), and every face with a vertex on an edge touching a NaN corner (PyMCubes would give that
  vertex NaN coordinates) or with a non-finite vertex is dropped; unreferenced vertices are removed.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

__all__ = ["TRIMESH_GLB_EXPORT", "extract_mesh", "to_trimesh", "export_mesh", "zup_to_glb"]

# new = M @ old: GLB_x = y, GLB_y = z, GLB_z = x (the model's internal frame is z-up; GLB is y-up).
TRIMESH_GLB_EXPORT = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float64)

_EXPORT_SUFFIXES = (".glb", ".obj", ".ply")


def _empty():
    return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)


def extract_mesh(grid_values, resolution: Optional[int] = None, iso: float = 0.0):
    """Marching cubes of an inside-positive grid ``[R+1, R+1, R+1]`` -> ``(vertices float32 [V,3], faces int64 [F,3])``.

    ``resolution`` defaults to ``grid_values.shape[0] - 1``; if given it must equal that.  Returns empty arrays if
    the iso-surface does not cross the grid.
    """
    from skimage.measure import marching_cubes

    G = np.asarray(grid_values)
    if G.ndim != 3 or len(set(G.shape)) != 1:
        raise ValueError(f"grid_values must be a cubic 3-D array [R+1, R+1, R+1], got shape {G.shape}")
    if G.shape[0] < 2:
        raise ValueError(f"grid_values must have at least 2 samples per axis, got shape {G.shape}")
    if not (G.dtype.kind == "f" or G.dtype.name == "bfloat16"):
        raise TypeError(f"grid_values must be a floating-point array, got dtype {G.dtype}")
    R = G.shape[0] - 1
    if resolution is not None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
            raise TypeError(f"resolution must be a positive int or None, got {resolution!r}")
        if int(resolution) != R:
            raise ValueError(
                f"resolution ({resolution}) must equal grid_values.shape[0] - 1 ({R}) for a grid of shape {G.shape}")
    iso = float(iso)
    if not np.isfinite(iso):
        raise ValueError(f"iso must be finite, got {iso}")

    G = G.astype(np.float32)
    bad = ~np.isfinite(G)
    if bad.all():
        return _empty()
    if bad.any():
        # PyMCubes semantics: non-finite corners behave as inside (> iso); their edges are dropped below.
        G = np.where(bad, np.float32(iso + 1.0), G)
    if not (G.min() <= iso <= G.max()) or G.min() == G.max():  # no crossing (skimage would raise)
        return _empty()
    v, f, _, _ = marching_cubes(G, level=iso, allow_degenerate=False)
    v = v.astype(np.float64)
    f = f.astype(np.int64)[:, ::-1]  # skimage winding -> outward normals for inside-positive fields

    keep_v = np.isfinite(v).all(axis=1)
    if bad.any():
        # a vertex lies on a grid edge; it is invalid if any grid point of its (floor, ceil) box is non-finite
        vc = np.where(keep_v[:, None], v, 0.0)
        lo = np.clip(np.floor(vc).astype(np.int64), 0, R)
        hi = np.clip(np.ceil(vc).astype(np.int64), 0, R)
        for cx in (lo[:, 0], hi[:, 0]):
            for cy in (lo[:, 1], hi[:, 1]):
                for cz in (lo[:, 2], hi[:, 2]):
                    keep_v &= ~bad[cx, cy, cz]
    keep_f = keep_v[f].all(axis=1)
    f = f[keep_f]
    if f.shape[0] == 0:
        return _empty()

    used = np.zeros(v.shape[0], dtype=bool)
    used[f.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    v = v[used]
    f = remap[f].astype(np.int64)
    verts = (2.0 * v / R - 1.0).astype(np.float32)
    return verts, np.ascontiguousarray(f)


def to_trimesh(vertices, faces):
    """``trimesh.Trimesh`` without processing (vertex/face arrays are kept as given)."""
    import trimesh

    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {faces.shape}")
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def zup_to_glb(vertices) -> np.ndarray:
    """Rotate z-up model-frame vertices into the GLB y-up frame: ``new = TRIMESH_GLB_EXPORT @ old``."""
    v = np.asarray(vertices)
    return (v.astype(np.float64) @ TRIMESH_GLB_EXPORT.T).astype(v.dtype if v.dtype.kind == "f" else np.float64)


def export_mesh(vertices, faces, path, *, glb_up: bool = False):
    """Write a mesh to ``.glb`` / ``.obj`` / ``.ply`` (chosen by suffix); returns the exported ``trimesh.Trimesh``.

    ``glb_up=True`` applies the z-up -> GLB y-up rotation ``TRIMESH_GLB_EXPORT`` first (a proper rotation, so the
    face winding stays outward).
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _EXPORT_SUFFIXES:
        raise ValueError(f"path must end with one of {_EXPORT_SUFFIXES}, got {path!r}")
    if glb_up:
        vertices = zup_to_glb(vertices)
    mesh = to_trimesh(vertices, faces)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    mesh.export(path)
    return mesh
