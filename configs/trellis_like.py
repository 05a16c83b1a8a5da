"""TRELLIS-like sparse-structure pipeline: SS-VAE (64³ occupancy <-> 16³×8 latents) then the flow DiT.

Variants (``--config=configs/trellis_like.py:<variant>``):

* ``demo`` (default): both stages at CPU size on the embedded procedural dataset (32³ occupancy, 8³×8
  latents, class-label conditioning, 10 % of the shapes held out and evaluated) -- the README's first command.
* ``vae_demo`` / ``flow_demo``: the two stages of ``demo`` alone.
* ``long``: ``demo`` trained longer, evaluated often (``docs/evaluation.md``: the curve of each metric against
  training time, and when it reaches the demo goals).
* ``vae``: the released ``ss_vae_conv3d_16l8`` architecture (64³, channels 32/128/512), TRELLIS's recipe
  (dice + 1e-3 KL, AdamW 1e-4, adaptive clipping, EMA 0.9999).
* ``flow_L`` / ``flow_B`` / ``flow_XL``: released flow DiT sizes (img-L; txt-B; txt-XL) on 16³×8 latents,
  conditioned on precomputed feature tokens read from the records (``cond_features``) or on class labels.
* ``flow_L_image``: the released img-L flow conditioned as TRELLIS trains it: one random rendered view per example
  (``prepare --views N``), TRELLIS's preprocessing at 518 px, the frozen DINOv2 ViT-L/14-reg inside the train step
  (1374 × 1024 tokens, ``LN(x_prenorm)``, CFG dropout 0.1). Point ``cond.encoder_checkpoint`` at its weights.
* ``finetune_flow_L``: ``flow_L_image`` started from the released img-L flow (``init_from``, default
  ``ckpt/ss_flow_img_dit_L_16l8_fp16``: ``python -m jaxshape.convert --config ss_flow_img_dit_L_16l8_fp16.json
  --weights ss_flow_img_dit_L_16l8_fp16.safetensors --out ckpt/ss_flow_img_dit_L_16l8_fp16``), at a fine-tuning
  learning rate (1e-5 after 500 warm-up steps, EMA 0.999); the frozen VAE and DINO weights as for ``flow_L_image``.
* ``flow_1_3B_image``: TRELLIS.2's stage-1 flow (``ss_flow_img_dit_1_3B_64_bf16``: 1.3 B, RoPE, on TRELLIS's 16³×8
  SS-VAE latents) trained as ``configs/gen/ss_flow_img_dit_1_3B_64_bf16.json`` does: one random view per example
  with TRELLIS.2's training crop (``cond.preprocess="trellis2_train"``: bbox of alpha > 0, no margin, 512 px, on
  black), the frozen DINOv3 ViT-L/16 (``LN`` of every token: 1 + 4 + 1024 × 1024), CFG dropout 0.1, AdamW 1e-4
  (weight decay 0.01, β2 0.95), EMA 0.9999. ``finetune_flow_1_3B``: it started from the released flow
  (``init_from``, default ``ckpt/ss_flow_img_dit_1_3B_64_bf16``), 1e-5 after 500 warm-up steps, EMA 0.999.
* ``image_demo``: ``demo`` with the flow conditioned on images: 8 views of 128 px rendered per embedded shape, one
  drawn per step at 112 px, read by the random-init ``dinov2_tiny`` stand-in (``docs/training.md``);
  ``flow_image_demo``: its flow stage alone.

``,data=<folder>`` trains every stage on prepared records (``python -m jaxshape.data.prepare``):
``--config=configs/trellis_like.py:demo,data=data/mine``. Every field can be overridden:
``--config.stages.ss_flow.steps=2000`` (a pipeline), ``--config.data.path=/my/records`` (one stage); the fields and
their defaults: ``jaxshape/trainer/defaults.py``.
"""
import ml_collections

from jaxshape.models.released import released_args
from jaxshape.trainer.defaults import apply_pipeline_options, parse_config_arg, stage_config


def vae_config(size: str = "released") -> ml_collections.ConfigDict:
    c = stage_config("ss_vae")
    if size == "demo":
        enc = dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1,
                   channels=(8, 16, 32))
        dec = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1,
                   channels=(32, 16, 8))
    else:
        enc = released_args("ss_enc_conv3d_16l8_fp16")[1]
        dec = released_args("ss_dec_conv3d_16l8_fp16")[1]
        enc["use_fp16"] = dec["use_fp16"] = False  # compute dtype comes from `dtype`
    c.model = ml_collections.ConfigDict(dict(encoder=enc, decoder=dec))
    c.data.batch_size = 4
    return c


def flow_config(size: str = "L") -> ml_collections.ConfigDict:
    c = stage_config("ss_flow")
    names = {"L": "ss_flow_img_dit_L_16l8_fp16", "B": "ss_flow_txt_dit_B_16l8_fp16",
             "XL": "ss_flow_txt_dit_XL_16l8_fp16"}
    if size == "demo":
        model = dict(resolution=8, in_channels=8, model_channels=128, cond_channels=128, out_channels=8,
                     num_blocks=4, num_heads=4, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True)
    else:
        model = released_args(names[size])[1]
        model["use_fp16"] = False
        model["use_checkpoint"] = True  # remat the scanned blocks
    c.model = ml_collections.ConfigDict(model)
    return c


def image_conditioned(c: ml_collections.ConfigDict, encoder: str, image_size: int) -> ml_collections.ConfigDict:
    """A flow stage conditioned on rendered views of its records through the frozen ``encoder``, TRELLIS's way:
    one random view per example, crop by alpha, on black, LN(x_prenorm) of every token."""
    c.cond.kind = "image"
    c.cond.encoder = encoder
    c.cond.image_size = image_size
    c.cond.views = 1
    c.cond.preprocess = "trellis"
    c.cond.tap = "prenorm_ln"
    return c


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    variant, options = parse_config_arg(arg, "demo")
    return apply_pipeline_options(_variant(variant), options)


def _variant(variant: str) -> ml_collections.ConfigDict:
    if variant == "demo":
        vae, fl = vae_config("demo"), flow_config("demo")
        for c in (vae, fl):
            c.data.resolution = 32
            c.data.batch_size = 8
            c.ckpt_every = 200
            c.log_every = 10
            c.ema_decay = 0.99
            c.optimizer.lr = 1e-3
            c.optimizer.clip = "global_norm"
            c.data.holdout = 0.1  # ~100 shapes never trained on, for the evaluation
            c.eval.num_shapes = 64
        vae.eval.every, fl.eval.every = 130, 250
        vae.steps = 260
        fl.steps = 1000
        vae.optimizer.lr = 2e-3
        fl.pre_encode = True  # encode the 1,000 shapes once with the frozen VAE
        fl.sampler.steps = 25
        fl.sampler.cfg_strength = 2.0
        fl.num_samples = 8
        cfg = ml_collections.ConfigDict()
        cfg.order = ("ss_vae", "ss_flow")
        cfg.stages = ml_collections.ConfigDict({"ss_vae": vae, "ss_flow": fl})
        return cfg
    if variant == "long":
        cfg = _variant("demo")
        vae, fl = cfg.stages.ss_vae, cfg.stages.ss_flow
        vae.steps, vae.eval.every = 800, 100
        fl.steps, fl.eval.every, fl.eval.sample_every = 3000, 250, 500
        fl.eval.num_samples = 32
        for c in (vae, fl):
            c.ckpt_every = 500
        return cfg
    if variant in ("image_demo", "flow_image_demo"):
        cfg = _variant("demo")
        fl = image_conditioned(cfg.stages.ss_flow, "dinov2_tiny", 112)
        fl.data.views, fl.data.view_size = 8, 128  # rendered once per embedded shape (cached)
        fl.model.cond_channels = 96  # dinov2_tiny's width
        fl.steps = 1500
        fl.eval.every, fl.eval.sample_every = 500, 500
        fl.eval.num_samples = 32
        return cfg if variant == "image_demo" else fl
    if variant == "vae_demo":
        return _variant("demo").stages.ss_vae
    if variant == "flow_demo":
        return _variant("demo").stages.ss_flow
    if variant == "vae":
        return vae_config("released")
    if variant in ("flow_L", "flow_B", "flow_XL"):
        return flow_config(variant.split("_")[1])
    if variant == "flow_L_image":
        return image_conditioned(flow_config("L"), "dinov2_vitl14_reg", 518)
    if variant in ("flow_1_3B_image", "finetune_flow_1_3B"):
        c = stage_config("ss_flow")
        model = released_args("ss_flow_img_dit_1_3B_64_bf16")[1]
        model["use_checkpoint"] = True  # remat the scanned blocks
        c.model = ml_collections.ConfigDict(model)
        image_conditioned(c, "dinov3_vitl16", 512)
        c.cond.preprocess = "trellis2_train"  # its dataset's crop, not its pipeline's
        c.optimizer.weight_decay, c.optimizer.b2 = 0.01, 0.95
        if variant == "finetune_flow_1_3B":
            c.init_from = "ckpt/ss_flow_img_dit_1_3B_64_bf16"
            c.optimizer.lr, c.optimizer.warmup_steps, c.ema_decay = 1e-5, 500, 0.999
        return c
    if variant == "finetune_flow_L":
        c = image_conditioned(flow_config("L"), "dinov2_vitl14_reg", 518)
        c.init_from = "ckpt/ss_flow_img_dit_L_16l8_fp16"
        c.optimizer.lr, c.optimizer.warmup_steps, c.ema_decay = 1e-5, 500, 0.999
        return c
    raise ValueError(f"unknown variant {variant!r}: demo, long, image_demo, vae_demo, flow_demo, flow_image_demo, vae, "
                     f"flow_L, flow_B, flow_XL, flow_L_image, finetune_flow_L, flow_1_3B_image, finetune_flow_1_3B")
