"""Blocked ("flash") softmax attention in plain XLA with a custom VJP: fastest on CPU for long sequences.

One step is one head × one chunk of queries against all keys, batched over the batch axis, so the ``[chunk, Lk]``
logits of a sample stay in cache. Heads are the outer loop and query chunks the inner one; the batch axis is never
looped over, so a batch-sharded call stays local to each device (looping over it would make XLA gather the batch).

The backward pass recomputes the probabilities *key-major* (``[Lk, chunk]``) from the saved logsumexp: then
``dV = Pᵀ·dO`` and ``dK = dSᵀ·Q`` are plain row-major matmuls (XLA:CPU runs a transposed matmul operand far slower
than a row-major one) and only ``dQ`` contracts over the leading axis. The kernel takes queries already multiplied
by the softmax scale, so autodiff applies the scale to ``dQ``.

A batch of 1 runs as ``[H, L, D]`` instead of ``[H, 1, L, D]``: XLA:CPU's batched matmul with a batch of 1 is
slower than the plain one. ``experiments/bench_attention.py`` measures all of this against XLA's attention and
PyTorch SDPA.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp

QUERY_CHUNK = 256


def _heads_first(x: jax.Array) -> jax.Array:
    """[B, L, H, D] -> [H, B, L, D]; batch 1 -> [H, L, D]."""
    return x[0].transpose(1, 0, 2) if x.shape[0] == 1 else x.transpose(2, 0, 1, 3)


def _query_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[L, ...] -> [n, chunk, ...], zero-padded at the end of L."""
    n = -(-x.shape[0] // chunk)
    x = jnp.pad(x, [(0, n * chunk - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(n, chunk, *x.shape[1:])


def _forward_head(q, k, v, chunk):
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


def _backward_head(q, k, v, do, lse, delta, chunk):
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


def _forward(q, k, v, chunk):
    """Scaled q [H, (B,) Lq, D], k/v [H, (B,) Lk, D] -> (out [H, (B,) Lq, D], logsumexp [H, (B,) Lq] fp32)."""
    per_head = _per_head(partial(_forward_head, chunk=chunk), q.ndim)
    return jax.lax.map(lambda a: per_head(*a), (q, k, v))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, chunk):
    return _forward(q, k, v, chunk)[0]


def _attention_fwd(q, k, v, chunk):
    o, lse = _forward(q, k, v, chunk)
    return o, (q, k, v, o, lse)


def _attention_bwd(chunk, res, do):
    """Memory O(chunk · Lk) per head instead of O(Lq · Lk); dK, dV accumulated in fp32."""
    q, k, v, o, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [H, (B,) Lq]
    per_head = _per_head(partial(_backward_head, chunk=chunk), q.ndim)
    return jax.lax.map(lambda a: per_head(*a), (q, k, v, do, lse, delta))


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: Optional[float] = None,
                    query_chunk_size: int = QUERY_CHUNK) -> jax.Array:
    """``softmax(q kᵀ · scale) v`` per head, blocked over query chunks, no mask.

    Args:
      q: queries ``[B, Lq, H, D]``.
      k, v: keys and values ``[B, Lk, H, D]``.
      scale: softmax scale; ``None`` = ``1 / sqrt(D)``.
      query_chunk_size: queries per block (memory per head is O(chunk · Lk)).

    Returns:
      ``[B, Lq, H, D]`` in ``q.dtype``: the numbers of softmax attention up to fp32 rounding (statistics in fp32).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    chunk = max(1, min(query_chunk_size, q.shape[1]))
    qs = (q * scale).astype(q.dtype)
    o = _attention(_heads_first(qs), _heads_first(k), _heads_first(v), int(chunk))
    return o.transpose(1, 0, 2)[None] if o.ndim == 3 else o.transpose(1, 2, 0, 3)
