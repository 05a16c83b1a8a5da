"""VAE reconstruction losses and occupancy metrics of both families (pure functions).

Reductions follow upstream exactly (see each docstring): TRELLIS's sparse-structure VAE (dice + KL) and PartPacker's
vecset VAE (MSE + L1 + KL on TSDF queries). The flow-matching objective lives in ``jaxshape.flow``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """TRELLIS SS-VAE KL: ``0.5 · mean(μ² + exp(logvar) − logvar − 1)`` over **all** elements (a scalar)."""
    return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0)


def dice_loss(logits: jax.Array, target: jax.Array, smooth: float = 1.0) -> jax.Array:
    """``1 − (2 Σ p y + 1) / (Σ p + Σ y + 1)`` with ``p = sigmoid(logits)``, one ratio over the whole batch."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    y = target.astype(jnp.float32)
    return 1.0 - (2.0 * jnp.sum(p * y) + smooth) / (jnp.sum(p) + jnp.sum(y) + smooth)


def binary_metrics(pred_positive: jax.Array, target_positive: jax.Array) -> dict:
    """IoU of the positive and negative sets and precision / recall / F1 of the positive set (over the batch;
    0 when a denominator is empty)."""
    p = pred_positive.astype(jnp.float32)
    y = target_positive.astype(jnp.float32)
    tp = jnp.sum(p * y)
    fp = jnp.sum(p * (1 - y))
    fn = jnp.sum((1 - p) * y)
    tn = jnp.sum((1 - p) * (1 - y))

    def div(a, b):
        return jnp.where(b > 0, a / jnp.maximum(b, 1e-12), 0.0)

    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    return {"iou_fg": div(tp, tp + fp + fn), "iou_bg": div(tn, tn + fp + fn), "precision": precision,
            "recall": recall, "f1": div(2 * precision * recall, precision + recall)}


def ss_vae_loss(logits, occupancy, mean, logvar, *, loss_type: str = "dice", kl_weight: float = 1e-3):
    """TRELLIS SS-VAE: ``recon + λ_KL · KL`` with recon ``dice`` (configs), ``bce`` (mean BCE-with-logits) or
    ``l1`` (mean |sigmoid − y|); KL is :func:`gaussian_kl`. Returns ``(loss, metrics)``."""
    y = occupancy.astype(jnp.float32)
    if loss_type == "dice":
        recon = dice_loss(logits, y)
    elif loss_type == "bce":
        recon = jnp.mean(jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    elif loss_type == "l1":
        recon = jnp.mean(jnp.abs(jax.nn.sigmoid(logits) - y))
    else:
        raise ValueError(f"loss_type must be 'dice', 'bce' or 'l1', got {loss_type!r}")
    kl = gaussian_kl(mean, logvar)
    metrics = {"recon": recon, "kl": kl, **binary_metrics(logits > 0, y > 0.5)}
    return recon + kl_weight * kl, metrics


def vecset_vae_loss(pred, target, kl, *, kl_weight: float = 1e-3):
    """PartPacker VAE: ``mean((p − y)²) + mean(|p − y|) + λ_KL · mean_b(kl)``; ``kl`` is the posterior's per-sample
    KL ([B]) or a scalar (``use_ae``). Metrics: sign IoU / precision / recall / F1 of ``pred > 0`` vs ``y > 0``
    (upstream logs precision/recall/F1 at 0.5, an inconsistency we do not reproduce)."""
    d = pred.astype(jnp.float32) - target.astype(jnp.float32)
    mse_, l1 = jnp.mean(jnp.square(d)), jnp.mean(jnp.abs(d))
    kl = jnp.mean(kl)
    metrics = {"mse": mse_, "l1": l1, "kl": kl, **binary_metrics(pred > 0, target > 0)}
    return mse_ + l1 + kl_weight * kl, metrics
