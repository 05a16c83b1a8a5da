"""Feed-forward, adaLN-modulated and plain pre-LN (ViT) transformer blocks, and the scanned layer stack.

:class:`ModulatedCrossBlock` is both TRELLIS's ``ModulatedTransformerCrossBlock`` and PartPacker's ``DiTLayer``:
the same computation (modulated self-attention, un-modulated cross-attention, modulated FFN; chunk order shift,
scale, gate for attention then FFN) with per-family names, norm affinity, GELU flavour and qk-norm.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn.attention import AttentionImpl, MultiHeadAttention
from jaxshape.nn.axes import EMBED, LAYERS, MLP, MOD, NORM
from jaxshape.nn.initializers import partitioned
from jaxshape.nn.linear import Dense
from jaxshape.nn.norms import LayerNorm, broadcast_multiply

_BLOCK_NAMES = {
    "trellis": dict(self_attn="self_attn", cross_attn="cross_attn", ffn="mlp", ffn_layers="mlp",
                    modulation="adaLN_modulation_1"),
    "partpacker": dict(self_attn="attn1", cross_attn="attn2", ffn="ff", ffn_layers="net", modulation="adaln_linear"),
}


class FeedForward(nn.Module):
    """``Linear(C, hidden) -> GELU -> Linear(hidden, C)``; torch keys ``<prefix>.0`` / ``<prefix>.2``, or
    ``layer_names`` (e.g. the DINO hub's ``("fc1", "fc2")``).

    ``approximate_gelu``: tanh GELU (TRELLIS) or exact erf GELU (PartPacker, DINO, the torch default).
    ``gated`` makes it SwiGLU (DINOv2 ViT-g's ``w12`` / ``w3``): ``Linear(C, 2 hidden)``, split in halves
    ``[a | b]``, ``silu(a) · b`` (the first half is gated), ``Linear(hidden, C)``.
    """

    hidden_features: int
    prefix: str = "mlp"
    approximate_gelu: bool = True
    gated: bool = False
    layer_names: Optional[tuple[str, str]] = None
    init_scheme: str = "xavier"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(init_scheme=self.init_scheme, dtype=self.dtype, param_dtype=self.param_dtype)
        first, second = self.layer_names or (f"{self.prefix}_0", f"{self.prefix}_2")
        h = Dense(self.hidden_features * (2 if self.gated else 1), axes=(EMBED, MLP), name=first, **kw)(x)
        if self.gated:
            a, b = jnp.split(h, 2, axis=-1)
            h = nn.silu(a) * b
        else:
            h = jax.nn.gelu(h, approximate=self.approximate_gelu)
        return Dense(x.shape[-1], axes=(MLP, EMBED), name=second, **kw)(h)


class LayerScale(nn.Module):
    """``x · gamma`` with a learned per-channel ``gamma`` [C] (CaiT / DINO LayerScale; hub key ``ls<i>.gamma``)."""

    init_value: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", partitioned(nn.initializers.constant(self.init_value), (NORM,)),
                           (x.shape[-1],), self.param_dtype)
        return broadcast_multiply(x, gamma.astype(x.dtype))


class ViTBlock(nn.Module):
    """Pre-LN ViT block (DINOv2 / DINOv3 ``Block``): ``x += ls1(Attn(norm1 x))``; ``x += ls2(FFN(norm2 x))``.

    Call ``(x [B, T, C], rope_phases [T, D/2] | None) -> (x, None)`` (the scan-carry form). Hub names:
    ``norm1``, ``attn/qkv``, ``attn/proj``, ``ls1``, ``norm2``, ``mlp/fc1|fc2`` (``ffn_layer="mlp"``, exact GELU)
    or ``mlp/w12|w3`` (``"swiglu"``), ``ls2``. LayerNorms have affines and eps ``layer_norm_eps``; RoPE (DINOv3)
    uses the ``"halves"`` pairing.
    """

    channels: int
    num_heads: int
    ffn_hidden: int
    ffn_layer: Literal["mlp", "swiglu"] = "mlp"
    layer_norm_eps: float = 1e-6
    layerscale: bool = True
    qkv_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    @nn.compact
    def __call__(self, x, rope_phases=None):
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(epsilon=self.layer_norm_eps, param_dtype=self.param_dtype)
        h = LayerNorm(name="norm1", **norm)(x)
        h = MultiHeadAttention(self.channels, self.num_heads, naming="dino", qkv_bias=self.qkv_bias,
                               rope_pairing="halves", init_scheme="normal0.02", attention_impl=self.attention_impl,
                               name="attn", **dt)(h, rope_phases=rope_phases)
        if self.layerscale:
            h = LayerScale(param_dtype=self.param_dtype, name="ls1")(h)
        x = x + h
        h = LayerNorm(name="norm2", **norm)(x)
        gated = self.ffn_layer == "swiglu"
        h = FeedForward(self.ffn_hidden, approximate_gelu=False, gated=gated, init_scheme="normal0.02",
                        layer_names=("w12", "w3") if gated else ("fc1", "fc2"), name="mlp", **dt)(h)
        if self.layerscale:
            h = LayerScale(param_dtype=self.param_dtype, name="ls2")(h)
        return x + h, None


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN modulation ``x (1 + scale) + shift`` with per-sample [B, C] vectors broadcast over tokens."""
    return broadcast_multiply(x, 1 + scale[:, None]) + shift[:, None]


class ModulatedCrossBlock(nn.Module):
    """adaLN block: ``x += g1·SelfAttn(mod(LN1 x))``; ``x += CrossAttn(LN2 x, ctx)``; ``x += g2·FFN(mod(LN3 x))``.

    Call ``(x [B, L, C], cond [B, C] or [B, 6C], context [B, M, Cc], rope_phases | None) -> (x, None)`` (the
    scan-carry form). With ``share_mod`` the block receives the 6C modulation vector computed once by the model
    (TRELLIS.2: ``modulation_bias`` adds the block's own learned ``modulation [6C]``, init ``N(0, 1/C)``);
    otherwise ``cond`` is the time embedding and the block owns ``Linear(silu(cond)) -> 6C``.
    Norms: LN eps 1e-6 without affine; LN2 affine iff ``norm2_affine`` (TRELLIS True, PartPacker False).
    """

    channels: int
    num_heads: int
    mlp_ratio: float = 4.0
    naming: Literal["trellis", "partpacker"] = "trellis"
    qk_norm: Optional[str] = None
    qk_norm_cross: Optional[str] = None
    share_mod: bool = False
    modulation_bias: bool = False
    norm2_affine: bool = True
    approximate_gelu: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    @nn.compact
    def __call__(self, x, cond, context, rope_phases=None):
        names = _BLOCK_NAMES[self.naming]
        c = self.channels
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.share_mod:
            mod = cond
            if self.modulation_bias:
                bias = self.param("modulation", partitioned(nn.initializers.normal(c ** -0.5), (MOD,)), (6 * c,),
                                  self.param_dtype)
                mod = mod + bias.astype(mod.dtype)
        else:
            mod = Dense(6 * c, init_scheme="zeros", axes=(EMBED, MOD), name=names["modulation"], **dt)(nn.silu(cond))
        if mod.shape[-1] != 6 * c:
            raise ValueError(f"modulation must have 6·channels = {6 * c} features, got {mod.shape[-1]}")
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        attn = dict(channels=c, num_heads=self.num_heads, naming=self.naming, attention_impl=self.attention_impl, **dt)

        h = modulate(LayerNorm(1e-6, elementwise_affine=False, name="norm1")(x), shift_msa, scale_msa)
        h = MultiHeadAttention(kind="self", qk_norm=self.qk_norm, name=names["self_attn"], **attn)(
            h, rope_phases=rope_phases)
        x = x + broadcast_multiply(h, gate_msa[:, None])
        h = LayerNorm(1e-6, elementwise_affine=self.norm2_affine, param_dtype=self.param_dtype, name="norm2")(x)
        x = x + MultiHeadAttention(kind="cross", qk_norm=self.qk_norm_cross, name=names["cross_attn"], **attn)(
            h, context)
        h = modulate(LayerNorm(1e-6, elementwise_affine=False, name="norm3")(x), shift_mlp, scale_mlp)
        h = FeedForward(int(c * self.mlp_ratio), prefix=names["ffn_layers"], approximate_gelu=self.approximate_gelu,
                        name=names["ffn"], **dt)(h)
        x = x + broadcast_multiply(h, gate_mlp[:, None])
        return x, None


# Stacks of at most this many layers are unrolled on CPU when a model's ``scan_unroll`` is None (automatic).
CPU_UNROLL_MAX_LAYERS = 8


def layer_unroll(scan_unroll: Optional[bool], num_layers: int, remat: bool) -> bool:
    """Resolve a model's ``scan_unroll`` field: ``True`` unrolls the layer scan fully (same parameters, stacked;
    one copy of the block per layer in the program), ``False`` keeps a loop. ``None`` (automatic): unroll on CPU
    for stacks of ≤ ``CPU_UNROLL_MAX_LAYERS`` layers without rematerialisation, where XLA:CPU runs a loop body's
    matmuls slower than straight-line code, for a little compile time. Kept as a loop elsewhere: deep stacks compile
    several times slower unrolled, and under remat an unrolled stack no longer keeps the rematerialised activations
    bounded (``experiments/ab_optimisations.py`` and ``experiments/perf_extras.py`` measure both; docs/performance.md,
    "Unrolled shallow stacks")."""
    if scan_unroll is None:
        return jax.default_backend() == "cpu" and num_layers <= CPU_UNROLL_MAX_LAYERS and not remat
    return bool(scan_unroll)


def scan_blocks(block_cls: type[nn.Module], num_layers: int, *, name: str, remat: bool = True,
                remat_policy: str = "nothing_saveable", num_broadcast_args: int = 3, unroll: bool = False,
                **block_kwargs):
    """A stack of ``num_layers`` identical blocks as one ``nn.scan`` (compile time independent of depth).

    Parameters get a leading ``[num_layers]`` axis with logical name ``LAYERS``; the converter stacks the
    upstream per-layer tensors (``<name>.<i>.*``) into it. ``block_cls(...)(x, *args) -> (x, None)``; every
    argument after ``x`` is broadcast to all layers. ``remat_policy`` names a ``jax.checkpoint_policies`` member.
    ``unroll=True`` unrolls the scan fully (the parameters keep their stacked layout; see :func:`layer_unroll`).
    """
    cls = block_cls
    if remat:
        policy = getattr(jax.checkpoint_policies, remat_policy, None)
        if policy is None:
            raise ValueError(f"unknown remat_policy {remat_policy!r}: not in jax.checkpoint_policies")
        # Inside a loop XLA cannot merge the recomputation with the forward; unrolled it can, so block that.
        cls = nn.remat(cls, prevent_cse=bool(unroll), policy=policy)
    stack = nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * num_broadcast_args,
        length=num_layers,
        unroll=num_layers if unroll else 1,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )
    return stack(name=name, **block_kwargs)


class AttentionBlock(nn.Module):
    """Pre-LN transformer block (PartPacker ``vae.modules.transformer.AttentionBlock``).

    ``x += Attn(LN(x)[, LN(context)])``; ``x += FFN(LN(x))`` with parameter-free LayerNorms (eps 1e-6,
    ``norm_attn``, ``norm_context``, ``norm_ff``), exact-erf GELU FFN ``ff/net_0|net_2`` (ratio ``mlp_ratio``) and
    PartPacker attention names (``attn/qkv_proj`` or ``attn/q_proj|k_proj|v_proj``, ``attn/out_proj``).
    ``cross=True`` makes it a cross-attention block (call ``(x, context)``); otherwise ``(x)``.
    ``return_carry`` returns ``(x, None)`` for :func:`scan_blocks`.
    """

    channels: int
    num_heads: int
    cross: bool = False
    qk_norm: Optional[str] = None
    mlp_ratio: float = 4.0
    init_scheme: str = "torch"
    return_carry: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    @nn.compact
    def __call__(self, x, context=None):
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = MultiHeadAttention(self.channels, self.num_heads, kind="cross" if self.cross else "self",
                                  naming="partpacker", qk_norm=self.qk_norm, init_scheme=self.init_scheme,
                                  attention_impl=self.attention_impl, name="attn", **dt)
        h = LayerNorm(1e-6, elementwise_affine=False, name="norm_attn")(x)
        if self.cross:
            if context is None:
                raise ValueError("AttentionBlock(cross=True) needs a context")
            x = x + attn(h, LayerNorm(1e-6, elementwise_affine=False, name="norm_context")(context))
        else:
            x = x + attn(h)
        h = LayerNorm(1e-6, elementwise_affine=False, name="norm_ff")(x)
        x = x + FeedForward(int(self.channels * self.mlp_ratio), prefix="net", approximate_gelu=False,
                            init_scheme=self.init_scheme, name="ff", **dt)(h)
        return (x, None) if self.return_carry else x


class FlashQueryLayer(nn.Module):
    """PartPacker ``FlashQueryLayer``: ``FFN_1(CrossAttn(LN(x), context))`` — no residuals, no LN before the FFN
    (ratio ``mlp_ratio``, 1 upstream), context used as given (the caller normalises it once)."""

    channels: int
    num_heads: int
    qk_norm: Optional[str] = None
    mlp_ratio: float = 1.0
    init_scheme: str = "torch"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    @nn.compact
    def __call__(self, x, context):
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(1e-6, elementwise_affine=False, name="norm_attn")(x)
        h = MultiHeadAttention(self.channels, self.num_heads, kind="cross", naming="partpacker",
                               qk_norm=self.qk_norm, init_scheme=self.init_scheme, attention_impl=self.attention_impl,
                               name="attn", **dt)(h, context)
        return FeedForward(int(self.channels * self.mlp_ratio), prefix="net", approximate_gelu=False,
                           init_scheme=self.init_scheme, name="ff", **dt)(h)
