"""SDF-grid decoding, mesh extraction, voxel-field meshes and shape export."""
from jaxshape.geometry.grid import decode_dense, decode_hierarchical, grid_points, hierarchical_levels
from jaxshape.geometry.mesh import export_mesh, extract_mesh, to_trimesh, zup_to_glb
from jaxshape.geometry.shapes import Shape, occupancy_shapes, save_shapes
from jaxshape.geometry.voxels import voxel_field_mesh

__all__ = [
    "Shape", "decode_dense", "decode_hierarchical", "export_mesh", "extract_mesh", "grid_points",
    "hierarchical_levels", "occupancy_shapes", "save_shapes", "to_trimesh", "voxel_field_mesh", "zup_to_glb",
]
