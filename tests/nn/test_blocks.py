"""The shared blocks' fast formulations give the plain formulation's numbers: token-broadcast products, norm
statistics on 2-D views, the space-to-depth downsample, the conv formulation field, unrolled layer stacks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxshape.kernels.conv3d import CONV_FORMULATIONS, conv3d_same
from jaxshape.models import VecSetDiT
from jaxshape.nn import LayerNorm, MultiHeadRMSNorm, RMSNorm, layer_unroll
from jaxshape.nn.conv3d import Conv3d, SpaceToDepthConv3d
from jaxshape.nn.norms import broadcast_multiply
from tests.utils import max_rel_err

pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# (x shape, w shape): weight [C], per-head gamma [H, D], per-sample modulation [B, 1, C], scalar, batch > 1
BROADCAST_CASES = [((1, 7, 5), (5,)), ((1, 6, 3, 4), (3, 4)), ((1, 9, 5), (1, 1, 5)), ((1, 4, 5), ()),
                   ((3, 7, 5), (3, 1, 5)), ((1, 2, 3, 5), (1, 1, 1, 5)), ((1, 4, 5), (1, 4, 5))]


@pytest.mark.parametrize("xs,ws", BROADCAST_CASES)
def test_broadcast_multiply_is_exactly_x_times_w_with_gradients(xs, ws):
    rng = np.random.default_rng(len(xs) + len(ws))
    x = jnp.asarray(rng.standard_normal(xs).astype(np.float32))
    w = jnp.asarray(rng.standard_normal(ws).astype(np.float32))
    g = jnp.asarray(rng.standard_normal(xs).astype(np.float32))
    out = broadcast_multiply(x, w)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, x * w)  # the same products, bit for bit
    fast = jax.grad(lambda x, w: jnp.sum(broadcast_multiply(x, w) * g), (0, 1))(x, w)
    plain = jax.grad(lambda x, w: jnp.sum(x * w * g), (0, 1))(x, w)
    for a, r in zip(fast, plain):
        assert a.shape == r.shape
        assert max_rel_err(a, r) <= 1e-6  # the weight gradient sums the same terms, possibly in another order


def test_norms_give_the_same_numbers_for_batch_one_and_batch_two():
    """The norms compute statistics on a [rows, C] view; a sample's result must not depend on its batch mates."""
    rng = np.random.default_rng(5)
    x2 = jnp.asarray(rng.standard_normal((2, 6, 3, 8)).astype(np.float32) * 3 + 1)
    for mod in (LayerNorm(1e-6), LayerNorm(1e-5, elementwise_affine=False), MultiHeadRMSNorm(), RMSNorm()):
        v = mod.init(jax.random.key(0), x2)
        v = jax.tree.map(lambda a: a + jnp.asarray(rng.standard_normal(a.shape).astype(np.float32)), v)
        both = mod.apply(v, x2)
        assert both.shape == x2.shape
        for i in range(2):
            np.testing.assert_allclose(mod.apply(v, x2[i:i + 1]), both[i:i + 1], rtol=0, atol=1e-6)


def test_space_to_depth_conv_equals_strided_conv():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 6, 4, 5)).astype(np.float32))
    m = SpaceToDepthConv3d(7, 2)
    v = nn.meta.unbox(m.init(jax.random.key(0), x))
    kern, bias = v["params"]["kernel"], v["params"]["bias"]

    def conv(x, kern):
        return lax.conv_general_dilated(x, kern, (2, 2, 2), "VALID",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + bias

    assert max_rel_err(m.apply(v, x), conv(x, kern)) <= 1e-6
    w = jnp.asarray(rng.standard_normal((2, 4, 3, 2, 7)).astype(np.float32))
    gm = jax.grad(lambda x, k: jnp.sum(m.apply({"params": {"kernel": k, "bias": bias}}, x) * w), (0, 1))(x, kern)
    gc = jax.grad(lambda x, k: jnp.sum(conv(x, k) * w), (0, 1))(x, kern)
    for a, r in zip(gm, gc):
        assert max_rel_err(a, r) <= 1e-6


def test_conv3d_module_formulation_field_keeps_params_and_numbers():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 4, 4, 6)).astype(np.float32))
    v = nn.meta.unbox(Conv3d(5, 3).init(jax.random.key(0), x))
    assert jax.tree.map(jnp.shape, v) == {"params": {"kernel": (3, 3, 3, 6, 5), "bias": (5,)}}
    ref = Conv3d(5, 3, formulation="lax").apply(v, x)
    for f in CONV_FORMULATIONS:
        assert max_rel_err(Conv3d(5, 3, formulation=f).apply(v, x), ref) <= 2e-6
    with pytest.raises(ValueError, match="unknown conv formulation"):
        conv3d_same(x, v["params"]["kernel"], "fft")
@pytest.mark.slow
def test_unrolled_layer_stack_equals_scanned_stack():
    """``scan_unroll`` changes the program, not the model: the same parameter tree, outputs and gradients."""
    kw = dict(hidden_dim=32, num_heads=2, latent_size=16, latent_dim=8, num_layers=3, qknorm=True,
              qknorm_type="RMSNorm")
    rng = np.random.default_rng(7)
    x, c = (jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in [(2, 16, 8), (2, 5, 32)])
    t = jnp.asarray([10.0, 700.0])
    looped, unrolled = VecSetDiT(scan_unroll=False, **kw), VecSetDiT(scan_unroll=True, **kw)
    v = looped.init(jax.random.key(0), x, c, t)
    v = jax.tree.map(lambda a: a + 0.05 * jnp.asarray(rng.standard_normal(a.shape).astype(np.float32)), v)
    assert jax.tree.structure(unrolled.init(jax.random.key(0), x, c, t)) == jax.tree.structure(v)
    out_l, out_u = looped.apply(v, x, c, t), unrolled.apply(v, x, c, t)
    assert max_rel_err(out_u, out_l) <= 1e-6
    loss = lambda m: lambda v: jnp.sum(m.apply(v, x, c, t) ** 2)  # noqa: E731
    for a, b in zip(jax.tree.leaves(jax.grad(loss(unrolled))(v)), jax.tree.leaves(jax.grad(loss(looped))(v))):
        assert max_rel_err(a, b) <= 1e-5
    # automatic choice: unrolled on CPU for shallow stacks without remat only
    on_cpu = jax.default_backend() == "cpu"
    assert layer_unroll(None, 3, remat=False) == on_cpu
    assert not layer_unroll(None, 3, remat=True) and not layer_unroll(None, 24, remat=False)
    assert layer_unroll(True, 24, remat=True) and not layer_unroll(False, 2, remat=False)
