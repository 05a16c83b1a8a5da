"""Normalisation layers with explicit epsilon and fp32 statistics (PyTorch semantics: two-pass biased variance)."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxshape.nn.axes import HEAD_DIM, HEADS, NORM
from jaxshape.nn.initializers import partitioned


def broadcast_multiply(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x * w`` for a ``w`` that is constant along the leading (batch, token) axes of ``x``: a weight [C], a
    per-head gamma [H, D], or a per-sample modulation [B, 1, C]. The same numbers as ``x * w``.

    With batch 1 the product is formed on a ``[T, ...]`` view of ``x``. Why: the gradient of ``w`` is a reduction of
    ``g * x`` over the tokens, and XLA:CPU's YNNPACK fusions (jax 0.10) reduce a ``[1, T, C]`` product over ``T`` on a
    path two orders of magnitude slower than a ``[T, C]`` one (``experiments/batch1_reductions.py``).
    """
    core = w.ndim
    while core and w.shape[w.ndim - core] == 1:
        core -= 1
    if (x.shape[0] != 1 or core == 0 or core >= x.ndim
            or jnp.broadcast_shapes(x.shape, w.shape) != x.shape):
        return x * w
    w_core = w.reshape(w.shape[w.ndim - core:])
    return (x.reshape((-1,) + x.shape[x.ndim - core:]) * w_core).reshape(x.shape)


def _rows(x: jax.Array) -> jax.Array:
    """``x`` as a 2-D ``[rows, C]`` view (a free reshape). Norm statistics are computed on this view: XLA:CPU's
    YNNPACK fusions (jax 0.10) reduce ``[1, T, C]`` arrays (batch 1) far slower than ``[T, C]`` ones."""
    return x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x


def _layer_norm_rows(x: jax.Array, epsilon: float) -> jax.Array:
    """Parameter-free LayerNorm of a ``[rows, C]`` array, in fp32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return centred * lax.rsqrt(var + epsilon)


def layer_norm(x: jax.Array, epsilon: float) -> jax.Array:
    """Parameter-free LayerNorm over the last axis, computed in fp32, returned in fp32."""
    return _layer_norm_rows(_rows(x), epsilon).reshape(x.shape)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; statistics and affine in fp32, output cast back to the input dtype.

    There is no default epsilon on purpose: the upstream models use 1e-5 and 1e-6 at different sites.
    Serves TRELLIS's ChannelLayerNorm32 (channels-last) and LayerNorm32, and PartPacker's LayerNorms.
    Parameters: ``scale`` (torch ``weight``) and ``bias``, present iff ``elementwise_affine``.
    """

    epsilon: float
    elementwise_affine: bool = True
    param_dtype: Any = jnp.float32
    axes: tuple = (NORM,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _layer_norm_rows(_rows(x), self.epsilon)
        if self.elementwise_affine:
            c = x.shape[-1]
            scale = self.param("scale", partitioned(nn.initializers.ones_init(), self.axes), (c,), self.param_dtype)
            bias = self.param("bias", partitioned(nn.initializers.zeros_init(), self.axes), (c,), self.param_dtype)
            y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(x.dtype).reshape(x.shape)


class MultiHeadRMSNorm(nn.Module):
    """TRELLIS per-head RMS norm: ``x / max(||x||_2, 1e-12) * sqrt(D) * gamma`` with ``gamma`` of shape [H, D].

    Input ``[..., H, D]``; computed in fp32 and cast back. No epsilon inside the root (F.normalize semantics).
    """

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, d = x.shape[-2:]
        gamma = self.param("gamma", partitioned(nn.initializers.ones_init(), (HEADS, HEAD_DIM)), (h, d),
                           self.param_dtype)
        x32 = x.reshape(-1, h, d).astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * gamma.astype(jnp.float32) * math.sqrt(d)
        return y.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
    """PartPacker's RMSNorm over the last axis: ``(x * rsqrt(mean(x^2) + eps))`` rounded to the weight dtype, then
    ``* weight`` (two roundings in low precision, as upstream). Parameter ``scale`` [C] (torch ``weight``)."""

    epsilon: float = 1e-6
    param_dtype: Any = jnp.float32
    axes: tuple = (NORM,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones_init(), self.axes), (c,), self.param_dtype)
        x32 = _rows(x).astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        dtype = x.dtype
        return (y.astype(dtype) * scale.astype(dtype)).astype(dtype).reshape(x.shape)
