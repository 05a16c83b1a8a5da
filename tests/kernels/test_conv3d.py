"""The conv3d formulations equal ``lax.conv`` to fp32 rounding, forward and gradients; the automatic rule; FLOP
counting as direct convs. (No timing here; see experiments/bench_models.py and experiments/ab_optimisations.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxshape.flops import count_flops
from jaxshape.kernels import conv3d as C
from tests.utils import max_rel_err

pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# (in, out, kernel): every formulation, incl. the ones `auto` picks for tiny in (im2col), out << in (output_shift)
CONV_CASES = [(3, 5, 3), (16, 2, 3), (6, 6, 3), (4, 7, 1), (2, 3, 5)]


@pytest.mark.parametrize("cin,cout,k,formulation", [
    (cin, cout, k, f) for cin, cout, k in CONV_CASES for f in C.CONV_FORMULATIONS
    if f != "lax" and not (f == "winograd" and k != 3)])  # Winograd F(2, 3) is 3³ only (its error: tested below)
def test_conv_formulations_equal_lax_conv_forward_and_gradients(cin, cout, k, formulation):
    rng = np.random.default_rng(cin * 10 + cout)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 4, cin)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, k, cin, cout)).astype(np.float32))
    g = jnp.asarray(rng.standard_normal((2, 5, 6, 4, cout)).astype(np.float32))

    def lax_conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1, 1), ((k // 2, k // 2),) * 3,
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

    out = C.conv3d_same(x, w, formulation)
    assert max_rel_err(out, lax_conv(x, w)) <= 2e-6
    ga = jax.grad(lambda x, w: jnp.sum(C.conv3d_same(x, w, formulation) * g), (0, 1))(x, w)
    gr = jax.grad(lambda x, w: jnp.sum(lax_conv(x, w) * g), (0, 1))(x, w)
    for a, r in zip(ga, gr):
        assert max_rel_err(a, r) <= 2e-6


def test_auto_formulation_choices():
    big, small = C.winograd_tiles((1, 32, 32, 32)), C.winograd_tiles((1, 8, 8, 8))
    assert (big, small, C.winograd_tiles((2, 5, 6, 3))) == (4096, 64, 36)
    assert C.auto_formulation(512, 16, 3, big) == "output_shift"
    assert C.auto_formulation(32, 1, 3, small) == "output_shift"
    tiny, g16 = C.winograd_tiles((1, 4, 4, 4)), C.winograd_tiles((1, 16, 16, 16))
    g64 = C.winograd_tiles((1, 64, 64, 64))
    for cin, cout in [(1, 32), (8, 8), (16, 16), (32, 32), (16, 32)]:  # narrow: 2-D convolutions at every size
        for t in (None, g64, big, g16, small, tiny):
            assert C.auto_formulation(cin, cout, 3, t) == "conv2d"
    for cin, cout in [(64, 64), (128, 256), (512, 512)]:  # wide on 8³-16³: Winograd; on 4³ im2col from 256
        assert C.auto_formulation(cin, cout, 3, g16) == C.auto_formulation(cin, cout, 3, small) == "winograd"
        assert C.auto_formulation(cin, cout, 3, g64) == C.auto_formulation(cin, cout, 3) == "conv2d"
        assert C.auto_formulation(cin, cout, 3, tiny) == ("im2col" if min(cin, cout) >= 256 else "conv2d")
        with C.direct_formulations():
            assert C.auto_formulation(cin, cout, 3, g16) == "conv2d"
    assert C.auto_formulation(2, 8, 5, big) == "im2col"
    assert C.auto_formulation(128, 128, 5, big) == "im2col_z"
    assert C.auto_formulation(128, 128, 5, small) == "im2col_z"
    assert C.auto_formulation(64, 64, 1, big) == "im2col"
    # half precision: no Winograd (its transforms would round in bf16); accelerators: the native conv
    assert C.auto_formulation(32, 32, 3, big, jnp.bfloat16) == "conv2d"
    assert C.auto_formulation(8, 16, 3, big, jnp.float16) == "conv2d"
    assert C.auto_formulation(256, 256, 3, small, jnp.bfloat16) == "im2col"
    assert C.auto_formulation(64, 64, 3, small, jnp.bfloat16) == "conv2d"
    for backend in ("gpu", "tpu"):
        assert C.auto_formulation(32, 32, 3, big, backend=backend) == "lax"


@pytest.mark.parametrize("shape", [pytest.param((1, 8, 8, 8), marks=pytest.mark.slow), (2, 3, 5, 2), (1, 1, 1, 1)])
def test_winograd_conv_equals_lax_conv_at_even_odd_and_unit_sizes(shape):
    """Winograd F(2, 3) at released-like widths (rounding grows with the 27·in-term sums) and at odd sizes, which
    it pads to even and crops."""
    rng = np.random.default_rng(sum(shape))
    cin, cout = 64, 96
    x = jnp.asarray(rng.standard_normal(shape + (cin,)).astype(np.float32))
    w = jnp.asarray((rng.standard_normal((3, 3, 3, cin, cout)) / np.sqrt(27 * cin)).astype(np.float32))
    g = jnp.asarray(rng.standard_normal(shape + (cout,)).astype(np.float32))

    def conv(x, w, f):
        return C.conv3d_same(x, w, f)

    assert max_rel_err(conv(x, w, "winograd"), conv(x, w, "lax")) <= 2e-6
    ga = jax.grad(lambda x, w: jnp.sum(conv(x, w, "winograd") * g), (0, 1))(x, w)
    gr = jax.grad(lambda x, w: jnp.sum(conv(x, w, "lax") * g), (0, 1))(x, w)
    for a, r in zip(ga, gr):
        assert max_rel_err(a, r) <= 2e-6
    with pytest.raises(ValueError, match="3x3x3 kernel"):
        C.conv3d_same(x, jnp.zeros((5, 5, 5, cin, cout)), "winograd")


def test_flop_count_is_the_direct_convs_whatever_the_formulation():
    """count_flops reports conventional model FLOPs (2·voxels·27·in·out per 3³ conv) even where the conv runs as
    Winograd (3.4× fewer multiplies), and leaves the automatic rule as it found it."""
    for shape, cin, cout in [((1, 16, 16, 16), 32, 32), ((1, 8, 8, 8), 512, 512), ((2, 4, 4, 4), 8, 8)]:
        x = jax.ShapeDtypeStruct(shape + (cin,), jnp.float32)
        w = jax.ShapeDtypeStruct((3, 3, 3, cin, cout), jnp.float32)
        voxels = int(np.prod(shape))
        assert count_flops(C.conv3d_same, x, w) == 2 * voxels * 27 * cin * cout
    assert C.auto_formulation(512, 512, 3, 64) == "winograd"
