"""Attention alone, at the DiT shapes: jaxshape's CPU flash attention vs XLA's attention vs PyTorch SDPA.

Also times two formulations of the flash kernel that this repository used before or rejected, so the table shows
what the current one bought: ``heads-batched`` (every head of a query chunk in one op: [H, chunk, Lk] logits, the
previous implementation) against the current per-head tiles with the key-major backward (``flash``).

    python experiments/bench_attention.py            # writes experiments/results/bench_attention.md

fp32, batch 1, head dim 64; forward and forward+backward (gradient of sum(out · w) w.r.t. q, k, v); interleaved
(every variant once per round), min and median over ``--reps``. Prints a table; asserts no timing.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
if __name__ == "__main__":  # host-allocator tunables as in `python -m jaxshape.train` (JAXSHAPE_CPU_MALLOC=0: off)
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
    reexec_with_cpu_malloc_tunables()
from bench_lib import block, interleaved, machine_description, summary, write_markdown  # noqa: E402
from jaxshape.nn.attention import dot_product_attention  # noqa: E402

SHAPES = {  # name: (Lq, Lk, heads)
    "self 4096×4096, 16 heads (SS flow L / PartPacker DiT)": (4096, 4096, 16),
    "cross 4096×1374, 16 heads": (4096, 1374, 16),
    "self 512×512, 4 heads (CPU-size DiTs)": (512, 512, 4),
}


def heads_batched_flash(q, k, v, chunk=256):
    """The previous formulation: one query chunk of *all* heads per step ([H, chunk, Lk] logits), query-major
    backward. Kept here only as the baseline of this benchmark."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    return t(_hb(t(q), t(k), t(v), scale, chunk))


def _hb_forward(q, k, v, scale, chunk):
    b, h, lq, d = q.shape
    qc = q.reshape(b, h, lq // chunk, chunk, d).transpose(2, 0, 1, 3, 4)

    def one(qi):
        s = jnp.einsum("bhqd,bhkd->bhqk", qi, k) * scale
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        den = jnp.sum(p, axis=-1, keepdims=True)
        return jnp.einsum("bhqk,bhkd->bhqd", p / den, v), (m + jnp.log(den))[..., 0]

    o, lse = jax.lax.map(one, qc)
    return o.transpose(1, 2, 0, 3, 4).reshape(q.shape), lse.transpose(1, 2, 0, 3).reshape(b, h, lq)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _hb(q, k, v, scale, chunk):
    return _hb_forward(q, k, v, scale, chunk)[0]


def _hb_fwd(q, k, v, scale, chunk):
    o, lse = _hb_forward(q, k, v, scale, chunk)
    return o, (q, k, v, o, lse)


def _hb_bwd(scale, chunk, res, do):
    q, k, v, o, lse = res
    b, h, lq, d = q.shape
    n = lq // chunk
    delta = jnp.sum(do * o, axis=-1)
    cut = lambda x: x.reshape(b, h, n, chunk, *x.shape[3:]).swapaxes(0, 2).swapaxes(1, 2)  # noqa: E731

    def one(carry, x):
        dk, dv = carry
        qi, doi, li, di = x
        p = jnp.exp(jnp.einsum("bhqd,bhkd->bhqk", qi, k) * scale - li[..., None])
        dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p, doi)
        ds = p * (jnp.einsum("bhqd,bhkd->bhqk", doi, v) - di[..., None]) * scale
        dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qi)
        return (dk, dv), jnp.einsum("bhqk,bhkd->bhqd", ds, k)

    (dk, dv), dq = jax.lax.scan(one, (jnp.zeros_like(k), jnp.zeros_like(v)),
                                (cut(q), cut(do), cut(lse[..., None])[..., 0], cut(delta[..., None])[..., 0]))
    return dq.transpose(1, 2, 0, 3, 4).reshape(q.shape), dk, dv


_hb.defvjp(_hb_fwd, _hb_bwd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_attention.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    impls = {
        "jaxshape flash (per-head tiles, key-major bwd)": lambda q, k, v: dot_product_attention(
            q, k, v, implementation="flash"),
        "heads-batched flash (previous)": heads_batched_flash,
        "XLA (jax.nn.dot_product_attention)": lambda q, k, v: dot_product_attention(q, k, v, implementation="xla"),
    }
    rows = []
    for shape_name, (lq, lk, h) in SHAPES.items():
        rng = np.random.default_rng(0)
        qn, kn, vn, wn = (rng.standard_normal((1, n, h, 64)).astype(np.float32) for n in (lq, lk, lk, lq))
        q, k, v, w = map(jnp.asarray, (qn, kn, vn, wn))
        fns = {}
        for name, f in impls.items():
            fwd = jax.jit(f)
            grad = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))
            fns[(name, "forward")] = lambda fwd=fwd: block(fwd(q, k, v))
            fns[(name, "fwd+bwd")] = lambda grad=grad: block(grad(q, k, v))
        tq, tk, tv = (torch.from_numpy(a).transpose(1, 2).contiguous().requires_grad_() for a in (qn, kn, vn))
        tw = torch.from_numpy(wn).transpose(1, 2)

        def t_fwd():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

        def t_fb():
            for x in (tq, tk, tv):
                x.grad = None
            (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv) * tw).sum().backward()

        fns[("PyTorch SDPA (eager)", "forward")] = t_fwd
        fns[("PyTorch SDPA (eager)", "fwd+bwd")] = t_fb
        res = interleaved(fns, args.reps)
        for (name, what), ts in res.items():
            mn, md = summary(ts)
            rows.append(f"| {shape_name} | {name} | {what} | {mn * 1e3:.1f} / {md * 1e3:.1f} |")
            print(rows[-1], flush=True)
    lines = ["# Attention alone: jaxshape CPU flash attention vs XLA vs PyTorch SDPA", "",
             f"Machine: {machine_description()}", "",
             f"Command: `python experiments/bench_attention.py --reps {args.reps}`; fp32, batch 1, head dim 64; "
             "interleaved; fwd+bwd = gradient w.r.t. q, k, v.", "",
             "| shape | implementation | what | min / median (ms) |", "|---|---|---|---|", *rows, ""]
    write_markdown(args.out, lines)


if __name__ == "__main__":
    main()
