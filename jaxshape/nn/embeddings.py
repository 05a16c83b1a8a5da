"""Timestep, class-label, 3-D position (absolute sin-cos and rotary), 2-D image position (DINO tables and RoPE) and
Fourier point embeddings."""
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


def rope_phases_3d(coords: np.ndarray | jax.Array, head_dim: int, theta: float = 10000.0,
                   scale: float = 1.0) -> jax.Array:
    """3-D rotary phases (TRELLIS.2 convention, ``rope_freq = (scale, theta)``): ``freq_dim = head_dim // 2 // 3``
    frequencies ``scale / theta^(j / freq_dim)`` per axis; phases ``[x f, y f, z f]`` per token, padded with zero
    phase to ``head_dim / 2``. Returns fp32 [N, head_dim // 2] angles."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    coords = jnp.asarray(coords, jnp.float32)
    n, d = coords.shape
    fd = head_dim // 2 // d
    freqs = jnp.float32(scale) / (jnp.float32(theta) ** (jnp.arange(fd, dtype=jnp.float32) / fd))
    phases = (coords.reshape(-1)[:, None] * freqs[None]).reshape(n, -1)
    pad = head_dim // 2 - phases.shape[1]
    if pad:
        phases = jnp.concatenate([phases, jnp.zeros((n, pad), jnp.float32)], axis=-1)
    return phases


def apply_rope(x: jax.Array, phases: jax.Array, pairing: str = "adjacent") -> jax.Array:
    """Rotate pairs of features of the last axis by ``phases[..., i]``.

    ``x``: [B, N, H, D]; ``phases``: [N, D/2] angles, or unit complex numbers (TRELLIS.2's ``rope_phases`` buffer:
    their real and imaginary parts are the cosines and sines). ``pairing``: ``"adjacent"`` rotates ``(x[2i], x[2i+1])``
    (TRELLIS.2's complex form); ``"halves"`` rotates ``(x[i], x[i + D/2])`` (the ``rotate_half`` form of DINOv3 and
    LLaMA-style code). A zero phase leaves its pair unchanged exactly. fp32 inside, cast back to ``x.dtype``.
    """
    shape = x.shape
    if jnp.iscomplexobj(phases):
        cos, sin = jnp.real(phases)[:, None, :], jnp.imag(phases)[:, None, :]
    else:
        cos, sin = jnp.cos(phases)[:, None, :], jnp.sin(phases)[:, None, :]
    if pairing == "adjacent":
        xp = x.astype(jnp.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
        a, b = xp[..., 0], xp[..., 1]
        out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
        return out.reshape(shape).astype(x.dtype)
    if pairing == "halves":
        a, b = jnp.split(x.astype(jnp.float32), 2, axis=-1)
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(x.dtype)
    raise ValueError(f"RoPE pairing must be 'adjacent' or 'halves', got {pairing!r}")


# --------------------------------------------------------------------------------------------------------------
# 2-D image positions (DINO ViTs)

POSITION_INTERPOLATIONS = ("hub_offset", "antialias", "size")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` (float64)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = a * (((t - 5) * t + 8) * t - 4)
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def position_interpolation_matrix(n_in: int, n_out: int, mode: str, offset: float = 0.1) -> np.ndarray:
    """The ``[n_out, n_in]`` float32 matrix of one axis of ``torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False)`` as the DINOv2 position tables use it (separable: a 2-D resize is ``Wh @ grid @ Ww.T``).

    ``mode``:

    * ``"hub_offset"``: facebookresearch/dinov2 without registers: ``scale_factor = (n_out + offset) / n_in``, no
      antialias; source coordinate ``(i + 0.5) n_in / (n_out + offset) - 0.5``, Keys a = -0.75, taps clamped to
      the edge (their weights pile up on the edge sample). Not the identity even when ``n_out == n_in``.
    * ``"antialias"``: the hub with registers and HF ``Dinov2WithRegistersModel``: ``size=n_out, antialias=True``
      (PyTorch's PIL-derived filter: a = -0.5, support ``2 max(n_in / n_out, 1)``, out-of-range taps dropped, the
      weights renormalised).
    * ``"size"``: HF ``Dinov2Model``: ``size=n_out``, no antialias; ``(i + 0.5) n_in / n_out - 0.5``, a = -0.75.

    Built in float64 on the host and rounded once.
    """
    i = np.arange(n_out, dtype=np.float64)
    w = np.zeros((n_out, n_in), np.float64)
    if mode in ("hub_offset", "size"):
        scale = n_in / (n_out + offset) if mode == "hub_offset" else n_in / n_out
        src = (i + 0.5) * scale - 0.5
        base = np.floor(src)
        frac = src - base
        for tap in range(-1, 3):
            idx = np.clip(base + tap, 0, n_in - 1).astype(np.int64)
            np.add.at(w, (np.arange(n_out), idx), _cubic(frac - tap, -0.75))
    elif mode == "antialias":
        inv = n_in / n_out
        fs = max(inv, 1.0)
        support = 2.0 * fs
        for o in range(n_out):
            centre = (o + 0.5) * inv
            lo = max(int(centre - support + 0.5), 0)
            hi = min(int(centre + support + 0.5), n_in)
            j = np.arange(lo, hi, dtype=np.float64)
            taps = _cubic((j - centre + 0.5) / fs, -0.5)
            w[o, lo:hi] = taps / taps.sum()
    else:
        raise ValueError(f"position interpolation mode must be one of {POSITION_INTERPOLATIONS}, got {mode!r}")
    return w.astype(np.float32)


def resample_position_table(table: jax.Array, grid: int, rows: int, cols: int, mode: str,
                            offset: float = 0.1) -> jax.Array:
    """A DINOv2 position table ``[1, 1 + grid², C]`` (CLS row first) for a ``rows × cols`` patch grid.

    Unchanged when ``rows == cols == grid`` (upstream's short-circuit); otherwise the grid part is resampled in
    fp32 with :func:`position_interpolation_matrix` per axis, cast back to the table dtype, and the CLS row kept.
    """
    if rows == grid and cols == grid:
        return table
    c = table.shape[-1]
    patches = table[0, 1:].astype(jnp.float32).reshape(grid, grid, c)
    wh = jnp.asarray(position_interpolation_matrix(grid, rows, mode, offset))
    ww = jnp.asarray(position_interpolation_matrix(grid, cols, mode, offset))
    out = jnp.einsum("hi,ijc,wj->hwc", wh, patches, ww, precision=jax.lax.Precision.HIGHEST)
    out = out.reshape(1, rows * cols, c).astype(table.dtype)
    return jnp.concatenate([table[:, :1], out], axis=1)


def patch_rope_phases_2d(rows: int, cols: int, head_dim: int, theta: float = 100.0) -> np.ndarray:
    """DINOv3's 2-D RoPE angles ``[rows·cols, head_dim / 2]`` (float32) for :func:`apply_rope` with
    ``pairing="halves"``.

    Patch centres are normalised to [-1, 1] per axis (``2 (k + 0.5) / n - 1``); ``head_dim / 4`` frequencies
    ``1 / theta^(4 j / head_dim)``; angles ``2π · coord · freq`` for the row coordinate then the column coordinate.
    Formed in fp32 in upstream's order (``(2π · coord) · freq``). The training-time coordinate augmentations
    (shift, jitter, rescale) are not applied: inference only.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head_dim divisible by 4, got {head_dim}")
    freqs = (np.float32(1.0) / np.power(np.float32(theta),
                                        np.arange(0, 1, 4 / head_dim, dtype=np.float32)).astype(np.float32))
    ch = (np.arange(0.5, rows, dtype=np.float32) / np.float32(rows)) * np.float32(2) - np.float32(1)
    cw = (np.arange(0.5, cols, dtype=np.float32) / np.float32(cols)) * np.float32(2) - np.float32(1)
    coords = np.stack(np.meshgrid(ch, cw, indexing="ij"), axis=-1).reshape(-1, 2)
    angles = (np.float32(2 * math.pi) * coords)[:, :, None] * freqs[None, None, :]
    return angles.reshape(rows * cols, -1).astype(np.float32)


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
