"""Rectified flow: time/σ schedules, noising and targets, the velocity loss, Euler samplers with CFG (both families)."""
from jaxshape.flow.objectives import cfg_dropout, mse
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
    "cfg_dropout", "euler_sample", "mse", "partpacker_noising", "partpacker_sigma_table", "partpacker_sigmas",
    "sample_sigma_partpacker", "sample_t_trellis", "trellis_noising", "trellis_timesteps",
]
