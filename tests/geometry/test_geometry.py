"""Tests for jaxshape.geometry: grid decoding (dense / hierarchical) and mesh extraction / export.

Analytic fields are inside positive (PartPacker convention).  ``t*`` variants are the TSDF the VAE is trained
toward, ``clip(sdf / tau, -1, 1)``; with the plain SDF nearly every point has |G| < 0.95, so the hierarchical
decoder cannot skip anything and the query-count test would be meaningless.
"""
import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from jaxshape.geometry import (
    decode_dense,
    decode_hierarchical,
    export_mesh,
    extract_mesh,
    grid_points,
    hierarchical_levels,
    to_trimesh,
)
from jaxshape.geometry.mesh import TRIMESH_GLB_EXPORT

SPHERE_R = 0.5
BOX_HALF = np.array([0.5, 0.35, 0.25], dtype=np.float32)
TORUS_RMAJ, TORUS_RMIN = 0.5, 0.2


def sphere_sdf(p):
    p = np.asarray(p, dtype=np.float32)
    return (SPHERE_R - np.linalg.norm(p, axis=-1)).astype(np.float32)


def box_sdf(p):
    p = np.asarray(p, dtype=np.float32)
    q = np.abs(p) - BOX_HALF
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return (-(outside + inside)).astype(np.float32)


def torus_sdf(p):
    p = np.asarray(p, dtype=np.float32)
    qx = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - TORUS_RMAJ
    return (TORUS_RMIN - np.sqrt(qx ** 2 + p[:, 2] ** 2)).astype(np.float32)


SDFS = {"sphere": sphere_sdf, "box": box_sdf, "torus": torus_sdf}
VOLUMES = {
    "sphere": 4.0 / 3.0 * np.pi * SPHERE_R ** 3,
    "box": float(np.prod(2 * BOX_HALF.astype(np.float64))),
    "torus": 2 * np.pi ** 2 * TORUS_RMAJ * TORUS_RMIN ** 2,
}


def tsdf(fn, tau):
    return lambda p: np.clip(fn(p) / np.float32(tau), -1.0, 1.0).astype(np.float32)


CHUNK = 65536  # larger chunks than the 8192 default keep the tests fast; chunking itself is tested separately


# ----------------------------------------------------------------------------------------------------------------
# grid / dense decoding
# ----------------------------------------------------------------------------------------------------------------
def test_grid_points_convention():
    R = 4
    p = grid_points(R)
    ax = np.linspace(-1, 1, R + 1, dtype=np.float32)
    assert p.shape == ((R + 1) ** 3, 3) and p.dtype == np.float32
    g = p.reshape(R + 1, R + 1, R + 1, 3)
    for ix, iy, iz in [(0, 0, 0), (1, 2, 3), (4, 0, 2), (4, 4, 4)]:
        np.testing.assert_array_equal(g[ix, iy, iz], [ax[ix], ax[iy], ax[iz]])
    np.testing.assert_array_equal(p[1], [-1, -1, ax[1]])  # z fastest
    np.testing.assert_array_equal(grid_points(2, bounds=0.5)[-1], [0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", list(SDFS))
def test_dense_equals_analytic(name):
    R, fn = 24, SDFS[name]
    G = decode_dense(fn, R, max_points_per_query=1000)  # 15625 points: 16 chunks, last one padded
    assert G.shape == (R + 1,) * 3 and G.dtype == np.float32
    np.testing.assert_array_equal(G, fn(grid_points(R)).reshape(G.shape))
    ax = np.linspace(-1, 1, R + 1, dtype=np.float32)
    assert G[3, 7, 20] == fn(np.array([[ax[3], ax[7], ax[20]]]))[0]


def test_chunks_have_fixed_size_and_jit_compiles_once():
    import jax
    import jax.numpy as jnp

    traces, shapes = [], []

    @jax.jit
    def q(p):
        traces.append(p.shape)
        return jnp.clip((SPHERE_R - jnp.linalg.norm(p, axis=-1)) / 0.05, -1.0, 1.0)

    def wrapped(p):
        shapes.append(p.shape)
        return q(p)

    G = decode_dense(wrapped, 16, max_points_per_query=1000)
    H = decode_hierarchical(wrapped, 32, min_resolution=8, max_points_per_query=1000)
    assert set(shapes) == {(1000, 3)}
    assert len(traces) == 1
    np.testing.assert_allclose(G, tsdf(sphere_sdf, 0.05)(grid_points(16)).reshape(G.shape), atol=1e-6)
    assert np.isfinite(H).any() and np.isnan(H).any()


# ----------------------------------------------------------------------------------------------------------------
# hierarchical decoding
# ----------------------------------------------------------------------------------------------------------------
def test_hierarchical_levels():
    assert hierarchical_levels(512) == [64, 128, 256, 512]
    assert hierarchical_levels(384) == [96, 192, 384]
    assert hierarchical_levels(128, 32) == [32, 64, 128]
    assert hierarchical_levels(100, 64) == [100]


def _chamfer(a, b):
    """Symmetric Chamfer distance: mean of the two mean nearest-neighbour distances (vertex sets)."""
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    return 0.5 * (d_ab.mean() + d_ba.mean())


@pytest.mark.parametrize("name,tau", [("sphere", 0.03), ("box", 0.03), ("torus", 0.03), ("sphere", 1e-4)])
def test_hierarchical_agrees_with_dense(name, tau):
    # tau = 0.03: truncation band ~2 fine voxels (upstream: 0.015 at R=512); tau = 1e-4: occupancy-like step field,
    # where only the sign-change criterion (not |G| < 0.95) finds the surface
    R = 128
    voxel = 2.0 / R
    fn = tsdf(SDFS[name], tau)
    D = decode_dense(fn, R, max_points_per_query=CHUNK)
    H, stats = decode_hierarchical(fn, R, min_resolution=32, max_points_per_query=CHUNK, return_stats=True)
    assert stats["levels"] == [32, 64, 128]
    assert stats["dense_points"] == (R + 1) ** 3
    assert stats["total_queried"] == sum(stats["queried_per_level"]) == int(np.isfinite(H).sum()) + 33 ** 3 + \
        stats["queried_per_level"][1]
    assert stats["ratio"] < 0.25, stats  # measured 0.11-0.13 (tau 0.03); far fewer than dense

    fin = np.isfinite(H)
    # queried values equal the dense ones (fine coords idx*2/r-1 may differ from linspace by 1 ulp)
    np.testing.assert_allclose(H[fin], D[fin], atol=1e-4)
    # every dense sign change (surface crossing) lies inside the queried region
    s = D >= 0
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, R), slice(1, R + 1)
        cross = s[tuple(a)] != s[tuple(b)]
        assert fin[tuple(a)][cross].all() and fin[tuple(b)][cross].all()

    # volume IoU of the inside regions on the grid where both are defined
    ins_d, ins_h = (D >= 0) & fin, (H >= 0) & fin
    iou = (ins_d & ins_h).sum() / (ins_d | ins_h).sum()
    assert iou >= 0.99, iou

    vd, fd = extract_mesh(D, R)
    vh, fh = extract_mesh(H, R)
    md, mh = to_trimesh(vd, fd), to_trimesh(vh, fh)
    assert mh.is_watertight and md.is_watertight
    cd = _chamfer(vd, vh)
    # threshold 0.5 voxel (= 1/R): same field, same grid -> the meshes should be identical up to float noise;
    # anything wrong in the refinement (missed or dropped surface) moves vertices by >= 1 voxel
    assert cd < 0.5 * voxel, cd
    assert abs(mh.volume - md.volume) / md.volume < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# mesh extraction
# ----------------------------------------------------------------------------------------------------------------
def test_sphere_mesh_quality():
    R = 128
    G = decode_dense(sphere_sdf, R, max_points_per_query=CHUNK)
    v, f = extract_mesh(G, R)
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3
    assert f.dtype in (np.int32, np.int64) and f.shape[1] == 3
    m = to_trimesh(v, f)
    assert m.is_watertight
    assert m.volume > 0  # outward normals
    # every face normal points away from the centre
    assert (np.einsum("ij,ij->i", m.face_normals, m.triangles_center) > 0).all()
    assert abs(m.volume - VOLUMES["sphere"]) / VOLUMES["sphere"] < 0.01
    # vertices within half a voxel of the true surface
    err = np.abs(np.linalg.norm(v.astype(np.float64), axis=1) - SPHERE_R)
    assert err.max() < 0.5 * 2.0 / R, err.max()


@pytest.mark.parametrize("name", ["box", "torus"])
def test_other_shapes_outward_and_volume(name):
    R = 64
    v, f = extract_mesh(decode_dense(SDFS[name], R, max_points_per_query=CHUNK))
    m = to_trimesh(v, f)
    assert m.is_watertight
    assert m.volume > 0
    assert abs(m.volume - VOLUMES[name]) / VOLUMES[name] < 0.02  # marching cubes cuts the box's sharp edges


def test_nan_cells_are_dropped():
    R = 48
    G = decode_dense(sphere_sdf, R, max_points_per_query=CHUNK)
    G[:, :, : R // 2 - 3] = np.nan  # NaN slab crossing the surface (like unqueried cells)
    G[0, 0, -1] = np.inf
    v, f = extract_mesh(G, R)
    assert len(f) > 0
    assert np.isfinite(v).all()
    assert f.min() >= 0 and f.max() < len(v)
    assert np.unique(f).size == len(v)  # no unreferenced vertices
    zmin = -1 + 2 * (R // 2 - 3) / R  # first finite z plane; NaN planes are z-index < R//2 - 3
    assert v[:, 2].min() >= zmin - 1e-6  # nothing on edges touching a NaN corner
    assert np.isclose(v[:, 2].min(), zmin)  # ... but the surface on the first finite plane is kept
    # the finite part of the surface is kept: vertices close to the sphere
    assert np.abs(np.linalg.norm(v, axis=1) - SPHERE_R).max() < 1.0 / R

    assert all(a.shape[0] == 0 for a in extract_mesh(np.full((5, 5, 5), np.nan, np.float32)))
    assert all(a.shape[0] == 0 for a in extract_mesh(-np.ones((5, 5, 5), np.float32)))


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_export_round_trip(tmp_path, suffix):
    R = 32
    v, f = extract_mesh(decode_dense(box_sdf, R, max_points_per_query=CHUNK), R)
    path = tmp_path / f"mesh{suffix}"
    export_mesh(v, f, path)
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.faces) == len(f)
    np.testing.assert_allclose(back.bounds, to_trimesh(v, f).bounds, atol=1e-5)
    if suffix != ".obj":  # obj export may re-index vertices
        assert len(back.vertices) == len(v)


def test_export_glb_up_rotation(tmp_path):
    R = 32
    v, f = extract_mesh(decode_dense(box_sdf, R, max_points_per_query=CHUNK), R)
    m = export_mesh(v, f, tmp_path / "up.glb", glb_up=True)
    np.testing.assert_allclose(m.vertices, v @ TRIMESH_GLB_EXPORT.T.astype(np.float32), atol=1e-6)
    back = trimesh.load(tmp_path / "up.glb", force="mesh", process=False)
    lo, hi = to_trimesh(v, f).bounds
    np.testing.assert_allclose(back.bounds, [lo[[1, 2, 0]], hi[[1, 2, 0]]], atol=1e-5)  # GLB (x,y,z) = (y,z,x)
    assert back.volume > 0  # proper rotation keeps outward normals


# ----------------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(TypeError, match="resolution must be a positive int"):
        grid_points(2.5)
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        decode_dense(sphere_sdf, 0)
    with pytest.raises(TypeError, match="resolution must be a positive int"):
        decode_dense(sphere_sdf, True)
    with pytest.raises(ValueError, match="max_points_per_query must be a positive int"):
        decode_dense(sphere_sdf, 4, max_points_per_query=-1)
    with pytest.raises(ValueError, match=r"divisible by 2.*min_resolution"):
        decode_hierarchical(sphere_sdf, 130, min_resolution=32)
    with pytest.raises(ValueError, match=r"min_resolution \(64\) must be <= resolution \(32\)"):
        decode_hierarchical(sphere_sdf, 32)
    with pytest.raises(ValueError, match=r"query_fn must map .* shape \(\d+,\)"):
        decode_dense(lambda p: sphere_sdf(p)[:, None], 4)
    with pytest.raises(ValueError, match="query_fn must map"):
        decode_dense(lambda p: sphere_sdf(p)[:-1], 4)
    with pytest.raises(TypeError, match="query_fn must return a floating-point array"):
        decode_dense(lambda p: (sphere_sdf(p) > 0), 4)
    with pytest.raises(TypeError, match="query_fn must be callable"):
        decode_dense(None, 4)
    with pytest.raises(ValueError, match="grid_values must be a cubic 3-D array"):
        extract_mesh(np.zeros((4, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"resolution \(8\) must equal grid_values.shape\[0\] - 1 \(4\)"):
        extract_mesh(np.zeros((5, 5, 5), np.float32), 8)
    with pytest.raises(ValueError, match="path must end with one of"):
        export_mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), "/tmp/x.stl")
