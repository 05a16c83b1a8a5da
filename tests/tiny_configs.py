"""Tiny training configs for the training tests (``--config=tests/tiny_configs.py:<stage>``): every stage of
both families on the exact synthetic source, small enough for CI."""
import ml_collections

from jaxshape.trainer.defaults import stage_config


def get_config(stage: str = "ss_vae") -> ml_collections.ConfigDict:
    c = stage_config(stage)
    c.steps = 3
    c.log_every = 1
    c.ckpt_every = 3
    c.progress = False
    c.sample_at_end = False
    c.num_samples = 2
    c.ema_decay = 0.9
    c.optimizer.lr = 3e-3
    c.optimizer.clip = "global_norm"
    c.data.source = "synthetic"
    c.data.batch_size = 8
    c.data.num_examples = 16
    c.data.synthetic = ml_collections.ConfigDict(dict(resolution=8, num_points=128, num_salient=64, num_fps=32,
                                                      num_fps_salient=16, num_queries=128))
    if stage == "ss_vae":
        c.model = ml_collections.ConfigDict(dict(
            encoder=dict(in_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=(4, 8)),
            decoder=dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1,
                         channels=(8, 4))))
    elif stage == "ss_flow":
        c.model = ml_collections.ConfigDict(dict(
            resolution=4, in_channels=4, model_channels=32, cond_channels=32, out_channels=4, num_blocks=2,
            num_heads=2, patch_size=1, qk_rms_norm=True, use_checkpoint=True))
        c.cond.num_classes = 2
        c.sampler.steps, c.sampler.cfg_strength = 4, 2.0
    elif stage == "vecset_vae":
        c.model = ml_collections.ConfigDict(dict(
            hidden_dim=32, num_heads=2, num_dec_layers=2, dec_hidden_dim=32, dec_num_heads=2, query_hidden_dim=32,
            query_num_heads=2, point_fourier_dim=24, latent_dim=8, cutoff_fps_point=(16, 32),
            cutoff_fps_salient_point=(0, 16), cutoff_fps_prob=(0.5, 0.5), remat_policy="nothing_saveable"))
        c.sampler.grid_resolution = 8
    elif stage == "vecset_flow":
        c.model = ml_collections.ConfigDict(dict(
            hidden_dim=32, num_heads=2, latent_size=48, latent_dim=8, num_layers=2, qknorm=True,
            qknorm_type="RMSNorm", use_pos_embed=False, use_parts=False, gradient_checkpointing=False))
        c.cond.num_classes = 2
        c.sampler.steps, c.sampler.cfg_strength, c.sampler.grid_resolution = 4, 2.0, 8
    else:
        raise ValueError(stage)
    return c


def tiny_config(stage: str, vae_dirs=None, **over) -> ml_collections.ConfigDict:
    """:func:`get_config` with the flow stages' ``vae_checkpoint`` from ``vae_dirs`` (``{vae stage: workdir}``) and
    dotted overrides (``**{"data.batch_size": 4}``)."""
    c = get_config(stage)
    if stage.endswith("flow"):
        c.vae_checkpoint = vae_dirs[stage.replace("flow", "vae")]
    for k, v in over.items():
        target = c
        *path, leaf = k.split(".")
        for p in path:
            target = target[p]
        target[leaf] = v
    return c
