"""TRELLIS sparse-structure target: the surface-shell occupancy (voxels a triangle touches).

Matches Open3D ``VoxelGrid.create_from_triangle_mesh_within_bounds(mesh, 1/R, min_bound, max_bound)`` as TRELLIS
calls it (``dataset_toolkits/voxelize.py``): vertices clipped to ``[-0.5 + 1e-6, 0.5 - 1e-6]``, every voxel in a
triangle's bounding-box range (``int((min - lb)/vs)`` ... ) is tested with the Akenine-Moeller separating-axis
triangle/box test (13 axes, touching counts as overlap), here vectorised over (triangle, candidate voxel) pairs in
NumPy with progressive filtering.  Output index ``[i, j, k]`` = voxel (x, y, z), i.e. the tensor dims TRELLIS uses.
"""
from __future__ import annotations

import numpy as np

__all__ = ["voxelize_surface", "occupancy_grid", "triangle_box_pairs", "voxelize_bruteforce"]

_CHUNK = 1 << 19  # candidate pairs per vectorised chunk


def triangle_box_pairs(tri: np.ndarray, resolution: int, min_bound: float, voxel_size: float) -> np.ndarray:
    """Unique voxel indices ``[K, 3]`` of an ``R^3`` grid (origin ``min_bound``, cell ``voxel_size``) overlapped by
    triangles ``[F, 3, 3]`` (world units).  Same candidate range, box centres and test formulas as Open3D."""
    R = int(resolution)
    t = np.asarray(tri, np.float64)
    if len(t) == 0:
        return np.zeros((0, 3), np.int64)
    vs = float(voxel_size)
    h = vs / 2
    tmin, tmax = t.min(1), t.max(1)
    ini = np.floor((tmin - min_bound) / vs).astype(np.int64)
    num = np.round((tmax - tmin) / vs).astype(np.int64) + 2
    ok = ((ini + num > 0) & (ini < R)).all(1)  # drop triangles entirely outside the grid
    t, tmin, tmax, ini, num = t[ok], tmin[ok], tmax[ok], ini[ok], num[ok]
    c0 = min_bound + h
    nrm0 = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 1])
    rad0 = h * np.abs(nrm0).sum(1)
    pv0 = np.einsum("ij,ij->i", nrm0, t[:, 0])
    # stage 1: group triangles by candidate-block shape; box-AABB test and a conservative plane test, broadcast
    key = (num[:, 0] * 4096 + num[:, 1]) * 4096 + num[:, 2]
    order = np.argsort(key, kind="stable")
    uk, starts = np.unique(key[order], return_index=True)
    bounds = list(starts) + [len(order)]
    tid_l, lin_l = [], []
    for g in range(len(uk)):
        members = order[bounds[g]:bounds[g + 1]]
        nx, ny, nz = num[members[0]]
        C = int(nx * ny * nz)
        off = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), 0).reshape(3, -1)
        step = max(1, _CHUNK // C)
        for s0 in range(0, len(members), step):
            mb = members[s0:s0 + step]
            m = None
            cs = []
            ids = []
            for a in range(3):
                ia = ini[mb, a][:, None] + off[a][None]  # [Fg, C]
                ca = c0 + ia * vs
                ma = ~((tmin[mb, a][:, None] - ca > h) | (tmax[mb, a][:, None] - ca < -h)) & (ia >= 0) & (ia < R)
                m = ma if m is None else (m & ma)
                cs.append(ca)
                ids.append(ia)
            if C > 8:  # conservative plane prefilter (exact test follows in stage 2)
                p = (nrm0[mb, 0][:, None] * cs[0] + nrm0[mb, 1][:, None] * cs[1] + nrm0[mb, 2][:, None] * cs[2]
                     - pv0[mb][:, None])
                m &= np.abs(p) <= rad0[mb][:, None] * (1 + 1e-6) + 1e-12
            fi, ci = np.nonzero(m)
            tid_l.append(mb[fi])
            lin_l.append((ids[0][fi, ci] * R + ids[1][fi, ci]) * R + ids[2][fi, ci])
    tid_all = np.concatenate(tid_l)
    lin_all = np.concatenate(lin_l)
    T = [np.ascontiguousarray(t[:, i, a]) for i in range(3) for a in range(3)]
    out = []
    # stage 2: exact tribox3 (plane + 9 edge axes) on surviving pairs, contiguous 1-D columns
    for s0 in range(0, len(tid_all), _CHUNK):
        tid = tid_all[s0:s0 + _CHUNK]
        lin = lin_all[s0:s0 + _CHUNK]
        c = (c0 + (lin // (R * R)) * vs, c0 + ((lin // R) % R) * vs, c0 + (lin % R) * vs)
        V = [[T[3 * i + a][tid] - c[a] for a in range(3)] for i in range(3)]  # V[vertex][axis]
        E = [[V[(i + 1) % 3][a] - V[i][a] for a in range(3)] for i in range(3)]  # e0=v1-v0, e1=v2-v1, e2=v0-v2
        n = [E[0][1] * E[1][2] - E[0][2] * E[1][1], E[0][2] * E[1][0] - E[0][0] * E[1][2],
             E[0][0] * E[1][1] - E[0][1] * E[1][0]]
        dmin = 0.0
        dmax = 0.0
        for a in range(3):
            pos = n[a] > 0
            dmin = dmin + n[a] * np.where(pos, -h - V[0][a], h - V[0][a])
            dmax = dmax + n[a] * np.where(pos, h - V[0][a], -h - V[0][a])
        keep = ~(dmin > 0) & (dmax >= 0)
        for ei, tests in ((0, ((0, 0, 2), (1, 0, 2), (2, 1, 2))),
                          (1, ((0, 0, 2), (1, 0, 2), (2, 0, 1))),
                          (2, ((0, 0, 1), (1, 0, 1), (2, 1, 2)))):
            Ee = E[ei]
            for ax, va, vb in tests:  # (edge, axis, vertex pair) as tribox3's AXISTEST macros
                a1, a2 = (ax + 1) % 3, (ax + 2) % 3
                pa = Ee[a2] * V[va][a1] - Ee[a1] * V[va][a2]
                pb = Ee[a2] * V[vb][a1] - Ee[a1] * V[vb][a2]
                rad = np.abs(Ee[a2]) * h + np.abs(Ee[a1]) * h
                keep &= ~((np.minimum(pa, pb) > rad) | (np.maximum(pa, pb) < -rad))
        out.append(lin[keep])
    lin = np.unique(np.concatenate(out)) if out else np.zeros((0,), np.int64)
    return np.stack([lin // (R * R), (lin // R) % R, lin % R], 1)


def voxelize_surface(vertices, faces, resolution: int = 64, bound: float = 0.5, clip: bool = True) -> np.ndarray:
    """Indices ``[K, 3]`` int64 of voxels of the ``R^3`` grid over ``[-bound, bound]^3`` touched by the surface.

    ``clip=True`` reproduces TRELLIS (vertices clipped to ``[-bound + 1e-6, bound - 1e-6]`` first).
    """
    v = np.asarray(vertices, np.float64)
    if clip:
        v = np.clip(v, -bound + 1e-6, bound - 1e-6)
    return triangle_box_pairs(v[np.asarray(faces)], resolution, -bound, 2.0 * bound / resolution)


def occupancy_grid(indices: np.ndarray, resolution: int, dtype=np.uint8) -> np.ndarray:
    """Dense channels-last occupancy ``[R, R, R, 1]`` from voxel indices (grid index (x, y, z) = tensor dims)."""
    g = np.zeros((resolution,) * 3 + (1,), dtype)
    if len(indices):
        g[indices[:, 0], indices[:, 1], indices[:, 2], 0] = 1
    return g


def _clip_polygon(poly, axis, value, keep_less):
    out = []
    n = len(poly)
    for a in range(n):
        p, q = poly[a], poly[(a + 1) % n]
        pin = p[axis] <= value if keep_less else p[axis] >= value
        qin = q[axis] <= value if keep_less else q[axis] >= value
        if pin:
            out.append(p)
        if pin != qin:
            s = (value - p[axis]) / (q[axis] - p[axis])
            out.append(p + s * (q - p))
    return out


def voxelize_bruteforce(vertices, faces, resolution: int, bound: float = 0.5, clip: bool = True) -> np.ndarray:
    """Slow independent reference: clip each triangle against each voxel box (Sutherland-Hodgman) — a voxel is
    occupied iff the clipped polygon is non-empty.  For tests only (small meshes / grids)."""
    v = np.asarray(vertices, np.float64)
    if clip:
        v = np.clip(v, -bound + 1e-6, bound - 1e-6)
    vs = 2.0 * bound / resolution
    tri = (v[np.asarray(faces)] + bound) / vs
    occ = set()
    for t in tri:
        lo = np.clip(np.floor(t.min(0)).astype(int) - 1, 0, resolution - 1)
        hi = np.clip(np.floor(t.max(0)).astype(int) + 1, 0, resolution - 1)
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                for k in range(lo[2], hi[2] + 1):
                    poly = [p for p in t]
                    for ax, (lo_face, h) in enumerate(((i, i + 1), (j, j + 1), (k, k + 1))):
                        poly = _clip_polygon(poly, ax, lo_face, keep_less=False)
                        if not poly:
                            break
                        poly = _clip_polygon(poly, ax, h, keep_less=True)
                        if not poly:
                            break
                    if poly:
                        occ.add((i, j, k))
    if not occ:
        return np.zeros((0, 3), np.int64)
    return np.array(sorted(occ), np.int64)
