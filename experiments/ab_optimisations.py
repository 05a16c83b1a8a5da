"""What each optimisation buys at model level: jaxshape train step (forward + backward) with the naive formulations
(``lax.conv`` for every 3-D conv, XLA's materialised-logits attention) vs the current defaults, interleaved.

    python experiments/ab_optimisations.py --sizes cpu,released [--reps 5]

Writes experiments/results/ab_optimisations.md. Prints tables, never asserts timings.
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
if __name__ == "__main__":  # host-allocator tunables as in `python -m jaxshape.train` (JAXSHAPE_CPU_MALLOC=0: off)
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
    reexec_with_cpu_malloc_tunables()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_models as B  # noqa: E402
import jaxshape.kernels.conv3d as C  # noqa: E402
import jaxshape.nn.attention as A  # noqa: E402
from bench_lib import interleaved, machine_description, summary  # noqa: E402

VARIANTS = {
    "naive (lax.conv, XLA attention)": dict(conv="lax", flash=False),
    "conv formulations only": dict(conv=None, flash=False),
    "flash attention only": dict(conv="lax", flash=True),
    "current defaults": dict(conv=None, flash=True),
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="cpu,released")
    ap.add_argument("--models", default=",".join(B.CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "ab_optimisations.md"))
    args = ap.parse_args(argv)
    desc = machine_description()
    print(desc, flush=True)
    auto, flash_min = C.auto_formulation, A.FLASH_MIN_LOGITS
    rows = ["| model | size | variant | train fwd+bwd min / median (s) | speed-up vs naive (median) |",
            "|---|---|---|---|---|"]
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            c = B.CASES[name][1](size)
            f, p, o, jin, tgt = c["jfwd"], c["params"], c["other"], c["jin"], c["target"][0]

            def loss(p, o, jin):
                return jnp.mean(jnp.square(f(p, o, *jin).astype(jnp.float32) - tgt))

            has_conv = name == "ss_vae"
            fns = {}
            for label, v in VARIANTS.items():
                if has_conv and label == "flash attention only" or not has_conv and label == "conv formulations only":
                    continue
                if not has_conv and label == "naive (lax.conv, XLA attention)":
                    label = "naive (XLA attention)"
                C.auto_formulation = (lambda ci, co, k, *rest, fm=v["conv"]: fm) if v["conv"] else auto
                A.FLASH_MIN_LOGITS = flash_min if v["flash"] else 1 << 62
                g = jax.jit(jax.grad(loss)).lower(p, o, jin).compile()
                fns[label] = lambda g=g: jax.block_until_ready(g(p, o, jin))
            C.auto_formulation, A.FLASH_MIN_LOGITS = auto, flash_min
            r = interleaved(fns, args.reps)
            base = summary(next(iter(r.values())))[1]
            for label, ts in r.items():
                mn, med = summary(ts)
                rows.append(f"| {B.CASES[name][0]} | {size} | {label} | {mn:.3f} / {med:.3f} | {base / med:.2f}× |")
                print(rows[-1], flush=True)
    Path(args.out).write_text("\n".join(["# Model-level effect of each optimisation (jaxshape only)", "",
                                         f"Machine: {desc}.", "",
                                         f"Command: `python experiments/ab_optimisations.py --sizes {args.sizes} "
                                         f"--reps {args.reps}`; variants interleaved in one process; configs as in "
                                         "bench_models.md.", "", *rows, ""]))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
