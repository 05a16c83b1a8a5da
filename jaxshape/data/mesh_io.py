"""Mesh ingestion: load (.obj .ply .stl .off .glb .gltf, anything trimesh reads), flatten scenes, clean, validate,
normalise per model family.

* Scenes are flattened with their node transforms (``Scene.to_geometry``); point clouds / paths inside a scene are
  ignored, a file with no triangle geometry at all is rejected ("not a triangle mesh").
* ``up_axis="auto"``: glTF/GLB is Y-up by specification, so it is rotated to the Z-up frame both TRELLIS (Blender's
  glTF import) and PartPacker use: ``(x, y, z) -> (x, -z, y)``.  Other formats are taken as they are.
* Cleaning: faces referencing non-finite vertices make the mesh invalid (``MeshError``); vertices are merged by
  position (UV/normal seams would otherwise look like open boundaries and fake sharp edges); faces with a repeated
  index or (near-)zero area are dropped; duplicate faces (same vertex set, either orientation) are dropped, first
  kept; unreferenced vertices removed.  A watertight mesh with negative signed volume is flipped (normals outward).
* Normalisation per family (centre = bbox centre, scale from the longest bbox side; ``x_norm = (x - center) *
  scale``): sparse structure (TRELLIS) ``longest side = 1`` (inside [-0.5, 0.5]^3), vecset (PartPacker) ``longest
  side spans [-0.95, 0.95]`` (``jaxshape.families.Family.mesh_bound``).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxshape.families import FAMILIES

__all__ = ["MeshError", "TriMesh", "LoadLimits", "load_mesh", "clean_mesh", "normalize", "normalization_params",
           "MESH_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
YUP_TO_ZUP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)


class MeshError(ValueError):
    """A mesh that cannot be turned into training targets; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class TriMesh:
    """A cleaned triangle mesh (named apart from ``jax.sharding.Mesh``, the device mesh)."""

    vertices: np.ndarray  # float64 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def triangles(self) -> np.ndarray:
        return self.vertices[self.faces]


@dataclasses.dataclass(frozen=True)
class LoadLimits:
    max_file_bytes: int = 1 << 30  # 1 GiB
    max_faces: int = 5_000_000
    max_abs_coord: float = 1e9


def _face_areas(v, f):
    t = v[f]
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def load_mesh(path: str, limits: LoadLimits = LoadLimits(), up_axis: str = "auto") -> TriMesh:
    """Load and clean one mesh file; raises ``MeshError`` with a reason for anything unusable."""
    import trimesh

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeshError("missing_file", path)
    size = os.path.getsize(path)
    if size == 0:
        raise MeshError("empty_file", "file has 0 bytes")
    if size > limits.max_file_bytes:
        raise MeshError("too_large", f"file has {size} bytes > max_file_bytes={limits.max_file_bytes}")
    ext = os.path.splitext(path)[1].lower()
    try:
        loaded = trimesh.load(path, process=False, force=None)
    except MeshError:
        raise
    except Exception as e:  # trimesh raises many types on corrupt input
        raise MeshError("load_failed", f"{type(e).__name__}: {str(e)[:200]}") from None
    n_geom = 1
    if isinstance(loaded, trimesh.Scene):
        meshes = {k: g for k, g in loaded.geometry.items() if isinstance(g, trimesh.Trimesh) and len(g.faces)}
        n_geom = len(meshes)
        if not meshes:
            raise MeshError("no_faces" if loaded.geometry else "empty_scene",
                            "scene holds no triangle geometry")
        if len(meshes) != len(loaded.geometry):
            loaded = loaded.copy()
            for k in set(loaded.geometry) - set(meshes):
                loaded.delete_geometry(k)
        try:
            loaded = loaded.to_geometry()  # applies each node's transform
        except Exception as e:
            raise MeshError("load_failed", f"scene flattening failed: {type(e).__name__}: {e}") from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError("not_a_mesh", f"loaded a {type(loaded).__name__}, not a triangle mesh")
    v = np.asarray(loaded.vertices, dtype=np.float64)
    f = np.asarray(loaded.faces)
    if up_axis == "auto" and ext in (".glb", ".gltf"):
        v = v @ YUP_TO_ZUP.T
    elif up_axis == "y":
        v = v @ YUP_TO_ZUP.T
    mesh = clean_mesh(v, f, limits)
    mesh.stats.update(num_geometries=n_geom, file_bytes=size)
    return mesh


def clean_mesh(vertices, faces, limits: LoadLimits = LoadLimits()) -> TriMesh:
    """Validate and clean raw arrays (see module doc).  Raises ``MeshError``."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise MeshError("no_vertices", f"vertex array of shape {v.shape}")
    if f.size == 0:
        raise MeshError("no_faces", "mesh has no faces")
    if f.ndim != 2 or f.shape[1] != 3:
        raise MeshError("bad_faces", f"face array of shape {f.shape} (triangles expected)")
    if not np.issubdtype(f.dtype, np.integer):
        raise MeshError("bad_faces", f"face dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError("bad_faces", f"face index out of range [0, {len(v)})")
    raw_faces = len(f)
    if raw_faces > limits.max_faces:
        raise MeshError("too_large", f"{raw_faces} faces > max_faces={limits.max_faces}")
    used = np.unique(f)
    vu = v[used]
    if not np.isfinite(vu).all():
        raise MeshError("nonfinite_vertices", f"{int((~np.isfinite(vu).all(1)).sum())} referenced vertices are NaN/inf")
    if np.abs(vu).max() > limits.max_abs_coord:
        raise MeshError("coords_too_large", f"|coordinate| up to {np.abs(vu).max():.3g} > {limits.max_abs_coord:g}")
    # compact + merge vertices by (rounded) position
    remap = np.full(len(v), -1, np.int64)
    remap[used] = np.arange(len(used))
    f = remap[f]
    ext = float(np.ptp(vu, axis=0).max())
    if not ext > 0:
        raise MeshError("zero_area", "all vertices coincide")
    q = np.round((vu - vu.min(0)) / (ext * 1e-9)).astype(np.int64)
    _, first, inv = np.unique(q, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    v = vu[first]
    f = inv[f]
    # degenerate faces: repeated index or ~zero area (relative to the bbox)
    rep = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    area = _face_areas(v, f)
    degenerate = rep | (area <= (ext * ext) * 1e-14)
    f = f[~degenerate]
    if len(f) == 0:
        raise MeshError("zero_area", "every face is degenerate")
    # duplicate faces (same vertex set in any order/orientation)
    _, keep = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    keep = np.sort(keep)
    n_dup = len(f) - len(keep)
    f = f[keep]
    used = np.unique(f)
    remap = np.full(len(v), -1, np.int64)
    remap[used] = np.arange(len(used))
    v, f = v[used], remap[f]
    total_area = float(_face_areas(v, f).sum())
    if not total_area > 0 or not np.isfinite(total_area):
        raise MeshError("zero_area", f"total surface area {total_area}")
    stats = dict(raw_faces=int(raw_faces), faces=int(len(f)), vertices=int(len(v)),
                 degenerate_faces=int(degenerate.sum()), duplicate_faces=int(n_dup), area=total_area)
    # watertight (every edge shared by exactly two faces, consistently oriented) -> outward orientation
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    ue, cnt = np.unique(np.sort(e, axis=1), axis=0, return_counts=True)
    de = np.unique(e, axis=0)
    watertight = bool((cnt == 2).all()) and len(de) == len(e)  # no directed edge twice => consistent winding
    stats["watertight"] = watertight
    stats["boundary_edges"] = int((cnt == 1).sum())
    if watertight:
        t = v[f]
        vol = float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)
        if vol < 0:
            f = f[:, ::-1].copy()
            stats["flipped"] = True
        stats["volume"] = abs(vol)
    return TriMesh(v, f, stats)


def normalization_params(vertices, family: str):
    """``(center [3], scale)`` with ``x_norm = (x - center) * scale`` for ``family`` (``jaxshape.families``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {family!r}")
    v = np.asarray(vertices, np.float64)
    lo, hi = v.min(0), v.max(0)
    center = (lo + hi) / 2
    scale = 2.0 * FAMILIES[family].mesh_bound / float((hi - lo).max())
    return center, scale


def normalize(mesh: TriMesh, family: str) -> TriMesh:
    c, s = normalization_params(mesh.vertices, family)
    out = TriMesh((mesh.vertices - c) * s, mesh.faces, dict(mesh.stats))
    out.stats[f"{family}_center"] = c.tolist()
    out.stats[f"{family}_scale"] = float(s)
    return out
