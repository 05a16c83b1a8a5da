"""Multi-head attention shared by both families.

One attention core (:func:`dot_product_attention`) picks the implementation per backend; one module
(:class:`MultiHeadAttention`) covers the projection layouts and qk-norms of TRELLIS and PartPacker:

==================  ===============================  ==========================================
                    TRELLIS (``naming="trellis"``)   PartPacker (``naming="partpacker"``)
==================  ===============================  ==========================================
self projections    ``to_qkv`` [C, 3C] = [q|k|v]     ``qkv_proj`` [C, 3C] = [q|k|v]
cross projections   ``to_q``, ``to_kv`` = [k|v]      ``q_proj``, ``k_proj``, ``v_proj``
output              ``to_out``                       ``out_proj``
qk-norm             per-head RMS (``q_rms_norm``)    full-width LayerNorm / RMSNorm (``q_norm``)
==================  ===============================  ==========================================

DINO ViTs (``naming="dino"``, self-attention only) use ``qkv`` [C, 3C] = [q|k|v] and ``proj``, the hub's names.
Heads are contiguous blocks of ``D = C / H`` features inside each of q, k, v.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.kernels.flash_attention import QUERY_CHUNK, flash_attention
from jaxshape.nn.axes import COND, EMBED, HEADS
from jaxshape.nn.embeddings import apply_rope
from jaxshape.nn.linear import Dense
from jaxshape.nn.norms import LayerNorm, MultiHeadRMSNorm, RMSNorm

AttentionImpl = Optional[Literal["xla", "cudnn", "chunked", "flash", "reference"]]

# CPU: switch from XLA's materialised-logits attention to the blocked kernel (jaxshape.kernels.flash_attention) once
# the logits of one call (B·H·Lq·Lk) reach this many elements: from there on the kernel is faster forward and
# backward (experiments/bench_attention.py).
FLASH_MIN_LOGITS = 1 << 16

_NAMES = {
    "trellis": dict(qkv="to_qkv", q="to_q", kv="to_kv", out="to_out"),
    "partpacker": dict(qkv="qkv_proj", q="q_proj", k="k_proj", v="v_proj", out="out_proj"),
    "dino": dict(qkv="qkv", out="proj"),
}
QK_NORMS = (None, "rms_per_head", "layernorm", "rmsnorm")
# PartPacker's ``qknorm_type`` config values -> the full-width qk-norm they select
PARTPACKER_QK_NORMS = {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm"}


def _reference_attention(q, k, v, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: AttentionImpl = None,
                          query_chunk_size: int = 1024) -> jax.Array:
    """``softmax(q kᵀ / sqrt(D)) v`` per head, no mask. Layout BTNH: q [B, Lq, H, D], k/v [B, Lk, H, D].

    ``implementation``: ``None`` = automatic (cuDNN flash attention on GPU for fp16/bf16; on CPU
    :func:`flash_attention` when the logits would exceed ``FLASH_MIN_LOGITS`` elements; XLA otherwise);
    ``"flash"`` (``jaxshape.kernels.flash_attention``, any backend);
    ``"xla"``, ``"cudnn"`` (``jax.nn.dot_product_attention``); ``"chunked"`` (XLA over query chunks of
    ``query_chunk_size``: bounded memory for long sequences); ``"reference"`` (einsum + fp32 softmax).
    Softmax is always in fp32. An empty key set (Lk = 0) gives zeros, as PyTorch SDPA does.
    """
    if k.shape[1] == 0:
        return jnp.zeros(q.shape[:-1] + (v.shape[-1],), q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1])
    impl = implementation
    if impl is None:
        backend = jax.default_backend()
        logits = q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1]
        if backend == "gpu" and q.dtype in (jnp.float16, jnp.bfloat16):
            impl = "cudnn"
        elif backend == "cpu" and logits >= FLASH_MIN_LOGITS:
            impl = "flash"
        else:
            impl = "xla"
    if impl == "flash":
        return flash_attention(q, k, v, scale=scale, query_chunk_size=query_chunk_size
                               if implementation == "flash" else QUERY_CHUNK)
    if impl == "reference":
        return _reference_attention(q, k, v, scale)
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
    if impl == "chunked":
        lq = q.shape[1]
        if lq <= query_chunk_size:
            return jax.nn.dot_product_attention(q, k, v, scale=scale)
        n = -(-lq // query_chunk_size)
        pad = n * query_chunk_size - lq
        qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        qc = qp.reshape(q.shape[0], n, query_chunk_size, *q.shape[2:]).swapaxes(0, 1)
        out = jax.lax.map(lambda qi: jax.nn.dot_product_attention(qi, k, v, scale=scale), qc)
        out = out.swapaxes(0, 1).reshape(q.shape[0], n * query_chunk_size, *out.shape[3:])
        return out[:, :lq]
    raise ValueError(f"unknown attention implementation {implementation!r}")


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with the fused layouts and qk-norms of both families (see module docstring).

    Call: ``(x [B, L, C], context [B, M, Cc] | None, rope_phases [L, D/2] | None) -> [B, L, C]``.
    ``qk_norm``: ``None``; ``"rms_per_head"`` (TRELLIS MultiHeadRMSNorm after the head split); ``"layernorm"``
    (PartPacker: LayerNorm eps 1e-6 without affine over the full width, before the split); ``"rmsnorm"``
    (PartPacker RMSNorm over the full width). RoPE (self-attention only) is applied after the qk-norm, with
    ``rope_pairing`` (``jaxshape.nn.embeddings.apply_rope``).
    """

    channels: int
    num_heads: int
    kind: Literal["self", "cross"] = "self"
    naming: Literal["trellis", "partpacker", "dino"] = "trellis"
    qk_norm: Optional[str] = None
    qkv_bias: bool = True
    rope_pairing: str = "adjacent"
    init_scheme: str = "xavier"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    def __post_init__(self):
        if self.channels % self.num_heads:
            raise ValueError(f"attention width {self.channels} must be divisible by num_heads {self.num_heads}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.naming not in _NAMES:
            raise ValueError(f"naming must be one of {sorted(_NAMES)}, got {self.naming!r}")
        if self.kind == "cross" and "q" not in _NAMES[self.naming]:
            raise ValueError(f"naming {self.naming!r} has self-attention only")
        super().__post_init__()

    def _dense(self, features, name, logical=(EMBED, HEADS)):
        return Dense(features, use_bias=self.qkv_bias, init_scheme=self.init_scheme, axes=logical, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

    def _full_width_norm(self, name):
        if self.qk_norm == "layernorm":
            return LayerNorm(1e-6, elementwise_affine=False, name=name)
        return RMSNorm(1e-6, param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None,
                 rope_phases: Optional[jax.Array] = None) -> jax.Array:
        names = _NAMES[self.naming]
        c, h = self.channels, self.num_heads
        b, lq = x.shape[:2]
        if self.kind == "self":
            qkv = self._dense(3 * c, names["qkv"])(x)
            q, k, v = jnp.split(qkv, 3, axis=-1)
        elif self.kind == "cross":
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self._dense(c, names["q"])(x)
            if "kv" in names:
                kv = self._dense(2 * c, names["kv"], logical=(COND, HEADS))(context)
                k, v = jnp.split(kv, 2, axis=-1)
            else:
                k = self._dense(c, names["k"], logical=(COND, HEADS))(context)
                v = self._dense(c, names["v"], logical=(COND, HEADS))(context)
        else:
            raise ValueError(f"kind must be 'self' or 'cross', got {self.kind!r}")
        if self.qk_norm in ("layernorm", "rmsnorm"):
            q = self._full_width_norm("q_norm")(q)
            k = self._full_width_norm("k_norm")(k)
        q = q.reshape(b, lq, h, c // h)
        k = k.reshape(b, k.shape[1], h, c // h)
        v = v.reshape(b, v.shape[1], h, c // h)
        if self.qk_norm == "rms_per_head":
            q = MultiHeadRMSNorm(param_dtype=self.param_dtype, name="q_rms_norm")(q)
            k = MultiHeadRMSNorm(param_dtype=self.param_dtype, name="k_rms_norm")(k)
        if rope_phases is not None:
            q = apply_rope(q, rope_phases, self.rope_pairing)
            k = apply_rope(k, rope_phases, self.rope_pairing)
        out = dot_product_attention(q, k, v, implementation=self.attention_impl)
        out = out.reshape(b, lq, c)
        return Dense(c, init_scheme=self.init_scheme, axes=(HEADS, EMBED), dtype=self.dtype,
                     param_dtype=self.param_dtype, name=names["out"])(out)
