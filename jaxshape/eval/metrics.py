"""Point-cloud shape metrics (Chamfer, F-score, normal consistency, volume IoU) and set metrics (MMD, COV, 1-NNA).

Conventions shared by every function here:

* Points are real arrays ``[..., N, 3]``; the leading dims are batch dims and must agree between the two sets.
  Distances are Euclidean **in the frame the points are given in**.  The project evaluates in the *unit-cube
  frame*: each shape's coordinates are mapped so that the unit cube ``[-0.5, 0.5]^3`` is the domain, i.e. a
  family whose meshes live in ``[-b, b]^3`` is divided by ``2b`` (:func:`to_unit_cube`; TRELLIS meshes ``b = 0.5``
  are unchanged, PartPacker meshes ``b = 0.95`` are divided by 1.9).  Thresholds (F-score) are in that frame.
* ``backend="jax"`` (default) computes on the default JAX device in float32 and returns JAX arrays;
  ``backend="kdtree"`` uses ``scipy.spatial.cKDTree`` (numpy float64 in and out) for point sets too large for a
  dense chunk.  Both give the same nearest neighbours and distances (to float32 rounding).
* Nearest neighbours (jax): squared distances of a chunk are formed as ``|a|^2 + |b|^2 - 2 a.b`` (fp32,
  ``Precision.HIGHEST``), the nearest index is the lowest index attaining the minimum, and the returned squared
  distance is then recomputed exactly as ``sum((a - b[idx])^2)``, so identical points give exactly 0.
* Bad input raises ``ValueError`` naming the argument and the rule (empty set, NaN/Inf, batch mismatch, last dim).

References: Mescheder et al. 2019 (Occupancy Networks: L1 Chamfer, normal consistency, IoU); Tatarchenko et al.
2019 (F-score at a distance threshold); Yang et al. 2019, "PointFlow: 3D Point Cloud Generation with Continuous
Normalizing Flows", §5 (Chamfer as the sum of the two mean squared distances; MMD, COV, 1-NNA).
"""
from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["to_unit_cube", "pairwise_sq_dists", "nearest_sq_dists", "chamfer_distance", "f_score",
           "normal_consistency", "volume_iou", "shape_metrics", "pairwise_chamfer", "mmd", "coverage", "one_nna",
           "set_metrics", "DEFAULT_THRESHOLDS", "SHARD_MIN_PAIRS"]

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1)
SHARD_MIN_PAIRS = 128  # pairwise_chamfer(shard=None) shards over devices from this many pairs on
_PAIR_BUDGET = 1 << 24  # auto pair chunk: chunk * N * M <= this many distance entries
_BACKENDS = ("jax", "kdtree")
_METRICS = ("cd_l2", "cd_l1")


# ----------------------------------------------------------------------------------------------------------------
# validation (numpy inputs are checked on the host, JAX arrays on their device)
# ----------------------------------------------------------------------------------------------------------------
def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def _points(name, x, backend="jax", sets=False):
    """``x`` checked as points ``[..., N, 3]`` (``sets``: exactly ``[S, N, 3]``) -> float32 JAX array (``jax``) or
    float64 numpy array (``kdtree``)."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if x.dtype.kind not in "fiu" and x.dtype.name != "bfloat16":
        raise ValueError(f"{name} must be a real (float or int) array of points, got dtype {x.dtype}")
    if (x.ndim != 3 if sets else x.ndim < 2) or x.shape[-1] != 3:
        lead = "S, " if sets else "..., "
        raise ValueError(f"{name} must have shape [{lead}N, 3] (last dim 3), got shape {tuple(x.shape)}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} is an empty point set (N = 0 points), shape {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"{name} has an empty batch, shape {tuple(x.shape)}")
    if not bool(_xp(x).all(_xp(x).isfinite(x))):
        raise ValueError(f"{name} contains NaN or Inf coordinates; all points must be finite")
    return jnp.asarray(x, jnp.float32) if backend == "jax" else np.asarray(x, np.float64)


def _normals(name, n, points_shape, backend):
    """Normals checked against their points' shape (finite, non-zero); converted like :func:`_points`."""
    n = n if isinstance(n, jax.Array) else np.asarray(n)
    if tuple(n.shape) != tuple(points_shape):
        raise ValueError(f"{name} must have the shape of its points {tuple(points_shape)}, got {tuple(n.shape)}")
    n = _points(name, n, "numpy" if isinstance(n, np.ndarray) else "jax")
    if not bool(_xp(n).all(_xp(n).sum(n * n, axis=-1) > 0)):
        raise ValueError(f"{name} contains zero-length normals; every normal must be non-zero")
    return jnp.asarray(n, jnp.float32) if backend == "jax" else np.asarray(n, np.float64)


def _one_of(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _pos_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _pair(a, b, backend, names=("a", "b")):
    """Validated pair flattened to ``[B, N, 3], [B, M, 3]`` plus the batch shape (``()`` for unbatched)."""
    _one_of("backend", backend, _BACKENDS)
    a, b = _points(names[0], a, backend), _points(names[1], b, backend)
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same batch shape, got {tuple(a.shape[:-2])} "
                         f"and {tuple(b.shape[:-2])}")
    return a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:]), tuple(a.shape[:-2])


def _pos_real(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def _thresholds(thresholds):
    ts = (thresholds,) if isinstance(thresholds, numbers.Real) else tuple(thresholds)
    if not ts:
        raise ValueError("thresholds must be a non-empty sequence of positive numbers, got ()")
    for t in ts:
        if not _pos_real(t):
            raise ValueError(f"thresholds must be positive finite numbers, got {thresholds!r}")
    return tuple(float(t) for t in ts)


# ----------------------------------------------------------------------------------------------------------------
# frames and nearest neighbours
# ----------------------------------------------------------------------------------------------------------------
def to_unit_cube(points, bound):
    """Map points from a family's mesh frame ``[-bound, bound]^3`` to the unit-cube frame: ``points / (2*bound)``.

    ``points``: ``[..., 3]`` float (numpy or JAX; the type and dtype are kept); ``bound``: positive finite scalar
    (e.g. ``jaxshape.families.FAMILIES[name].mesh_bound``).  Returns an array of the same shape.
    """
    if not _pos_real(bound):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    if np.shape(points)[-1:] != (3,):
        raise ValueError(f"points must have shape [..., 3] (last dim 3), got shape {tuple(np.shape(points))}")
    return points / (2.0 * float(bound))


@jax.jit
def _sq_dists(a, b):
    return jnp.sum(jnp.square(a[:, :, None, :] - b[:, None, :, :]), axis=-1)


def pairwise_sq_dists(a, b):
    """All squared Euclidean distances ``D[..., i, j] = sum_k (a[..., i, k] - b[..., j, k])^2``.

    ``a``: ``[..., N, 3]``, ``b``: ``[..., M, 3]`` (same leading dims) -> float32 JAX array ``[..., N, M]``.
    Direct difference form in fp32 (no cancellation: matches a float64 brute force to ~1e-7 relative); memory is
    ``O(N * M)``, so use :func:`nearest_sq_dists` for large sets.
    """
    a3, b3, batch = _pair(a, b, "jax")
    d = _sq_dists(a3, b3)
    return d.reshape(batch + d.shape[1:])


def _nn_rows(a, b):
    """Nearest point of ``b [M,3]`` for each row of ``a [N,3]`` -> (exact squared distance [N], index int32 [N])."""
    d = (jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :]
         - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
    m = jnp.min(d, axis=1, keepdims=True)
    n_b = b.shape[0]
    iota = jnp.arange(n_b, dtype=jnp.float32 if n_b < (1 << 24) else jnp.int32)  # float min-reduce is faster
    idx = jnp.min(jnp.where(d == m, iota[None, :], n_b), axis=1).astype(jnp.int32)
    return jnp.sum(jnp.square(a - b[idx]), axis=-1), idx


@functools.partial(jax.jit, static_argnames=("chunk",))
def _nn_jax(a, b, chunk):
    """[B,N,3], [B,M,3] -> ([B,N] float32, [B,N] int32); lax.map over batch and over chunks of ``a``."""
    n = a.shape[1]
    c = min(chunk, n)
    steps = -(-n // c)
    pad = steps * c - n

    def one(ab):
        x, y = ab
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, 3))]) if pad else x
        sq, idx = jax.lax.map(lambda xc: _nn_rows(xc, y), x.reshape(steps, c, 3))
        return sq.reshape(-1)[:n], idx.reshape(-1)[:n]

    return jax.lax.map(one, (a, b))


def _nn_kdtree(a, b):
    from scipy.spatial import cKDTree

    out = [cKDTree(y).query(x, k=1, workers=-1) for x, y in zip(a, b)]
    return np.stack([d for d, _ in out]) ** 2, np.stack([i for _, i in out]).astype(np.int64)


def nearest_sq_dists(a, b, *, chunk: int = 4096, backend: str = "jax"):
    """For each point of ``a`` the squared distance to, and index of, its nearest point in ``b``.

    ``a``: ``[..., N, 3]``, ``b``: ``[..., M, 3]`` (same leading dims, e.g. ``[B]`` or none) -> ``(sq_dist [..., N],
    index [..., N])`` with ``sq_dist[..., i] = min_j |a[..., i] - b[..., j]|^2`` and ``index`` the lowest ``j``
    attaining it.  ``jax``: float32 / int32 JAX arrays, computed in chunks of ``chunk`` points of ``a`` (memory
    ``O(chunk * M)``, one shape at a time).  ``kdtree``: numpy float64 / int64 via ``scipy.spatial.cKDTree``.
    """
    a3, b3, batch = _pair(a, b, backend)
    sq, idx = _nn_jax(a3, b3, _pos_int("chunk", chunk)) if backend == "jax" else _nn_kdtree(a3, b3)
    return sq.reshape(batch + sq.shape[1:]), idx.reshape(batch + idx.shape[1:])


# ----------------------------------------------------------------------------------------------------------------
# shape metrics: one nearest-neighbour pass each way feeds all of them
# ----------------------------------------------------------------------------------------------------------------
def _terms(xp, sq_ab, i_ab, sq_ba, i_ba, na, nb, thresholds):
    d_ab, d_ba = xp.sqrt(sq_ab), xp.sqrt(sq_ba)
    acc, comp = xp.mean(d_ab, -1), xp.mean(d_ba, -1)
    out = {"cd_l1": 0.5 * (acc + comp), "cd_l2": xp.mean(sq_ab, -1) + xp.mean(sq_ba, -1), "accuracy": acc,
           "completeness": comp}
    for t in thresholds:
        p, r = xp.mean(d_ab <= t, -1), xp.mean(d_ba <= t, -1)
        if xp is jnp:  # F from the rounded P, R: fused with the means, XLA gave 0.99999994 for P = R = 1
            p, r = jax.lax.optimization_barrier((p, r))
        out[f"f@{t:g}"] = xp.where(p + r > 0, 2 * p * r / xp.where(p + r > 0, p + r, 1), 0)
        out[f"precision@{t:g}"], out[f"recall@{t:g}"] = p, r
    if na is not None:
        na, nb = (n / xp.linalg.norm(n, axis=-1, keepdims=True) for n in (na, nb))

        def directed(n, m, idx):
            return xp.mean(xp.abs(xp.sum(n * xp.take_along_axis(m, idx[..., None], axis=-2), -1)), -1)

        out["normal_consistency"] = 0.5 * (directed(na, nb, i_ab) + directed(nb, na, i_ba))
    return out


@functools.partial(jax.jit, static_argnames=("chunk", "thresholds"))
def _shape_jax(a, b, na, nb, chunk, thresholds):
    return _terms(jnp, *_nn_jax(a, b, chunk), *_nn_jax(b, a, chunk), na, nb, thresholds)


def _shape_all(a, b, na, nb, thresholds, backend, chunk, names=("a", "b", "a_normals", "b_normals")):
    a3, b3, batch = _pair(a, b, backend, names[:2])
    if na is not None:
        na = _normals(names[2], na, batch + a3.shape[1:], backend).reshape(a3.shape)
        nb = _normals(names[3], nb, batch + b3.shape[1:], backend).reshape(b3.shape)
    if backend == "jax":
        out = _shape_jax(a3, b3, na, nb, chunk=_pos_int("chunk", chunk), thresholds=thresholds)
    else:
        out = _terms(np, *_nn_kdtree(a3, b3), *_nn_kdtree(b3, a3), na, nb, thresholds)
    return {k: v.reshape(batch) for k, v in out.items()}


def chamfer_distance(a, b, *, backend: str = "jax", chunk: int = 4096):
    """Chamfer distances between prediction ``a [..., N, 3]`` and reference ``b [..., M, 3]``.

    Returns a dict of float arrays of the batch shape (``[B]``, or scalars for unbatched input), with
    ``d(x, Y) = min_{y in Y} |x - y|`` (Euclidean, in the given frame; the project uses the unit-cube frame):

    * ``"accuracy"`` = ``mean_{x in a} d(x, b)``; ``"completeness"`` = ``mean_{y in b} d(y, a)``;
    * ``"cd_l1"`` = ``(accuracy + completeness) / 2`` (Occupancy Networks' L1 Chamfer);
    * ``"cd_l2"`` = ``mean_{x in a} d(x, b)^2 + mean_{y in b} d(y, a)^2`` (PointFlow's: sum of the two means of
      squared distances, no 1/2).

    jax backend: float32 JAX arrays; kdtree: float64 numpy.  See :func:`nearest_sq_dists` for ``chunk``.
    """
    return _shape_all(a, b, None, None, (), backend, chunk)


def f_score(a, b, thresholds=DEFAULT_THRESHOLDS, *, backend: str = "jax", chunk: int = 4096):
    """F-score of prediction ``a [..., N, 3]`` against reference ``b [..., M, 3]`` at each distance threshold.

    For each ``tau`` (positive; formatted with ``:g`` in the keys) a flat dict holds arrays of the batch shape:
    ``"precision@tau"`` = fraction of points of ``a`` with ``d(x, b) <= tau``; ``"recall@tau"`` = fraction of points
    of ``b`` with ``d(y, a) <= tau``; ``"f@tau"`` = ``2 P R / (P + R)``, and 0 when ``P + R = 0``.  Distances are
    unsquared Euclidean (inclusive ``<=``) in the given frame (thresholds are unit-cube-frame lengths in this
    project).  jax: float32 JAX arrays; kdtree: float64 numpy.
    """
    out = _shape_all(a, b, None, None, _thresholds(thresholds), backend, chunk)
    return {k: v for k, v in out.items() if "@" in k}


def normal_consistency(a, a_normals, b, b_normals, *, backend: str = "jax", chunk: int = 4096):
    """Normal consistency of oriented point sets (Occupancy Networks), unsigned.

    ``a, a_normals``: ``[..., N, 3]``; ``b, b_normals``: ``[..., M, 3]``.  Normals are normalised here (a zero normal
    is an error).  Returns, per batch item (float32 JAX / float64 numpy array of the batch shape), in ``[0, 1]``:
    ``0.5 * (mean_{x in a} |<n_x, n_{NN_b(x)}>| + mean_{y in b} |<n_y, n_{NN_a(y)}>|)`` where ``NN_b(x)`` is the
    nearest point of ``b`` to ``x`` (lowest index on ties).
    """
    return _shape_all(a, b, a_normals, b_normals, (), backend, chunk)["normal_consistency"]


@jax.jit
def _iou(a, b):
    inter = jnp.sum(a & b, axis=1).astype(jnp.float32)
    union = jnp.sum(a | b, axis=1).astype(jnp.float32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def volume_iou(occ_a, occ_b):
    """Volumetric IoU of occupancies: ``|a AND b| / |a OR b|`` per batch item, **1.0 when both are empty**.

    ``occ_a``, ``occ_b``: boolean or 0/1 arrays of equal shape ``[B, ...]`` -- the leading axis is always the batch
    (grids ``[B, R, R, R]``, or occupancies at shared query points ``[B, Q]``).  Returns float32 JAX ``[B]``.
    """
    arrs = []
    for name, o in (("occ_a", occ_a), ("occ_b", occ_b)):
        o = o if isinstance(o, jax.Array) else np.asarray(o)
        if o.ndim < 2 or o.size == 0:
            raise ValueError(f"{name} must be a non-empty array [B, ...] (batch first, ndim >= 2), got shape "
                             f"{tuple(o.shape)}")
        if o.dtype != bool:
            if not bool(_xp(o).all((o == 0) | (o == 1))):
                raise ValueError(f"{name} must be boolean or contain only 0/1 values")
            o = o != 0
        arrs.append(o)
    if arrs[0].shape != arrs[1].shape:
        raise ValueError(f"occ_a and occ_b must have the same shape, got {arrs[0].shape} and {arrs[1].shape}")
    return _iou(*(jnp.asarray(o).reshape(o.shape[0], -1) for o in arrs))


def shape_metrics(pred_points, ref_points, *, pred_normals=None, ref_normals=None, thresholds=DEFAULT_THRESHOLDS,
                  backend: str = "jax", chunk: int = 4096):
    """All point metrics of ``pred_points [..., N, 3]`` vs ``ref_points [..., M, 3]`` from one nearest-neighbour pass
    each way: one flat dict with ``cd_l1``, ``cd_l2``, ``accuracy``, ``completeness`` (:func:`chamfer_distance`),
    ``f@tau`` / ``precision@tau`` / ``recall@tau`` (:func:`f_score`) and, when both normal arrays are given
    (same shapes as their points), ``normal_consistency`` (:func:`normal_consistency`); values have the batch shape
    (float32 JAX for ``backend="jax"``, float64 numpy for ``"kdtree"``).
    """
    if (pred_normals is None) != (ref_normals is None):
        raise ValueError("pred_normals and ref_normals must be given together (both or neither)")
    return _shape_all(pred_points, ref_points, pred_normals, ref_normals, _thresholds(thresholds), backend, chunk,
                      names=("pred_points", "ref_points", "pred_normals", "ref_normals"))


# ----------------------------------------------------------------------------------------------------------------
# set metrics (PointFlow, Yang et al. 2019, §5)
# ----------------------------------------------------------------------------------------------------------------
def _pair_cd(x, y, metric):
    sq_xy, sq_yx = _nn_rows(x, y)[0], _nn_rows(y, x)[0]
    if metric == "cd_l2":
        return jnp.mean(sq_xy) + jnp.mean(sq_yx)
    return 0.5 * (jnp.mean(jnp.sqrt(sq_xy)) + jnp.mean(jnp.sqrt(sq_yx)))


def _pairs_step(X, Y, ii, jj, *, metric):
    """Chamfer of the pairs ``(X[ii[p]], Y[jj[p]])`` -> ``[len(ii)]``."""
    return jax.vmap(functools.partial(_pair_cd, metric=metric))(X[ii], Y[jj])


_step_single = jax.jit(_pairs_step, static_argnames=("metric",))


@functools.lru_cache(maxsize=None)
def _step_sharded(metric, devices):
    mesh = Mesh(np.array(devices), ("pairs",))
    fn = jax.shard_map(functools.partial(_pairs_step, metric=metric), mesh=mesh,
                       in_specs=(P(), P(), P("pairs"), P("pairs")), out_specs=P("pairs"))
    return jax.jit(fn), NamedSharding(mesh, P()), NamedSharding(mesh, P("pairs"))


def _chamfer_pairs(X, Y, ii, jj, metric, chunk, shard):
    """Chamfer values (numpy float32 ``[len(ii)]``) of the index pairs: steps of ``c`` pairs per device (a power of
    two, the same on both paths, so a device runs the same program either way), the pair list padded to a whole
    number of steps; sharded steps split ``ndev * c`` pairs over a 1-D device mesh."""
    n_pairs, devices = len(ii), tuple(jax.devices())
    if shard is None:
        shard = len(devices) > 1 and n_pairs >= SHARD_MIN_PAIRS
    ndev = len(devices) if shard else 1
    c = _pos_int("chunk", chunk) if chunk is not None else max(1, _PAIR_BUDGET // (X.shape[1] * Y.shape[1]))
    c = 1 << (min(c, -(-n_pairs // len(devices))).bit_length() - 1)
    width = c * ndev
    total = -(-n_pairs // width) * width
    ii = np.concatenate([ii, np.zeros(total - n_pairs, np.int64)]).astype(np.int32)
    jj = np.concatenate([jj, np.zeros(total - n_pairs, np.int64)]).astype(np.int32)
    if shard:
        fn, rep, split = _step_sharded(metric, devices)
        X, Y = jax.device_put(X, rep), jax.device_put(Y, rep)
        steps = [fn(X, Y, jax.device_put(ii[k:k + width], split), jax.device_put(jj[k:k + width], split))
                 for k in range(0, total, width)]
    else:
        steps = [_step_single(X, Y, ii[k:k + width], jj[k:k + width], metric=metric) for k in range(0, total, width)]
    return np.concatenate([np.asarray(o) for o in steps])[:n_pairs]


def _cross_matrix(X, Y, metric, chunk, shard):
    s, r = X.shape[0], Y.shape[0]
    ii, jj = np.divmod(np.arange(s * r, dtype=np.int64), r)
    return _chamfer_pairs(X, Y, ii, jj, metric, chunk, shard).reshape(s, r)


def pairwise_chamfer(X, Y, *, metric: str = "cd_l2", chunk=None, shard=None):
    """Matrix of Chamfer distances between every shape of ``X [S, N, 3]`` and of ``Y [R, M, 3]`` -> float32 JAX
    ``[S, R]`` with ``D[s, r] = chamfer(X[s], Y[r])[metric]`` (``"cd_l2"``: PointFlow's sum of mean squared
    distances; ``"cd_l1"``: Occupancy Networks' L1; see :func:`chamfer_distance`), as used by PointFlow's set
    metrics (Yang et al. 2019, §5).

    Pairs are computed batched on device in steps of ``c`` pairs per device, ``c`` = ``chunk`` (default: as many as
    keep ``c * N * M`` below 2**24 distance entries) capped at ``ceil(pairs / device count)`` and rounded down to a
    power of two, so memory is ``O(c * N * M)`` per device.  ``shard``: ``None`` (auto: more than one JAX device and
    at least ``SHARD_MIN_PAIRS`` pairs), ``True`` or ``False``; when sharding, each step's pair axis (the pair list
    padded to a multiple of ``device count * c``) is split over a 1-D mesh of ``jax.devices()`` with a
    ``NamedSharding``; every device runs the same per-step program as the single-device path, so the results are
    identical.
    """
    _one_of("metric", metric, _METRICS)
    return jnp.asarray(_cross_matrix(_points("X", X, sets=True), _points("Y", Y, sets=True), metric, chunk, shard))


def _dist_matrix(name, d, shape=None):
    d = np.asarray(d, np.float64)
    if d.ndim != 2 or d.size == 0 or (shape is not None and d.shape != shape):
        want = f"shape {shape}" if shape is not None else "a non-empty 2-D matrix"
        raise ValueError(f"{name} must be {want}, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError(f"{name} must contain finite, non-negative distances")
    return d


def mmd(d_sr) -> float:
    """Minimum matching distance (PointFlow, Yang et al. 2019, §5): ``mean_r min_s d_sr[s, r]``.

    ``d_sr``: ``[S, R]`` distances (numpy or JAX) from each sample to each reference shape -> Python float
    (computed in float64 on the host).
    """
    return float(np.mean(np.min(_dist_matrix("d_sr", d_sr), axis=0)))


def coverage(d_sr) -> float:
    """Coverage (PointFlow, Yang et al. 2019, §5): fraction of the ``R`` reference shapes that are the nearest
    reference (``argmin_r d_sr[s, r]``, lowest ``r`` on ties) of at least one sample ``s``.

    ``d_sr``: ``[S, R]`` -> Python float in ``[0, 1]``.
    """
    d = _dist_matrix("d_sr", d_sr)
    return len(np.unique(np.argmin(d, axis=1))) / d.shape[1]


def one_nna(d_ss, d_rr, d_sr) -> float:
    """1-NN accuracy (PointFlow, Yang et al. 2019, §5) of the leave-one-out 1-nearest-neighbour classifier on
    ``S ∪ R`` with labels sample / reference; 0.5 is ideal, 1.0 means the sets are fully separated.

    ``d_ss [S, S]``, ``d_rr [R, R]``, ``d_sr [S, R]`` -> Python float in ``[0, 1]``.  The full matrix
    ``[[d_ss, d_sr], [d_sr^T, d_rr]]`` in the concatenated order ``[S, R]`` is formed, its diagonal excluded
    (a shape is never its own neighbour; the diagonals of ``d_ss`` / ``d_rr`` are ignored), and each shape takes the
    label of its nearest neighbour; **ties** go to the lowest concatenated index (argmin), i.e. to a sample before a
    reference.  Accuracy = fraction of the ``S + R`` shapes whose neighbour carries their own label.
    """
    d_sr = _dist_matrix("d_sr", d_sr)
    s, r = d_sr.shape
    d_ss, d_rr = _dist_matrix("d_ss", d_ss, (s, s)), _dist_matrix("d_rr", d_rr, (r, r))
    full = np.block([[d_ss, d_sr], [d_sr.T, d_rr]])
    np.fill_diagonal(full, np.inf)
    label = np.arange(s + r) < s
    return float(np.mean(label[np.argmin(full, axis=1)] == label))


def _self_matrix(X, metric, chunk, shard):
    """Symmetric Chamfer matrix of a set with itself from its ``i < j`` pairs (diagonal 0)."""
    s = X.shape[0]
    ii, jj = np.triu_indices(s, 1)
    m = np.zeros((s, s), np.float32)
    if len(ii):
        m[ii, jj] = _chamfer_pairs(X, X, ii, jj, metric, chunk, shard)
        m[jj, ii] = m[ii, jj]
    return m


def set_metrics(samples, references, *, metric: str = "cd_l2", chunk=None, shard=None):
    """PointFlow's set metrics (Yang et al. 2019, §5) under the Chamfer distance ``metric`` (:func:`pairwise_chamfer`).

    ``samples [S, N, 3]`` (generated) and ``references [R, M, 3]`` -> dict of Python floats
    ``{"mmd_cd": mmd(d_sr), "cov_cd": coverage(d_sr), "1nna_cd": one_nna(d_ss, d_rr, d_sr)}``; the three
    matrices are computed once (the symmetric ``d_ss`` / ``d_rr`` from their upper triangles).
    """
    _one_of("metric", metric, _METRICS)
    X, Y = _points("samples", samples, sets=True), _points("references", references, sets=True)
    d_sr = _cross_matrix(X, Y, metric, chunk, shard)
    d_ss, d_rr = _self_matrix(X, metric, chunk, shard), _self_matrix(Y, metric, chunk, shard)
    return {"mmd_cd": mmd(d_sr), "cov_cd": coverage(d_sr), "1nna_cd": one_nna(d_ss, d_rr, d_sr)}
