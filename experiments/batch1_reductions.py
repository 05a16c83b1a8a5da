"""Why jaxshape forms token-broadcast products and norm statistics on 2-D views (``jaxshape/nn/norms.py``).

On XLA:CPU (jax 0.10, YNNPACK fusions) a reduction of a product over an array whose leading axis has size 1
(batch 1: ``[1, T, C]``) runs on a slow path, 20-150× slower than the same reduction on ``[T, C]`` or on
``[2, T/2, C]``. A training step at batch 1 meets it in the gradient of every per-channel weight and adaLN
modulation vector (``sum_t g · x``) and in LayerNorm backward row sums.

    python experiments/batch1_reductions.py          # writes experiments/results/batch1_reductions.md

Prints a table of min times over ``--reps`` runs; asserts no timing.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
if __name__ == "__main__":  # host-allocator tunables as in `python -m jaxshape.train` (JAXSHAPE_CPU_MALLOC=0: off)
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
    reexec_with_cpu_malloc_tunables()
from bench_lib import block, interleaved, machine_description, write_markdown  # noqa: E402
from jaxshape.nn.norms import broadcast_multiply, layer_norm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "batch1_reductions.md"))
    args = ap.parse_args(argv)
    t, c = args.tokens, args.channels
    rng = np.random.default_rng(0)
    x3 = jnp.asarray(rng.standard_normal((1, t, c)).astype(np.float32))
    y3 = x3 + 1
    x2, y2 = x3[0], y3[0]
    xb, yb = x3.reshape(2, t // 2, c), y3.reshape(2, t // 2, c)
    s = jnp.asarray(rng.standard_normal((1, c)).astype(np.float32))

    def mod_plain(s, x):
        return jnp.sum(jnp.tanh(x * (1 + s[:, None])))

    def mod_fast(s, x):
        return jnp.sum(jnp.tanh(broadcast_multiply(x, 1 + s[:, None])))

    def ln_plain(x):  # LayerNorm statistics on the [1, T, C] array itself
        m = jnp.mean(x, -1, keepdims=True)
        return jnp.sum(jnp.tanh((x - m) * jax.lax.rsqrt(jnp.mean(jnp.square(x - m), -1, keepdims=True) + 1e-6)))

    cases = {
        "sum over tokens of x·y, [1, T, C]": (lambda x, y: jnp.sum(x * y, axis=1), x3, y3),
        "sum over tokens of x·y, [T, C]": (lambda x, y: jnp.sum(x * y, axis=0), x2, y2),
        "sum over tokens of x·y, [2, T/2, C]": (lambda x, y: jnp.sum(x * y, axis=1), xb, yb),
        "row sums of x·y, [1, T, C]": (lambda x, y: jnp.sum(x * y, axis=-1), x3, y3),
        "row sums of x·y, [T, C]": (lambda x, y: jnp.sum(x * y, axis=-1), x2, y2),
        "grad of adaLN scale, x·(1+s) on [1, T, C]": (jax.grad(mod_plain), s, x3),
        "grad of adaLN scale, broadcast_multiply": (jax.grad(mod_fast), s, x3),
        "grad of LayerNorm, stats on [1, T, C]": (jax.grad(ln_plain), x3),
        "grad of LayerNorm, jaxshape layer_norm": (jax.grad(lambda x: jnp.sum(jnp.tanh(layer_norm(x, 1e-6)))), x3),
    }
    fns = {}
    for name, (f, *a) in cases.items():
        jf = jax.jit(f)
        fns[name] = lambda jf=jf, a=a: block(jf(*a))
    res = interleaved(fns, args.reps)
    rows = [f"| {name} | {min(ts) * 1e3:.2f} |" for name, ts in res.items()]
    for r in rows:
        print(r)
    lines = ["# Reductions at batch 1 on XLA:CPU", "", f"Machine: {machine_description()}", "",
             f"Command: `python experiments/batch1_reductions.py --tokens {t} --channels {c} --reps {args.reps}`; "
             "fp32, min over the repetitions.", "", "| what | min (ms) |", "|---|---|", *rows, ""]
    write_markdown(args.out, lines)


if __name__ == "__main__":
    main()
