"""The image -> 3D pipelines (``jaxshape.pipelines``): time per stage, peak host memory, and bf16 against fp32.

    python experiments/bench_pipelines.py [--out experiments/results/bench_pipelines.md]

For each pipeline (TRELLIS stage 1, TRELLIS.2 stage 1, PartPacker) at a CPU size (the widths and depths in the
table: random weights, not the releases, which no one can download here), with the release's sampler (steps, guidance)
and the same noise in both dtypes:

* seconds to encode the image (preprocessing + DINO), to sample (all Euler steps, CFG branches batched) and to
  decode (+ mesh for PartPacker), for the second image of a run (the first compiles), as a library user runs it;
* the process's peak resident memory after the pipeline ran (``ru_maxrss``, cumulative over the script);
* the same sampling and decode in PyTorch in the same run: our mirrors of the upstream modules
  (``tests/torch_reference/``) with the same weights, driven by the glue written from the upstream scripts
  (``tests/torch_reference/*_pipeline.py``: two forwards per guided step, as upstream), fp32;
* the analytic FLOPs of one image at the *released* sizes (``jaxshape.flops.count_flops``, nothing runs): encoder,
  every flow forward of the release's sampler, the decoder (PartPacker: per volume, plus the query cost per million
  points; its hierarchical decode queries a shape-dependent number of points);
* ``dtype="bfloat16"`` against ``"float32"``: the latents' max relative difference, the IoU of the decoded
  occupancy (TRELLIS: ``logits > 0`` at 64³; PartPacker: ``TSDF > 0`` on the cells both decodes queried) and the
  occupied fraction (a random model's field is not a shape; the IoU says how far bf16 moves the same computation).

Prints the table and writes it to ``--out``; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_lib import machine_description, write_markdown  # noqa: E402
from jaxshape.models import DinoViT, SparseStructureDecoder, SparseStructureFlowModel, VecSetDiT, VecSetVAE  # noqa
from jaxshape.pipelines import PartPackerPipeline, TrellisSparseStructurePipeline  # noqa: E402
from jaxshape.pipelines.trellis2 import Trellis2SparseStructurePipeline  # noqa: E402

DINO_V2 = dict(img_size=518, patch_size=14, embed_dim=96, depth=4, num_heads=4, num_register_tokens=4,
               interpolate_mode="antialias")
DINO_V3 = dict(img_size=512, patch_size=16, embed_dim=96, depth=4, num_heads=4, ffn_hidden_features=384,
               num_register_tokens=4, pos_embed="rope", rope_theta=100.0, layer_norm_eps=1e-5)
DINO_G = dict(img_size=518, patch_size=14, embed_dim=96, depth=4, num_heads=4, ffn_layer="swiglu",
              interpolate_mode="hub_offset")
SS_FLOW = dict(resolution=16, in_channels=8, out_channels=8, model_channels=256, cond_channels=96, num_blocks=4,
               num_heads=4, patch_size=1, pe_mode="ape", qk_rms_norm=True)
SS2_FLOW = dict(resolution=16, in_channels=8, out_channels=8, model_channels=256, cond_channels=96, num_blocks=4,
                num_heads=4, pe_mode="rope", share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True,
                mlp_ratio=5.3334, upstream="trellis2")
SS_DEC = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=(64, 32, 16))
PP_DIT = dict(hidden_dim=96, num_heads=4, latent_size=512, latent_dim=16, num_layers=4, qknorm=True,
              qknorm_type="RMSNorm", use_parts=True, gradient_checkpointing=False)
PP_VAE = dict(hidden_dim=128, num_heads=4, num_dec_layers=2, dec_hidden_dim=128, dec_num_heads=4,
              query_hidden_dim=128, query_num_heads=4, point_fourier_dim=48, latent_dim=16)
PP_DECODE = dict(resolution=128, min_resolution=32, chunk=8192)


def randomized(module, inputs, seed, method=None, shift=None):
    """Init, then every array perturbed (matrices by N(0, 1/fan_in), vectors by N(0, 0.1²)) so that zero-initialised
    layers do something; ``shift`` adds a constant to the output layer's bias named there."""
    variables = module.init(jax.random.key(seed), *inputs, **({"method": method} if method else {}))
    variables = jax.tree.map(lambda a: a.value if hasattr(a, "value") else a, variables,
                             is_leaf=lambda a: hasattr(a, "value"))
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    out = []
    for i, (path, a) in enumerate(leaves):
        key = jax.random.fold_in(jax.random.key(seed + 1), i)
        if "buffers" in jax.tree_util.keystr(path) or not jnp.issubdtype(a.dtype, jnp.floating):
            out.append(a)
            continue
        std = a.shape[-2] ** -0.5 if a.ndim >= 2 else 0.1
        out.append(a + std * jax.random.normal(key, a.shape, a.dtype))
    variables = jax.tree_util.tree_unflatten(tree, out)
    if shift:
        p = variables["params"]
        for k in shift[0]:
            p = p[k]
        p["bias"] = p["bias"] + shift[1]
    return variables


def _image(h=400, w=360, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    inside = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 <= 1
    img[inside, :3] = rng.integers(0, 255, (int(inside.sum()), 3))
    img[inside, 3] = 230
    return img


def build(kind):
    if kind in ("TRELLIS", "TRELLIS.2"):
        enc = DinoViT(**(DINO_V2 if kind == "TRELLIS" else DINO_V3))
        flow_args = SS_FLOW if kind == "TRELLIS" else SS2_FLOW
        fm, dec = SparseStructureFlowModel(**flow_args), SparseStructureDecoder(**SS_DEC)
        x = jnp.zeros((1, 16, 16, 16, 8))
        ev = randomized(enc, [jnp.zeros((1, enc.img_size, enc.img_size, 3))], 0)
        fv = randomized(fm, [x, jnp.zeros((1,)), jnp.zeros((1, 8, 96))], 1)
        dv = randomized(dec, [x], 2)
        cls = TrellisSparseStructurePipeline if kind == "TRELLIS" else Trellis2SparseStructurePipeline
        return lambda dtype: cls(enc, ev, fm, fv, dec, dv, dtype=dtype)
    enc, dit, vae = DinoViT(**DINO_G), VecSetDiT(**PP_DIT), VecSetVAE(**PP_VAE)
    ev = randomized(enc, [jnp.zeros((1, 518, 518, 3))], 0)
    dv = randomized(dit, [jnp.zeros((1, 1024, 16)), jnp.zeros((1, 8, 96)), jnp.zeros((1,))], 1)
    pts, fps = jnp.zeros((1, 256, 3)), jnp.zeros((1, 64), jnp.int32)
    # every VAE parameter (the PyTorch mirror loads the whole state dict), the query head shifted so that the
    # field has a zero level set inside the volume
    vv = randomized(vae, [pts, pts, fps, fps, jnp.zeros((1, 64, 3))], 2, method="init_all",
                    shift=(("proj_out",), 0.2))
    return lambda dtype: PartPackerPipeline(enc, ev, dit, dv, vae, vv, dtype=dtype)


def run_once(pipe, image, noise):
    t0 = time.perf_counter()
    cond = pipe.get_cond([image])
    jax.block_until_ready(cond)
    t1 = time.perf_counter()
    z = jax.block_until_ready(pipe.sample_latents(cond, noise=noise))
    t2 = time.perf_counter()
    if isinstance(pipe, PartPackerPipeline):
        out = pipe.decode_latents(z, decode=PP_DECODE)
        fields = out["grids"][0]
    else:
        fields = [pipe.decode(z)[0]]
    t3 = time.perf_counter()
    return np.asarray(z), fields, (t1 - t0, t2 - t1, t3 - t2)


def compare(kind, make):
    rows = []
    results = {}
    for dtype in ("float32", "bfloat16"):
        pipe = make(dtype)
        noise = np.asarray(jax.random.normal(jax.random.key(7), (1,) + pipe.latent_shape()))
        run_once(pipe, _image(seed=1), noise)  # compiles
        z, fields, times = run_once(pipe, _image(seed=2), noise)
        results[dtype] = (z, fields)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        rows.append((dtype, times, rss))
        if dtype == "float32":
            ts, td = torch_times(kind, pipe, _image(seed=2), noise)
            rows.append(("PyTorch mirrors, fp32", (float("nan"), ts, td), float("nan")))
    z32, f32 = results["float32"]
    z16, f16 = results["bfloat16"]
    rel = float(np.abs(z16 - z32).max() / np.abs(z32).max())
    ious, fracs = [], []
    for a, b in zip(f32, f16):
        both = np.isfinite(a) & np.isfinite(b)
        ia, ib = (a > 0) & both, (b > 0) & both
        ious.append(float((ia & ib).sum() / max((ia | ib).sum(), 1)))
        fracs.append(float(ia.sum() / max(both.sum(), 1)))
    return rows, rel, ious, fracs


def torch_times(kind, pipe, image, noise):
    """Sampling and decode seconds of the PyTorch mirrors + glue with the pipeline's weights (fp32)."""
    import torch

    from jaxshape.convert import to_torch
    from tests.torch_reference import partpacker as pp
    from tests.torch_reference import partpacker_pipeline as PPG
    from tests.torch_reference import trellis2_pipeline as TP2
    from tests.torch_reference import trellis2_ss_flow as T2
    from tests.torch_reference import trellis_pipeline as TP
    from tests.torch_reference import trellis_ss as T

    def load(tmod, module, variables):
        sd = to_torch(module, variables)
        tmod.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
        return tmod.eval()

    torch.set_num_threads(2)
    cond = torch.from_numpy(np.asarray(pipe.get_cond([image]), np.float32))
    with torch.no_grad():
        if kind == "PartPacker":
            tdit = load(pp.DiT(**PP_DIT), pipe.dit, pipe.dit_variables)
            tvae = load(pp.Model(pp.ModelConfig(**PP_VAE)), pipe.vae, pipe.vae_variables)
            t0 = time.perf_counter()
            z = PPG.sample(tdit, torch.from_numpy(noise), cond, steps=50, cfg_scale=7.0, shift=3.0)
            t1 = time.perf_counter()
            n = PP_DIT["latent_size"]
            for vol in (z[:, :n], z[:, n:]):
                PPG.extract_mesh(PPG.decode_hierarchical(tvae, vol, PP_DECODE["resolution"],
                                                         PP_DECODE["min_resolution"]))
            return t1 - t0, time.perf_counter() - t1
        args = {k: v for k, v in (SS_FLOW if kind == "TRELLIS" else SS2_FLOW).items() if k != "upstream"}
        tflow = load((T.SparseStructureFlowModel if kind == "TRELLIS" else T2.SparseStructureFlowModel)(**args),
                     pipe.flow_model, pipe.flow_variables)
        tdec = load(T.SparseStructureDecoder(**dict(SS_DEC, channels=list(SS_DEC["channels"]))), pipe.decoder,
                    pipe.decoder_variables)
        x = torch.from_numpy(np.ascontiguousarray(noise.transpose(0, 4, 1, 2, 3)))
        t0 = time.perf_counter()
        if kind == "TRELLIS":
            z = TP.sample_guidance_interval(tflow, x, cond, steps=25, cfg_strength=7.5, cfg_interval=(0.5, 1.0),
                                            rescale_t=3.0)
            t1 = time.perf_counter()
            TP.decode_coords(tdec, z)
        else:
            z = TP2.sample(tflow, x, cond, **dict(pipe.sampler))
            t1 = time.perf_counter()
            TP2.decode_coords(tdec, z, 32)
        return t1 - t0, time.perf_counter() - t1


def released_flops() -> list[str]:
    """Analytic GFLOPs of one image (one sample) at the released sizes."""
    from jaxshape.convert.state_dict import abstract_variables
    from jaxshape.flops import count_flops
    from jaxshape.flow import trellis_timesteps
    from jaxshape.models import build

    def fwd(module, *shapes):
        v = abstract_variables(module)
        return count_flops(lambda vv, *a: module.apply(vv, *a), v, *(jax.ShapeDtypeStruct(s, jnp.float32)
                                                                      for s in shapes)) / 1e9

    def guided(times, lo, hi):
        return sum(1 for t in times[:-1] if lo <= t <= hi)

    rows = ["", "Analytic GFLOPs of one image, one sample, at the released sizes (matmuls and convolutions; "
            "`jaxshape.flops`):", "",
            "| pipeline | encoder | flow forward × forwards | decoder | total |", "|---|---|---|---|---|"]
    for kind, enc, flow_name, size, steps, interval, rescale in (
            ("TRELLIS", "dinov2_vitl14_reg", "ss_flow_img_dit_L_16l8_fp16", 518, 25, (0.5, 1.0), 3.0),
            ("TRELLIS.2", "dinov3_vitl16", "ss_flow_img_dit_1_3B_64_bf16", 512, 12, (0.6, 1.0), 5.0)):
        e = fwd(build(enc), (1, size, size, 3))
        fm = build(flow_name, use_fp16=False) if kind == "TRELLIS" else build(flow_name)
        tokens = 1 + 4 + (size // (14 if size == 518 else 16)) ** 2
        f = fwd(fm, (1, 16, 16, 16, 8), (1,), (1, tokens, 1024))
        times = trellis_timesteps(steps, rescale)
        n = steps + guided(times, *interval)
        d = fwd(build("ss_dec_conv3d_16l8_fp16", use_fp16=False), (1, 16, 16, 16, 8))
        rows.append(f"| {kind} | {e:,.0f} | {f:,.0f} × {n} | {d:,.0f} | {e + f * n + d:,.0f} |")
    e = fwd(build("dinov2_vitg14"), (1, 518, 518, 3))
    dit = build("partpacker_dit")
    f = fwd(dit, (1, 8192, 64), (1, 1370, 1536), (1,))
    vae = build("partpacker_vae")
    v = abstract_variables(vae)
    dec = count_flops(lambda vv, z: vae.apply(vv, z, method="decode"), v,
                      jax.ShapeDtypeStruct((1, 4096, 64), jnp.float32)) / 1e9
    hidden = jax.eval_shape(lambda vv, z: vae.apply(vv, z, method="decode"), v,
                            jax.ShapeDtypeStruct((1, 4096, 64), jnp.float32))
    q = count_flops(lambda vv, p, h: vae.apply(vv, p, h, method="query"), v,
                    jax.ShapeDtypeStruct((1, 8192, 3), jnp.float32), hidden) / 1e9 / 8192 * 1e6
    n = 2 * 50  # CFG 7 at every step
    rows.append(f"| PartPacker | {e:,.0f} | {f:,.0f} × {n} | 2 × {dec:,.0f} + {q:,.0f} per 1 M query points | "
                f"{e + f * n + 2 * dec:,.0f} + queries |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "bench_pipelines.md"))
    a = ap.parse_args()
    lines = ["# Image -> 3D pipelines: time per stage, peak memory, bf16 against fp32", "",
             machine_description(allocator=False), "",
             "Random-weight models at CPU size (not the releases): DINO width 96 × 4 layers (ViT-L/14-reg layout "
             f"at 518 px for TRELLIS, DINOv3 layout at 512 px for TRELLIS.2, ViT-g layout at 518 px for PartPacker); "
             f"TRELLIS flow {SS_FLOW['model_channels']} wide × {SS_FLOW['num_blocks']} blocks on 16³×8 (4,096 "
             f"tokens), TRELLIS.2 flow the same with its RoPE / shared-modulation blocks; TRELLIS's decoder with "
             f"channels {SS_DEC['channels']} to 64³; PartPacker DiT {PP_DIT['hidden_dim']} × {PP_DIT['num_layers']} "
             f"on 2 × {PP_DIT['latent_size']} tokens, VAE {PP_VAE['dec_hidden_dim']} × {PP_VAE['num_dec_layers']} "
             f"decoded hierarchically to {PP_DECODE['resolution']}³ and meshed. Release samplers: TRELLIS 25 steps, "
             "TRELLIS.2 12, PartPacker 50. Seconds for the second image of a run.", "",
             "| pipeline | dtype | encode s | sample s | decode s | peak RSS GiB (cumulative) |",
             "|---|---|---|---|---|---|"]
    summary = ["", "| pipeline | latent max rel diff bf16 vs fp32 | occupancy IoU bf16 vs fp32 | occupied fraction |",
               "|---|---|---|---|"]
    for kind in ("TRELLIS", "TRELLIS.2", "PartPacker"):
        rows, rel, ious, fracs = compare(kind, build(kind))
        for dtype, (te, ts, td), rss in rows:
            lines.append(f"| {kind} | {dtype} | {'-' if te != te else f'{te:.2f}'} | {ts:.2f} | {td:.2f} | "
                         f"{'-' if rss != rss else f'{rss:.2f}'} |")
        summary.append(f"| {kind} | {rel:.3g} | {' / '.join(f'{x:.3f}' for x in ious)} | "
                       f"{' / '.join(f'{x:.3f}' for x in fracs)} |")
        print("\n".join(lines[-2:] + summary[-1:]), flush=True)
    lines += summary + ["", "PartPacker's IoU is per volume (the two halves of the latent set)."] + released_flops()
    print("\n".join(lines))
    write_markdown(a.out, lines)


if __name__ == "__main__":
    main()
