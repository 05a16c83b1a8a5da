"""Tests for jaxshape.eval: metrics against float64 numpy brute force, analytic cases, set metrics, sampling.

Runs with the 8 simulated CPU devices of tests/conftest.py, so the sharded ``pairwise_chamfer`` path is exercised.
"""
import jax
import numpy as np
import pytest

from jaxshape.eval import (
    chamfer_distance,
    coverage,
    f_score,
    mmd,
    nearest_sq_dists,
    normal_consistency,
    occupancy_to_points,
    one_nna,
    pairwise_chamfer,
    pairwise_sq_dists,
    sample_surface_points,
    sdf_grid_to_points,
    set_metrics,
    shape_metrics,
    to_unit_cube,
    volume_iou,
)
from jaxshape.geometry import grid_points

TAUS = (0.01, 0.02, 0.05, 0.1, 0.2)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def brute(a, b, na=None, nb=None, taus=TAUS):
    """Float64 numpy reference of every shape metric for batched ``a [B,N,3]``, ``b [B,M,3]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)
    sq_ab, sq_ba = d.min(2), d.min(1)
    acc, comp = np.sqrt(sq_ab).mean(1), np.sqrt(sq_ba).mean(1)
    out = {"cd_l1": 0.5 * (acc + comp), "cd_l2": sq_ab.mean(1) + sq_ba.mean(1), "accuracy": acc,
           "completeness": comp}
    for t in taus:
        p, r = (np.sqrt(sq_ab) <= t).mean(1), (np.sqrt(sq_ba) <= t).mean(1)
        out[f"precision@{t:g}"], out[f"recall@{t:g}"] = p, r
        out[f"f@{t:g}"] = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    if na is not None:
        na = na / np.linalg.norm(na, axis=-1, keepdims=True)
        nb = nb / np.linalg.norm(nb, axis=-1, keepdims=True)
        i_ab, i_ba = d.argmin(2), d.argmin(1)
        c_ab = np.abs((na * np.take_along_axis(nb, i_ab[..., None], 1)).sum(-1)).mean(1)
        c_ba = np.abs((nb * np.take_along_axis(na, i_ba[..., None], 1)).sum(-1)).mean(1)
        out["normal_consistency"] = 0.5 * (c_ab + c_ba)
    return out, d


def fibonacci_sphere(n, r):
    """Deterministic near-uniform points on the sphere of radius ``r`` and their (radial) unit normals."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (3 - np.sqrt(5)) * i
    u = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], -1)
    return (r * u).astype(np.float32), u.astype(np.float32)


def box_mesh(half=(0.3, 0.2, 0.1)):
    """Closed box ``[-h, h]``: 8 vertices, 12 outward-oriented triangles."""
    h = np.asarray(half, np.float64)
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64) * h
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))], np.int64)
    return v, f


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-0.5, 0.5, (3, 200, 3)), rng.uniform(-0.5, 0.5, (3, 150, 3))
    na, nb = rng.normal(size=a.shape), rng.normal(size=b.shape)
    return [x.astype(np.float32) for x in (a, b, na, nb)]


# ----------------------------------------------------------------------------------------------------------------
# pairwise / nearest / shape metrics vs brute force
# ----------------------------------------------------------------------------------------------------------------
def test_pairwise_and_nearest_match_brute_force(clouds):
    a, b, _, _ = clouds
    _, d = brute(a, b)
    np.testing.assert_allclose(np.asarray(pairwise_sq_dists(a, b)), d, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(pairwise_sq_dists(a[0], b[0])), d[0], rtol=1e-5, atol=1e-7)
    for backend, chunk in (("jax", 64), ("jax", 4096), ("kdtree", 4096)):  # 64: padded chunks of a
        sq, idx = nearest_sq_dists(a, b, chunk=chunk, backend=backend)
        assert sq.shape == idx.shape == (3, 200)
        assert np.abs(np.asarray(sq) - d.min(2)).max() <= 1e-6
        np.testing.assert_array_equal(np.asarray(idx), d.argmin(2))
    sq, idx = nearest_sq_dists(a[1], b[1])
    assert sq.shape == (200,) and np.abs(np.asarray(sq) - d[1].min(1)).max() <= 1e-6
    np.testing.assert_array_equal(np.asarray(idx), d[1].argmin(1))
    sq, _ = nearest_sq_dists(a, a)  # the same set: exact zeros (distance recomputed from the chosen point)
    assert np.all(np.asarray(sq) == 0.0)


@pytest.mark.parametrize("backend", ["jax", "kdtree"])
def test_shape_metrics_match_brute_force(clouds, backend):
    a, b, na, nb = clouds
    ref, _ = brute(a, b, na, nb)
    got = shape_metrics(a, b, pred_normals=na, ref_normals=nb, thresholds=TAUS, backend=backend)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].shape == (3,)
        assert np.abs(np.asarray(got[k], np.float64) - v).max() <= 1e-5, k
    # the single-metric functions give the same numbers
    cd = chamfer_distance(a, b, backend=backend)
    fs = f_score(a, b, TAUS, backend=backend)
    nc = normal_consistency(a, na, b, nb, backend=backend)
    for k, v in {**cd, **fs, "normal_consistency": nc}.items():
        np.testing.assert_allclose(np.asarray(v), np.asarray(got[k]), rtol=1e-6, atol=1e-7)
    # unbatched input -> scalars
    one = shape_metrics(a[2], b[2], thresholds=TAUS, backend=backend)
    assert np.shape(one["cd_l1"]) == () and abs(float(one["cd_l1"]) - ref["cd_l1"][2]) <= 1e-5
    assert abs(float(f_score(a[2], b[2], 0.1, backend=backend)["f@0.1"]) - ref["f@0.1"][2]) <= 1e-6


def test_to_unit_cube():
    p = np.array([[0.95, -0.95, 0.0]], np.float32)
    np.testing.assert_allclose(to_unit_cube(p, 0.95), [[0.5, -0.5, 0.0]], rtol=1e-7)
    np.testing.assert_array_equal(to_unit_cube(p, 0.5), p)


# ----------------------------------------------------------------------------------------------------------------
# analytic cases
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,n", [("jax", 4000), ("kdtree", 20000)])
def test_concentric_spheres(backend, n):
    r1, r2 = 0.3, 0.35
    a, na = fibonacci_sphere(n, r1)
    b, nb = fibonacci_sphere(n, r2)
    m = shape_metrics(a, b, pred_normals=na, ref_normals=nb, thresholds=(0.02, 0.1), backend=backend)
    gap = r2 - r1
    assert abs(float(m["cd_l1"]) - gap) <= 0.05 * gap
    assert abs(float(m["cd_l2"]) - 2 * gap**2) <= 0.1 * 2 * gap**2
    assert float(m["accuracy"]) >= gap * (1 - 1e-5) and float(m["completeness"]) >= gap * (1 - 1e-5)
    assert float(m["f@0.02"]) == 0.0 and float(m["precision@0.02"]) == 0.0 and float(m["recall@0.02"]) == 0.0
    assert float(m["f@0.1"]) == 1.0 and float(m["precision@0.1"]) == 1.0 and float(m["recall@0.1"]) == 1.0
    assert float(m["normal_consistency"]) >= 0.999


def test_box_mesh_against_itself():
    v, f = box_mesh()
    p, n = sample_surface_points(v, f, 3000, seed=7)
    q, nq = sample_surface_points(v, f, 3000, seed=7)
    m = shape_metrics(p, q, pred_normals=n, ref_normals=nq, thresholds=(0.001, 0.01))
    assert float(m["cd_l1"]) == 0.0 and float(m["cd_l2"]) == 0.0
    assert float(m["f@0.001"]) == 1.0 and float(m["f@0.01"]) == 1.0
    assert abs(float(m["normal_consistency"]) - 1.0) <= 1e-6
    # samples lie on the box surface, with its axis-aligned outward normals
    h = np.array([0.3, 0.2, 0.1])
    assert np.all(np.abs(p) <= h + 1e-6)
    assert np.abs(np.abs(p) / h).max(1).min() >= 1 - 1e-6
    assert np.all(np.sort(np.abs(n), 1)[:, -1] == 1.0)
    face_axis = np.abs(n).argmax(1)
    assert np.all(np.sign(p[np.arange(len(p)), face_axis]) == np.sign(n[np.arange(len(p)), face_axis]))


def test_volume_iou():
    box = np.zeros((1, 8, 8, 8), bool)
    box[0, 2:6, 1:7, 3:5] = True
    assert float(volume_iou(box, box)[0]) == 1.0
    a = np.zeros((2, 8, 8, 8), np.int32)
    b = np.zeros((2, 8, 8, 8), np.float32)
    a[0, 0:4], b[0, 2:6] = 1, 1  # two slabs: intersection 2 slices, union 6
    a[1, :, :, 0:2], b[1, :, :, 1:3] = 1, 1
    np.testing.assert_allclose(np.asarray(volume_iou(a, b)), [1 / 3, 1 / 3], rtol=1e-7)
    empty = np.zeros((3, 10), bool)
    q = empty.copy()
    q[1, :5] = True
    np.testing.assert_array_equal(np.asarray(volume_iou(empty, q)), [1.0, 0.0, 1.0])  # both empty -> 1


# ----------------------------------------------------------------------------------------------------------------
# set metrics
# ----------------------------------------------------------------------------------------------------------------
def ellipsoids(rng, k, n=128, lo=0.15, hi=0.35):
    radii = rng.uniform(lo, hi, (k, 1, 3))
    d = rng.normal(size=(k, n, 3))
    return (d / np.linalg.norm(d, axis=-1, keepdims=True) * radii).astype(np.float32)


def test_pairwise_chamfer_loop_and_sharding():
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(1)
    X, Y = rng.uniform(-0.5, 0.5, (3, 50, 3)), rng.uniform(-0.5, 0.5, (4, 60, 3))
    for metric in ("cd_l2", "cd_l1"):
        d = np.asarray(pairwise_chamfer(X, Y, metric=metric, shard=False))
        loop = np.array([[float(chamfer_distance(x, y)[metric]) for y in Y] for x in X])
        assert d.shape == (3, 4)
        np.testing.assert_allclose(d, loop, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(pairwise_chamfer(X, Y, metric=metric, shard=True)), d)
        np.testing.assert_array_equal(np.asarray(pairwise_chamfer(X, Y, metric=metric, shard=True, chunk=1)), d)


def test_one_nna_same_distribution():
    vals = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        shapes = ellipsoids(rng, 40)[rng.permutation(40)]
        vals.append(float(set_metrics(shapes[:20], shapes[20:])["1nna_cd"]))
    assert 0.3 <= np.mean(vals) <= 0.7, vals
    assert max(vals) < 0.9, vals


def test_set_metrics_disjoint_and_self():
    rng = np.random.default_rng(3)
    spheres = ellipsoids(rng, 12, n=96, lo=0.08, hi=0.12)
    boxes = np.stack([to_unit_cube(sample_surface_points(*box_mesh(rng.uniform(0.35, 0.45, 3)), 96, seed=s)[0], 0.5)
                      for s in range(10)])
    m = set_metrics(spheres, boxes)
    assert float(m["1nna_cd"]) == 1.0
    assert float(m["mmd_cd"]) > 0.05
    same = set_metrics(spheres, spheres, metric="cd_l1")
    assert float(same["mmd_cd"]) == 0.0 and float(same["cov_cd"]) == 1.0
    # the matrices set_metrics builds agree with pairwise_chamfer's
    d_ss = np.asarray(pairwise_chamfer(spheres, spheres))
    d_sr = np.asarray(pairwise_chamfer(spheres, boxes))
    assert np.all(np.diag(d_ss) == 0.0)
    assert float(one_nna(d_ss, np.asarray(pairwise_chamfer(boxes, boxes)), d_sr)) == 1.0
    assert abs(float(mmd(d_sr)) - float(m["mmd_cd"])) <= 1e-7 and float(coverage(d_sr)) == float(m["cov_cd"])


def test_mmd_coverage_one_nna_by_hand():
    d_sr = np.array([[1.0, 4.0, 2.0], [3.0, 0.5, 5.0]])
    assert float(mmd(d_sr)) == pytest.approx((1.0 + 0.5 + 2.0) / 3)
    assert float(coverage(d_sr)) == pytest.approx(2 / 3)
    assert float(coverage([[1.0, 1.0], [2.0, 2.0]])) == 0.5  # ties: lowest reference index
    # all off-diagonal distances equal: samples pick the other sample (correct), references pick sample 0 (wrong)
    eq = np.ones((2, 2))
    assert float(one_nna(eq, eq, eq)) == 0.5
    d_ss, d_rr = np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    assert float(one_nna(d_ss, d_rr, np.full((2, 2), 9.0))) == 1.0
    assert float(one_nna(d_ss, d_rr, np.full((2, 2), 0.1))) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------
def test_sampling_determinism_and_grids():
    v, f = box_mesh()
    p1, n1 = sample_surface_points(v, f, 500, seed=0)
    p2, n2 = sample_surface_points(v, f, 500, seed=0)
    p3, _ = sample_surface_points(v, f, 500, seed=1)
    assert p1.dtype == n1.dtype == np.float32 and p1.shape == n1.shape == (500, 3)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(p1, p3)
    # occupancy grid: voxels 2..5 of 8 on [-0.5, 0.5] -> the box [-0.25, 0.25]^3 (marching cubes at iso 0.5)
    occ = np.zeros((8, 8, 8), bool)
    occ[2:6, 2:6, 2:6] = True
    q1, m1 = occupancy_to_points(occ, 2000, seed=0)
    q2, _ = occupancy_to_points(occ.astype(np.uint8), 2000, seed=0)
    np.testing.assert_array_equal(q1, q2)
    linf = np.abs(q1).max(1)
    assert np.all(linf <= 0.25 + 1e-6) and np.all(linf >= 0.25 - 0.125 - 1e-6)
    assert np.mean(np.abs(linf - 0.25) < 1e-6) > 0.5  # most of the surface is on the voxel faces
    assert np.all((m1 * q1).sum(1) > 0)  # outward normals
    # SDF grid of a sphere r = 0.3 on [-1, 1] (inside positive)
    g = (0.3 - np.linalg.norm(grid_points(32), axis=-1)).reshape(33, 33, 33)
    s1, sn = sdf_grid_to_points(g, 2000, seed=5, bound=1.0)
    s2, _ = sdf_grid_to_points(g * 0.5, 2000, seed=5, bound=0.5)  # same field on a half-size grid
    r = np.linalg.norm(s1, axis=1)
    assert np.all(np.abs(r - 0.3) < 0.01) and np.all((sn * s1).sum(1) / r > 0.95)
    np.testing.assert_allclose(s2, 0.5 * s1, atol=1e-6)
    s3, _ = sdf_grid_to_points(g, 2000, seed=5, bound=1.0, iso=0.1)
    assert abs(np.linalg.norm(s3, axis=1).mean() - 0.2) < 0.01


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
def _pts(*shape):
    return np.zeros(shape, np.float32) + np.arange(shape[-2], dtype=np.float32)[:, None] * 0.01


@pytest.mark.parametrize("call,match", [
    (lambda: chamfer_distance(np.zeros((0, 3)), _pts(5, 3)), "a is an empty point set"),
    (lambda: chamfer_distance(_pts(5, 3), np.zeros((2, 0, 3))), "b is an empty point set"),
    (lambda: nearest_sq_dists(np.array([[0.0, np.nan, 0.0]]), _pts(5, 3)), "a contains NaN or Inf"),
    (lambda: f_score(_pts(5, 3), np.array([[np.inf, 0.0, 0.0]]), backend="kdtree"), "b contains NaN or Inf"),
    (lambda: chamfer_distance(_pts(2, 5, 3), _pts(3, 5, 3)), "same batch shape"),
    (lambda: chamfer_distance(_pts(5, 3), _pts(2, 5, 3)), "same batch shape"),
    (lambda: chamfer_distance(_pts(5, 2), _pts(5, 3)), r"a must have shape \[\.\.\., N, 3\]"),
    (lambda: pairwise_sq_dists(_pts(5, 3), _pts(5, 4)), r"b must have shape"),
    (lambda: f_score(_pts(5, 3), _pts(5, 3), thresholds=(0.1, 0.0)), "thresholds must be positive"),
    (lambda: f_score(_pts(5, 3), _pts(5, 3), thresholds=-1.0), "thresholds must be positive"),
    (lambda: f_score(_pts(5, 3), _pts(5, 3), thresholds=()), "thresholds must be a non-empty"),
    (lambda: chamfer_distance(_pts(5, 3), _pts(5, 3), backend="faiss"), "backend must be one of"),
    (lambda: nearest_sq_dists(_pts(5, 3), _pts(5, 3), chunk=0), "chunk must be a positive int"),
    (lambda: normal_consistency(_pts(5, 3), np.zeros((5, 3)), _pts(4, 3), np.ones((4, 3))), "a_normals .*zero"),
    (lambda: normal_consistency(_pts(5, 3), np.ones((4, 3)), _pts(4, 3), np.ones((4, 3))), "a_normals must have"),
    (lambda: shape_metrics(_pts(5, 3), _pts(4, 3), pred_normals=np.ones((5, 3))), "given together"),
    (lambda: volume_iou(np.zeros((2, 4), bool), np.zeros((2, 5), bool)), "same shape"),
    (lambda: volume_iou(np.full((2, 4), 0.5), np.zeros((2, 4))), "occ_a must be boolean or .*0/1"),
    (lambda: volume_iou(np.zeros(4, bool), np.zeros(4, bool)), r"occ_a must be a non-empty array \[B"),
    (lambda: pairwise_chamfer(_pts(5, 3), _pts(2, 5, 3)), r"X must have shape \[S, N, 3\]"),
    (lambda: pairwise_chamfer(_pts(2, 5, 3), _pts(2, 5, 3), metric="emd"), "metric must be one of"),
    (lambda: set_metrics(_pts(2, 5, 3), np.zeros((0, 5, 3))), "references has an empty batch"),
    (lambda: mmd(np.zeros((0, 3))), "d_sr must be a non-empty"),
    (lambda: one_nna(np.zeros((2, 2)), np.zeros((3, 3)), np.full((2, 2), np.nan)), "d_sr must contain finite"),
    (lambda: one_nna(np.zeros((2, 2)), np.zeros((3, 3)), np.ones((2, 2))), r"d_rr must be shape \(2, 2\)"),
    (lambda: to_unit_cube(_pts(5, 3), 0.0), "bound must be a positive"),
    (lambda: sample_surface_points(np.zeros((3, 3)), np.zeros((0, 3), np.int64), 10, seed=0), "faces is empty"),
    (lambda: sample_surface_points(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, seed=0), "zero total area"),
    (lambda: sample_surface_points(*box_mesh(), 0, seed=0), "n must be a positive int"),
    (lambda: sample_surface_points(*box_mesh(), 5, seed=-1), "seed must be"),
    (lambda: occupancy_to_points(np.zeros((4, 4, 4), bool), 10, seed=0), "occ has no occupied voxel"),
    (lambda: occupancy_to_points(np.ones((4, 4), bool), 10, seed=0), r"occ must be a cubic grid"),
    (lambda: sdf_grid_to_points(-np.ones((5, 5, 5)), 10, seed=0, bound=1.0), "sdf: the iso-surface"),
    (lambda: sdf_grid_to_points(np.ones((5, 5, 5)), 10, seed=0, bound=-1.0), "bound must be a positive"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
