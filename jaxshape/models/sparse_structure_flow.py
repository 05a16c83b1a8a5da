"""TRELLIS sparse-structure flow DiT over the (patchified) 16³×8 latent grid -- TRELLIS's and TRELLIS.2's.

Fields carry the upstream constructor arguments (TRELLIS's, and TRELLIS.2's ``rope_freq`` / ``initialization``;
TRELLIS.2's ``dtype`` string is the ``dtype`` field); ``upstream`` says whose module it is, ``param_dtype``,
``remat_policy``, ``attention_impl`` and ``scan_unroll`` (see ``jaxshape.nn.layer_unroll``; ``None`` = automatic)
are added. Call ``(x [B, R, R, R, in_channels], t [B] (already 1000·t), cond [B, M, Cc])``.
The per-block weights live in one ``nn.scan`` stack named ``blocks`` (leading axis = block index).
``pe_mode="ape"`` keeps upstream's ``pos_emb`` buffer in the ``"buffers"`` collection (so released checkpoints
load bit-exactly); ``pe_mode="rope"`` is TRELLIS.2's 3-D RoPE on the self-attention (TRELLIS v1's dense RoPE path
cannot run as written; see docs/architecture.md).

``upstream="trellis2"`` (``trellis2/models/sparse_structure_flow.py``; the 1.3 B ``ss_flow_img_dit_1_3B_64_bf16``)
differs from TRELLIS v1's module: no patchify (``patch_size`` 1), the RoPE phases are a complex64 ``rope_phases``
buffer ``[R³, head_dim / 2]`` of its checkpoint, ``share_mod`` adds a learned per-block ``modulation`` ``[6C]`` to
the shared adaLN output, and ``initialization="scaled"`` (:meth:`init`) draws N(0, 2/(5C)) linears, N(0, 1/(5·blocks·C))
output projections and N(0, 1/in) input layer.
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
    patch_size: Optional[int] = None  # None: upstream's (TRELLIS 2, TRELLIS.2 1 -- it has no patchify)
    pe_mode: str = "ape"
    rope_freq: tuple = (1.0, 10000.0)  # TRELLIS.2: (scale, theta) of the RoPE frequencies
    initialization: str = "vanilla"  # TRELLIS.2: "vanilla" | "scaled"
    upstream: str = "trellis"  # "trellis" (v1) | "trellis2"
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
        if self.upstream not in ("trellis", "trellis2"):
            raise ValueError(f"{name}: upstream must be 'trellis' or 'trellis2', got {self.upstream!r}")
        if self.upstream == "trellis2" and self.patch_size not in (None, 1):
            raise ValueError(f"{name}: TRELLIS.2's module has no patchify (patch_size 1), got {self.patch_size}")
        if self.initialization not in ("vanilla", "scaled"):
            raise ValueError(f"{name}: initialization must be 'vanilla' or 'scaled', got {self.initialization!r}")
        if self.patch < 1 or self.resolution % self.patch:
            raise ValueError(f"{name}: resolution {self.resolution} must be divisible by patch_size "
                             f"{self.patch}")
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
    def patch(self) -> int:
        """The patch size in use (``patch_size``, or upstream's default)."""
        if self.patch_size is not None:
            return self.patch_size
        return 1 if self.upstream == "trellis2" else 2

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch

    def init(self, rngs, *args, **kwargs):
        """``nn.Module.init``, then TRELLIS.2's ``initialization="scaled"`` rule where asked for."""
        variables = super().init(rngs, *args, **kwargs)
        if self.initialization == "scaled":
            key = rngs if not isinstance(rngs, dict) else rngs["params"]
            variables = _scaled_init(variables, jax.random.fold_in(key, 0x5CA1ED), self)
        return variables

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
        r, c, p = self.resolution, self.model_channels, self.patch
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
        elif self.upstream == "trellis2":  # the checkpoint's complex buffer (bit-exact phases)
            rope = self.variable("buffers", "rope_phases", lambda: rope_buffer(self)).value
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
            share_mod=self.share_mod, modulation_bias=self.share_mod and self.upstream == "trellis2",
            norm2_affine=True, approximate_gelu=True,
            dtype=torso, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
        )
        h, _ = blocks(h.astype(torso), temb.astype(torso), cond.astype(torso), rope)
        h = layer_norm(h, 1e-5)
        h = Dense(self.out_channels * p**3, init_scheme="zeros", axes=(EMBED, PATCH), name="out_layer", **fp32)(h)
        h = h.reshape(b, g, g, g, self.out_channels * p**3)
        return unpatchify(h, p)


def rope_buffer(model: SparseStructureFlowModel) -> jax.Array:
    """TRELLIS.2's ``rope_phases`` buffer: complex64 ``[R³, head_dim / 2]`` unit phases of the grid coordinates
    (equal to upstream's torch computation to float32 rounding). Upstream loads its checkpoints with
    ``strict=False`` and builds the buffer at construction, so a file may lack it: the converter then uses this."""
    g, hd = model.grid_size, model.model_channels // model.heads
    angles = rope_phases_3d(grid_coords_3d(g), hd, theta=model.rope_freq[1], scale=model.rope_freq[0])
    return jax.lax.complex(jnp.cos(angles), jnp.sin(angles))


def _scaled_init(variables: dict, key: jax.Array, model: SparseStructureFlowModel) -> dict:
    """TRELLIS.2's ``initialize_weights`` for ``initialization="scaled"``: every Linear N(0, 2/(5C)) with zero
    bias; the attention output projections and the FFN's second layer N(0, 1/(5·blocks·C)); the input layer
    N(0, 1/in); the time MLP N(0, 0.02²); the adaLN modulation and the output layer zero (as the vanilla rule)."""
    from flax import traverse_util
    from flax.core import meta

    c, nb = model.model_channels, model.num_blocks
    flat = traverse_util.flatten_dict(variables["params"])
    out = {}
    for i, (path, leaf) in enumerate(sorted(flat.items())):
        value = meta.unbox(leaf)
        name = "/".join(path)
        if path[-1] != "kernel":
            out[path] = leaf
            continue
        if name.startswith("t_embedder"):
            std = 0.02
        elif "adaLN_modulation" in name or name.startswith("out_layer"):
            out[path] = leaf
            continue
        elif name.startswith("input_layer"):
            std = value.shape[0] ** -0.5
        elif name.endswith(("to_out/kernel", "mlp_2/kernel")):
            std = (5 * nb * c) ** -0.5
        else:
            std = (2.0 / (5.0 * c)) ** 0.5
        new = (std * jax.random.normal(jax.random.fold_in(key, i), value.shape, jnp.float32)).astype(value.dtype)
        out[path] = leaf.replace_boxed(new) if isinstance(leaf, meta.AxisMetadata) else new
    return {**variables, "params": traverse_util.unflatten_dict(out)}
