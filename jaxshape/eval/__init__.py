"""Shape evaluation: point metrics of one shape against its reference, set metrics of generated shape sets, and the
seeded surface sampling that turns meshes / occupancy grids / SDF grids into the point sets they take.

* :mod:`jaxshape.eval.metrics`: Chamfer (L1 / L2), F-score, normal consistency, volume IoU, and PointFlow's MMD /
  COV / 1-NNA -- pure functions, JAX on device (chunked, optionally sharded), or a scipy kd-tree for huge sets.
* :mod:`jaxshape.eval.sampling`: area-weighted surface samples with a ``seed``.

The project evaluates in the unit-cube frame ``[-0.5, 0.5]^3``: map a family's mesh-frame points with
``to_unit_cube(points, family.mesh_bound)`` (``points / (2 * bound)``) before computing metrics.
"""
from jaxshape.eval.metrics import (
    DEFAULT_THRESHOLDS,
    SHARD_MIN_PAIRS,
    chamfer_distance,
    coverage,
    f_score,
    mmd,
    nearest_sq_dists,
    normal_consistency,
    one_nna,
    pairwise_chamfer,
    pairwise_sq_dists,
    set_metrics,
    shape_metrics,
    to_unit_cube,
    volume_iou,
)
from jaxshape.eval.sampling import occupancy_to_points, sample_surface_points, sdf_grid_to_points

__all__ = [
    "DEFAULT_THRESHOLDS", "SHARD_MIN_PAIRS", "chamfer_distance", "coverage", "f_score", "mmd", "nearest_sq_dists",
    "normal_consistency", "occupancy_to_points", "one_nna", "pairwise_chamfer", "pairwise_sq_dists",
    "sample_surface_points", "sdf_grid_to_points", "set_metrics", "shape_metrics", "to_unit_cube", "volume_iou",
]
