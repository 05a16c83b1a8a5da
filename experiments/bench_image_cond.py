"""What image conditioning costs: renders, host preprocessing, the data pipeline, and the encoder in the train step.

    python experiments/bench_image_cond.py [--reps 10] [--out experiments/results/bench_image_cond.md]

Four tables, for a user choosing between in-step and cached conditioning (``cond.kind = "image"`` vs
``"features"``, ``docs/training.md``):

1. *Views*: render one conditioning view (``jaxshape.data.render``, OpenGL over EGL, TRELLIS's cameras) of the
   embedded meshes at 128 and 518 px; decode its PNG and apply each family's preprocessing (TRELLIS 518 / 112 px,
   PartPacker 518 px). Milliseconds per view, one core, median over the meshes.
2. *Host pipeline*: examples/s of ``make_dataset`` (grain) reading records with 518-px views and drawing one
   TRELLIS-preprocessed view per example, with ``worker_count`` 0 (the main process, grain's read-ahead threads)
   and 2 (grain worker processes), over 60 batches of 8 after 5.
3. *Train step at CPU size*: the image demos' flow stages (``configs/*_like.py:flow_image_demo``, pre-encoded
   latents, batch 8) with the frozen ``dinov2_tiny`` inside the jitted step vs the same step fed the encoder's
   tokens precomputed (the cached path): the real ``build_train_step`` (loss, gradients, AdamW, EMA), median of
   ``--reps`` interleaved calls after 3 warm-up calls; jaxshape as a library user runs it (this process, no tunables).
4. *FLOP split of the released configs* (analytic, ``jaxshape.flops.count_flops``; nothing runs): per training
   example, the encoder's forward over its views and the flow model's train step (forward + backward, no remat).

Prints the tables and writes them to ``--out``; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_lib import block, interleaved, machine_description, write_markdown  # noqa: E402


def _ms(ts):
    return 1e3 * statistics.median(ts)


def view_costs(meshes: int = 6, views: int = 4) -> list[str]:
    from jaxshape.data.procedural import embedded_jobs
    from jaxshape.data.workers import render_mesh_views
    from jaxshape.image import decode_png, partpacker_preprocess, trellis_preprocess

    jobs = embedded_jobs(1000)[::1000 // meshes][:meshes]  # spread over the classes
    rows = ["| step | px | ms per view (median over meshes) |", "|---|---|---|"]
    pngs = {}
    for size in (128, 518):
        render_mesh_views(jobs[0][1], jobs[0][0], 1, size, 0)  # context and shaders
        ts, pngs[size] = [], []
        for mid, path, _ in jobs:
            t = time.perf_counter()
            out = render_mesh_views(path, mid, views, size, 0)
            ts.append((time.perf_counter() - t) / views)
            pngs[size] += out["cond_views"]
        rows.append(f"| render (OpenGL/EGL) + PNG encode | {size} | {_ms(ts):.1f} |")
    cases = [("decode PNG", 518, lambda b: decode_png(b)),
             ("decode + TRELLIS preprocess to 518", 518, lambda b: trellis_preprocess(decode_png(b), size=518)),
             ("decode + PartPacker preprocess to 518", 518, lambda b: partpacker_preprocess(decode_png(b), size=518)),
             ("decode + TRELLIS preprocess to 112 (demo)", 128, lambda b: trellis_preprocess(decode_png(b), size=112))]
    for name, size, fn in cases:
        ts = []
        for b in pngs[size]:
            t = time.perf_counter()
            fn(b)
            ts.append(time.perf_counter() - t)
        rows.append(f"| {name} | {size} | {_ms(ts):.1f} |")
    return rows


def pipeline_throughput(batches: int = 60) -> list[str]:
    from jaxshape.data.pipeline import ViewConfig, make_dataset
    from jaxshape.data.prepare import prepare
    from jaxshape.data.procedural import CLASSES, embedded_jobs
    from jaxshape.data.targets import TargetConfig
    from jaxshape.families import SPARSE_STRUCTURE

    root = tempfile.mkdtemp(prefix="bench_image_cond_")
    out = os.path.join(root, "records")
    cfg = TargetConfig(targets=(SPARSE_STRUCTURE,), resolution=32, vecset=TargetConfig.small(32, 256).vecset)
    prepare([], out, cfg, workers=2, progress=False, jobs=embedded_jobs(32)[:32], classes=list(CLASSES),
            num_views=4, view_size=518)
    rows = ["| worker_count | examples/s (batch 8, one 518-px view each, TRELLIS preprocessing) |", "|---|---|"]
    for workers in (0, 2):
        ds = make_dataset(out, 8, family=SPARSE_STRUCTURE, keys=("occupancy", "cond_image"), seed=0,
                          views=ViewConfig(count=1, size=518), worker_count=workers, process_index=0,
                          process_count=1)
        it = iter(ds)
        for _ in range(5):  # worker start-up; grain's read-ahead buffer fills
            next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        rows.append(f"| {workers} | {8 * batches / (time.perf_counter() - t):.1f} |")
        del it
    return rows


def _step_inputs(family: str):
    """The flow_image_demo task of ``family``, its image batch and the cached-tokens batch of the same step."""
    from configs import trellis_like, vecset_like
    from jaxshape.data.pipeline import ViewConfig  # noqa: F401 (the task builds one)
    from jaxshape.trainer.tasks import make_task
    from jaxshape.trainer.tasks.base import encode_images, load_image_encoder

    cfg = (trellis_like if family == "trellis" else vecset_like).get_config("flow_image_demo")
    cfg.pre_encode = True
    image_task = make_task(cfg)
    frozen = {**image_task.frozen_variables(), "encoder": load_image_encoder(image_task.encoder, cfg.cond, 0)}
    b, k, s = cfg.data.batch_size, cfg.cond.views, cfg.cond.image_size
    latent = ((b, 8, 8, 8, 8) if family == "trellis" else (b, sum(cfg.latent_tokens), cfg.model.latent_dim))
    rng = np.random.default_rng(0)
    img_batch = {"latent": rng.normal(size=latent).astype(np.float32),
                 "cond_image": rng.uniform(size=(b, k, s, s, 3)).astype(np.float32)}
    tokens = np.asarray(encode_images(image_task.encoder, frozen["encoder"], jnp.asarray(img_batch["cond_image"]),
                                      cfg.cond.tap))
    cached_cfg = cfg.copy_and_resolve_references()
    cached_cfg.cond.kind = "features"
    cached_task = make_task(cached_cfg)
    cached_batch = {"latent": np.repeat(img_batch["latent"], k, axis=0), "cond_features": tokens}
    return cfg, (image_task, frozen, img_batch), (cached_task, image_task.frozen_variables(), cached_batch)


def train_step_costs(reps: int) -> list[str]:
    import flax.linen as nn

    from jaxshape.trainer.loop import TrainState, build_train_step
    from jaxshape.trainer.optim import make_optimizer

    rows = ["| family (demo flow) | views × px | encoder tokens | step, encoder in it (ms) | step, cached tokens (ms) "
            "| ratio |", "|---|---|---|---|---|---|"]
    for family in ("trellis", "vecset"):
        cfg, image, cached = _step_inputs(family)
        fns, compile_s = {}, {}
        for name, (task, frozen, batch) in (("image", image), ("cached", cached)):
            tx = make_optimizer(cfg.optimizer)
            params = nn.meta.unbox(task.init(jax.random.key(0), {k: jnp.asarray(v) for k, v in batch.items()},
                                             frozen))
            state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                               opt_state=tx.init(params), rng=jax.random.key(1))
            step = jax.jit(build_train_step(task, tx, cfg))
            dev_batch = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()})
            dev_frozen = jax.device_put(frozen)
            t = time.perf_counter()
            block(step(state, dev_frozen, dev_batch))
            compile_s[name] = time.perf_counter() - t
            fns[name] = (lambda st=state, s=step, f=dev_frozen, bt=dev_batch: block(s(st, f, bt)))
        ts = interleaved(fns, reps, warmup=3)
        a, c = _ms(ts["image"]), _ms(ts["cached"])
        tokens = cached[2]["cond_features"].shape[1]
        rows.append(f"| {family} | {cfg.cond.views} × {cfg.cond.image_size} | {tokens} | {a:.0f} | {c:.0f} | "
                    f"{a / c:.2f} |")
    return rows


def flop_split() -> list[str]:
    from configs import trellis_like, vecset_like
    from jaxshape.flops import count_flops
    from jaxshape.models import build, image_condition

    rows = ["| released config | encoder | views per example | encoder GFLOP per example (forward) | flow model "
            "GFLOP per example (train step) | encoder share |", "|---|---|---|---|---|---|"]
    for name, cfg, cls, remat_off in (
            ("trellis_like.py:flow_L_image", trellis_like.get_config("flow_L_image"), "SparseStructureFlowModel",
             {"use_checkpoint": False}),
            ("vecset_like.py:flow_image", vecset_like.get_config("flow_image"), "VecSetDiT",
             {"gradient_checkpointing": False})):
        enc = build(cfg.cond.encoder)
        x = jax.ShapeDtypeStruct((1, cfg.cond.image_size, cfg.cond.image_size, 3), jnp.float32)
        enc_vars = jax.eval_shape(enc.init, jax.random.key(0), x)
        enc_flops = count_flops(lambda v, im: image_condition(enc.apply(v, im), cfg.cond.tap), enc_vars, x)
        tokens = jax.eval_shape(lambda v, im: image_condition(enc.apply(v, im), cfg.cond.tap), enc_vars, x).shape[1]
        model = build(cls, {**dict(cfg.model), **remat_off})
        cond = jax.ShapeDtypeStruct((1, tokens, enc.embed_dim), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        if cls == "SparseStructureFlowModel":
            r, c = cfg.model.resolution, cfg.model.in_channels
            lat = jax.ShapeDtypeStruct((1, r, r, r, c), jnp.float32)
            variables = jax.eval_shape(model.init, jax.random.key(0), lat, t, cond)
            apply = lambda v, xx, tt, cc: model.apply(v, xx, tt, cc)  # noqa: E731
        else:
            lat = jax.ShapeDtypeStruct((1, sum(cfg.latent_tokens), cfg.model.latent_dim), jnp.float32)
            variables = jax.eval_shape(model.init, jax.random.key(0), lat, cond, t)
            apply = lambda v, xx, tt, cc: model.apply(v, xx, cc, tt)  # noqa: E731

        def loss(p, rest, xx, tt, cc):
            return jnp.mean(apply({**rest, "params": p}, xx, tt, cc) ** 2)

        rest = {k: v for k, v in variables.items() if k != "params"}
        flow_flops = count_flops(jax.value_and_grad(loss), variables["params"], rest, lat, t, cond)
        k = cfg.cond.views
        e, f = k * enc_flops / 1e9, k * flow_flops / 1e9  # k views: k encoder passes, the latent repeated k times
        rows.append(f"| {name} | {cfg.cond.encoder} @ {cfg.cond.image_size} px, {tokens} tokens | {k} | {e:,.0f} | "
                    f"{f:,.0f} | {e / (e + f):.0%} |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "bench_image_cond.md"))
    a = ap.parse_args(argv)
    head = machine_description(allocator=False)
    print(head)
    sections = [("Views: render and host preprocessing", view_costs()),
                ("Host pipeline (grain)", pipeline_throughput()),
                ("Train step at CPU size: encoder in the step vs cached tokens", train_step_costs(a.reps)),
                ("FLOP split of the released image-conditioned configs", flop_split())]
    lines = ["# Image conditioning: what it costs", "", "Written by `experiments/bench_image_cond.py` (its "
             "docstring has the set-up).", "", f"Machine: {head}", ""]
    for title, rows in sections:
        lines += [f"## {title}", ""] + rows + [""]
        print(f"\n{title}\n" + "\n".join(rows))
    write_markdown(a.out, lines)


if __name__ == "__main__":
    main()
