"""3-D convolution blocks (TRELLIS sparse-structure VAE), channels-last ``[B, X, Y, Z, C]``.

The stride-1 convolutions compute through :func:`jaxshape.kernels.conv3d.conv3d_same` (the formulation is picked
per backend, width, input size and dtype). The kernel-2 stride-2 downsample is space-to-depth followed by one matmul
(identical numbers; XLA:CPU's strided conv and especially its input gradient are slow), and upsampling is a 3³ conv
to 8·C followed by :func:`pixel_shuffle_3d` (never a transposed conv).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.kernels.conv3d import conv3d_same
from jaxshape.nn.axes import CONV_IN, CONV_K, CONV_OUT
from jaxshape.nn.initializers import partitioned, torch_default_bias_init, torch_default_kernel_init
from jaxshape.nn.linear import compute_dtype
from jaxshape.nn.norms import LayerNorm
from jaxshape.nn.spatial import pixel_shuffle_3d, space_to_depth_3d

CONV_AXES = (CONV_K, CONV_K, CONV_K, CONV_IN, CONV_OUT)


class Conv3d(nn.Module):
    """``nn.Conv3d(in, out, k, padding=k//2)`` (stride 1) in channels-last form; kernel [k, k, k, in, out].

    Init is PyTorch's default unless ``zero_init`` (TRELLIS ``zero_module``). Parameters ``kernel``, ``bias``.
    ``formulation`` picks how the sum is computed (``jaxshape.kernels.conv3d.conv3d_same``; same numbers up to fp32
    rounding).
    """

    features: int
    kernel_size: int = 3
    zero_init: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    formulation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        shape = (k, k, k, cin, self.features)
        if self.zero_init:
            kinit, binit = nn.initializers.zeros_init(), nn.initializers.zeros_init()
        else:
            kinit, binit = torch_default_kernel_init(), torch_default_bias_init(cin * k**3)
        kernel = self.param("kernel", partitioned(kinit, CONV_AXES), shape, self.param_dtype)
        bias = self.param("bias", partitioned(binit, (CONV_OUT,)), (self.features,), self.param_dtype)
        dtype = compute_dtype(self.dtype, x.dtype, self.param_dtype)
        y = conv3d_same(x.astype(dtype), kernel.astype(dtype), self.formulation)
        return y + bias.astype(dtype)


class SpaceToDepthConv3d(nn.Module):
    """``nn.Conv3d(in, out, r, stride=r)`` computed as space-to-depth + one matmul (exactly the same sum)."""

    features: int
    block: int = 2
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        r, cin = self.block, x.shape[-1]
        shape = (r, r, r, cin, self.features)
        kernel = self.param("kernel", partitioned(torch_default_kernel_init(), CONV_AXES), shape, self.param_dtype)
        bias = self.param("bias", partitioned(torch_default_bias_init(cin * r**3), (CONV_OUT,)),
                          (self.features,), self.param_dtype)
        dtype = compute_dtype(self.dtype, x.dtype, self.param_dtype)
        cols = space_to_depth_3d(x.astype(dtype), r)
        y = jnp.dot(cols, kernel.astype(dtype).reshape(r**3 * cin, self.features))
        return y + bias.astype(dtype)


class ResBlock3d(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; norms are channel LayerNorms (eps 1e-5, affine, fp32
    statistics) whatever the model's ``norm_type`` (as upstream); ``conv2`` is zero-initialised; a 1³
    ``skip_connection`` conv appears only when the width changes."""

    channels: int
    out_channels: Optional[int] = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cout = self.out_channels or self.channels
        if x.shape[-1] != self.channels:
            raise ValueError(f"ResBlock3d expects {self.channels} input channels, got shape {tuple(x.shape)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(1e-5, param_dtype=self.param_dtype, name="norm1")(x)
        h = Conv3d(cout, 3, name="conv1", **kw)(nn.silu(h))
        h = LayerNorm(1e-5, param_dtype=self.param_dtype, name="norm2")(h)
        h = Conv3d(cout, 3, zero_init=True, name="conv2", **kw)(nn.silu(h))
        skip = x if cout == self.channels else Conv3d(cout, 1, name="skip_connection", **kw)(x)
        return h + skip.astype(h.dtype)


class DownsampleBlock3d(nn.Module):
    """TRELLIS ``DownsampleBlock3d(mode="conv")``: kernel-2 stride-2 conv (torch key ``conv``), halves X, Y, Z."""

    in_channels: int
    out_channels: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"DownsampleBlock3d expects {self.in_channels} channels, got shape {tuple(x.shape)}")
        return SpaceToDepthConv3d(self.out_channels, 2, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="conv")(x)


class UpsampleBlock3d(nn.Module):
    """TRELLIS ``UpsampleBlock3d(mode="conv")``: 3³ conv to ``8·out`` channels then ``pixel_shuffle_3d(·, 2)``."""

    in_channels: int
    out_channels: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"UpsampleBlock3d expects {self.in_channels} channels, got shape {tuple(x.shape)}")
        h = Conv3d(self.out_channels * 8, 3, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        return pixel_shuffle_3d(h, 2)
