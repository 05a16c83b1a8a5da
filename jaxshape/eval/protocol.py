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
