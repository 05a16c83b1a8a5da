"""Flow-matching objective pieces (pure functions): the velocity MSE and classifier-free-guidance dropout."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over every element (``F.mse_loss``), computed in fp32."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def cfg_dropout(rng: jax.Array, cond: jax.Array, uncond: jax.Array, p_uncond: float) -> jax.Array:
    """Replace each sample's condition by ``uncond`` (broadcast to it) with probability ``p_uncond``."""
    mask = jax.random.uniform(rng, (cond.shape[0],)) < p_uncond
    return jnp.where(mask.reshape((-1,) + (1,) * (cond.ndim - 1)), jnp.broadcast_to(uncond, cond.shape), cond)
