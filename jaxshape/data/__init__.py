"""jaxshape.data: mesh ingestion, TRELLIS / vecset targets, record preparation and the grain input pipeline.

Heavy modules import lazily (``from jaxshape.data import pipeline`` pulls grain/jax only when used)."""
from .mesh_io import FAMILY_BOUNDS, LoadLimits, Mesh, MeshError, clean_mesh, load_mesh, normalize
from .records import RecordSource, decode_example, encode_example
from .targets import TargetConfig, make_example
from .vecset import VecsetConfig, fps, tsdf, vecset_targets
from .voxelize import occupancy_grid, voxelize_surface

__all__ = ["FAMILY_BOUNDS", "LoadLimits", "Mesh", "MeshError", "clean_mesh", "load_mesh", "normalize",
           "RecordSource", "decode_example", "encode_example", "TargetConfig", "make_example", "VecsetConfig", "fps",
           "tsdf", "vecset_targets", "occupancy_grid", "voxelize_surface"]
