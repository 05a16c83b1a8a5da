"""TRELLIS sparse-structure flow DiT over the patchified 16³×8 latent grid.

Fields carry TRELLIS's constructor arguments; ``dtype``, ``param_dtype``, ``remat_policy``, ``attention_impl`` and
``scan_unroll`` (see ``jaxshape.nn.layer_unroll``; ``None`` = automatic) are added.
Call ``(x [B, R, R, R, in_channels], t [B] (already 1000·t), cond [B, M, Cc])``.
The per-block weights live in one ``nn.scan`` stack named ``blocks`` (leading axis = block index).
``pe_mode="ape"`` keeps upstream's ``pos_emb`` buffer in the ``"buffers"`` collection (so released checkpoints
load bit-exactly); ``pe_mode="rope"`` is TRELLIS.2's 3-D RoPE on the self-attention (TRELLIS v1's dense RoPE path
cannot run as written; see docs/architecture.md).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn import (
    Dense,
    ModulatedCrossBlock,
    TimestepEmbedder,
    absolute_position_embedding_3d,
    grid_coords_3d,
    layer_norm,
    layer_unroll,
    patchify,
    rope_phases_3d,
    scan_blocks,
    torso_dtype,
    unpatchify,
)
from jaxshape.nn.axes import EMBED, MOD, PATCH


class SparseStructureFlowModel(nn.Module):
    resolution: int
    in_channels: int
    model_channels: int
    cond_channels: int
    out_channels: int
    num_blocks: int
    num_heads: Optional[int] = None
    num_head_channels: Optional[int] = 64
    mlp_ratio: float = 4
    patch_size: int = 2
    pe_mode: str = "ape"
    use_fp16: bool = False
    use_checkpoint: bool = False
    share_mod: bool = False
    qk_rms_norm: bool = False
    qk_rms_norm_cross: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    remat_policy: str = "nothing_saveable"
    attention_impl: Optional[str] = None
    scan_unroll: Optional[bool] = None

    def __post_init__(self):
        name = "SparseStructureFlowModel"
        if self.patch_size < 1 or self.resolution % self.patch_size:
            raise ValueError(f"{name}: resolution {self.resolution} must be divisible by patch_size "
                             f"{self.patch_size}")
        heads = self.heads
        if heads < 1 or self.model_channels % heads:
            raise ValueError(f"{name}: model_channels {self.model_channels} must be divisible by num_heads {heads}")
        if self.pe_mode not in ("ape", "rope"):
            raise ValueError(f"{name}: pe_mode must be 'ape' or 'rope', got {self.pe_mode!r}")
        if self.pe_mode == "rope" and (self.model_channels // heads) % 2:
            raise ValueError(f"{name}: pe_mode='rope' needs an even head dim, got {self.model_channels // heads}")
        if self.num_blocks < 1:
            raise ValueError(f"{name}: num_blocks must be >= 1, got {self.num_blocks}")
        super().__post_init__()

    @property
    def heads(self) -> int:
        if self.num_heads is not None:
            return self.num_heads
        if not self.num_head_channels:
            raise ValueError("SparseStructureFlowModel: give num_heads or num_head_channels")
        return self.model_channels // self.num_head_channels

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch_size

    def scanned_stacks(self) -> dict:
        """Flax stack name -> (upstream ModuleList prefix, length), for the converter."""
        return {"blocks": ("blocks", self.num_blocks)}

    def example_inputs(self, batch_size: int = 1, cond_tokens: int = 8):
        r = self.resolution
        return (jax.ShapeDtypeStruct((batch_size, r, r, r, self.in_channels), jnp.float32),
                jax.ShapeDtypeStruct((batch_size,), jnp.float32),
                jax.ShapeDtypeStruct((batch_size, cond_tokens, self.cond_channels), jnp.float32))

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        r, c, p = self.resolution, self.model_channels, self.patch_size
        expected = (x.shape[0], r, r, r, self.in_channels)
        if tuple(x.shape) != expected:
            raise ValueError(f"SparseStructureFlowModel: x must have shape [B, {r}, {r}, {r}, {self.in_channels}], "
                             f"got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"SparseStructureFlowModel: t must have shape [B] = ({x.shape[0]},), got {t.shape}")
        if cond.ndim != 3 or cond.shape[0] != x.shape[0] or cond.shape[-1] != self.cond_channels:
            raise ValueError(f"SparseStructureFlowModel: cond must be [B, M, {self.cond_channels}] with "
                             f"B = {x.shape[0]}, got {tuple(cond.shape)}")
        torso = torso_dtype(self.dtype, self.use_fp16)
        fp32 = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        g = self.grid_size
        b = x.shape[0]

        h = patchify(x, p).reshape(b, g**3, self.in_channels * p**3)
        h = Dense(c, init_scheme="xavier", axes=(PATCH, EMBED), name="input_layer", **fp32)(h)
        rope = None
        if self.pe_mode == "ape":
            pos_emb = self.variable("buffers", "pos_emb",
                                    lambda: absolute_position_embedding_3d(grid_coords_3d(g), c))
            h = h + pos_emb.value[None].astype(h.dtype)
        else:
            rope = rope_phases_3d(grid_coords_3d(g), c // self.heads)
        temb = TimestepEmbedder(c, name="t_embedder", **fp32)(t)
        if self.share_mod:
            temb = Dense(6 * c, init_scheme="zeros", axes=(EMBED, MOD), name="adaLN_modulation_1",
                         **fp32)(nn.silu(temb))
        blocks = scan_blocks(
            ModulatedCrossBlock, self.num_blocks, name="blocks", remat=self.use_checkpoint,
            remat_policy=self.remat_policy, num_broadcast_args=3,
            unroll=layer_unroll(self.scan_unroll, self.num_blocks, self.use_checkpoint),
            channels=c, num_heads=self.heads, mlp_ratio=self.mlp_ratio, naming="trellis",
            qk_norm="rms_per_head" if self.qk_rms_norm else None,
            qk_norm_cross="rms_per_head" if self.qk_rms_norm_cross else None,
            share_mod=self.share_mod, norm2_affine=True, approximate_gelu=True,
            dtype=torso, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
        )
        h, _ = blocks(h.astype(torso), temb.astype(torso), cond.astype(torso), rope)
        h = layer_norm(h, 1e-5)
        h = Dense(self.out_channels * p**3, init_scheme="zeros", axes=(EMBED, PATCH), name="out_layer", **fp32)(h)
        h = h.reshape(b, g, g, g, self.out_channels * p**3)
        return unpatchify(h, p)
