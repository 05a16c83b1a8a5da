"""Dense layer with explicit init families and logical axis names."""
from __future__ import annotations

from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn.axes import EMBED, MLP
from jaxshape.nn.initializers import partitioned, torch_default_bias_init, torch_default_kernel_init

InitName = Literal["torch", "xavier", "zeros", "normal0.02"]


def kernel_initializer(name: str):
    if name == "torch":
        return torch_default_kernel_init()
    if name == "xavier":
        return nn.initializers.xavier_uniform()
    if name == "zeros":
        return nn.initializers.zeros_init()
    if name == "normal0.02":
        return nn.initializers.normal(0.02)
    raise ValueError(f"unknown init {name!r}; expected one of torch, xavier, zeros, normal0.02")


def torso_dtype(dtype: Any, use_fp16: bool) -> Any:
    """The compute dtype of an upstream model's torso: an explicit ``dtype`` wins, else upstream's ``use_fp16``
    switch (fp16 when set, fp32 otherwise)."""
    if dtype is not None:
        return dtype
    return jnp.float16 if use_fp16 else jnp.float32


def compute_dtype(dtype: Any, *arrays_or_dtypes: Any) -> Any:
    """The explicit compute dtype if given, else the promotion of the inputs (linen's ``dtype=None`` rule)."""
    if dtype is not None:
        return dtype
    return jnp.result_type(*arrays_or_dtypes)


class Dense(nn.Module):
    """``y = x W + b`` (torch ``nn.Linear`` with ``weight = W.T``).

    ``init_scheme`` (not ``init``, which would shadow ``Module.init``) picks the upstream family's initialisation:
    ``"torch"`` (PyTorch default, kaiming-uniform weight and uniform bias), ``"xavier"`` (xavier-uniform weight, zero
    bias), ``"zeros"`` or ``"normal0.02"`` (zero bias).
    ``axes`` are the logical names of the kernel's (in, out) axes for sharding. Matmul precision follows
    ``jax.default_matmul_precision``.
    """

    features: int
    use_bias: bool = True
    init_scheme: str = "torch"
    axes: Sequence[str | None] | None = (EMBED, MLP)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel", partitioned(kernel_initializer(self.init_scheme), self.axes), (fan_in, self.features),
            self.param_dtype)
        dtype = compute_dtype(self.dtype, x.dtype, self.param_dtype)
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias_init = torch_default_bias_init(fan_in) if self.init_scheme == "torch" else nn.initializers.zeros_init()
            bias_axes = None if self.axes is None else (self.axes[-1],)
            bias = self.param("bias", partitioned(bias_init, bias_axes), (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y
