"""Rectified flow: time/σ schedules, noising and targets, losses, Euler samplers with CFG (both families)."""
from jaxshape.flow.objectives import (
    binary_metrics,
    cfg_dropout,
    dice_loss,
    gaussian_kl,
    mse,
    ss_vae_loss,
    vecset_vae_loss,
)
from jaxshape.flow.samplers import (
    euler_sample,
    partpacker_sigmas,
    trellis_timesteps,
)
from jaxshape.flow.schedules import (
    partpacker_noising,
    partpacker_sigma_table,
    sample_sigma_partpacker,
    sample_t_trellis,
    trellis_noising,
)

__all__ = [
    "binary_metrics", "cfg_dropout", "dice_loss", "euler_sample", "gaussian_kl", "mse", "partpacker_noising",
    "partpacker_sigma_table", "partpacker_sigmas", "sample_sigma_partpacker", "sample_t_trellis", "ss_vae_loss",
    "trellis_noising", "trellis_timesteps", "vecset_vae_loss",
]
