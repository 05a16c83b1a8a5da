"""Companion numbers for docs/performance.md (no timing is asserted):

    python experiments/perf_extras.py [--skip-bf16]

1. analytic FLOPs per forward / train step of every released config (batch 1; jaxpr dot + conv FLOPs, step = 3×);
2. compile time of the L-size SS-flow train step (real config, 24 blocks, abstract inputs via ShapeDtypeStruct);
3. activation memory per token (XLA temp buffers of the compiled train step / tokens) with and without remat;
4. bf16 compute on CPU: speed vs fp32 (interleaved) and the deviation from fp32 (max-abs on outputs, IoU of the
   decoded occupancy).
Writes experiments/results/perf_extras.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
if __name__ == "__main__":  # host-allocator tunables as in `python -m jaxshape.train` (JAXSHAPE_CPU_MALLOC=0: off)
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
    reexec_with_cpu_malloc_tunables()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench_lib import interleaved, machine_description  # noqa: E402
from jaxshape.flops import count_flops  # noqa: E402
from jaxshape.models import (  # noqa: E402
    VecSetDiT,
    VecSetVAE,
    build,  # noqa: E402
)

F32 = jnp.float32
S = jax.ShapeDtypeStruct


def abstract_params(model, *inputs, **kw):
    v = jax.eval_shape(lambda *i: model.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, *i, **kw),
                       *inputs)
    return nn.meta.unbox(v)


def released_cases():
    """(name, model, abstract inputs, call kwargs, tokens) of every released config at its training shape."""
    out = []
    enc = build("ss_enc_conv3d_16l8_fp16", dtype=F32)
    out.append(("ss_enc_conv3d_16l8 (64³)", enc, (S((1, 64, 64, 64, 1), F32),), {}, 64**3))
    dec = build("ss_dec_conv3d_16l8_fp16", dtype=F32)
    out.append(("ss_dec_conv3d_16l8 (16³ -> 64³)", dec, (S((1, 16, 16, 16, 8), F32),), {}, 16**3))
    for name, m in (("ss_flow_img_dit_L_16l8", 1374), ("ss_flow_txt_dit_B_16l8", 77), ("ss_flow_txt_dit_L_16l8", 77),
                    ("ss_flow_txt_dit_XL_16l8", 77)):
        model = build(name + "_fp16", dtype=F32)
        out.append((f"{name} (4096 tokens, {m} cond)", model,
                    (S((1, 16, 16, 16, 8), F32), S((1,), F32), S((1, m, model.cond_channels), F32)), {}, 4096))
    dit = VecSetDiT(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
                    qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
    out.append(("PartPacker DiT (4096 tokens, 1374 cond)", dit,
                (S((1, 4096, 64), F32), S((1, 1374, 1536), F32), S((1,), F32)), {}, 4096))
    vae = VecSetVAE()
    data = dict(pointcloud=S((1, 32768, 3), F32), pointcloud_dorases=S((1, 16384, 3), F32),
                fps_indices=S((1, 2048), jnp.int32), fps_indices_dorases=S((1, 2048), jnp.int32),
                query_points=S((1, 32768, 3), F32))
    out.append(("PartPacker VAE part_woenc (32k+16k points, 4096 latents, 32k queries)", vae, (data,), {}, 4096))
    return out


def flops_table():
    rows = ["| released config (batch 1) | GFLOP forward | GFLOP train step (3×) | params (M) |", "|---|---|---|---|"]
    for name, model, inputs, kw, _ in released_cases():
        v = abstract_params(model, *inputs, **kw)
        fl = count_flops(lambda v, *i: model.apply(v, *i, **kw), v, *inputs)
        n = sum(np.prod(x.shape) for x in jax.tree.leaves(v.get("params", v)))
        rows.append(f"| {name} | {fl / 1e9:,.0f} | {3 * fl / 1e9:,.0f} | {n / 1e6:.0f} |")
        print(rows[-1], flush=True)
    return rows


def train_step_fn(model, kw=None):
    kw = kw or {}
    tx = optax.adamw(1e-4, weight_decay=0.01)

    def step(params, opt_state, other, inputs):
        def loss(p):
            out = model.apply({"params": p, **other}, *inputs, **kw)
            out = out[0] if isinstance(out, tuple) else out
            return jnp.mean(jnp.square(out.astype(F32)))

        value, g = jax.value_and_grad(loss)(params)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, value

    return tx, step


def compile_and_memory():
    rows = []
    cond = S((1, 1374, 1024), F32)
    x = S((1, 16, 16, 16, 8), F32)
    t = S((1,), F32)
    rows += ["| SS flow L train step (24 blocks, 4096 tokens, 1374 cond, batch 1) | dtype | remat | compile (s) | "
             "XLA temp (MiB) | activation KiB per token per block |", "|---|---|---|---|---|---|"]
    for dtype, label in ((jnp.float16, "released (use_fp16: fp16 torso)"), (F32, "fp32"), (jnp.bfloat16, "bf16")):
        for remat in (False, True):
            model = build("ss_flow_img_dit_L_16l8_fp16", dtype=dtype, use_checkpoint=remat)
            v = abstract_params(model, x, t, cond)
            params, other = v["params"], {k: val for k, val in v.items() if k != "params"}
            tx, step = train_step_fn(model)
            opt = jax.eval_shape(tx.init, params)
            t0 = time.perf_counter()
            compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, other, (x, t, cond)).compile()
            dt = time.perf_counter() - t0
            temp = compiled.memory_analysis().temp_size_in_bytes
            rows.append(f"| | {label} | {'nothing_saveable' if remat else 'none'} | {dt:.1f} | {temp / 2**20:,.0f} | "
                        f"{temp / 4096 / 24 / 1024:.1f} |")
            print(rows[-1], flush=True)
    rows += ["", "| PartPacker DiT train step (24 layers, 4096 tokens, 1374 cond, fp32) | remat | compile (s) | "
             "XLA temp (MiB) | activation KiB per token per layer |", "|---|---|---|---|---|"]
    for remat in (False, True):
        model = VecSetDiT(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
                          qknorm_type="RMSNorm", use_parts=True, gradient_checkpointing=remat)
        ins = (S((1, 4096, 64), F32), S((1, 1374, 1536), F32), S((1,), F32))
        v = abstract_params(model, *ins)
        tx, step = train_step_fn(model)
        opt = jax.eval_shape(tx.init, v["params"])
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(v["params"], opt, {}, ins).compile()
        dt = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes
        rows.append(f"| | {'nothing_saveable' if remat else 'none'} | {dt:.1f} | {temp / 2**20:,.0f} | "
                    f"{temp / 4096 / 24 / 1024:.1f} |")
        print(rows[-1], flush=True)
    return rows


def bf16_table(reps):
    import bench_models as B

    rows = ["| model (CPU-size config of bench_models) | fp32 fwd / train (s, min) | bf16 fwd / train (s, min) | "
            "bf16 max-abs err vs fp32 (max abs fp32 out) | occupancy IoU bf16 vs fp32 |", "|---|---|---|---|---|"]
    for name in ("ss_vae", "ss_flow", "vecset_dit", "vecset_vae"):
        c = B.CASES[name][1]("cpu")
        params, other, jin = c["params"], c["other"], c["jin"]
        fwd32 = c["jfwd"]
        # rebuild the same models with dtype=bf16 through the case's closure: cases expose models via jfwd only,
        # so re-create with a dtype override
        fwd16 = B.with_dtype(name, "cpu", jnp.bfloat16)
        outs, fns = {}, {}
        for label, f in (("fp32", fwd32), ("bf16", fwd16)):
            fj = jax.jit(f)
            g = jax.jit(jax.grad(lambda p, f=f: jnp.mean(jnp.square(f(p, other, *jin).astype(F32)))))
            outs[label] = np.asarray(fj(params, other, *jin).astype(F32))
            g(params)
            fns[label + " fwd"] = lambda fj=fj: jax.block_until_ready(fj(params, other, *jin))
            fns[label + " train"] = lambda g=g: jax.block_until_ready(g(params))
        r = interleaved(fns, reps)
        err = float(np.abs(outs["bf16"] - outs["fp32"]).max())
        iou = "–"
        if name == "ss_vae":
            a, b = outs["fp32"] > 0, outs["bf16"] > 0
            iou = f"{(a & b).sum() / max((a | b).sum(), 1):.4f}"
        rows.append(f"| {B.CASES[name][0]} | {min(r['fp32 fwd']):.3f} / {min(r['fp32 train']):.3f} | "
                    f"{min(r['bf16 fwd']):.3f} / {min(r['bf16 train']):.3f} | {err:.3g} "
                    f"({np.abs(outs['fp32']).max():.3g}) | {iou} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "perf_extras.md"))
    args = ap.parse_args(argv)
    desc = machine_description()
    print(desc)
    parts = ["# Performance companion numbers", "", f"Machine: {desc}.", "",
             "Command: `python experiments/perf_extras.py`", "", "## Analytic FLOPs of the released configs", ""]
    parts += flops_table()
    parts += ["", "## Compile time and activation memory", ""]
    parts += compile_and_memory()
    if not args.skip_bf16:
        parts += ["", "## bf16 compute on CPU (train = forward + backward, no optimizer)", ""]
        parts += bf16_table(args.reps)
    Path(args.out).write_text("\n".join(parts) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
