"""jaxshape.data: mesh ingestion, each family's targets, record preparation, data sources and the grain pipeline.

Heavy modules import lazily (``from jaxshape.data import pipeline`` pulls grain/jax only when used)."""
from .mesh_io import LoadLimits, MeshError, TriMesh, clean_mesh, load_mesh, normalize
from .records import RecordSource, decode_example, encode_example
from .targets import TargetConfig, mesh_example
from .vecset import VecsetConfig, fps, tsdf, vecset_targets
from .voxelize import occupancy_grid, voxelize_surface

__all__ = ["LoadLimits", "MeshError", "RecordSource", "TargetConfig", "TriMesh", "VecsetConfig", "clean_mesh",
           "decode_example", "encode_example", "fps", "load_mesh", "mesh_example", "normalize", "occupancy_grid",
           "tsdf", "vecset_targets", "voxelize_surface"]
