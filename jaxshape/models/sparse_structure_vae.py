"""TRELLIS sparse-structure VAE: conv3d encoder (64³ occupancy -> 16³×8 posterior) and decoder (-> 64³ logits).

Fields carry TRELLIS's constructor arguments (the released JSON ``args`` construct the modules); ``dtype`` /
``param_dtype`` are added. Grids are channels-last ``[B, X, Y, Z, C]`` (upstream NCDHW ``moveaxis(1, -1)``).
Precision as upstream: ``input_layer`` and ``out_layer`` compute in fp32; the torso (``blocks``,
``middle_block``) computes in ``dtype`` if given, else fp16 when ``use_fp16`` else fp32.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn import Conv3d, DownsampleBlock3d, LayerNorm, ResBlock3d, UpsampleBlock3d, torso_dtype


def _check_vae_config(name: str, channels: Sequence[int], num_res_blocks: int, num_res_blocks_middle: int,
                      norm_type: str) -> None:
    if len(channels) < 1 or any((not isinstance(c, int)) or c < 1 for c in channels):
        raise ValueError(f"{name}: channels must be a non-empty list of positive ints, got {channels!r}")
    if num_res_blocks < 0 or num_res_blocks_middle < 0:
        raise ValueError(f"{name}: num_res_blocks and num_res_blocks_middle must be >= 0")
    if norm_type not in ("layer", "group"):
        raise ValueError(f"{name}: norm_type must be 'layer' or 'group', got {norm_type!r}")
    if norm_type == "group":
        raise NotImplementedError(f"{name}: norm_type='group' (unused by every released config) is not ported")


def _res_block(ch, use_checkpoint, **kw):
    cls = nn.remat(ResBlock3d) if use_checkpoint else ResBlock3d
    return cls(ch, **kw)


class SparseStructureEncoder(nn.Module):
    """``(x [B, R, R, R, in_channels], sample_posterior=False, return_raw=False) -> z`` (or ``(z, mean, logvar)``).

    Posterior noise comes from the ``"noise"`` rng stream or an explicit ``noise=`` array (shape of ``mean``).
    Released: ``in_channels=1, latent_channels=8, num_res_blocks=2, channels=[32, 128, 512]``.
    """

    in_channels: int
    latent_channels: int
    num_res_blocks: int
    channels: Sequence[int]
    num_res_blocks_middle: int = 2
    norm_type: str = "layer"
    use_fp16: bool = False
    use_checkpoint: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_vae_config("SparseStructureEncoder", list(self.channels), self.num_res_blocks,
                          self.num_res_blocks_middle, self.norm_type)
        super().__post_init__()

    def example_inputs(self, batch_size: int = 1, resolution: int = 64):
        return (jax.ShapeDtypeStruct((batch_size, resolution, resolution, resolution, self.in_channels),
                                     jnp.float32),)

    @nn.compact
    def __call__(self, x: jax.Array, sample_posterior: bool = False, return_raw: bool = False,
                 noise: Optional[jax.Array] = None):
        chans = list(self.channels)
        down = 2 ** (len(chans) - 1)
        if x.ndim != 5 or x.shape[-1] != self.in_channels or any(s % down for s in x.shape[1:4]):
            raise ValueError(
                f"SparseStructureEncoder: x must be [B, X, Y, Z, {self.in_channels}] with X, Y, Z divisible by "
                f"{down}, got shape {tuple(x.shape)}")
        kw = dict(dtype=torso_dtype(self.dtype, self.use_fp16), param_dtype=self.param_dtype)
        out_dtype = jnp.float32
        h = Conv3d(chans[0], 3, dtype=out_dtype, param_dtype=self.param_dtype, name="input_layer")(x)
        h = h.astype(kw["dtype"])
        i = 0
        for level, ch in enumerate(chans):
            for _ in range(self.num_res_blocks):
                h = _res_block(ch, self.use_checkpoint, name=f"blocks_{i}", **kw)(h)
                i += 1
            if level < len(chans) - 1:
                h = DownsampleBlock3d(ch, chans[level + 1], name=f"blocks_{i}", **kw)(h)
                i += 1
        for j in range(self.num_res_blocks_middle):
            h = _res_block(chans[-1], self.use_checkpoint, name=f"middle_block_{j}", **kw)(h)
        h = h.astype(out_dtype)
        h = LayerNorm(1e-5, param_dtype=self.param_dtype, name="out_layer_0")(h)
        h = Conv3d(2 * self.latent_channels, 3, dtype=out_dtype, param_dtype=self.param_dtype,
                   name="out_layer_2")(nn.silu(h))
        mean, logvar = jnp.split(h, 2, axis=-1)
        if sample_posterior:
            if noise is None:
                noise = jax.random.normal(self.make_rng("noise"), mean.shape, mean.dtype)
            elif noise.shape != mean.shape:
                raise ValueError(f"noise must have the posterior's shape {mean.shape}, got {noise.shape}")
            z = mean + jnp.exp(0.5 * logvar) * noise
        else:
            z = mean
        if return_raw:
            return z, mean, logvar
        return z


class SparseStructureDecoder(nn.Module):
    """``(z [B, r, r, r, latent_channels]) -> logits [B, R, R, R, out_channels]``; occupancy = ``logits > 0``.

    Released: ``out_channels=1, latent_channels=8, num_res_blocks=2, channels=[512, 128, 32]``.
    """

    out_channels: int
    latent_channels: int
    num_res_blocks: int
    channels: Sequence[int]
    num_res_blocks_middle: int = 2
    norm_type: str = "layer"
    use_fp16: bool = False
    use_checkpoint: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_vae_config("SparseStructureDecoder", list(self.channels), self.num_res_blocks,
                          self.num_res_blocks_middle, self.norm_type)
        super().__post_init__()

    def example_inputs(self, batch_size: int = 1, resolution: int = 16):
        return (jax.ShapeDtypeStruct((batch_size, resolution, resolution, resolution, self.latent_channels),
                                     jnp.float32),)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        chans = list(self.channels)
        if z.ndim != 5 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"SparseStructureDecoder: z must be [B, X, Y, Z, {self.latent_channels}], "
                             f"got shape {tuple(z.shape)}")
        kw = dict(dtype=torso_dtype(self.dtype, self.use_fp16), param_dtype=self.param_dtype)
        out_dtype = jnp.float32
        h = Conv3d(chans[0], 3, dtype=out_dtype, param_dtype=self.param_dtype, name="input_layer")(z)
        h = h.astype(kw["dtype"])
        for j in range(self.num_res_blocks_middle):
            h = _res_block(chans[0], self.use_checkpoint, name=f"middle_block_{j}", **kw)(h)
        i = 0
        for level, ch in enumerate(chans):
            for _ in range(self.num_res_blocks):
                h = _res_block(ch, self.use_checkpoint, name=f"blocks_{i}", **kw)(h)
                i += 1
            if level < len(chans) - 1:
                h = UpsampleBlock3d(ch, chans[level + 1], name=f"blocks_{i}", **kw)(h)
                i += 1
        h = h.astype(out_dtype)
        h = LayerNorm(1e-5, param_dtype=self.param_dtype, name="out_layer_0")(h)
        return Conv3d(self.out_channels, 3, dtype=out_dtype, param_dtype=self.param_dtype,
                      name="out_layer_2")(nn.silu(h))
