"""Writes ``open3d_voxels.npz``: four normalised test meshes and the voxels Open3D's
``VoxelGrid.create_from_triangle_mesh_within_bounds`` gives them at 64³ in [-0.5, 0.5]³ (TRELLIS's voxelisation).

Open3D is a 400 MB wheel and not a test dependency, so its answer is committed; ``tests/data/test_targets.py``
compares jaxshape's voxeliser with it. Regenerate (needs ``pip install open3d``)::

    python -m tests.assets.make_open3d_voxels
"""
from pathlib import Path

import numpy as np


def main() -> None:
    import open3d as o3d

    from tests.data.test_targets import _meshes

    out = {}
    for name, m in _meshes().items():
        v = np.clip(m.vertices, -0.5 + 1e-6, 0.5 - 1e-6)
        om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(m.faces))
        g = o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(om, voxel_size=1 / 64,
                                                                            min_bound=(-.5,) * 3, max_bound=(.5,) * 3)
        out[f"{name}/vertices"] = m.vertices
        out[f"{name}/faces"] = m.faces.astype(np.int32)
        out[f"{name}/voxels"] = np.array(sorted(tuple(x.grid_index) for x in g.get_voxels()), np.int16)
    path = Path(__file__).with_name("open3d_voxels.npz")
    np.savez_compressed(path, open3d_version=o3d.__version__, **out)
    print(f"wrote {path} (open3d {o3d.__version__})")


if __name__ == "__main__":
    main()
