"""Optimiser: optax AdamW with global-norm or TRELLIS's adaptive percentile clipping, LR schedule, EMA."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaptiveClipState(NamedTuple):
    norms: jax.Array  # ring buffer of pre-clip global norms
    count: jax.Array  # number of finite norms pushed so far


def adaptive_grad_clip(max_norm: float = 1.0, percentile: float = 95.0, buffer_size: int = 1000):
    """TRELLIS ``AdaptiveGradClipper``: clip the global norm to ``min(percentile of the last buffer_size finite
    pre-clip norms, max_norm)`` once the buffer is full, to ``max_norm`` before that."""

    def init_fn(params):
        del params
        return AdaptiveClipState(jnp.zeros((buffer_size,), jnp.float32), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        full = state.count >= buffer_size
        threshold = jnp.where(full, jnp.minimum(jnp.percentile(state.norms, percentile), max_norm), max_norm)
        scale = jnp.where(norm > threshold, threshold / jnp.maximum(norm, 1e-12), 1.0)
        updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
        finite = jnp.isfinite(norm)
        norms = jnp.where(finite, state.norms.at[state.count % buffer_size].set(norm), state.norms)
        return updates, AdaptiveClipState(norms, state.count + finite.astype(jnp.int32))

    return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(cfg) -> optax.Schedule:
    """``constant`` (TRELLIS) or ``cosine`` with linear warm-up."""
    kind = cfg.schedule
    if kind == "constant":
        if cfg.warmup_steps:
            return optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        return optax.constant_schedule(cfg.lr)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1), cfg.decay_steps,
                                                  cfg.end_lr)
    raise ValueError(f"optimizer.schedule must be 'constant' or 'cosine', got {kind!r}")


def make_optimizer(cfg) -> optax.GradientTransformation:
    """``config.optimizer`` (``jaxshape/trainer/defaults.py``) as clipping followed by AdamW."""
    clip = cfg.clip
    if clip == "global_norm":
        clipper = optax.clip_by_global_norm(cfg.max_grad_norm)
    elif clip == "adaptive":
        clipper = adaptive_grad_clip(cfg.max_grad_norm, cfg.clip_percentile, cfg.clip_buffer_size)
    elif clip in (None, "none"):
        clipper = optax.identity()
    else:
        raise ValueError(f"optimizer.clip must be 'global_norm', 'adaptive' or 'none', got {clip!r}")
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    return optax.chain(clipper, adamw)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """``ema ← decay · ema + (1 − decay) · params`` (every step, no warm-up, as TRELLIS)."""
    return optax.incremental_update(params, ema, step_size=1.0 - decay)
