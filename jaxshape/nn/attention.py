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

Heads are contiguous blocks of ``D = C / H`` features inside each of q, k, v.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn.embeddings import apply_rope
from jaxshape.nn.linear import Dense
from jaxshape.nn.norms import LayerNorm, MultiHeadRMSNorm, RMSNorm

AttentionImpl = Optional[Literal["xla", "cudnn", "chunked", "flash", "reference"]]

# CPU: switch from XLA's materialised-logits attention to the blocked kernel below once the logits of one call
# (B·H·Lq·Lk) reach this many elements (measured: from ~512 tokens on, it is faster fwd+bwd).
FLASH_MIN_LOGITS = 1 << 16
FLASH_QUERY_CHUNK = 256

_NAMES = {
    "trellis": dict(qkv="to_qkv", q="to_q", kv="to_kv", out="to_out"),
    "partpacker": dict(qkv="qkv_proj", q="q_proj", k="k_proj", v="v_proj", out="out_proj"),
}
QK_NORMS = (None, "rms_per_head", "layernorm", "rmsnorm")


def _reference_attention(q, k, v, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


# Blocked ("flash") attention for CPU. One step = one head × one chunk of queries against all keys, batched over
# the batch axis: per sample the [chunk, Lk] logits stay in cache (4 MiB at chunk 256, Lk 4096), which is what makes
# this faster than batching all heads per chunk (measured 3.3× forward, 1.4× forward+backward at 16 heads × 4096
# tokens). Heads are the outer loop, query chunks the inner one; the batch axis is never looped over, so a
# batch-sharded call stays local to each device (looping over it would make XLA gather the batch). The backward
# recomputes the probabilities *key-major* ([Lk, chunk]): then dV = Pᵀ·dO and dK = dSᵀ·Q are plain row-major
# matmuls (a transposed operand runs at ~1/4 of the matmul speed in XLA:CPU) and only dQ contracts over the leading
# axis. The kernel takes queries already multiplied by the softmax scale (autodiff applies the scale to dQ).


def _heads_first(x: jax.Array) -> jax.Array:
    """[B, L, H, D] -> [H, B, L, D]; batch 1 -> [H, L, D] (a batched matmul with a batch of 1 is slower in XLA:CPU,
    measured 7-10% on the SS-flow block)."""
    return x[0].transpose(1, 0, 2) if x.shape[0] == 1 else x.transpose(2, 0, 1, 3)


def _query_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[L, ...] -> [n, chunk, ...], zero-padded at the end of L."""
    n = -(-x.shape[0] // chunk)
    x = jnp.pad(x, [(0, n * chunk - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(n, chunk, *x.shape[1:])


def _flash_forward_head(q, k, v, chunk):
    """One head: scaled q [Lq, D], k/v [Lk, D] -> (out [Lq, D], logsumexp [Lq] fp32)."""
    lq = q.shape[0]

    def one(qi):
        s = jnp.dot(qi, k.T, preferred_element_type=jnp.float32)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / denom
        return o.astype(q.dtype), (m + jnp.log(denom))[:, 0]

    o, lse = jax.lax.map(one, _query_chunks(q, chunk))
    return o.reshape(-1, o.shape[-1])[:lq], lse.reshape(-1)[:lq]


def _flash_backward_head(q, k, v, do, lse, delta, chunk):
    """One head's (dQ, dK, dV) for scaled q; probabilities recomputed per query chunk, key-major, from the saved
    logsumexp."""
    lq = q.shape[0]

    def one(carry, x):
        dk, dv = carry
        qi, doi, lsei, di = x
        pt = jnp.exp(jnp.dot(k, qi.T, preferred_element_type=jnp.float32) - lsei[None, :])  # [Lk, chunk]
        dv = dv + jnp.dot(pt.astype(do.dtype), doi, preferred_element_type=jnp.float32)
        dpt = jnp.dot(v, doi.T, preferred_element_type=jnp.float32)
        dst = (pt * (dpt - di[None, :])).astype(q.dtype)
        dqi = jnp.einsum("kq,kd->qd", dst, k, preferred_element_type=jnp.float32)
        dk = dk + jnp.dot(dst, qi, preferred_element_type=jnp.float32)
        return (dk, dv), dqi.astype(q.dtype)

    xs = (_query_chunks(q, chunk), _query_chunks(do, chunk), _query_chunks(lse, chunk), _query_chunks(delta, chunk))
    zeros = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(one, zeros, xs)
    return dq.reshape(-1, dq.shape[-1])[:lq], dk.astype(k.dtype), dv.astype(v.dtype)


def _per_head(fn, ndim: int):
    """``fn`` on one head's [L, D] arrays, vmapped over the batch for [H, B, L, D] inputs (none for [H, L, D])."""
    return jax.vmap(fn) if ndim == 4 else fn


def _flash_forward(q, k, v, chunk):
    """Scaled q [H, (B,) Lq, D], k/v [H, (B,) Lk, D] -> (out [H, (B,) Lq, D], logsumexp [H, (B,) Lq] fp32)."""
    per_head = _per_head(partial(_flash_forward_head, chunk=chunk), q.ndim)
    return jax.lax.map(lambda a: per_head(*a), (q, k, v))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash_attention(q, k, v, chunk):
    return _flash_forward(q, k, v, chunk)[0]


def _flash_fwd(q, k, v, chunk):
    o, lse = _flash_forward(q, k, v, chunk)
    return o, (q, k, v, o, lse)


def _flash_bwd(chunk, res, do):
    """Flash-attention backward: memory O(chunk · Lk) per head instead of O(Lq · Lk); dK, dV accumulated in fp32."""
    q, k, v, o, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [H, (B,) Lq]
    per_head = _per_head(partial(_flash_backward_head, chunk=chunk), q.ndim)
    return jax.lax.map(lambda a: per_head(*a), (q, k, v, do, lse, delta))


_flash_attention.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: Optional[float] = None,
                    query_chunk_size: int = FLASH_QUERY_CHUNK) -> jax.Array:
    """Blocked (flash-style) attention in plain XLA, BTNH layout, with a custom VJP that recomputes the
    probabilities per query chunk instead of storing them. The same numbers as softmax attention up to fp32
    rounding; memory O(chunk · Lk). Fastest on CPU for long sequences (see docs/performance.md)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    chunk = max(1, min(query_chunk_size, q.shape[1]))
    qs = (q * scale).astype(q.dtype)
    o = _flash_attention(_heads_first(qs), _heads_first(k), _heads_first(v), int(chunk))
    return o.transpose(1, 0, 2)[None] if o.ndim == 3 else o.transpose(1, 2, 0, 3)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: AttentionImpl = None,
                          query_chunk_size: int = 1024) -> jax.Array:
    """``softmax(q kᵀ / sqrt(D)) v`` per head, no mask. Layout BTNH: q [B, Lq, H, D], k/v [B, Lk, H, D].

    ``implementation``: ``None`` = automatic (cuDNN flash attention on GPU for fp16/bf16; on CPU
    :func:`flash_attention` when the logits would exceed ``FLASH_MIN_LOGITS`` elements; XLA otherwise);
    ``"flash"`` (:func:`flash_attention`, any backend);
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
                               if implementation == "flash" else FLASH_QUERY_CHUNK)
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
    (PartPacker RMSNorm over the full width). RoPE (self-attention only) is applied after the qk-norm.
    """

    channels: int
    num_heads: int
    kind: Literal["self", "cross"] = "self"
    naming: Literal["trellis", "partpacker"] = "trellis"
    qk_norm: Optional[str] = None
    qkv_bias: bool = True
    init: str = "xavier"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention_impl: AttentionImpl = None

    def __post_init__(self):
        if self.channels % self.num_heads:
            raise ValueError(f"attention width {self.channels} must be divisible by num_heads {self.num_heads}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.naming not in _NAMES:
            raise ValueError(f"naming must be 'trellis' or 'partpacker', got {self.naming!r}")
        super().__post_init__()

    def _dense(self, features, name, axes=("embed", "heads")):
        return Dense(features, use_bias=self.qkv_bias, init=self.init, axes=axes, dtype=self.dtype,
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
                kv = self._dense(2 * c, names["kv"], axes=("cond", "heads"))(context)
                k, v = jnp.split(kv, 2, axis=-1)
            else:
                k = self._dense(c, names["k"], axes=("cond", "heads"))(context)
                v = self._dense(c, names["v"], axes=("cond", "heads"))(context)
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
            q = apply_rope(q, rope_phases)
            k = apply_rope(k, rope_phases)
        out = dot_product_attention(q, k, v, implementation=self.attention_impl)
        out = out.reshape(b, lq, c)
        return Dense(c, init=self.init, axes=("heads", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name=names["out"])(out)
