"""Tiny training configs for the training tests (``--config=tests/tiny_configs.py:<stage>``): every stage of
both families on the exact synthetic source, small enough for CI."""
import ml_collections

from jaxshape.trainer.defaults import common_config


def get_config(stage: str = "ss_vae") -> ml_collections.ConfigDict:
    c = common_config(stage)
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
        c.loss = ml_collections.ConfigDict(dict(type="dice", kl_weight=1e-3))
    elif stage == "ss_flow":
        c.model = ml_collections.ConfigDict(dict(
            resolution=4, in_channels=4, model_channels=32, cond_channels=32, out_channels=4, num_blocks=2,
            num_heads=2, patch_size=1, qk_rms_norm=True, use_checkpoint=True))
        c.vae_checkpoint = ""
        c.cond = ml_collections.ConfigDict(dict(kind="class", num_classes=2, tokens=1, p_uncond=0.1))
        c.flow = ml_collections.ConfigDict(dict(t_schedule="logitNormal", mean=1.0, std=1.0, sigma_min=1e-5))
        c.sampler = ml_collections.ConfigDict(dict(steps=4, cfg_strength=2.0, cfg_interval=(0.5, 1.0),
                                                   rescale_t=3.0))
    elif stage == "vecset_vae":
        c.model = ml_collections.ConfigDict(dict(
            hidden_dim=32, num_heads=2, num_dec_layers=2, dec_hidden_dim=32, dec_num_heads=2, query_hidden_dim=32,
            query_num_heads=2, point_fourier_dim=24, latent_dim=8, cutoff_fps_point=(16, 32),
            cutoff_fps_salient_point=(0, 16), cutoff_fps_prob=(0.5, 0.5), remat_policy="nothing_saveable"))
        c.progressive_cutoff = True
        c.sampler = ml_collections.ConfigDict(dict(grid_resolution=8))
    elif stage == "vecset_flow":
        c.model = ml_collections.ConfigDict(dict(
            hidden_dim=32, num_heads=2, latent_size=48, latent_dim=8, num_layers=2, qknorm=True,
            qknorm_type="RMSNorm", use_pos_embed=False, use_parts=False, gradient_checkpointing=False))
        c.vae_checkpoint = ""
        c.cond = ml_collections.ConfigDict(dict(kind="class", num_classes=2, tokens=1, p_uncond=0.1))
        c.flow = ml_collections.ConfigDict(dict(mean=1.0, std=1.0, shift=3.0))
        c.sampler = ml_collections.ConfigDict(dict(steps=4, cfg_strength=2.0, grid_resolution=8))
    else:
        raise ValueError(stage)
    return c
