"""pixel_shuffle_3d / patchify / unpatchify / space_to_depth: exhaustive index rules and torch-mirror equality."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshape.nn import patchify, pixel_shuffle_3d, space_to_depth_3d, unpatchify
from tests.torch_reference import trellis_ss as T


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_index_rule_exhaustive(r):
    b, c, n = 2, 3, 2
    x = np.arange(b * n**3 * c * r**3, dtype=np.float32).reshape(b, n, n, n, c * r**3)
    out = np.asarray(pixel_shuffle_3d(jnp.asarray(x), r))
    assert out.shape == (b, n * r, n * r, n * r, c)
    for bi, ci, x0, y0, z0, i, j, k in itertools.product(range(b), range(c), range(n), range(n), range(n),
                                                          range(r), range(r), range(r)):
        assert out[bi, r * x0 + i, r * y0 + j, r * z0 + k, ci] == x[bi, x0, y0, z0, ci * r**3 + i * r * r + j * r + k]


@pytest.mark.parametrize("p", [1, 2, 3])
def test_patchify_index_rule_and_inverse(p):
    b, c, n = 2, 2, 2
    x = np.arange(b * (n * p) ** 3 * c, dtype=np.float32).reshape(b, n * p, n * p, n * p, c)
    out = np.asarray(patchify(jnp.asarray(x), p))
    assert out.shape == (b, n, n, n, c * p**3)
    for bi, ci, x0, y0, z0, i, j, k in itertools.product(range(b), range(c), range(n), range(n), range(n),
                                                          range(p), range(p), range(p)):
        assert out[bi, x0, y0, z0, ci * p**3 + i * p * p + j * p + k] == x[bi, p * x0 + i, p * y0 + j, p * z0 + k, ci]
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(out), p)), x)
    np.testing.assert_array_equal(np.asarray(patchify(unpatchify(jnp.asarray(out), p), p)), out)


def test_space_to_depth_is_offset_major():
    r, c = 2, 3
    x = np.arange(1 * 4 * 4 * 4 * c, dtype=np.float32).reshape(1, 4, 4, 4, c)
    out = np.asarray(space_to_depth_3d(jnp.asarray(x), r))
    for x0, y0, z0, i, j, k, ci in itertools.product(range(2), range(2), range(2), range(r), range(r), range(r),
                                                      range(c)):
        assert out[0, x0, y0, z0, ((i * r + j) * r + k) * c + ci] == x[0, r * x0 + i, r * y0 + j, r * z0 + k, ci]


def test_rearrangement_errors_name_the_rule():
    with pytest.raises(ValueError, match="divisible by 2"):
        patchify(jnp.zeros((1, 3, 4, 4, 1)), 2)
    with pytest.raises(ValueError, match="scale_factor"):
        pixel_shuffle_3d(jnp.zeros((1, 2, 2, 2, 7)), 2)
    with pytest.raises(ValueError, match=r"\[B, X, Y, Z, C\]"):
        patchify(jnp.zeros((4, 4, 4, 1)), 2)


@pytest.mark.parametrize("r", [2, 3])
def test_equal_to_torch_mirror(r):
    rng = np.random.default_rng(r)
    x = rng.normal(size=(2, 4 * r**3, 3, 2, 4)).astype(np.float32)  # NCDHW
    ref = T.pixel_shuffle_3d(torch.from_numpy(x), r).numpy()
    out = np.asarray(pixel_shuffle_3d(jnp.asarray(np.moveaxis(x, 1, -1)), r))
    np.testing.assert_array_equal(np.moveaxis(out, -1, 1), ref)

    y = rng.normal(size=(2, 3, 2 * r, r, 3 * r)).astype(np.float32)
    ref = T.patchify(torch.from_numpy(y), r).numpy()
    out = np.asarray(patchify(jnp.asarray(np.moveaxis(y, 1, -1)), r))
    np.testing.assert_array_equal(np.moveaxis(out, -1, 1), ref)
    back = T.unpatchify(torch.from_numpy(ref), r).numpy()
    np.testing.assert_array_equal(np.moveaxis(np.asarray(unpatchify(jnp.asarray(out), r)), -1, 1), back)
