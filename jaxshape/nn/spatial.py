"""Channels-last 3-D rearrangements: TRELLIS's pixel shuffle / patchify, and space-to-depth.

All tensors are ``[B, X, Y, Z, C]``. TRELLIS's rule is channel-major: channel ``c·r³ + i·r² + j·r + k`` of the
coarse voxel (x, y, z) is channel ``c`` of the fine voxel ``(r x + i, r y + j, r z + k)``. It is not TensorFlow's
depth_to_space (offset-major); :func:`space_to_depth_3d` is offset-major and exists for the conv-as-matmul path.
"""
from __future__ import annotations

import jax


def _check(x: jax.Array, r: int, name: str, spatial_divisible: bool) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name}: expected a channels-last grid [B, X, Y, Z, C], got shape {tuple(x.shape)}")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{name}: factor must be a positive int, got {r!r}")
    if spatial_divisible and any(s % r for s in x.shape[1:4]):
        raise ValueError(f"{name}: spatial dims {tuple(x.shape[1:4])} must be divisible by {r}")


def pixel_shuffle_3d(x: jax.Array, scale_factor: int) -> jax.Array:
    """``[B, X, Y, Z, C·r³] -> [B, rX, rY, rZ, C]`` with TRELLIS's channel-major rule."""
    _check(x, scale_factor, "pixel_shuffle_3d", False)
    r = scale_factor
    b, nx, ny, nz, c = x.shape
    if c % r**3:
        raise ValueError(f"pixel_shuffle_3d: channels {c} must be divisible by scale_factor³ = {r**3}")
    co = c // r**3
    x = x.reshape(b, nx, ny, nz, co, r, r, r)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, nx * r, ny * r, nz * r, co)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """``[B, X, Y, Z, C] -> [B, X/p, Y/p, Z/p, C·p³]``, channel ``c·p³ + i·p² + j·p + k`` (TRELLIS)."""
    _check(x, patch_size, "patchify", True)
    p = patch_size
    if p == 1:
        return x
    b, nx, ny, nz, c = x.shape
    x = x.reshape(b, nx // p, p, ny // p, p, nz // p, p, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, nx // p, ny // p, nz // p, c * p**3)


def unpatchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Exact inverse of :func:`patchify` (the same rule as :func:`pixel_shuffle_3d`)."""
    if patch_size == 1:
        _check(x, 1, "unpatchify", False)
        return x
    return pixel_shuffle_3d(x, patch_size)


def space_to_depth_3d(x: jax.Array, block: int) -> jax.Array:
    """``[B, X, Y, Z, C] -> [B, X/r, Y/r, Z/r, r³·C]``, offset-major: channel ``((i·r + j)·r + k)·C + c``.

    This order matches a flattened conv kernel ``[r, r, r, C_in, C_out] -> [r³·C_in, C_out]``, so a
    kernel-r stride-r conv is ``space_to_depth_3d(x, r) @ kernel.reshape(-1, C_out)``.
    """
    _check(x, block, "space_to_depth_3d", True)
    r = block
    b, nx, ny, nz, c = x.shape
    x = x.reshape(b, nx // r, r, ny // r, r, nz // r, r, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, nx // r, ny // r, nz // r, r**3 * c)
