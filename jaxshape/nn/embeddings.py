"""Timestep, class-label, 3-D position (absolute sin-cos and rotary) and Fourier point embeddings."""
from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape.nn.axes import EMBED, EMBED_OUT, FREQ
from jaxshape.nn.initializers import partitioned
from jaxshape.nn.linear import Dense

# --------------------------------------------------------------------------------------------------------------
# timesteps


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` (cos first), ``f_i = exp(-ln(max_period) i / half)``.

    ``t``: [B] in the model's units (TRELLIS and PartPacker both pass 1000·t). Computed in fp32 like upstream
    (the scalar ``-ln(max_period)`` is rounded to fp32 before the product). Odd ``dim`` gets a zero column.
    """
    half = dim // 2
    # The exponent is formed in fp32 as upstream; exp is evaluated in float64 and rounded once (a correctly
    # rounded constant: it equals torch's fp32 exp on all but ~2 of 128 entries, XLA's fp32 exp differs on ~17).
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``mlp_2(silu(mlp_0(timestep_embedding(t))))`` (torch keys ``mlp.0``, ``mlp.2``); weights N(0, 0.02²)."""

    hidden_size: int
    frequency_embedding_size: int = 256
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        if self.dtype is not None:
            emb = emb.astype(self.dtype)
        kw = dict(init_scheme="normal0.02", dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.hidden_size, axes=(FREQ, EMBED), name="mlp_0", **kw)(emb)
        h = nn.silu(h)
        return Dense(self.hidden_size, axes=(EMBED, EMBED_OUT), name="mlp_2", **kw)(h)


class LabelConditioner(nn.Module):
    """Class label -> ``tokens`` condition tokens ``[B, tokens, channels]`` from a learned table; label
    ``num_classes`` is the learned null (unconditional) label for classifier-free guidance."""

    num_classes: int
    channels: int
    tokens: int = 1

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        table = nn.Embed(self.num_classes + 1, self.channels * self.tokens,
                         embedding_init=partitioned(nn.initializers.normal(0.02), (None, EMBED)))
        return table(labels).reshape(labels.shape[0], self.tokens, self.channels)


# --------------------------------------------------------------------------------------------------------------
# 3-D positions


def grid_coords_3d(resolution: int) -> np.ndarray:
    """Integer coordinates [R³, 3] of a cubic grid, 'ij' meshgrid flattened row-major (token = x R² + y R + z)."""
    r = np.arange(resolution)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


def absolute_position_embedding_3d(coords: np.ndarray | jax.Array, channels: int) -> jax.Array:
    """TRELLIS ``AbsolutePositionEmbedder``: per axis ``[sin(c w), cos(c w)]``, axes x, y, z concatenated, zero
    padding at the end. ``w_j = 1 / 10000^(j / fd)``, ``fd = channels // 3 // 2``. Returns fp32 [N, channels]."""
    coords = jnp.asarray(coords, jnp.float32)
    n, d = coords.shape
    fd = channels // d // 2
    freqs = 1.0 / (10000.0 ** (jnp.arange(fd, dtype=jnp.float32) / fd))
    out = coords.reshape(-1)[:, None] * freqs[None]  # [N*d, fd]
    emb = jnp.concatenate([jnp.sin(out), jnp.cos(out)], axis=-1).reshape(n, -1)
    if emb.shape[1] < channels:
        emb = jnp.concatenate([emb, jnp.zeros((n, channels - emb.shape[1]), jnp.float32)], axis=-1)
    return emb


def rope_phases_3d(coords: np.ndarray | jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
    """3-D rotary phases (TRELLIS.2 convention): ``freq_dim = head_dim // 2 // 3`` frequencies
    ``1 / theta^(j / freq_dim)`` per axis; phases ``[x f, y f, z f]`` per token, padded with zero phase to
    ``head_dim / 2``. Returns fp32 [N, head_dim // 2] angles."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    coords = jnp.asarray(coords, jnp.float32)
    n, d = coords.shape
    fd = head_dim // 2 // d
    freqs = 1.0 / (theta ** (jnp.arange(fd, dtype=jnp.float32) / fd))
    phases = (coords.reshape(-1)[:, None] * freqs[None]).reshape(n, -1)
    pad = head_dim // 2 - phases.shape[1]
    if pad:
        phases = jnp.concatenate([phases, jnp.zeros((n, pad), jnp.float32)], axis=-1)
    return phases


def apply_rope(x: jax.Array, phases: jax.Array) -> jax.Array:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` of the last axis by ``phases[..., i]``.

    ``x``: [B, N, H, D]; ``phases``: [N, D/2]. fp32 inside, cast back to ``x.dtype``.
    """
    shape = x.shape
    xp = x.astype(jnp.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
    cos = jnp.cos(phases)[:, None, :]
    sin = jnp.sin(phases)[:, None, :]
    a, b = xp[..., 0], xp[..., 1]
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out.reshape(shape).astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Fourier point features (vecset family)

FourierVersion = Literal["v1", "v2", "v3"]


def fourier_frequencies(num_freqs: int, version: str) -> np.ndarray:
    """PartPacker frequency bands (float32): v1 ``pi 512^(k/F)``, k=1..F; v2 ``pi 1024^(k/(F-1))``, k=0..F-1;
    v3 ``2^k``, k=0..F-1 (no pi; the Hunyuan3D-2 / TripoSG / Dora frequencies)."""
    f = num_freqs
    # As torch: fp32 exponent, correctly rounded fp32 power (NumPy's fp32 pow can be 1 ulp off, which is 1e-4
    # absolute at 1024π; so take the power in fp64 and round), then an fp32 product with fp32(π).
    if version == "v1":
        e = np.arange(1, f + 1, dtype=np.float32) / np.float32(f)
        return (np.power(512.0, e.astype(np.float64)).astype(np.float32) * np.float32(np.pi)).astype(np.float32)
    if version == "v2":
        e = np.arange(f, dtype=np.float32) / np.float32(f - 1)
        return (np.power(1024.0, e.astype(np.float64)).astype(np.float32) * np.float32(np.pi)).astype(np.float32)
    if version == "v3":
        return (2.0 ** np.arange(f, dtype=np.float32)).astype(np.float32)
    raise ValueError(f"fourier_version must be one of v1, v2, v3, got {version!r}")


def fourier_point_features(points: jax.Array, num_freqs: int, version: str = "v3",
                           layout: Literal["partpacker", "hunyuan"] = "partpacker") -> jax.Array:
    """Fourier features of [..., 3] points, computed in the points' dtype (keep them fp32).

    ``layout="partpacker"``: ``[sin x f, cos x f, sin y f, cos y f, sin z f, cos z f, x, y, z]`` (6F + 3).
    ``layout="hunyuan"`` (Hunyuan3D-2, TripoSG, Dora): ``[x, y, z, sin(x f, y f, z f), cos(x f, y f, z f)]``.
    """
    freqs = jnp.asarray(fourier_frequencies(num_freqs, version), points.dtype)
    spec = points[..., :, None] * freqs  # [..., 3, F]
    if layout == "partpacker":
        feat = jnp.concatenate([jnp.sin(spec), jnp.cos(spec)], axis=-1)  # [..., 3, 2F]
        feat = feat.reshape(*points.shape[:-1], 2 * spec.shape[-2] * spec.shape[-1])  # explicit: N may be 0
        return jnp.concatenate([feat, points], axis=-1)
    if layout == "hunyuan":
        flat = spec.reshape(*points.shape[:-1], spec.shape[-2] * spec.shape[-1])
        return jnp.concatenate([points, jnp.sin(flat), jnp.cos(flat)], axis=-1)
    raise ValueError(f"fourier layout must be 'partpacker' or 'hunyuan', got {layout!r}")
