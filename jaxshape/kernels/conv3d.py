"""Stride-1 "same" 3-D convolution, channels-last, in the formulations XLA compiles well, and the rule that picks one.

Every formulation computes the sum of ``torch.nn.Conv3d(k, padding=k // 2)``; fp32 rounding differs only in the
order of additions. They exist because XLA:CPU's own 3-D convolution (and above all its weight and input gradients) is
its slowest path, while its matmuls and its 2-D convolutions (YNNPACK) run far faster: each formulation below has a
backward pass of matmuls or 2-D convolutions. On GPU and TPU the rule picks ``lax.conv`` (cuDNN / the TPU's native
convolution).

``experiments/ab_optimisations.py`` and ``experiments/bench_models.py`` measure the formulations per conv and per
model; ``docs/performance.md`` ("conv3d formulation rule") has the table behind :func:`auto_formulation`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_FORMULATIONS = ("auto", "lax", "conv2d", "im2col", "im2col_yz", "im2col_z", "shift", "output_shift", "winograd")

# Winograd F(2, 3) (Lavin & Gray 2016), 1-D: y = A^T [(G g) * (B^T d)] for a 4-tap input tile d, 3-tap filter g and
# 2 outputs y_i = sum_k d[i + k] g[k] (cross-correlation, as torch's conv). 3-D = the same transform on each axis.
WINOGRAD_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
WINOGRAD_G3 = np.einsum("ai,bj,ck->abcijk", WINOGRAD_G, WINOGRAD_G, WINOGRAD_G).reshape(64, 27)  # G⊗G⊗G
# The rule's thresholds (auto_formulation; measured: experiments/results/bench_conv_formulations.md): Winograd on
# WINOGRAD_MIN_TILES..WINOGRAD_MAX_TILES 2³ output tiles (8³..16³ at batch 1) when both widths reach
# WINOGRAD_MIN_CHANNELS; one im2col matmul below WINOGRAD_MIN_TILES when both reach IM2COL_MIN_CHANNELS (in
# bf16/fp16, which has no Winograd, below WINOGRAD_MAX_TILES).
WINOGRAD_MIN_TILES = 64
WINOGRAD_MAX_TILES = 512
WINOGRAD_MIN_CHANNELS = 64
IM2COL_MIN_CHANNELS = 256

_DIRECT_ONLY = contextvars.ContextVar("jaxshape_conv3d_direct_only", default=False)


@contextlib.contextmanager
def direct_formulations():
    """Within this context ``"auto"`` resolves every 3³ conv to a direct formulation (never Winograd), so a traced
    program performs the conventional model FLOPs (``jaxshape.flops.count_flops`` traces under it)."""
    token = _DIRECT_ONLY.set(True)
    try:
        yield
    finally:
        _DIRECT_ONLY.reset(token)


def winograd_tiles(shape: Sequence[int]) -> int:
    """Number of 2³ output tiles of a ``[B, X, Y, Z, C]`` input: ``B·⌈X/2⌉·⌈Y/2⌉·⌈Z/2⌉``."""
    b, sx, sy, sz = shape[:4]
    return b * ((sx + 1) // 2) * ((sy + 1) // 2) * ((sz + 1) // 2)


def auto_formulation(cin: int, cout: int, k: int, tiles: Optional[int] = None, dtype: Any = jnp.float32,
                     backend: str = "cpu") -> str:
    """The formulation :func:`conv3d_same` uses by default.

    Args:
      cin, cout, k: input channels, output channels and kernel size.
      tiles: :func:`winograd_tiles` of the input (``None``: large).
      dtype: the compute dtype.
      backend: ``jax.default_backend()``.

    Returns:
      On GPU and TPU ``"lax"``. On CPU: a 1³ kernel is a matmul (``"im2col"``); an output ≥ 8× narrower than the
      input is one matmul to ``k³·out`` then shifted adds (``"output_shift"``). A 3³ kernel is ``"conv2d"`` (three
      2-D convolutions that XLA:CPU runs in YNNPACK: 2-4× faster than Winograd at 16-32 channels on 32³-64³ grids),
      except where the channels are wide for the grid: with ``min(in, out) ≥`` :data:`WINOGRAD_MIN_CHANNELS` on
      :data:`WINOGRAD_MIN_TILES` to :data:`WINOGRAD_MAX_TILES` 2³ tiles (8³-16³), Winograd F(2, 3) in fp32 (3.4×
      fewer multiplies, its matmuls wide enough to hide the transforms); with ``min(in, out) ≥``
      :data:`IM2COL_MIN_CHANNELS` on fewer tiles (4³), one im2col matmul. Winograd only in fp32: its transforms add
      up to 4 terms per axis, which in bf16/fp16 round far beyond the direct sum; half precision takes im2col below
      :data:`WINOGRAD_MAX_TILES` tiles at ``min(in, out) ≥`` :data:`IM2COL_MIN_CHANNELS`, else ``"conv2d"``.
      Other kernel sizes: one im2col matmul for ≤ 320 columns, else im2col over the
      kernel's z axis (3 shifted copies, k² matmuls with K = k·in). The table behind the rule:
      ``experiments/results/bench_conv_formulations*.md``.
    """
    if backend != "cpu":
        return "lax"
    if k == 1:
        return "im2col"
    if cin >= 8 * cout:
        return "output_shift"
    if k == 3:
        c = min(cin, cout)
        if jnp.dtype(dtype) != jnp.float32:
            return "im2col" if tiles is not None and tiles < WINOGRAD_MAX_TILES and c >= IM2COL_MIN_CHANNELS \
                else "conv2d"
        if tiles is not None and tiles < WINOGRAD_MIN_TILES and c >= IM2COL_MIN_CHANNELS:
            return "im2col"
        if tiles is not None and WINOGRAD_MIN_TILES <= tiles <= WINOGRAD_MAX_TILES and c >= WINOGRAD_MIN_CHANNELS \
                and not _DIRECT_ONLY.get():
            return "winograd"
        return "conv2d"
    if cin * k**3 <= 320:
        return "im2col"
    return "im2col_z"


def _shift(x: jax.Array, offset: tuple) -> jax.Array:
    """``y[v] = x[v + offset]`` over the 3 spatial axes of ``[B, X, Y, Z, C]``, zero outside (one ``lax.pad``
    with negative/positive edges, whose gradient is again a single pad)."""
    cfg = [(0, 0, 0)] + [(-d, d, 0) for d in offset] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _winograd_input_1d(x: jax.Array, axis: int, tiles: int) -> list:
    """``B^T d`` along ``axis`` for every tile (stride 2, 4 taps) of the padded ``x``: 4 arrays of ``tiles``."""
    d = [lax.slice_in_dim(x, j, j + 2 * tiles - 1, 2, axis) for j in range(4)]
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _winograd_output_1d(m: jax.Array, axis: int) -> jax.Array:
    """``A^T m`` along the size-4 ``axis`` (replaced by the tile's 2 outputs)."""
    m0, m1, m2, m3 = (lax.index_in_dim(m, j, axis, keepdims=False) for j in range(4))
    return jnp.stack([m0 + m1 + m2, m1 - m2 - m3], axis)


def winograd_conv3d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3³ "same" convolution as Winograd F(2×2×2, 3×3×3).

    Per 2³ output tile, the 4³ input tile and the kernel are transformed (additions only for the input;
    ``U = (G⊗G⊗G) · kernel`` as one matmul), the 64 transformed positions become 64 independent
    ``[tiles, in] @ [in, out]`` matmuls (8 rows per 2³ outputs instead of 27: 3.375× fewer multiply-adds), and the
    output transform is additions again. Odd spatial sizes are padded to even and cropped. Numbers differ from the
    direct sum by fp32 rounding only.

    Args:
      x: ``[B, X, Y, Z, in]``.
      kernel: ``[3, 3, 3, in, out]``.

    Returns:
      ``[B, X, Y, Z, out]``.
    """
    b, sx, sy, sz, cin = x.shape
    cout = kernel.shape[-1]
    n = [(s + 1) // 2 for s in (sx, sy, sz)]
    xp = jnp.pad(x, ((0, 0),) + tuple((1, 1 + s % 2) for s in (sx, sy, sz)) + ((0, 0),))
    v = []
    for a in _winograd_input_1d(xp, 1, n[0]):
        for c in _winograd_input_1d(a, 2, n[1]):
            v.extend(_winograd_input_1d(c, 3, n[2]))
    tiles = b * n[0] * n[1] * n[2]
    v = jnp.stack(v, 0).reshape(64, tiles, cin)
    u = jnp.dot(jnp.asarray(WINOGRAD_G3, kernel.dtype), kernel.reshape(27, cin * cout),
                precision=lax.Precision.HIGHEST).reshape(64, cin, cout)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # [64, tiles, out]
    m = m.reshape(4, 4, 4, b, n[0], n[1], n[2], cout)
    y = _winograd_output_1d(_winograd_output_1d(_winograd_output_1d(m, 0), 1), 2)  # [2, 2, 2, b, nx, ny, nz, out]
    y = y.transpose(3, 4, 0, 5, 1, 6, 2, 7).reshape(b, 2 * n[0], 2 * n[1], 2 * n[2], cout)
    return y[:, :sx, :sy, :sz]


def conv3d_same(x: jax.Array, kernel: jax.Array, formulation: str = "auto") -> jax.Array:
    """Stride-1 3-D convolution with zero padding ``k // 2`` (torch ``Conv3d(k, padding=k//2)``), channels-last.

    Args:
      x: ``[B, X, Y, Z, in]``.
      kernel: ``[k, k, k, in, out]``.
      formulation: how the sum is computed (all give the same numbers up to fp32 rounding):

        * ``"lax"``: ``lax.conv_general_dilated``;
        * ``"conv2d"``: ``k`` 2-D convolutions over (y, z), one per kernel offset along x, with the x slices of the
          input as their batch (XLA:CPU hands channels-last 2-D convolutions and their gradients to YNNPACK, its
          3-D convolution to a slower generic path);
        * ``"im2col"``: all ``k³`` shifted copies concatenated on channels, one matmul with K = ``k³·in``;
        * ``"im2col_yz"`` / ``"im2col_z"``: partial im2col over (y, z) or z only, then ``k`` or ``k²`` shifted
          matmuls;
        * ``"shift"``: ``k³`` shifted matmuls with K = ``in`` (no copy of the input beyond the slices);
        * ``"output_shift"``: one matmul ``x @ kernel -> [.., k³·out]`` then ``k³`` shifted adds (small ``out``);
        * ``"winograd"``: :func:`winograd_conv3d` (3³ kernels only);
        * ``"auto"``: :func:`auto_formulation`.

    Returns:
      ``[B, X, Y, Z, out]``.
    """
    k, cin, cout = kernel.shape[0], kernel.shape[3], kernel.shape[4]
    if formulation == "auto":
        formulation = auto_formulation(cin, cout, k, winograd_tiles(x.shape), x.dtype, jax.default_backend())
    if formulation not in CONV_FORMULATIONS:
        raise ValueError(f"unknown conv formulation {formulation!r}; expected one of {CONV_FORMULATIONS}")
    if k == 1:
        return jnp.dot(x, kernel.reshape(cin, cout))
    if formulation == "winograd":
        if kernel.shape[:3] != (3, 3, 3):
            raise ValueError(f"the winograd conv formulation needs a 3x3x3 kernel, got kernel shape "
                             f"{tuple(kernel.shape)}")
        return winograd_conv3d(x, kernel)
    p = k // 2
    if formulation == "lax":
        return lax.conv_general_dilated(x, kernel, window_strides=(1, 1, 1), padding=((p, p),) * 3,
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    if formulation == "conv2d":
        b, sx = x.shape[:2]
        xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
        out = None
        for i in range(k):
            t = lax.conv_general_dilated(xp[:, i:i + sx].reshape(b * sx, *x.shape[2:]), kernel[i],
                                         window_strides=(1, 1), padding=((p, p),) * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            out = t if out is None else out + t
        return out.reshape(b, sx, *out.shape[1:])
    if formulation == "output_shift":
        # y[v] = sum_d x[v + d - p] W[d]: one matmul to all k³ taps, then shift each tap's slice into place
        z = jnp.dot(x, kernel.transpose(3, 0, 1, 2, 4).reshape(cin, k**3 * cout))
        out = None
        for o, zo in enumerate(jnp.split(z, k**3, axis=-1)):
            t = _shift(zo, (o // (k * k) - p, (o // k) % k - p, o % k - p))
            out = t if out is None else out + t
        return out
    ncol = {"shift": 0, "im2col_z": 1, "im2col_yz": 2, "im2col": 3}[formulation]
    # shifted copies over the last `ncol` kernel axes, concatenated on channels (offset-major then channel: the
    # order of kernel[..., in, out] flattened); then one matmul per offset of the leading kernel axes
    lead = 3 - ncol
    w = jnp.split(kernel.reshape(k**lead, k**ncol * cin, cout), k**lead, axis=0)
    out = None
    for o in range(k**lead):
        lead_off = [o // k ** (lead - 1 - a) % k - p for a in range(lead)]
        pieces = []
        for c in range(k**ncol):
            col_off = [c // k ** (ncol - 1 - a) % k - p for a in range(ncol)]
            pieces.append(_shift(x, tuple(lead_off + col_off)))
        cols = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)
        t = jnp.dot(cols, w[o][0])
        out = t if out is None else out + t
    return out
