"""The evaluation protocol over lists of shapes: meshes -> seeded surface samples in the unit-cube frame ->
per-shape reconstruction metrics and set-level generation metrics (``docs/evaluation.md`` defines each number).

Used by evaluation during training (``jaxshape.trainer.evaluation``) and by ``python -m jaxshape.evaluate``, so a
number means the same thing in both.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from jaxshape.eval.metrics import DEFAULT_THRESHOLDS, coverage, mmd, one_nna, pairwise_chamfer, shape_metrics
from jaxshape.eval.sampling import sample_surface_points


def shape_surface_points(shapes: Sequence, n: int, *, bound: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples of each mesh in the unit-cube frame.

    Args:
      shapes: objects with ``vertices [V, 3]`` and ``faces [F, 3]`` (``jaxshape.geometry.Shape``), in a frame whose
        meshes span ``[-bound, bound]`` (TRELLIS 0.5, PartPacker 0.95: ``jaxshape.families``).
      n: points per shape. seed: shape ``i`` is sampled with seed ``seed + i``.

    Returns:
      ``(points float32 [S, n, 3], empty bool [S])``: a shape with no surface has ``empty`` set and zero points.
    """
    pts = np.zeros((len(shapes), n, 3), np.float32)
    empty = np.zeros(len(shapes), bool)
    for i, s in enumerate(shapes):
        if len(s.faces) == 0:
            empty[i] = True
            continue
        try:
            p, _ = sample_surface_points(s.vertices, s.faces, n, seed=seed + i)
        except ValueError:  # zero-area surface
            empty[i] = True
            continue
        pts[i] = p / (2.0 * bound)
    return pts, empty


def reconstruction_report(pred: np.ndarray, pred_empty: np.ndarray, ref: np.ndarray,
                          iou: Optional[np.ndarray] = None, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Mean per-shape metrics of reconstructions against their references (unit-cube frame).

    Args:
      pred, ref: ``[S, N, 3]`` / ``[S, M, 3]`` surface samples (:func:`shape_surface_points`).
      pred_empty: ``[S]`` reconstructions without a surface: they count F = 0 and are left out of the Chamfer means
        (``empty`` reports their fraction).
      iou: optional ``[S]`` volume IoUs, averaged as ``iou``.

    Returns:
      ``{"cd_l1", "cd_l2", "f@τ"..., "empty", "iou"}`` as floats (Chamfer NaN if every shape is empty).
    """
    out = {}
    keep = ~np.asarray(pred_empty, bool)
    n = len(keep)
    if keep.any():
        m = {k: np.asarray(v) for k, v in shape_metrics(pred[keep], ref[keep], thresholds=thresholds).items()}
    else:
        m = {}
    out["cd_l1"] = float(m["cd_l1"].mean()) if m else float("nan")
    out["cd_l2"] = float(m["cd_l2"].mean()) if m else float("nan")
    for t in thresholds:
        key = f"f@{t:g}"
        out[key] = float(m[key].sum() / n) if m else 0.0
    out["empty"] = float((~keep).mean())
    if iou is not None:
        out["iou"] = float(np.mean(iou))
    return out


def generation_report(samples: np.ndarray, samples_empty: np.ndarray, refs: np.ndarray, *,
                      requested: Optional[np.ndarray] = None, pool: Optional[np.ndarray] = None,
                      pool_labels: Optional[np.ndarray] = None, metric: str = "cd_l2") -> dict:
    """Set metrics of generated shapes against reference shapes, and condition consistency.

    Args:
      samples: ``[S, N, 3]`` generated shapes' surface samples (unit cube); ``samples_empty [S]`` those without a
        surface (they are kept, as points at the origin, so an empty sample counts against every metric).
      refs: ``[R, N, 3]`` reference shapes for MMD / COV / 1-NNA (PointFlow; use ``R = S``).
      requested, pool, pool_labels: for class-conditioned samples, the requested label of each sample and a pool of
        labelled held-out shapes ``[P, N, 3]`` / ``[P]``: ``class_consistency`` is the fraction of samples whose
        nearest pool shape (by ``metric``) has the requested label.
      metric: ``"cd_l2"`` or ``"cd_l1"``, the distance of every set metric.

    Returns:
      ``{"mmd_cd", "cov_cd", "1nna_cd", "empty"[, "class_consistency"]}`` as floats, plus ``"nearest"``: the index of
      each sample's nearest pool shape (or reference) for pictures.
    """
    d_sr = np.asarray(pairwise_chamfer(samples, refs, metric=metric), np.float64)
    d_ss = np.asarray(pairwise_chamfer(samples, samples, metric=metric), np.float64)
    d_rr = np.asarray(pairwise_chamfer(refs, refs, metric=metric), np.float64)
    out = {"mmd_cd": mmd(d_sr), "cov_cd": coverage(d_sr), "1nna_cd": one_nna(d_ss, d_rr, d_sr),
           "empty": float(np.mean(samples_empty))}
    nearest = d_sr.argmin(axis=1)
    if requested is not None and pool is not None and pool_labels is not None:
        d_sp = np.asarray(pairwise_chamfer(samples, pool, metric=metric), np.float64)
        nearest = d_sp.argmin(axis=1)
        out["class_consistency"] = float(np.mean(np.asarray(pool_labels)[nearest] == np.asarray(requested)))
    out["nearest"] = nearest.tolist()
    return out


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded random permutation of ``range(n)`` with no fixed point (``n >= 2``): one random cycle through all
    of them, so every shape is paired with another one."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    order = np.random.default_rng([seed, 0xDE7A]).permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def condition_report(samples: np.ndarray, samples_empty: np.ndarray, refs: np.ndarray, *,
                     shuffled: Optional[np.ndarray] = None, perm: Optional[np.ndarray] = None,
                     metric: str = "cd_l1", f_threshold: float = 0.05, seed: int = 0,
                     labels: Optional[np.ndarray] = None) -> dict:
    """Whether per-example conditions (an image of a shape, its features) steer the samples to that shape.

    Args:
      samples: ``[S, N, 3]`` surface samples (unit cube) of shapes generated from the conditions of the reference
        shapes ``refs [S, M, 3]``, sample ``i`` from reference ``i``'s condition; ``samples_empty [S]``: samples
        without a surface (kept as points at the origin: they count against every number).
      shuffled: optional ``[S, N, 3]``: the same generation (same noise per slot) with the conditions permuted by
        ``perm`` -- sample ``i`` from reference ``perm[i]``'s condition.
      perm: the derangement of ``shuffled`` (default :func:`derangement` of ``seed``); also the "other" pairing of
        the F-score.
      metric: the Chamfer distance reported (``"cd_l1"`` or ``"cd_l2"``); f_threshold: the F-score's τ.
      labels: optional ``[S]`` class labels of the references (``< 0``: unknown) for ``cond_ratio_class_only``.

    Returns:
      ``cond_cd_matched`` (mean distance of a sample to the shape whose condition made it), ``cond_cd_other`` (to
      every other reference shape, averaged), ``cond_ratio_other`` (matched / other: 1 means the condition is
      ignored), ``cond_retrieval`` (fraction of samples whose nearest reference is their own; chance ``1 / S``),
      ``cond_f_matched`` / ``cond_f_other`` (F@τ to the own / a deranged reference), and with ``shuffled``:
      ``cond_cd_shuffled`` (reference ``i`` vs the sample made from another's condition with sample ``i``'s
      noise), ``cond_ratio_shuffled`` (matched / shuffled) and ``cond_f_shuffled``; with ``labels``,
      ``cond_ratio_class_only``: the ratio a generator would score that read only the class from its condition and
      returned another true shape of that class (references against each other: same class / any other).
    """
    s = len(samples)
    if s < 2 or len(refs) != s:
        raise ValueError(f"the condition report needs >= 2 samples and one reference per sample, got {s} samples "
                         f"and {len(refs)} references")
    perm = derangement(s, seed) if perm is None else np.asarray(perm)
    d = np.asarray(pairwise_chamfer(samples, refs, metric=metric), np.float64)
    matched = np.diag(d)
    other = (d.sum(axis=1) - matched) / (s - 1)
    key = f"f@{f_threshold:g}"
    f_own = np.asarray(shape_metrics(samples, refs, thresholds=(f_threshold,))[key])
    f_other = np.asarray(shape_metrics(samples, refs[perm], thresholds=(f_threshold,))[key])
    out = {"cond_cd_matched": float(matched.mean()), "cond_cd_other": float(other.mean()),
           "cond_ratio_other": float(matched.mean() / other.mean()),
           "cond_retrieval": float(np.mean(d.argmin(axis=1) == np.arange(s))),
           "cond_f_matched": float(f_own.mean()), "cond_f_other": float(f_other.mean()),
           "cond_empty": float(np.mean(samples_empty))}
    if labels is not None:
        labels = np.asarray(labels)
        d_rr = np.asarray(pairwise_chamfer(refs, refs, metric=metric), np.float64)
        off = ~np.eye(s, dtype=bool)
        same = (labels[:, None] == labels[None, :]) & off
        rows = same.any(axis=1) & (labels >= 0)
        if rows.any():
            mean_same = np.array([d_rr[i, same[i]].mean() for i in np.flatnonzero(rows)])
            mean_any = np.array([d_rr[i, off[i]].mean() for i in np.flatnonzero(rows)])
            out["cond_ratio_class_only"] = float(mean_same.mean() / mean_any.mean())
    if shuffled is not None:
        # reference perm[i]'s condition made shuffled[i]: compare it with reference i (sample i's own target)
        m = shape_metrics(shuffled, refs, thresholds=(f_threshold,))
        cd = float(np.asarray(m[metric]).mean())
        out.update(cond_cd_shuffled=cd, cond_ratio_shuffled=float(matched.mean() / cd),
                   cond_f_shuffled=float(np.asarray(m[key]).mean()))
    return out
