"""The training config schema: every field of every stage, its default and what it does.

``configs/*.py`` start from :func:`stage_config` and override; the trainer reads ``config.<field>`` directly, so
this file is the one place a default lives. A pipeline config is ``ConfigDict(order=(stage names...),
stages={name: stage config})``; :func:`parse_config_arg` and :func:`apply_pipeline_options` give every config file
the same ``--config=configs/x.py:<variant>,data=<records folder>`` argument.
"""
from __future__ import annotations

import ml_collections

from jaxshape.families import SS_FLOW, SS_VAE, VECSET_FLOW, VECSET_VAE, family_of_stage

ConfigDict = ml_collections.ConfigDict


def _data_config() -> ConfigDict:
    d = ConfigDict()
    # "embedded": the procedural set, prepared on first use and cached; "records": a folder written by
    # `python -m jaxshape.data.prepare` (path); "synthetic": exact spheres and boxes (tests, smoke runs)
    d.source = "embedded"
    d.path = ""  # source="records": the prepared folder
    d.batch_size = 8  # global batch (all processes and devices together); a multiple of data × fsdp
    d.seed = 0  # shuffling, augmentation and query subsampling
    d.shuffle = True  # shuffle every epoch
    d.prefetch = 2  # batches prefetched into device memory
    d.worker_count = 0  # grain worker processes (0: in the main process)
    # bad examples (a record that does not decode, NaN / Inf, an empty point set) are replaced by the next good
    # one and counted (metric data/skipped); the run stops once more than skip_limit of the examples read
    # were bad and at least skip_limit_min of them
    d.skip_limit = 0.01
    d.skip_limit_min = 10
    d.resolution = 64  # embedded set: occupancy grid size
    d.points = 4096  # embedded set: uniform surface-point pool
    d.num_shapes = 1000  # embedded set: how many shapes
    d.views = 0  # embedded set: conditioning views rendered per shape (prepare --views; cond.kind="image")
    d.view_size = 128  # embedded set: their side in pixels
    d.parts = False  # embedded set: shapes as separate parts with PartPacker's two volumes (prepare --parts)
    d.num_queries = ()  # vecset: (volume, near, sharp) TSDF queries drawn per example; () = every stored query
    # fraction of shapes held out of training for evaluation, chosen by a stable hash of the mesh id
    # (jaxshape.data.records.holdout_mask); synthetic: that many fresh shapes. 0: train on everything
    d.holdout = 0.0
    d.augment = ConfigDict(dict(
        mirror_p=0.0,  # vecset: mirror one random axis with this probability
        rotate="",  # vecset: "" (off), "z" (about the up axis) or "so3"
        occupancy_flips=False,  # sparse structure: random x/y flips and 90° turns about z
    ))
    d.num_examples = 64  # synthetic: dataset size
    d.synthetic = ConfigDict(dict(resolution=32))  # synthetic: jaxshape.data.synthetic.synthetic_example args
    return d


def _optimizer_config() -> ConfigDict:
    o = ConfigDict()
    o.lr = 1e-4  # peak learning rate (AdamW)
    o.weight_decay = 0.0  # decoupled weight decay
    o.b1 = 0.9  # Adam β1
    o.b2 = 0.999  # Adam β2
    o.eps = 1e-8  # Adam ε
    o.schedule = "constant"  # "constant" (TRELLIS) or "cosine"
    o.warmup_steps = 0  # linear warm-up from 0 (both schedules)
    o.decay_steps = 1  # cosine: steps of the decay
    o.end_lr = 0.0  # cosine: final learning rate
    o.clip = "adaptive"  # "adaptive" (TRELLIS: percentile of recent norms, capped), "global_norm" or "none"
    o.max_grad_norm = 1.0  # the global-norm cap (both clip kinds)
    o.clip_percentile = 95.0  # adaptive: percentile of the recent pre-clip norms
    o.clip_buffer_size = 1000  # adaptive: how many recent norms
    return o


def _eval_config() -> ConfigDict:
    e = ConfigDict()
    # evaluation on the held-out shapes (data.holdout > 0; jaxshape.trainer.evaluation, docs/evaluation.md)
    e.every = 0  # evaluate every this many steps (0: not during training)
    e.at_end = True  # and after the last step
    e.num_shapes = 16  # held-out shapes: VAE reconstructions; flow bucket losses and the class-consistency pool
    e.points = 8192  # surface samples per shape for Chamfer / F-score (unit cube; the floor of two draws of one
    # surface at 8192: CD-L1 0.010, F@0.02 0.93 -- at 2048 it is 0.020 / 0.53, docs/evaluation.md)
    e.num_queries = 4096  # vecset VAE: uniform volume queries per shape for the volume IoU
    e.t_buckets = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # flow: the fixed times of the bucket losses
    e.num_samples = 16  # flow: generated shapes scored by MMD / COV / 1-NNA / class consistency (0: none)
    e.sample_every = 0  # flow: also generate at evaluations on multiples of this many steps (0: only at the end)
    e.set_points = 512  # flow: surface samples per shape in the set metrics' pairwise Chamfer matrices
    e.batch_size = 8  # flow: shapes generated together
    # flow with image / features conditions: also generate every sample with another held-out shape's condition
    # (same noise) for the condition report's shuffled baseline (doubles the generation time)
    e.shuffled_condition = True
    e.seed = 0  # surface sampling, fixed noise and sampler noise
    return e


def stage_config(stage: str) -> ConfigDict:
    """The complete default config of one training stage (``jaxshape.families.STAGES``)."""
    family_of_stage(stage)  # an unknown stage is an error naming the known ones
    c = ConfigDict()
    c.stage = stage  # what this config trains: ss_vae, ss_flow, vecset_vae or vecset_flow
    c.seed = 0  # parameter init, per-step randomness (fold_in(seed, step)), host-side draws, samples
    c.steps = 1000  # optimiser steps in all
    c.log_every = 10  # write metrics every this many steps (metrics leave the device only then)
    c.ckpt_every = 500  # checkpoint every this many steps, and at the last step
    c.keep_last = 2  # keep the newest keep_last checkpoints ...
    c.keep_best = 1  # ... and the keep_best lowest-loss ones
    c.async_checkpointing = True  # write checkpoints in the background
    c.sample_every = 0  # write samples every this many steps (0: only at the end)
    c.sample_at_end = True  # write samples when the run reaches `steps`
    c.num_samples = 4  # shapes per sampling: reconstructions (VAE) or generations (flow)
    c.progress = True  # a progress bar on the main process
    c.dtype = "float32"  # compute dtype of the trained model ("bfloat16" on accelerators); params stay fp32
    c.grad_accum_steps = 1  # micro-batches per step (data.batch_size must split into multiples of the mesh)
    c.ema_decay = 0.9999  # EMA of the parameters, updated every step (samples and loading use the EMA)
    c.distributed = False  # call jax.distributed.initialize() first (multi-host)
    # fine-tuning: start the trained model(s) from these weights instead of a random init (when no checkpoint
    # exists yet): a jaxshape.convert / models.save folder or a training workdir (jaxshape.models.load reads it;
    # convert an official file first, e.g. python -m jaxshape.convert --config ss_flow_img_dit_L_16l8_fp16.json ...)
    c.init_from = ""
    c.mesh = ConfigDict(dict(
        data=-1,  # data-parallel axis size (-1: the devices left over)
        fsdp=1,  # parameter-sharding axis size
        rules=(),  # (logical axis, mesh axes or None) pairs overriding jaxshape.trainer.sharding.LOGICAL_RULES
    ))
    c.data = _data_config()
    c.optimizer = _optimizer_config()
    c.eval = _eval_config()
    if stage == SS_VAE:
        # SparseStructureEncoder / SparseStructureDecoder constructor args (TRELLIS names)
        c.model = ConfigDict(dict(encoder=ConfigDict(), decoder=ConfigDict()))
        c.loss = ConfigDict(dict(
            type="dice",  # reconstruction term: "dice" (TRELLIS configs), "bce" or "l1"
            kl_weight=1e-3,  # weight of the KL term
        ))
    elif stage == VECSET_VAE:
        c.model = ConfigDict()  # VecSetVAE constructor args (PartPacker ModelConfig names; defaults: released)
        c.progressive_cutoff = True  # PartPacker's random FPS-prefix cut-off, one draw per step
        c.sampler = ConfigDict(dict(grid_resolution=64))  # reconstructions: TSDF grid of (R+1)³ queries
    else:
        c.model = ConfigDict()  # the flow model's constructor args (SparseStructureFlowModel / VecSetDiT)
        # the frozen VAE: a training workdir of the VAE stage, a jaxshape.convert / jaxshape.models.save output
        # (for ss_flow: a folder holding the converted encoder and decoder, or their two paths joined by ",");
        # empty in a pipeline: the VAE stage trained before it
        c.vae_checkpoint = ""
        c.pre_encode = False  # encode the dataset once with the frozen VAE (cached in the workdir)
        c.cond = ConfigDict(dict(
            # "class" (a learned label table), "features" (precomputed cond_features tokens) or "image" (rendered
            # views of the record, read by a frozen image encoder inside the train step)
            kind="class",
            num_classes=10,  # class: labels 0..num_classes-1; label num_classes is the learned null label
            tokens=1,  # class: condition tokens per label
            p_uncond=0.1,  # classifier-free-guidance dropout probability (image / features: zero tokens)
            encoder="dinov2_vitl14_reg",  # image: the encoder's architecture (a jaxshape.models.released name)
            # image: its weights (a jaxshape.convert output, a torch-hub .pth or an HF folder); "standin": a small
            # encoder trained here on renders of embedded shapes (jaxshape.trainer.standin_encoder, cached); "": a
            # random-init stand-in (runs the pipeline, knows next to nothing about images)
            encoder_checkpoint="",
            encoder_dtype="float32",  # image: the encoder's compute dtype (PartPacker: bfloat16)
            tap="prenorm_ln",  # image: the condition tap (jaxshape.models.image_condition)
            views=1,  # image: views per example (TRELLIS 1; PartPacker k, the latent repeated per view)
            # image: the view rule (jaxshape.data.pipeline.IMAGE_PREPROCESS): "trellis" / "trellis2" (crop by alpha,
            # on black), "partpacker" (90 %, on white), "trellis_train" / "trellis2_train" (their training crops)
            preprocess="trellis",
            image_size=518,  # image: side of the preprocessed view in pixels (a multiple of the patch size)
            # image: "" keeps every token (all upstreams); "cls_mean": 2 tokens, CLS and the mean patch token
            pool="",
            # image / features: standardise each (token, channel) by its mean and std over the training views
            # (computed once, kept in the workdir as cond_stats.npz); the null condition is then the mean one
            standardize=False,
            stats_examples=256,  # standardize: training examples the statistics are computed over
        ))
        if stage == SS_FLOW:
            c.flow = ConfigDict(dict(
                t_schedule="logitNormal",  # training t: "logitNormal" (TRELLIS) or "uniform"
                mean=1.0,  # logit-normal mean
                std=1.0,  # logit-normal std
                sigma_min=1e-5,  # TRELLIS σ_min
            ))
            c.sampler = ConfigDict(dict(
                steps=25,  # Euler steps
                cfg_strength=7.5,  # guidance w in (1 + w)·v_c − w·v_u
                cfg_interval=(0.5, 1.0),  # guidance only for t in this interval
                rescale_t=3.0,  # TRELLIS time rescaling of the grid
            ))
        elif stage == VECSET_FLOW:
            # (uniform, salient) FPS-prefix latent tokens per shape (per volume with model.use_parts); () = all encoded
            c.latent_tokens = ()
            c.flow = ConfigDict(dict(
                mean=1.0,  # logit-normal mean of the σ table index
                std=1.0,  # logit-normal std
                shift=3.0,  # PartPacker's σ shift
            ))
            c.sampler = ConfigDict(dict(
                steps=30,  # Euler steps
                cfg_strength=7.0,  # guidance w in v_u + w·(v_c − v_u)
                grid_resolution=64,  # TSDF grid of (R+1)³ queries per shape
                # model.use_parts: a sampled volume whose latent RMS is below this has no surface (the VAE decodes
                # the all-zero latent of an empty volume to a small blob); 0: decode every volume (upstream)
                empty_volume_rms=0.0,
            ))
    return c


def with_defaults(saved: dict) -> ConfigDict:
    """A stage config saved by an earlier version (a workdir's ``config.json``) completed with the defaults of the
    fields added since, so a newer ``sample`` / ``evaluate`` reads an older workdir."""
    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    return ConfigDict(merge(stage_config(saved["stage"]).to_dict(), saved))


PIPELINE_OPTIONS = ("data",)


def parse_config_arg(arg: str | None, default_variant: str) -> tuple[str, dict]:
    """``"<variant>,key=value,..."`` (the part after ``:`` in ``--config=configs/x.py:...``) ->
    ``(variant, options)``. Options: ``data=<folder>`` (train every stage on prepared records)."""
    parts = [p for p in (arg or "").split(",") if p]
    variant = default_variant
    if parts and "=" not in parts[0]:
        variant = parts.pop(0)
    options = {}
    for p in parts:
        key, sep, value = p.partition("=")
        if not sep or key not in PIPELINE_OPTIONS:
            raise ValueError(f"config option {p!r} is not one of {PIPELINE_OPTIONS} (key=value)")
        options[key] = value
    return variant, options


def apply_pipeline_options(cfg: ConfigDict, options: dict) -> ConfigDict:
    """Apply :func:`parse_config_arg` options to a stage config or to every stage of a pipeline config."""
    stages = [cfg.stages[s] for s in cfg.order] if "order" in cfg else [cfg]
    for c in stages:
        if "data" in options:
            c.data.source = "records"
            c.data.path = options["data"]
    return cfg
