"""One mesh -> one training example (both families' targets + normalisation + conditioning fields)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Optional, Sequence

import numpy as np

from jaxshape.families import FAMILIES, SPARSE_STRUCTURE, VECSET, check_families

from .mesh_io import LoadLimits, TriMesh, load_mesh, normalization_params
from .parts import connected_parts, pack_two_volumes
from .vecset import VecsetConfig, surface_inputs, vecset_targets
from .voxelize import voxelize_surface

__all__ = ["TargetConfig", "mesh_example", "two_volume_inputs", "PART_KEYS", "example_seed", "config_to_json",
           "config_from_json"]


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    targets: Sequence[str] = (SPARSE_STRUCTURE, VECSET)  # the families whose targets are computed
    resolution: int = 64  # TRELLIS sparse-structure grid
    vecset: VecsetConfig = VecsetConfig()
    up_axis: str = "auto"  # auto: glTF Y-up -> Z-up; "z": none; "y": rotate every format
    limits: LoadLimits = LoadLimits()
    # vecset: also PartPacker's two volumes (jaxshape.data.parts): the encoder inputs of each as
    # ``<key>_part0`` / ``<key>_part1`` plus ``part_empty [2]`` (1: a volume with no part, all zeros)
    parts: bool = False

    def __post_init__(self):
        object.__setattr__(self, "targets", check_families(self.targets, "TargetConfig.targets"))
        if self.parts and VECSET not in self.targets:
            raise ValueError(f"TargetConfig.parts packs the vecset targets into two volumes: it needs {VECSET!r} "
                             f"in targets, got {tuple(self.targets)}")

    @staticmethod
    def small(resolution: int = 32, points: int = 4096) -> "TargetConfig":
        """Sizes for CPU demos/tests."""
        return TargetConfig(resolution=resolution, vecset=VecsetConfig(
            num_surface=4 * points, num_points=points, num_salient=points // 2, num_fps=min(512, points),
            num_fps_salient=min(512, points // 2), num_volume=4 * points, num_near=4 * points, num_sharp=2 * points))


def config_to_json(cfg: TargetConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["targets"] = list(d["targets"])
    return json.loads(json.dumps(d))


def config_from_json(d: dict) -> TargetConfig:
    d = dict(d)
    d["vecset"] = VecsetConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d["vecset"].items()})
    d["limits"] = LoadLimits(**d["limits"])
    d["targets"] = tuple(d["targets"])
    return TargetConfig(**d)


def example_seed(seed: int, mesh_id: str) -> np.random.SeedSequence:
    h = int.from_bytes(hashlib.sha256(mesh_id.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), h])


PART_KEYS = ("pointcloud", "normals", "fps_indices", "pointcloud_dorases", "normals_dorases", "fps_indices_dorases")


def two_volume_inputs(v, f, cfg: VecsetConfig, like: dict, seed, stats: dict, part=None) -> dict:
    """PartPacker's two-volume encoder inputs of a normalised mesh: ``<key>_part0`` / ``_part1`` for the keys of
    :data:`PART_KEYS` and ``part_empty`` int8 ``[2]``; an empty volume is zeros shaped like ``like``'s (the whole
    object's) arrays. Adds the packing's counts to ``stats``. ``part``: the mesh's ``connected_parts``, if known."""
    rng = np.random.default_rng(seed)
    packed = pack_two_volumes(v, f, rng=rng, part=part)
    out, empty = {}, []
    for k, (pv, pf) in enumerate(packed.volumes):
        empty.append(len(pf) == 0)
        arrays = {key: np.zeros_like(like[key]) for key in PART_KEYS} if empty[-1] \
            else surface_inputs(pv, pf, cfg, rng)[0]
        for key in PART_KEYS:
            if arrays[key].shape != like[key].shape:
                raise ValueError(f"volume {k}: {key} has shape {arrays[key].shape}, the whole object's "
                                 f"{like[key].shape}")
            out[f"{key}_part{k}"] = arrays[key].astype(like[key].dtype)
    out["part_empty"] = np.asarray(empty, np.int8)
    stats.update({f"parts_{k}": val for k, val in packed.info.items()})
    return out


def mesh_example(source, cfg: TargetConfig, seed: int = 0, mesh_id: Optional[str] = None, class_label: int = -1,
                 features: Optional[dict] = None):
    """One training example of a mesh: each family's normalisation and targets, plus conditioning fields.

    Args:
      source: a mesh file path or a :class:`TriMesh`.
      cfg: which targets, at which sizes.
      seed, mesh_id: the example's randomness is seeded by ``(seed, mesh_id)`` only.
      class_label, features: conditioning fields stored with it (``features``: ``{name: array}``).

    Returns:
      ``(example dict, stats dict)``. Raises ``MeshError`` (with a reason code) for an unusable mesh.
    """
    t0 = time.perf_counter()
    mesh = source if isinstance(source, TriMesh) else load_mesh(source, cfg.limits, cfg.up_axis)
    mesh_id = mesh_id or (str(source) if not isinstance(source, TriMesh) else "mesh")
    t_load = time.perf_counter() - t0
    rng = np.random.default_rng(example_seed(seed, mesh_id))
    v, f = mesh.vertices, mesh.faces
    ex = {"id": mesh_id, "class_label": np.int32(class_label)}
    stats = dict(mesh.stats)
    stats["t_load"] = round(t_load, 4)
    ct, st = normalization_params(v, SPARSE_STRUCTURE)
    cp, sp = normalization_params(v, VECSET)
    ex.update(sparse_structure_center=ct.astype(np.float64), sparse_structure_scale=np.float64(st),
              vecset_center=cp.astype(np.float64), vecset_scale=np.float64(sp))
    if SPARSE_STRUCTURE in cfg.targets:
        t = time.perf_counter()
        idx = voxelize_surface((v - ct) * st, f, cfg.resolution, bound=FAMILIES[SPARSE_STRUCTURE].mesh_bound, clip=True)
        ex["voxel_indices"] = idx.astype(np.int16 if cfg.resolution <= 32767 else np.int32)
        ex["resolution"] = np.int32(cfg.resolution)
        stats["num_voxels"] = int(len(idx))
        stats["t_occupancy"] = round(time.perf_counter() - t, 4)
    if VECSET in cfg.targets:
        t = time.perf_counter()
        # the pseudonormal sign (like ray parity) is exact only for one closed surface: overlapping closed parts take
        # the winding number
        part = connected_parts(f, len(v)) if len(f) else None
        single = part is None or int(part.max()) == 0
        vs, info = vecset_targets((v - cp) * sp, f, cfg.vecset, rng,
                                  watertight=bool(mesh.stats.get("watertight")) and single)
        ex.update(vs)
        stats.update(info)
        stats["t_vecset"] = round(time.perf_counter() - t, 4)
        g = vs["query_gt"]
        stats["query_inside_frac"] = round(float((g > 0).mean()), 4)
    if cfg.parts:
        t = time.perf_counter()
        ex.update(two_volume_inputs((v - cp) * sp, f, cfg.vecset, ex, example_seed(seed, mesh_id + "#parts"), stats,
                                    part=part))
        stats["t_parts"] = round(time.perf_counter() - t, 4)
    for k, val in (features or {}).items():
        ex[k] = val if isinstance(val, list) else np.asarray(val)  # lists: e.g. PNG bytes of views
    return ex, stats
