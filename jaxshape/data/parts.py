"""PartPacker's two volumes: a mesh's parts packed into two groups whose parts do not touch each other.

PartPacker trains its DiT on two latent volumes per object (``<vae key>_part0`` / ``_part1``), each the union of
parts that do not collide, so one TSDF per volume can represent every part's surface. Its preparation script
(``data/bipartite_contraction.py``, not released as a library) builds a collision graph of the parts, contracts
odd cycles (merging the most-penetrating pair) until the graph is bipartite, and 2-colours it by BFS from the
object centre outward.

This module does the same with these choices (where the upstream script differs or is silent):

* **Parts** are the mesh's connected components (faces sharing a vertex index, after the loader's vertex merge);
  upstream reads the parts of the asset's scene graph and cleans each. A scene whose parts share vertices is one
  part here.
* **Contact**: parts ``i`` and ``j`` touch when some of ``num_samples`` area-uniform samples of one lie within
  ``gap`` of the other's surface or inside it (generalised winding number), tested only for pairs whose bounding
  boxes, grown by ``gap``, overlap. Upstream dilates each part by 2/512 and asks trimesh's collision manager; the
  default ``gap = 4/512`` (two dilations) is the same distance, on surface samples instead of the exact meshes.
  The contact weight (the fraction of samples that touch, the larger of the two directions) stands in for
  upstream's penetration depth when choosing what to merge.
* **Odd cycles**: while a BFS finds an edge between two groups of one colour, the heaviest edge of that odd cycle is
  contracted (its two groups merged into one volume's group) and the colouring restarts.
* **Colouring**: groups are visited by the distance of their sample centroid to the object's bounding-box centre
  (nearest first); each unvisited group starts a BFS with colour 0. Parts that touch nothing are all colour 0, so
  a one-part object has an empty second volume (PartPacker: an all-zero latent, ``nan_to_num`` of encoding nothing).
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

__all__ = ["connected_parts", "compact_mesh", "contact_graph", "two_colour", "pack_two_volumes", "TwoVolumes"]


def connected_parts(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """``[F]`` int64 part id of every face: connected components of faces sharing a vertex, numbered by their first
    face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(faces, np.int64)
    n_f = len(faces)
    # bipartite face-vertex graph: faces 0..F-1, vertices F..F+V-1
    rows = np.repeat(np.arange(n_f), 3)
    cols = n_f + faces.reshape(-1)
    g = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_f + num_vertices,) * 2)
    _, label = connected_components(g, directed=False)
    label = label[:n_f]
    # renumber by first occurrence, so ids follow face order
    _, first = np.unique(label, return_index=True)
    order = np.argsort(first)
    remap = np.empty(order.size, np.int64)
    remap[np.unique(label)[order]] = np.arange(order.size)
    return remap[label]


def compact_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` keeping only the referenced vertices, in their order, faces renumbered (int64)."""
    faces = np.asarray(faces, np.int64)
    used, inv = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inv.reshape(faces.shape).astype(np.int64)


def _submesh(v, f, mask):
    return compact_mesh(v, f[mask])


def contact_graph(parts: list, *, gap: float = 4 / 512, num_samples: int = 1024,
                  rng: np.random.Generator | None = None) -> dict:
    """``{(i, j): weight}`` (``i < j``) for every pair of parts (``[(v, f), ...]``) that touch (module doc)."""
    from .vecset import inside_winding, sample_surface, unsigned_distance

    rng = rng or np.random.default_rng(0)
    lo = np.stack([p[0].min(0) for p in parts]) - gap
    hi = np.stack([p[0].max(0) for p in parts]) + gap
    samples = [sample_surface(v, f, num_samples, rng)[0] for v, f in parts]
    edges = {}
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if np.any(lo[i] > hi[j]) or np.any(lo[j] > hi[i]):
                continue
            w = 0.0
            for a, b in ((i, j), (j, i)):
                q = samples[b]
                touch = unsigned_distance(*parts[a], q) <= gap
                touch |= inside_winding(*parts[a], q)
                w = max(w, float(touch.mean()))
            if w > 0:
                edges[(i, j)] = w
    return edges


def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def two_colour(num_parts: int, edges: dict, order: np.ndarray) -> tuple[np.ndarray, int]:
    """``(colour [num_parts] in {0, 1}, contractions)``: odd cycles of the contact graph contracted (heaviest edge
    first) until it is bipartite, then BFS-coloured in ``order`` (part indices, nearest the centre first)."""
    parent = list(range(num_parts))
    contractions = 0
    while True:
        groups = {}
        for (i, j), w in edges.items():
            a, b = _find(parent, i), _find(parent, j)
            if a != b:
                key = (min(a, b), max(a, b))
                groups[key] = max(groups.get(key, 0.0), w)
        adj = {}
        for (a, b), w in groups.items():
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, []).append(a)
        rank = {p: r for r, p in enumerate(order)}
        roots = sorted({_find(parent, p) for p in range(num_parts)},
                       key=lambda g: min(rank[p] for p in range(num_parts) if _find(parent, p) == g))
        colour, via = {}, {}
        conflict = None
        for r in roots:
            if r in colour:
                continue
            colour[r], via[r] = 0, None
            queue = deque([r])
            while queue and conflict is None:
                u = queue.popleft()
                for w in sorted(adj.get(u, ()), key=lambda g: rank[g]):
                    if w not in colour:
                        colour[w], via[w] = 1 - colour[u], u
                        queue.append(w)
                    elif colour[w] == colour[u]:
                        conflict = (u, w)
                        break
            if conflict is not None:
                break
        if conflict is None:
            out = np.array([colour[_find(parent, p)] for p in range(num_parts)], np.int64)
            return out, contractions
        # the odd cycle: both tree paths to their lowest common ancestor, and the conflicting edge
        u, w = conflict
        path_u, x = [u], u
        while via[x] is not None:
            x = via[x]
            path_u.append(x)
        on_u = {g: k for k, g in enumerate(path_u)}
        path_w, x = [w], w
        while x not in on_u:
            x = via[x]
            path_w.append(x)
        cycle = path_u[:on_u[x] + 1] + path_w[-2::-1]
        pairs = list(zip(cycle, cycle[1:])) + [(cycle[-1], cycle[0])]
        a, b = max(pairs, key=lambda e: (groups[(min(e), max(e))], -min(e), -max(e)))
        parent[_find(parent, b)] = _find(parent, a)
        contractions += 1


class TwoVolumes(NamedTuple):
    volumes: tuple  # ((v, f), (v, f)); an empty volume has no faces
    part_volume: np.ndarray  # [num_parts] the volume of each part
    info: dict


def pack_two_volumes(vertices, faces, *, gap: float = 4 / 512, num_samples: int = 1024,
                     rng: np.random.Generator | None = None, part: np.ndarray | None = None) -> TwoVolumes:
    """A mesh's parts (connected components) packed into two volumes whose parts do not touch (module doc).
    ``part``: :func:`connected_parts` of the mesh, if the caller has it already."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    part = connected_parts(f, len(v)) if part is None else np.asarray(part, np.int64)
    n = int(part.max()) + 1 if len(part) else 0
    parts = [_submesh(v, f, part == k) for k in range(n)]
    edges = contact_graph(parts, gap=gap, num_samples=num_samples, rng=rng) if n > 1 else {}
    centre = 0.5 * (v.min(0) + v.max(0))
    dist = [np.linalg.norm(p[0].mean(0) - centre) for p in parts]
    colour, contractions = two_colour(n, edges, np.argsort(dist, kind="stable"))
    volumes = []
    for c in (0, 1):
        mask = colour[part] == c
        volumes.append(_submesh(v, f, mask) if mask.any() else (np.zeros((0, 3)), np.zeros((0, 3), np.int64)))
    info = dict(num_parts=n, num_contacts=len(edges), contractions=contractions,
                parts_per_volume=[int((colour == 0).sum()), int((colour == 1).sum())])
    return TwoVolumes(tuple(volumes), colour, info)
