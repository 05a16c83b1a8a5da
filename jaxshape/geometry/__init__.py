"""SDF-grid decoding and mesh extraction."""
from jaxshape.geometry.grid import decode_dense, decode_hierarchical, grid_points, hierarchical_levels
from jaxshape.geometry.mesh import TRIMESH_GLB_EXPORT, export_mesh, extract_mesh, to_trimesh, zup_to_glb

__all__ = [
    "grid_points", "decode_dense", "decode_hierarchical", "hierarchical_levels",
    "extract_mesh", "to_trimesh", "export_mesh", "zup_to_glb", "TRIMESH_GLB_EXPORT",
]
