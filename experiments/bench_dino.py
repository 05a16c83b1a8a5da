"""DINO image-encoder forward: jaxshape's DinoViT against the same transformers model in the same process.

    python experiments/bench_dino.py [--cases L:1:float32,L:8:float32,L:1:bfloat16,g:1:float32,g:1:bfloat16]
                                     [--reps 3] [--warmup 1] [--out experiments/results/bench_dino.md]

Each case is ``variant:batch:dtype`` with variant ``L`` (``dinov2_vitl14_reg``, TRELLIS; transformers
``Dinov2WithRegistersModel``) or ``g`` (``dinov2_vitg14``, PartPacker; ``Dinov2Model`` with SwiGLU) at 518², random
weights (timing does not depend on them). jaxshape runs as a library user runs it (``import jaxshape``, jit, no
allocator tunables, this process); bf16 means bf16 weights and activations in both (PartPacker's policy; LayerNorms
and softmax stay fp32 in jaxshape). The forward includes the conditioning LayerNorm in both. Interleaved, median
of ``--reps`` after ``--warmup`` calls. Also printed: the analytic FLOPs per image (``jaxshape.flops.count_flops``),
for computing MFU on an accelerator. Prints a table and writes it to ``--out``; asserts nothing.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_lib import block, interleaved, machine_description, matmul_peak, write_markdown  # noqa: E402
from jaxshape.flops import count_flops  # noqa: E402
from jaxshape.models import build, image_condition  # noqa: E402

VARIANTS = {"L": "dinov2_vitl14_reg", "g": "dinov2_vitg14"}


def _torch_model(variant: str, dtype):
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    if variant == "L":
        cfg = Dinov2WithRegistersConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        image_size=518, patch_size=14, num_register_tokens=4)
        model = Dinov2WithRegistersModel(cfg)
    else:
        cfg = Dinov2Config(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, image_size=518,
                           patch_size=14, use_swiglu_ffn=True)
        model = Dinov2Model(cfg)
    model.layernorm = torch.nn.Identity()  # the pipelines' tap: pre-final-norm tokens, then a plain LN
    return model.eval().to(dtype)


def run_case(variant: str, batch: int, dtype_name: str, reps: int, warmup: int) -> dict:
    import torch

    name = VARIANTS[variant]
    dtype = jnp.dtype(dtype_name)
    module = build(name, dtype=dtype, param_dtype=dtype)
    x = jax.random.normal(jax.random.key(0), (batch, 518, 518, 3), jnp.float32)
    f32 = build(name)
    variables = jax.jit(f32.init)(jax.random.key(1), x[:1])
    drift = {}
    if dtype != jnp.float32:  # the same weights in fp32: the drift of the conditioning tokens
        ref = np.asarray(jax.jit(lambda v, x: image_condition(f32.apply(v, x)))(variables, x[:1]))
        variables = jax.tree.map(lambda a: a.astype(dtype), variables)
    fwd = jax.jit(lambda v, x: image_condition(module.apply(v, x)))
    flops = count_flops(lambda v, x: module.apply(v, x), variables, x[:1])
    t0 = time.perf_counter()
    low = block(fwd(variables, x))
    compile_s = time.perf_counter() - t0
    if dtype != jnp.float32:
        low = np.asarray(low[:1], np.float32)
        cos = (low * ref).sum(-1) / (np.linalg.norm(low, axis=-1) * np.linalg.norm(ref, axis=-1))
        drift = dict(mean_abs=float(np.abs(low - ref).mean()), max_abs=float(np.abs(low - ref).max()),
                     min_cos=float(cos.min()))

    tdtype = torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32
    tmodel = _torch_model(variant, tdtype)
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(tdtype)

    def torch_fwd():
        with torch.inference_mode():
            h = tmodel(pixel_values=tx).last_hidden_state
            return torch.nn.functional.layer_norm(h.float(), h.shape[-1:])

    ts = interleaved({"jax": lambda: block(fwd(variables, x)), "torch": torch_fwd}, reps, warmup=warmup)
    out = dict(variant=name, batch=batch, dtype=dtype_name, flops=flops, compile_s=compile_s, drift=drift,
               jax=float(np.median(ts["jax"])), torch=float(np.median(ts["torch"])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="L:1:float32,L:8:float32,L:1:bfloat16,g:1:float32,g:1:bfloat16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_dino.md"))
    a = p.parse_args(argv)
    machine = machine_description(allocator=False)
    peak = matmul_peak()
    lines = ["# DINO image encoders: jaxshape DinoViT vs transformers, forward at 518²", "",
             f"Machine: {machine}", "",
             f"fp32 matmul peak (2048², jit vs torch.mm): jax {peak['jax']:.0f}, torch {peak['torch']:.0f} GFLOP/s",
             "",
             f"Command: `python experiments/bench_dino.py --cases {a.cases} --reps {a.reps} --warmup {a.warmup}`; "
             "library mode (in-process, no allocator tunables); random weights; median of the interleaved reps; "
             "both sides include the conditioning LayerNorm. The drift column compares jaxshape's bf16 "
             "condition tokens with its fp32 ones for the same (random, init-scale) weights.", "",
             "| encoder | batch | dtype | GFLOP / image | jaxshape s | transformers s | torch / jax "
             "| jaxshape GFLOP/s | jit compile s | bf16 vs fp32 cond tokens: mean / max abs, min cos |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in a.cases.split(","):
        variant, batch, dtype = case.split(":")
        r = run_case(variant, int(batch), dtype, a.reps, a.warmup)
        gc.collect()  # the case's models go with its frame
        row = (f"| {r['variant']} | {r['batch']} | {r['dtype']} | {r['flops'] / 1e9:,.0f} | {r['jax']:.2f} | "
               f"{r['torch']:.2f} | {r['torch'] / r['jax']:.2f} | {r['flops'] * r['batch'] / r['jax'] / 1e9:.0f} | "
               f"{r['compile_s']:.1f} | " + (f"{r['drift']['mean_abs']:.4f} / {r['drift']['max_abs']:.3f}, "
                                            f"{r['drift']['min_cos']:.5f}" if r["drift"] else "") + " |")
        print(row, flush=True)
        lines.append(row)
    write_markdown(a.out, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
