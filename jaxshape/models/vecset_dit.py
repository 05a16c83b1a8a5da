"""PartPacker flow DiT (NVlabs/PartPacker ``flow.modules.dit.DiT``) over a set of latent tokens.

Fields carry upstream's constructor arguments with upstream defaults (the released model is
``VecSetDiT(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")``); ``context_dim`` (condition width,
``None`` = ``hidden_dim`` as upstream hard-wires) is the mirror's addition; ``dtype``, ``param_dtype``,
``remat_policy``, ``attention_impl`` and ``scan_unroll`` (``jaxshape.nn.layer_unroll``) are JAX additions.
``gradient_checkpointing`` turns on ``nn.remat`` of the scanned ``layers`` stack (no numeric effect).

Call ``(x [B, N, latent_dim], c [B, M, context_dim], t [B]) -> [B, N, latent_dim]`` (fp32), ``t`` in 1000·σ.
Part embeddings (``use_parts``): ``part2_only`` adds ``part_embed [1, C]`` to tokens ``N // 2 :``; ``part`` adds
``part_embed[0]`` to tokens ``: N // 2`` and ``part_embed[1]`` to the rest; ``element`` adds the
``[latent_size, C]`` table token-wise (needs ``N == latent_size``, as does ``use_pos_embed``).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn import (
    PARTPACKER_QK_NORMS,
    Dense,
    ModulatedCrossBlock,
    TimestepEmbedder,
    layer_norm,
    layer_unroll,
    partitioned,
    scan_blocks,
)
from jaxshape.nn.axes import EMBED, LATENT

PART_EMBED_MODES = ("part2_only", "part", "element")


def _scaled_normal(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return (jax.random.normal(key, shape, jnp.float32) * scale).astype(dtype)

    return init


class VecSetDiT(nn.Module):
    hidden_dim: int = 1024
    num_heads: int = 16
    latent_size: int = 2048
    latent_dim: int = 8
    num_layers: int = 24
    qknorm: bool = False
    gradient_checkpointing: bool = True
    qknorm_type: str = "LayerNorm"
    use_pos_embed: bool = False
    use_parts: bool = False
    part_embed_mode: str = "part2_only"
    context_dim: Optional[int] = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    remat_policy: str = "nothing_saveable"
    attention_impl: Optional[str] = None
    scan_unroll: Optional[bool] = None

    def __post_init__(self):
        name = "VecSetDiT"
        if self.num_heads < 1 or self.hidden_dim < 1 or self.hidden_dim % self.num_heads:
            raise ValueError(f"{name}: hidden_dim {self.hidden_dim} must be a positive multiple of num_heads "
                             f"{self.num_heads}")
        if self.qknorm_type not in PARTPACKER_QK_NORMS:
            raise ValueError(f"{name}: qknorm_type must be one of {tuple(PARTPACKER_QK_NORMS)}, "
                             f"got {self.qknorm_type!r}")
        if self.part_embed_mode not in PART_EMBED_MODES:
            raise ValueError(f"{name}: part_embed_mode must be one of {PART_EMBED_MODES}, "
                             f"got {self.part_embed_mode!r}")
        if self.num_layers < 1:
            raise ValueError(f"{name}: num_layers must be >= 1, got {self.num_layers}")
        if self.latent_dim < 1 or self.latent_size < 1:
            raise ValueError(f"{name}: latent_dim and latent_size must be >= 1, got {self.latent_dim}, "
                             f"{self.latent_size}")
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"{name}: context_dim must be >= 1 or None, got {self.context_dim}")
        super().__post_init__()

    @property
    def cond_dim(self) -> int:
        return self.hidden_dim if self.context_dim is None else self.context_dim

    def scanned_stacks(self) -> dict:
        """Flax stack name -> (upstream ModuleList prefix, length), for the converter."""
        return {"layers": ("layers", self.num_layers)}

    def example_inputs(self, batch_size: int = 1, cond_tokens: int = 4):
        n = self.latent_size if (self.use_pos_embed or (self.use_parts and self.part_embed_mode == "element")) else 2
        return (jax.ShapeDtypeStruct((batch_size, n, self.latent_dim), jnp.float32),
                jax.ShapeDtypeStruct((batch_size, cond_tokens, self.cond_dim), jnp.float32),
                jax.ShapeDtypeStruct((batch_size,), jnp.float32))

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, t: jax.Array) -> jax.Array:
        name = "VecSetDiT"
        ch = self.hidden_dim
        if x.ndim != 3 or x.shape[-1] != self.latent_dim:
            raise ValueError(f"{name}: x must have shape [B, N, {self.latent_dim}], got {tuple(x.shape)}")
        b, n = x.shape[:2]
        if c.ndim != 3 or c.shape[0] != b or c.shape[-1] != self.cond_dim:
            raise ValueError(f"{name}: c must have shape [B, M, {self.cond_dim}] with B = {b}, got {tuple(c.shape)}")
        if t.shape != (b,):
            raise ValueError(f"{name}: t must have shape [B] = ({b},), got {tuple(t.shape)}")
        needs_full = self.use_pos_embed or (self.use_parts and self.part_embed_mode == "element")
        if needs_full and n != self.latent_size:
            raise ValueError(f"{name}: x must have N = latent_size = {self.latent_size} tokens with use_pos_embed or "
                             f"part_embed_mode='element', got {n}")
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cdt = jnp.float32 if self.dtype is None else self.dtype

        h = Dense(ch, init_scheme="xavier", axes=(LATENT, EMBED), name="proj_in", **dt)(x.astype(cdt))
        if self.use_pos_embed:
            pos = self.param("pos_embed", partitioned(_scaled_normal(ch ** -0.5), (None, None, EMBED)),
                             (1, self.latent_size, ch), self.param_dtype)
            h = h + pos.astype(h.dtype)
        if self.use_parts:
            half = n // 2
            if self.part_embed_mode == "element":
                pe = self.param("part_embed", partitioned(_scaled_normal(ch ** -0.5), (None, EMBED)),
                                (self.latent_size, ch), self.param_dtype)
                h = h + pe.astype(h.dtype)
            elif self.part_embed_mode == "part":  # upstream: plain randn (no 1/sqrt(C)) for this mode
                pe = self.param("part_embed", partitioned(_scaled_normal(1.0), (None, EMBED)), (2, ch),
                                self.param_dtype).astype(h.dtype)
                h = jnp.concatenate([h[:, :half] + pe[0], h[:, half:] + pe[1]], axis=1)
            else:  # part2_only
                pe = self.param("part_embed", partitioned(_scaled_normal(ch ** -0.5), (None, EMBED)), (1, ch),
                                self.param_dtype).astype(h.dtype)
                h = jnp.concatenate([h[:, :half], h[:, half:] + pe[0]], axis=1)
        temb = TimestepEmbedder(ch, name="timestep_embed", **dt)(t)
        qk = PARTPACKER_QK_NORMS[self.qknorm_type] if self.qknorm else None
        layers = scan_blocks(
            ModulatedCrossBlock, self.num_layers, name="layers", remat=self.gradient_checkpointing,
            remat_policy=self.remat_policy, num_broadcast_args=3,
            unroll=layer_unroll(self.scan_unroll, self.num_layers, self.gradient_checkpointing),
            channels=ch, num_heads=self.num_heads, mlp_ratio=4.0, naming="partpacker", qk_norm=qk,
            qk_norm_cross=qk, share_mod=False, norm2_affine=False, approximate_gelu=False,
            attention_impl=self.attention_impl, **dt,
        )
        h, _ = layers(h, temb.astype(cdt), c.astype(cdt), None)
        h = layer_norm(h, 1e-6).astype(h.dtype)
        h = Dense(self.latent_dim, init_scheme="zeros", axes=(EMBED, LATENT), name="proj_out", **dt)(h)
        return h.astype(jnp.float32)
