"""Training-time schedules and interpolants of the two rectified-flow conventions.

TRELLIS (t = 1 is noise): ``x_t = (1 - t) x0 + (σ_min + (1 - σ_min) t) ε``, target ``(1 - σ_min) ε - x0``,
``t = sigmoid(N(mean, std))`` ("logitNormal", configs: mean 1, std 1) or ``U[0, 1]``; the model sees ``1000 t``.

PartPacker (σ = 1 is noise): ``x_t = (1 - σ) x0 + σ ε``, target ``ε - x0``; σ is read from a 1000-entry shifted
table at ``floor(sigmoid(N(mean, std)) · 1000)``; the model sees ``1000 σ``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MIN = 1e-5


def sample_t_trellis(rng: jax.Array, batch: int, schedule: str = "logitNormal", mean: float = 1.0,
                     std: float = 1.0) -> jax.Array:
    """Per-sample t in (0, 1) (fp32)."""
    if schedule == "logitNormal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,), jnp.float32))
    if schedule == "uniform":
        return jax.random.uniform(rng, (batch,), jnp.float32)
    raise ValueError(f"t_schedule must be 'logitNormal' or 'uniform', got {schedule!r}")


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def trellis_noising(x0: jax.Array, noise: jax.Array, t: jax.Array, sigma_min: float = SIGMA_MIN):
    """``(x_t, target)`` of TRELLIS's flow: t = 0 data, t = 1 noise (up to σ_min)."""
    tb = _bcast(t, x0)
    x_t = (1 - tb) * x0 + (sigma_min + (1 - sigma_min) * tb) * noise
    return x_t, (1 - sigma_min) * noise - x0


def partpacker_sigma_table(shift: float = 3.0, num_train_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``(sigmas, timesteps)`` fp32 tables of ``FlowMatchingScheduler``: ``u_i = T_i / 1000`` with
    ``T = [1000, 999, ..., 1]``; ``σ_i = s u_i / (1 + (s - 1) u_i)``; ``timesteps_i = 1000 σ_i``."""
    u = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy() / num_train_timesteps
    sigmas = (shift * u / (1 + (shift - 1) * u)).astype(np.float32)
    return sigmas, (sigmas * num_train_timesteps).astype(np.float32)


def sample_sigma_partpacker(rng: jax.Array, batch: int, mean: float = 1.0, std: float = 1.0, shift: float = 3.0,
                            num_train_timesteps: int = 1000) -> tuple[jax.Array, jax.Array]:
    """``(σ, t = 1000 σ)`` per sample from the discretised logit-normal table (index ``floor(sigmoid(n) · 1000)``)."""
    sigmas, timesteps = partpacker_sigma_table(shift, num_train_timesteps)
    n = mean + std * jax.random.normal(rng, (batch,), jnp.float32)
    idx = jnp.clip(jnp.floor(jax.nn.sigmoid(n) * num_train_timesteps).astype(jnp.int32), 0, num_train_timesteps - 1)
    return jnp.asarray(sigmas)[idx], jnp.asarray(timesteps)[idx]


def partpacker_noising(x0: jax.Array, noise: jax.Array, sigma: jax.Array):
    """``(x_t, target)`` of PartPacker's flow: σ = 0 data, σ = 1 noise; target ``ε - x0``."""
    sb = _bcast(sigma, x0)
    return (1 - sb) * x0 + sb * noise, noise - x0
