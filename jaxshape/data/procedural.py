"""Embedded default dataset: procedural, watertight shapes in 10 classes (manifold3d CSG), offline, cached.

``generate_shape(class, index, seed)`` is a pure function of its arguments (parameters drawn from
``default_rng([seed, class, index])``); every shape is a manifold3d solid, hence watertight and outward-oriented.
``ensure_embedded(n)`` writes ``n`` shapes (round-robin over classes) as binary PLY files to
``$JAXSHAPE_CACHE/procedural-v1/<class>/<class>_<i>.ply`` (default ``~/.cache/jaxshape``) on first use and reuses them.

Real meshes: none of the installed packages (trimesh, open3d, point-cloud-utils, scikit-image, manifold3d) ships
mesh files in its wheel (trimesh's models and Open3D's datasets are downloaded at run time), so the embedded set is
procedural only.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

__all__ = ["CLASSES", "generate_shape", "ensure_embedded", "embedded_jobs", "cache_dir"]

CLASSES = ("box", "ellipsoid", "cylinder", "cone", "torus", "table", "chair", "mug", "bracket", "dumbbell")
_VERSION = "procedural-v1"


def cache_dir() -> str:
    return os.path.join(os.environ.get("JAXSHAPE_CACHE", os.path.expanduser("~/.cache/jaxshape")), _VERSION)


def _m3():
    import manifold3d as m3

    return m3


def _box(sx, sy, sz, x=0.0, y=0.0, z=0.0):
    return _m3().Manifold.cube((sx, sy, sz), True).translate((x, y, z))


def _cyl(h, r0, r1=None, seg=48, x=0.0, y=0.0, z=0.0):
    return _m3().Manifold.cylinder(h, r0, r0 if r1 is None else r1, seg, True).translate((x, y, z))


def _torus(R, r, seg=48):
    m3 = _m3()
    return m3.Manifold.revolve(m3.CrossSection.circle(r, 24).translate((R, 0)), seg)


class _Solid:
    """A shape built by unions: ``solid`` is the union (in the order the parts were added, as ever); ``parts`` the
    parts themselves, with any cut applied to the whole (``cut``) applied to each."""

    def __init__(self, first):
        self.solid, self.parts = first, [first]

    def add(self, m):
        self.solid = self.solid + m
        self.parts.append(m)

    def cut(self, m):
        self.solid = self.solid - m
        self.parts = [p - m for p in self.parts]

    def rotate(self, angles):
        self.solid = self.solid.rotate(angles)
        self.parts = [p.rotate(angles) for p in self.parts]
        return self


def _shape(name: str, g: np.random.Generator) -> _Solid:
    m3 = _m3()
    u = g.uniform
    if name == "box":
        s = u(0.3, 1.0, 3)
        m = _box(*s)
        if g.random() < 0.5:  # chamfer-like: intersect with a rotated box
            m = m ^ _box(*(s * 1.25)).rotate((0, 0, 45))
        m = _Solid(m)
    elif name == "ellipsoid":
        m = _Solid(m3.Manifold.sphere(0.5, int(g.integers(24, 64))).scale(tuple(u(0.4, 1.0, 3))))
    elif name == "cylinder":
        m = _Solid(_cyl(u(0.4, 1.2), u(0.15, 0.5), seg=int(g.integers(12, 64))))
    elif name == "cone":
        r0 = u(0.2, 0.6)
        m = _Solid(_cyl(u(0.4, 1.2), r0, r0 * u(0.0, 0.5), seg=int(g.integers(8, 64))))
    elif name == "torus":
        R = u(0.3, 0.5)
        m = _Solid(_torus(R, R * u(0.15, 0.5), int(g.integers(24, 64))).scale((1, 1, u(0.6, 1.4))))
    elif name == "table":
        w, d, h, t = u(0.6, 1.2), u(0.4, 0.9), u(0.4, 0.9), u(0.03, 0.08)
        leg = u(0.03, 0.08)
        m = _Solid(_box(w, d, t, z=h))
        for sx in (-1, 1):
            for sy in (-1, 1):
                x, y = sx * (w / 2 - leg), sy * (d / 2 - leg)
                m.add(_box(leg, leg, h, x, y, h / 2) if g.random() < 0.5 else _cyl(h, leg / 1.5, x=x, y=y,
                                                                                   z=h / 2, seg=16))
    elif name == "chair":
        w, d, h, t, leg = u(0.4, 0.7), u(0.4, 0.7), u(0.35, 0.55), u(0.03, 0.07), u(0.03, 0.06)
        m = _Solid(_box(w, d, t, z=h))
        for sx in (-1, 1):
            for sy in (-1, 1):
                m.add(_box(leg, leg, h, sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2))
        bh = u(0.3, 0.7)
        back = _box(w, t, bh, 0, d / 2 - t / 2, h + bh / 2)
        if g.random() < 0.5:  # slatted back
            back = back - _box(w * 0.7, t * 3, bh * 0.5, 0, d / 2 - t / 2, h + bh / 2)
        m.add(back)
    elif name == "mug":
        r, h, wall = u(0.25, 0.4), u(0.5, 0.9), u(0.03, 0.06)
        body = _cyl(h, r, seg=48, z=h / 2) - _cyl(h, r - wall, seg=48, z=h / 2 + wall)
        R = h * u(0.2, 0.3)
        handle = _torus(R, wall * 0.8, 32).rotate((90, 0, 0)).translate((r + R * 0.6, 0, h / 2))
        m = _Solid(body)
        m.add(handle - _cyl(h, r - wall / 2, seg=48, z=h / 2))
    elif name == "bracket":
        a, b, t = u(0.5, 1.0), u(0.3, 0.8), u(0.05, 0.15)
        w = u(0.3, 0.8)
        m = _Solid(_box(a, w, t, a / 2, 0, t / 2))
        m.add(_box(t, w, b, t / 2, 0, b / 2))
        for k in range(int(g.integers(1, 4))):
            m.cut(_cyl(4 * t, u(0.03, 0.08), seg=24, x=a * (k + 1) / 4 + t / 2, y=0, z=t / 2))
    elif name == "dumbbell":
        L, r = u(0.6, 1.2), u(0.04, 0.1)
        bar = _cyl(L, r, seg=24).rotate((0, 90, 0))
        R = u(0.12, 0.3)
        ends = [m3.Manifold.sphere(R, 32) if g.random() < 0.5 else _cyl(R, R, seg=32).rotate((0, 90, 0))
                for _ in range(2)]
        m = _Solid(bar)
        m.add(ends[0].translate((-L / 2, 0, 0)))
        m.add(ends[1].translate((L / 2, 0, 0)))
    else:
        raise KeyError(name)
    return m.rotate((0, 0, float(u(0, 360))))


def _arrays(manifold):
    mesh = manifold.to_mesh()
    return np.asarray(mesh.vert_properties, np.float64)[:, :3], np.asarray(mesh.tri_verts, np.int64)


def generate_shape(class_index: int, index: int, seed: int = 0, parts: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V,3]`` float64 and faces ``[F,3]`` int64 of a watertight shape (pure function of the args).

    ``parts``: the shape's parts as separate, overlapping watertight components instead of their union (a table's
    top and legs, a chair's seat, legs and back, a mug's body and handle, a bracket's two plates, a dumbbell's bar
    and ends; the other classes are one part) -- PartPacker's two-volume data (``jaxshape.data.parts``)."""
    g = np.random.default_rng([int(seed), int(class_index), int(index)])
    solid = _shape(CLASSES[class_index], g)
    if not parts:
        return _arrays(solid.solid)
    vs, fs, n = [], [], 0
    for p in solid.parts:
        v, f = _arrays(p)
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def _write_ply(path, v, f):
    import trimesh

    data = trimesh.Trimesh(v, f, process=False).export(file_type="ply")
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def ensure_embedded(n: int = 1000, seed: int = 0, root: str = None, parts: bool = False) -> List[Tuple[str, int]]:
    """Generate (once) and return ``[(ply path, class label)]`` of ``n`` shapes, round-robin over classes
    (``parts``: as separate parts, :func:`generate_shape`)."""
    root = root or cache_dir()
    out = []
    for i in range(n):
        c, k = i % len(CLASSES), i // len(CLASSES)
        d = os.path.join(root, f"seed{seed}" + ("-parts" if parts else ""), CLASSES[c])
        p = os.path.join(d, f"{CLASSES[c]}_{k:05d}.ply")
        if not os.path.exists(p):
            os.makedirs(d, exist_ok=True)
            _write_ply(p, *generate_shape(c, k, seed, parts=parts))
        out.append((p, c))
    return out


def embedded_jobs(n: int = 1000, seed: int = 0, root: str = None, parts: bool = False):
    """Jobs ``(id, path, label)`` for ``jaxshape.data.prepare``."""
    return [(f"procedural__{os.path.splitext(os.path.basename(p))[0]}", p, c)
            for p, c in ensure_embedded(n, seed, root, parts)]
