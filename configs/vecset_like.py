"""PartPacker-like vecset pipeline: perceiver VAE (surface points -> latent token set -> TSDF queries) then the DiT.

Variants (``--config=configs/vecset_like.py:<variant>``):

* ``demo`` (default): both stages at CPU size on the embedded procedural dataset (class-label conditioning).
* ``vae_demo`` / ``flow_demo``: the two stages of ``demo`` alone.
* ``long``: ``demo`` on 400 shapes (60 held out), trained longer and evaluated often (``docs/evaluation.md``: the
  curve of each metric against training time, and when it reaches the demo goals).
* ``vae``: the released PartPacker VAE (``part_woenc``: 1024 wide, 24 decoder layers, dual salient
  perceivers, progressive FPS cut-off, MSE + L1 + 1e-3 KL).
* ``flow``: the released PartPacker DiT (1536 wide, 24 layers, RMS qk-norm, no part embedding here: one
  volume per shape) on VAE latents, conditioned on precomputed feature tokens (``cond_features``, e.g. DINOv2
  tokens, 1536 wide) or class labels.
* ``flow_image``: the released DiT conditioned as PartPacker trains it: k = 2 random rendered views per example
  (``prepare --views N``; the latent repeated per view, ``repeat_interleave`` order), PartPacker's preprocessing
  (90 % framing, on white) at 518 px, the frozen DINOv2 ViT-g/14 in bf16 inside the train step (1370 × 1536 tokens,
  ``LN(last_hidden_state)`` in fp32, CFG dropout 0.1). PartPacker does not release its dataset code, so k is our
  choice (``cond.views``). Point ``cond.encoder_checkpoint`` at the weights (hub ``.pth`` or the HF folder).
* ``image_demo``: ``demo`` with the flow conditioned on images: 8 views of 128 px rendered per embedded shape, 2 drawn
  per example at 112 px, read by the ``dinov2_tiny`` stand-in trained on renders of other embedded shapes
  (``cond.encoder_checkpoint="standin"``, built and cached on first use) as 2 tokens, CLS and the mean patch
  token, standardised by their training-set statistics (``cond.pool``, ``cond.standardize``; ``docs/training.md``);
  ``flow_image_demo``: its flow stage alone.

* ``finetune_flow``: PartPacker's released DiT fine-tuned as it was trained: ``flow_image`` with the part
  embedding (``use_parts``, two 4,096-token volumes per shape from records prepared with ``--parts``), started from
  the converted ``flow.pt`` (``init_from``, default ``ckpt/partpacker_dit``) on the converted ``vae.pt``
  (``vae_checkpoint``, default ``ckpt/partpacker_vae``), lr 1e-5 after 500 warm-up steps, EMA 0.999.
* ``parts_demo``: ``demo`` on the embedded shapes as separate parts (``data.parts``), the flow with two volumes
  (``use_parts``, part2_only embedding) -- the CPU-size check of the two-volume path; ``parts_flow_demo``: its flow
  stage alone (give it a vecset VAE with ``--config.vae_checkpoint``).

``,data=<folder>`` trains every stage on prepared records: ``--config=configs/vecset_like.py:demo,data=data/mine``.
"""
import ml_collections

from jaxshape.trainer.defaults import apply_pipeline_options, parse_config_arg, stage_config


def vae_config(size: str = "released") -> ml_collections.ConfigDict:
    c = stage_config("vecset_vae")
    if size == "demo":
        model = dict(hidden_dim=128, num_heads=4, num_dec_layers=2, dec_hidden_dim=128, dec_num_heads=4,
                     query_hidden_dim=128, query_num_heads=4, point_fourier_dim=48, latent_dim=16,
                     cutoff_fps_point=(64, 128), cutoff_fps_salient_point=(0, 32), cutoff_fps_prob=(0.5, 0.5),
                     remat_policy=None,
                     # a deterministic autoencoder (PartPacker's `use_ae`: L2 on the latents): a KL posterior
                     # starts at unit variance, and after a CPU-length run its noise still matches the spread of
                     # the means, so the decoder, trained on sampled latents, reconstructs empty shapes from the
                     # mean (what the flow decodes). docs/evaluation.md has the measurement.
                     use_ae=True)
    else:
        model = {}  # VecSetVAE's defaults are the released part_woenc config
    c.model = ml_collections.ConfigDict(model)
    c.optimizer.clip = "global_norm"
    return c


def flow_config(size: str = "released") -> ml_collections.ConfigDict:
    c = stage_config("vecset_flow")
    if size == "demo":
        model = dict(hidden_dim=128, num_heads=4, latent_size=160, latent_dim=16, num_layers=4, qknorm=True,
                     qknorm_type="RMSNorm", use_pos_embed=False, use_parts=False, gradient_checkpointing=False)
    else:
        model = dict(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
                     qknorm_type="RMSNorm", use_pos_embed=False, use_parts=False, gradient_checkpointing=True)
    c.model = ml_collections.ConfigDict(model)
    c.latent_tokens = (128, 32) if size == "demo" else (2048, 2048)  # (uniform, salient) FPS-prefix tokens
    c.pre_encode = size == "demo"
    return c


def image_conditioned(c: ml_collections.ConfigDict, encoder: str, image_size: int, views: int,
                      encoder_dtype: str) -> ml_collections.ConfigDict:
    """A flow stage conditioned on ``views`` rendered views per example through the frozen ``encoder``, PartPacker's
    way: 90 % framing on white, LN of the last hidden state (the pre-final-norm stream) of every token."""
    c.cond.kind = "image"
    c.cond.encoder = encoder
    c.cond.encoder_dtype = encoder_dtype
    c.cond.image_size = image_size
    c.cond.views = views
    c.cond.preprocess = "partpacker"
    c.cond.tap = "prenorm_ln"
    return c


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    variant, options = parse_config_arg(arg, "demo")
    return apply_pipeline_options(_variant(variant), options)


def _variant(variant: str) -> ml_collections.ConfigDict:
    if variant == "demo":
        vae, fl = vae_config("demo"), flow_config("demo")
        for c in (vae, fl):
            c.data.num_shapes = 200
            c.data.points = 2048
            c.data.num_queries = (256, 256, 128)
            c.data.holdout = 0.1  # ~20 shapes never trained on, for the evaluation
            c.ckpt_every = 500
            c.ema_decay = 0.99
            c.optimizer.lr = 5e-4
        vae.steps, fl.steps = 1000, 600
        vae.eval.every, fl.eval.every = 500, 300
        vae.sampler.grid_resolution = 48
        fl.sampler.grid_resolution = 48
        fl.sampler.cfg_strength = 2.0
        cfg = ml_collections.ConfigDict()
        cfg.order = ("vecset_vae", "vecset_flow")
        cfg.stages = ml_collections.ConfigDict({"vecset_vae": vae, "vecset_flow": fl})
        return cfg
    if variant == "long":
        cfg = _variant("demo")
        vae, fl = cfg.stages.vecset_vae, cfg.stages.vecset_flow
        for c in (vae, fl):
            c.data.num_shapes = 400
            c.data.holdout = 0.15
            c.eval.num_shapes = 60
        vae.steps, vae.eval.every = 4000, 500
        fl.steps, fl.eval.every, fl.eval.sample_every = 3000, 500, 500
        fl.eval.num_samples = 32
        return cfg
    if variant in ("image_demo", "flow_image_demo"):
        cfg = _variant("demo")
        fl = image_conditioned(cfg.stages.vecset_flow, "dinov2_tiny", 112, views=2, encoder_dtype="float32")
        fl.data.views, fl.data.view_size = 8, 128  # rendered once per embedded shape (cached)
        fl.model.hidden_dim = 96  # the DiT's condition width is its own (PartPacker): dinov2_tiny's 96
        # at CPU size the DiT follows its views only with an encoder that knows the shapes (the stand-in, trained
        # here on first use) read as 2 standardised tokens, CLS and mean patch (docs/training.md measures each)
        fl.cond.encoder_checkpoint = "standin"
        fl.cond.pool, fl.cond.standardize = "cls_mean", True
        fl.steps = 1500
        fl.eval.every, fl.eval.sample_every = 500, 500
        fl.eval.num_samples = 20
        return cfg if variant == "image_demo" else fl
    if variant == "vae_demo":
        return _variant("demo").stages.vecset_vae
    if variant == "flow_demo":
        return _variant("demo").stages.vecset_flow
    if variant == "vae":
        c = vae_config("released")
        c.sampler.grid_resolution = 256
        return c
    if variant == "flow":
        return flow_config("released")
    if variant == "flow_image":
        return image_conditioned(flow_config("released"), "dinov2_vitg14", 518, views=2, encoder_dtype="bfloat16")
    if variant == "finetune_flow":
        c = image_conditioned(flow_config("released"), "dinov2_vitg14", 518, views=2, encoder_dtype="bfloat16")
        c.model.use_parts = True  # the released DiT: part2_only embedding on the second volume
        c.pre_encode = False
        c.init_from, c.vae_checkpoint = "ckpt/partpacker_dit", "ckpt/partpacker_vae"
        c.optimizer.lr, c.optimizer.warmup_steps, c.ema_decay = 1e-5, 500, 0.999
        return c
    if variant in ("parts_demo", "parts_flow_demo"):
        cfg = _variant("demo")
        for c in cfg.stages.values():
            c.data.parts = True
        cfg.stages.vecset_flow.model.use_parts = True
        # the sampled latent of an empty volume has RMS 0.07-0.17, a real volume 1.4-1.9 (docs/training.md)
        cfg.stages.vecset_flow.sampler.empty_volume_rms = 0.5
        return cfg if variant == "parts_demo" else cfg.stages.vecset_flow
    raise ValueError(f"unknown variant {variant!r}: demo, long, image_demo, vae_demo, flow_demo, flow_image_demo, vae, "
                     f"flow, flow_image, finetune_flow, parts_demo, parts_flow_demo")
