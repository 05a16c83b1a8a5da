"""Initialisers that reproduce PyTorch's defaults, and logical-axis wrapping.

Flax kernels are laid out ``[..., in, out]`` (Dense ``[in, out]``, Conv ``[kx, ky, kz, in, out]``), so fan-in is
the product of every axis but the last.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _fan_in(shape: Sequence[int]) -> int:
    return int(math.prod(shape[:-1]))


def torch_default_kernel_init() -> Initializer:
    """``nn.Linear`` / ``nn.Conv3d`` default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in of the matching weight."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def partitioned(init: Initializer, axes: Sequence[str | None] | None) -> Initializer:
    """Attach linen logical axis names (used by the trainer's sharding rules) to an initialiser."""
    if axes is None:
        return init
    return nn.with_logical_partitioning(init, tuple(axes))
