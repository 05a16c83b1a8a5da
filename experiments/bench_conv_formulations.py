"""The conv3d formulations side by side on a grid of grid sizes and widths: the table behind ``auto_formulation``.

    python experiments/bench_conv_formulations.py [--reps 5] [--out experiments/results/bench_conv_formulations.md]

Per 3³ "same" conv, batch 1: one jitted function = forward + gradients of input and kernel (what a train step does
with each conv), median of ``--reps`` after 2 warm-up calls, in every formulation that applies, beside torch's
``F.conv3d`` forward + backward (oneDNN) on the same shapes. ``auto`` marks what the rule picks. Prints the table,
asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxshape.kernels import conv3d as C  # noqa: E402

FORMS = ("conv2d", "winograd", "im2col", "im2col_z", "lax")
SHAPES = [(64, 1, 16), (64, 16, 16), (64, 16, 32), (32, 32, 32), (32, 32, 64), (32, 64, 64), (16, 64, 64),
          (16, 128, 128), (16, 256, 256), (8, 256, 256), (8, 512, 512), (32, 8, 8), (16, 16, 16), (8, 32, 32)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--out", default=None, help="default experiments/results/bench_conv_formulations[_bf16].md")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from bench_lib import machine_description, median_seconds

    torch.set_num_threads(os.cpu_count() or 1)
    dt = jnp.dtype(args.dtype)
    forms = [f for f in FORMS if not (f == "winograd" and dt != jnp.float32)]
    rows = []
    rng = np.random.default_rng(0)
    for s, cin, cout in SHAPES:
        x = jnp.asarray(rng.standard_normal((1, s, s, s, cin)), dt)
        w = jnp.asarray(rng.standard_normal((3, 3, 3, cin, cout)) * 0.05, dt)
        auto = C.auto_formulation(cin, cout, 3, C.winograd_tiles(x.shape), dt)
        cells = {}
        for form in forms:
            step = jax.jit(jax.grad(lambda x, w, form=form: jnp.sum(C.conv3d_same(x, w, form).astype(jnp.float32)
                                                                       ** 2), argnums=(0, 1)))
            cells[form] = median_seconds(lambda: jax.block_until_ready(step(x, w)), args.reps)
        xt = torch.randn(1, cin, s, s, s, dtype=getattr(torch, args.dtype), requires_grad=True)
        wt = (torch.randn(cout, cin, 3, 3, 3, dtype=getattr(torch, args.dtype)) * 0.05).requires_grad_()

        def tstep():
            (F.conv3d(xt, wt, padding=1).float() ** 2).sum().backward()

        t_torch = median_seconds(tstep, args.reps)
        best = min(cells, key=cells.get)
        rows.append((s, cin, cout, cells, auto, best, t_torch))
        print(s, cin, cout, {k: round(v * 1e3, 1) for k, v in cells.items()}, "auto", auto, "torch",
              round(t_torch * 1e3, 1), flush=True)
    hdr = "| grid | in → out | " + " | ".join(forms) + " | auto picks | torch eager | torch / auto |"
    lines = [hdr, "|" + "---|" * (len(forms) + 5)]
    for s, cin, cout, cells, auto, best, t_torch in rows:
        fmt = [(f"**{cells[f] * 1e3:.1f}**" if f == best else f"{cells[f] * 1e3:.1f}") for f in forms]
        a = cells.get(auto)
        lines.append(f"| {s}³ | {cin} → {cout} | " + " | ".join(fmt) + f" | {auto} | {t_torch * 1e3:.1f} | "
                     + (f"{t_torch / a:.2f}×" if a else "–") + " |")
    out = args.out or str(ROOT / "experiments" / "results" /
                          ("bench_conv_formulations.md" if dt == jnp.float32 else "bench_conv_formulations_bf16.md"))
    text = (f"# conv3d formulations, forward + both gradients, {args.dtype}, ms (median of {args.reps})\n\n"
            f"Machine: {machine_description(False)}.\nCommand: `python experiments/bench_conv_formulations.py "
            f"--dtype {args.dtype} --reps {args.reps}`. Bold: the fastest formulation of the row; torch: "
            "`F.conv3d(x, w, padding=1)` forward + backward (oneDNN), same shapes.\n\n" + "\n".join(lines) + "\n")
    print(text)
    Path(out).write_text(text)


if __name__ == "__main__":
    main()
