"""Mesh ingestion, sparse-structure voxels and vecset targets (jaxshape.data)."""

import numpy as np
import pytest
import trimesh

from jaxshape.data import vecset, voxelize
from jaxshape.data.mesh_io import MeshError, clean_mesh, load_mesh, normalize
from jaxshape.data.targets import TargetConfig, mesh_example
from jaxshape.families import SPARSE_STRUCTURE, VECSET
from tests.utils import ASSETS


def _unit(m, family=SPARSE_STRUCTURE):
    return normalize(clean_mesh(m.vertices, m.faces), family)


def _meshes():
    rng = np.random.default_rng(0)
    R = trimesh.transformations.random_rotation_matrix(rng.random(3))
    out = {
        "rot_box": trimesh.creation.box((0.7, 0.5, 0.4)).apply_transform(R),
        "sphere": trimesh.creation.icosphere(3),
        "torus": trimesh.creation.torus(0.3, 0.1, major_sections=24, minor_sections=12).apply_transform(R),
        "cyl": trimesh.creation.cylinder(0.3, 0.8, sections=20).apply_transform(R),
    }
    return {k: _unit(m) for k, m in out.items()}


def _iou(a, b):
    A, B = set(map(tuple, a)), set(map(tuple, b))
    return len(A & B) / max(1, len(A | B))


def test_voxels_match_bruteforce():
    for name, m in _meshes().items():
        fast = voxelize.voxelize_surface(m.vertices, m.faces, 12)
        ref = voxelize.voxelize_bruteforce(m.vertices, m.faces, 12)
        assert _iou(fast, ref) >= 0.995, name
        assert fast.min() >= 0 and fast.max() < 12


def test_voxels_match_open3d():
    """Against Open3D's ``create_from_triangle_mesh_within_bounds`` (TRELLIS's voxeliser), committed for four
    meshes (tests/assets/make_open3d_voxels.py: Open3D is not a test dependency)."""
    golden = np.load(ASSETS / "open3d_voxels.npz")
    names = sorted({k.split("/")[0] for k in golden.files if "/" in k})
    assert names == sorted(_meshes())
    for name in names:
        v, f, ref = (golden[f"{name}/{k}"] for k in ("vertices", "faces", "voxels"))
        assert len(ref) > 500, name
        assert _iou(voxelize.voxelize_surface(v, f.astype(np.int64), 64), ref) >= 0.995, name


def test_occupancy_grid_axes():
    idx = np.array([[1, 2, 3]])
    g = voxelize.occupancy_grid(idx, 4)
    assert g.shape == (4, 4, 4, 1) and g[1, 2, 3, 0] == 1 and g.sum() == 1


def test_normalisation_families():
    m = clean_mesh(trimesh.creation.box((2.0, 1.0, 0.5)).vertices + 3.0, trimesh.creation.box((2.0, 1, .5)).faces)
    t, p = normalize(m, SPARSE_STRUCTURE), normalize(m, VECSET)
    np.testing.assert_allclose(t.vertices.max(0), [0.5, 0.25, 0.125], atol=1e-12)
    np.testing.assert_allclose(p.vertices.min(0), [-0.95, -0.475, -0.2375], atol=1e-12)
    assert t.stats["sparse_structure_scale"] == pytest.approx(0.5) and p.stats["vecset_scale"] == pytest.approx(0.95)


def test_clean_drops_degenerate_and_duplicates():
    b = trimesh.creation.box()
    f = np.concatenate([b.faces, b.faces[:3], b.faces[:2, ::-1], [[0, 0, 1], [0, 1, 1]]])
    v = np.concatenate([b.vertices, [[np.nan, 0, 0]]])  # unreferenced NaN vertex is fine
    m = clean_mesh(v, f)
    assert len(m.faces) == 12 and m.stats["duplicate_faces"] == 5 and m.stats["degenerate_faces"] == 2
    assert m.stats["watertight"]
    with pytest.raises(MeshError) as e:
        clean_mesh(np.concatenate([b.vertices, [[np.inf, 0, 0]]]), np.concatenate([b.faces, [[0, 1, 8]]]))
    assert e.value.reason == "nonfinite_vertices"


def test_inverted_watertight_mesh_is_flipped():
    b = trimesh.creation.box()
    m = clean_mesh(b.vertices, b.faces[:, ::-1])
    assert m.stats.get("flipped")
    p, n, _ = vecset.sample_surface(m.vertices, m.faces, 500, np.random.default_rng(0))
    assert (np.einsum("ij,ij->i", p, n) > 0).all()


def test_scene_flattened_with_transforms(tmp_path):
    s = trimesh.Scene()
    s.add_geometry(trimesh.creation.box((1, 1, 1)), transform=trimesh.transformations.translation_matrix([5, 0, 0]))
    s.add_geometry(trimesh.creation.box((1, 1, 1)), transform=trimesh.transformations.translation_matrix([-5, 0, 0]))
    for ext in (".glb", ".obj", ".ply", ".stl", ".off"):
        p = str(tmp_path / ("scene" + ext))
        (s if ext in (".glb", ".obj") else s.to_geometry()).export(p)
        m = load_mesh(p)
        assert len(m.faces) == 24, ext
        np.testing.assert_allclose(np.ptp(m.vertices, 0).max(), 11.0, atol=1e-5)
    # glTF is Y-up: translated along x stays on x after the Y-up -> Z-up rotation
    m = load_mesh(str(tmp_path / "scene.glb"))
    assert np.ptp(m.vertices[:, 0]) == pytest.approx(11.0, abs=1e-5)


def test_fps_prefix_property():
    pts = np.random.default_rng(1).random((3000, 3))
    order = vecset.fps(pts, 300, start=0, exact=True)
    for k in (1, 17, 100, 300):
        np.testing.assert_array_equal(order[:k], vecset.fps_reference(pts, k, 0))


def test_tsdf_sphere_and_box_signs():
    s = _unit(trimesh.creation.icosphere(4), VECSET)
    rng = np.random.default_rng(0)
    q = rng.uniform(-1.05, 1.05, (4000, 3))
    q = np.concatenate([q, q[:1000] / np.linalg.norm(q[:1000], axis=1, keepdims=True) * rng.uniform(0.93, 0.97,
                                                                                                    (1000, 1))])
    for sign in ("winding", "raycast", "pseudonormal"):
        g = vecset.tsdf(s.vertices, s.faces, q, 0.015, sign=sign)
        ref = np.clip(0.95 - np.linalg.norm(q, axis=1), -0.015, 0.015) / 0.015
        assert np.abs(g - ref).max() < 0.1  # tessellation error of the sphere (~1e-3 abs)
        assert (np.sign(g) == np.sign(ref)).mean() > 0.995
    b = _unit(trimesh.creation.box((1.0, 1.0, 1.0)), VECSET)
    g = vecset.tsdf(b.vertices, b.faces, np.array([[0, 0, 0], [0.94, 0, 0], [0.96, 0, 0], [1.0, 1.0, 1.0]]), 0.015)
    np.testing.assert_allclose(g, [1, 0.01 / 0.015, -0.01 / 0.015, -1], atol=1e-5)


def test_closest_point_on_triangles_regions_match_brute_force():
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=(3000, 3)) for _ in range(3))
    p = rng.normal(size=(3000, 3)) * 2
    got, feat = vecset.closest_point_on_triangles(p, a, b, c)
    # brute force: the best of a dense barycentric lattice of each triangle, refined to the closest feature
    s = np.linspace(0, 1, 81)
    u, w = [x.ravel() for x in np.meshgrid(s, s, indexing="ij")]
    keep = u + w <= 1
    u, w = u[keep], w[keep]
    lat = a[:, None] + u[None, :, None] * (b - a)[:, None] + w[None, :, None] * (c - a)[:, None]
    brute = np.sqrt(((lat - p[:, None]) ** 2).sum(-1)).min(1)
    d = np.linalg.norm(got - p, axis=1)
    assert (d <= brute + 1e-12).all() and np.median(brute - d) < 1e-3
    assert set(np.unique(feat)) == set(range(7))  # every region is reached
    vert = np.stack([a, b, c], 1)
    for code in (4, 5, 6):
        np.testing.assert_array_equal(got[feat == code], vert[feat == code, code - 4])


def test_pseudonormal_sign_equals_ray_parity_on_watertight_meshes():
    import manifold3d as m3

    from jaxshape.data.procedural import generate_shape

    v, f = generate_shape(6, 1)  # a CSG chair: sharp convex and concave edges, thin legs
    mg = m3.Manifold(m3.Mesh(v.astype(np.float32), f.astype(np.uint32))).refine_to_length(0.05 * np.ptp(v, 0).max())
    m = clean_mesh(np.asarray(mg.to_mesh().vert_properties)[:, :3], np.asarray(mg.to_mesh().tri_verts))
    assert m.stats["watertight"]
    pp = normalize(m, VECSET)
    rng = np.random.default_rng(0)
    p, _, _ = vecset.sample_surface(pp.vertices, pp.faces, 3000, rng)
    corners = pp.vertices[rng.integers(len(pp.vertices), size=2000)]  # queries whose closest feature is a vertex
    q = np.concatenate([rng.uniform(-1.05, 1.05, (6000, 3)), p + rng.normal(0, 0.005, p.shape),
                        corners + rng.normal(0, 0.003, corners.shape)])
    ray = vecset.inside_raycast(pp.vertices, pp.faces, q)
    wind = vecset.inside_winding(pp.vertices, pp.faces, q)
    g = vecset.tsdf(pp.vertices, pp.faces, q, 0.015, sign="pseudonormal")
    ref = vecset.tsdf(pp.vertices, pp.faces, q, 0.015, sign="raycast")
    assert ((g > 0) == ray).mean() > 0.9995 and ((g > 0) == wind).mean() > 0.9995
    np.testing.assert_allclose(np.abs(g), np.abs(ref), atol=1e-4)  # the same distances (Open3D: float32)
    assert ((g > 0) != ray).sum() == 0 or np.abs(g[(g > 0) != ray]).max() < 1e-3  # disagreements only on the surface
    assert (np.abs(g) == 1).mean() > 0.3  # far queries took their region's side
    with pytest.raises(ValueError, match="sign='parity'"):
        vecset.tsdf(pp.vertices, pp.faces, q[:4], 0.015, sign="parity")


def test_winding_inside_robust_to_holes():
    b = trimesh.creation.box((1.0, 1.0, 1.0))
    m = clean_mesh(b.vertices, b.faces[2:])  # one quad side open
    assert not m.stats["watertight"]
    ins = vecset.inside_winding(m.vertices, m.faces, np.array([[0, 0, 0], [0.1, 0.2, -0.1], [2, 0, 0]]))
    assert ins.tolist() == [True, True, False]


def test_salient_points_on_edges_and_fallback():
    b = _unit(trimesh.creation.box((1.0, 0.6, 0.4)), VECSET)
    rng = np.random.default_rng(0)
    p, n, _ = vecset.sample_surface(b.vertices, b.faces, 2000, rng)
    s, sn, info = vecset.sample_salient(b.vertices, b.faces, 256, rng, p, n)
    assert info["salient_fallback"] == 0 and info["num_sharp_edges"] == 12
    hi = np.abs(b.vertices).max(0)
    on_face = np.isclose(np.abs(s), hi, atol=1e-9).sum(1)
    assert (on_face >= 2).all()  # every salient point lies on two box faces, i.e. an edge
    np.testing.assert_allclose(np.linalg.norm(sn, axis=1), 1, atol=1e-6)
    sph = _unit(trimesh.creation.icosphere(3), VECSET)
    p, n, _ = vecset.sample_surface(sph.vertices, sph.faces, 2000, rng)
    s, _, info = vecset.sample_salient(sph.vertices, sph.faces, 256, rng, p, n)
    assert info["salient_fallback"] == 1 and s.shape == (256, 3)


def test_make_example_keys_normals_determinism():
    m = clean_mesh(trimesh.creation.box((1.0, 0.5, 0.3)).vertices, trimesh.creation.box((1.0, 0.5, 0.3)).faces)
    cfg = TargetConfig.small(16, 512)
    ex, stats = mesh_example(m, cfg, seed=3, mesh_id="a", class_label=2)
    ex2, _ = mesh_example(m, cfg, seed=3, mesh_id="a", class_label=2)
    ex3, _ = mesh_example(m, cfg, seed=4, mesh_id="a", class_label=2)
    for k in ("pointcloud", "fps_indices", "pointcloud_dorases", "query_points", "query_gt", "voxel_indices"):
        np.testing.assert_array_equal(ex[k], ex2[k])
    assert not np.array_equal(ex["pointcloud"], ex3["pointcloud"])
    assert ex["pointcloud"].shape == (512, 3) and ex["pointcloud_dorases"].shape == (256, 3)
    assert ex["query_points"].shape == (len(ex["query_gt"]), 3) and ex["query_counts"].sum() == len(ex["query_gt"])
    assert np.abs(ex["pointcloud"]).max() <= 0.95 + 1e-6
    n = ex["normals"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert (np.einsum("ij,ij->i", ex["pointcloud"], n) > 0).all()  # outward on a centred box
    np.testing.assert_array_equal(ex["fps_indices"], vecset.fps_reference(ex["pointcloud"], len(ex["fps_indices"])))
    assert -1 <= ex["query_gt"].min() and ex["query_gt"].max() <= 1
    assert stats["sign_method"] == "pseudonormal" and int(ex["class_label"]) == 2
