"""Defaults shared by every training config (``configs/*.py`` build on :func:`common_config`)."""
import ml_collections


def common_config(stage: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.steps = 1000
    c.log_every = 10
    c.ckpt_every = 500
    c.keep_last = 2
    c.keep_best = 1
    c.sample_every = 0  # 0: only at the end
    c.sample_at_end = True
    c.num_samples = 4
    c.async_checkpointing = True
    c.progress = True
    c.dtype = "float32"  # compute dtype of the trained model ("bfloat16" on accelerators)
    c.grad_accum_steps = 1
    c.pre_encode = False  # flow stages: encode the dataset once with the frozen VAE instead of every step
    c.ema_decay = 0.9999
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    c.data = ml_collections.ConfigDict(dict(
        # source: "embedded" (procedural shapes, prepared on first use and cached), "records" (a folder written by
        # `python -m jaxshape.data.prepare`, at `path`) or "synthetic" (exact spheres/boxes, for tests)
        source="embedded", path="", batch_size=8, seed=0, shuffle=True, prefetch=2, worker_count=0,
        resolution=64, points=4096, num_shapes=1000,  # embedded-set target sizes
        num_queries=(), # vecset: (volume, near, sharp) queries drawn per example (); () = all stored
        augment=ml_collections.ConfigDict(dict(mirror_p=0.0, rotate="", occupancy_flips=False)),
        num_examples=64, synthetic=ml_collections.ConfigDict(dict(resolution=32))))
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-4, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, schedule="constant", warmup_steps=0,
        decay_steps=1, end_lr=0.0, clip="adaptive", max_grad_norm=1.0, clip_percentile=95.0,
        clip_buffer_size=1000))
    return c
