"""XLA:CPU library switches (oneDNN, XNNPACK / YNNPACK fusions) on the ops the four user shapes spend their time in,
beside PyTorch in the same run.

    python experiments/bench_xla_cpu_flags.py [--reps 5] [--out experiments/results/bench_xla_cpu_flags.md]

Each flag set runs in its own child process (``XLA_FLAGS`` must be set before JAX starts); the parent times the same
ops in PyTorch eager (2 threads). Ops: the fp32 matmul peak, 3³ "same" conv3d train steps (forward + gradients of
input and kernel) at the SS VAE's user shapes in every ``conv3d_same`` formulation, and attention forward + backward at
head dim 64 (the CPU flash kernel and ``jax.nn.dot_product_attention``; torch SDPA). The table says which library each
compiled op reached (``__onednn`` / ``__xnn`` / ``__ynn`` fusions in the optimised HLO). Prints tables, asserts
nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLAG_SETS = {
    "default": "",
    "oneDNN (use_onednn + custom call)": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "oneDNN fusions dot+eltwise": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "YNN conv+dot": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
    "XNN conv": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "no XNN fusions": "--xla_cpu_use_xnnpack=false",
}
CONVS = [(64, 16, 16), (32, 32, 32), (16, 64, 64)]  # (spatial, in, out): SS decoder / encoder levels at 64³ in
FORMULATIONS = ("lax", "conv2d", "im2col", "im2col_z", "winograd")
ATTN = [(4096, 4096), (2048, 2048), (4096, 257)]  # (queries, keys), 4 heads of 64


def child(reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench_lib import median_seconds
    from jaxshape.kernels.conv3d import conv3d_same
    from jaxshape.nn.attention import dot_product_attention

    out = {}

    def timed(fn, *args):
        c = jax.jit(fn).lower(*args).compile()
        hlo = c.as_text()
        libs = sorted({lib for lib in ("__onednn", "__xnn", "__ynn", "onednn") if lib in hlo})
        return median_seconds(lambda: jax.block_until_ready(c(*args)), reps), libs

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32)
    t, libs = timed(lambda x, y: x @ y, a, a)
    out["matmul 2048²"] = (2 * 2048**3 / t / 1e9, libs)
    for s, cin, cout in CONVS:
        x = jnp.asarray(rng.standard_normal((1, s, s, s, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, 3, cin, cout)) * 0.05, jnp.float32)
        for form in FORMULATIONS:
            def step(x, w, form=form):
                return jax.grad(lambda x, w: jnp.sum(conv3d_same(x, w, form) ** 2), argnums=(0, 1))(x, w)

            out[f"conv {s}³ {cin}→{cout} {form}"] = timed(step, x, w)
    for lq, lk in ATTN:
        q = jnp.asarray(rng.standard_normal((1, lq, 4, 64)), jnp.float32)
        kv = jnp.asarray(rng.standard_normal((1, lk, 4, 64)), jnp.float32)
        for impl in ("flash", "xla"):
            def step(q, k, impl=impl):
                return jax.grad(lambda q, k: jnp.sum(dot_product_attention(q, k, k, implementation=impl) ** 2),
                                argnums=(0, 1))(q, k)

            out[f"attention {lq}×{lk} {impl}"] = timed(step, q, kv)
    return out


def torch_side(reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from bench_lib import median_seconds

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}

    def timed(fn):
        return median_seconds(fn, reps)

    a = torch.randn(2048, 2048)
    out["matmul 2048²"] = 2 * 2048**3 / timed(lambda: a @ a) / 1e9
    for s, cin, cout in CONVS:
        x = torch.randn(1, cin, s, s, s, requires_grad=True)
        w = (torch.randn(cout, cin, 3, 3, 3) * 0.05).requires_grad_()

        def step(x=x, w=w):
            (F.conv3d(x, w, padding=1) ** 2).sum().backward()

        out[f"conv {s}³ {cin}→{cout}"] = timed(step)
    for lq, lk in ATTN:
        q = torch.randn(1, 4, lq, 64, requires_grad=True)
        k = torch.randn(1, 4, lk, 64, requires_grad=True)

        def step(q=q, k=k):
            (F.scaled_dot_product_attention(q, k, k) ** 2).sum().backward()

        out[f"attention {lq}×{lk}"] = timed(step)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sets", default=",".join(FLAG_SETS), help="comma-separated names of FLAG_SETS")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_xla_cpu_flags.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "experiments"))
    if args.child:
        print("RESULT " + json.dumps(child(args.reps)))
        return
    from bench_lib import machine_description

    names = [n for n in args.sets.split(",") if n]
    results = {}
    for name in names:
        env = dict(os.environ, XLA_FLAGS=FLAG_SETS[name], JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, __file__, "--child", "--reps", str(args.reps)], env=env,
                           capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{name}: failed (rc {p.returncode}): {p.stderr[-2000:]}", flush=True)
            continue
        results[name] = json.loads(line[0][7:])
        print(name, "done", flush=True)
    ref = torch_side(args.reps)
    keys = list(next(iter(results.values())).keys()) if results else []
    hdr = "| op | " + " | ".join(f"`{n}`" for n in results) + " | torch eager |"
    lines = [hdr, "|" + "---|" * (len(results) + 2)]
    for k in keys:
        base = k.rsplit(" ", 1)[0] if not k.startswith("matmul") else k
        cells = []
        for n in results:
            v, libs = results[n][k]
            lib = f" ({', '.join(x.strip('_') for x in libs)})" if libs else ""
            cells.append(f"{v:.0f} GFLOP/s{lib}" if k.startswith("matmul") else f"{v * 1e3:.0f} ms{lib}")
        tv = ref.get(base)
        tcell = "" if tv is None or k.rsplit(" ", 1)[-1] not in (FORMULATIONS[0], "flash") and \
            not k.startswith("matmul") else (f"{tv:.0f} GFLOP/s" if k.startswith("matmul") else f"{tv * 1e3:.0f} ms")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {tcell} |")
    flags = "\n".join(f"- `{n}`: `XLA_FLAGS={v}`" if v else f"- `{n}`: no XLA_FLAGS" for n, v in FLAG_SETS.items()
                      if n in results)
    text = (f"# XLA:CPU library switches on the user shapes' ops\n\nMachine: {machine_description(False)}. "
            f"Command: `python experiments/bench_xla_cpu_flags.py --reps {args.reps}`.\n\n"
            "Median of the reps after 2 warm-up calls. conv = 3³ same conv3d, batch 1, forward + gradients of input "
            "and kernel (torch: `F.conv3d(...).sum().backward()`, oneDNN); attention = 4 heads × 64, forward + "
            "gradients of q and k (torch: SDPA). The library an op reached is in brackets.\n\nFlag sets:\n"
            f"{flags}\n\n" + "\n".join(lines) + "\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
