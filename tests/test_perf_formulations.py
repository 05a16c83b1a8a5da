"""Exactness of the performance formulations: each fast path equals the plain formulation to fp32 rounding,
forward and gradients. (No timing here; see experiments/bench_models.py.)"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxshape.nn import attention as A
from jaxshape.nn import conv3d as C
from jaxshape.nn.conv3d import SpaceToDepthConv3d


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# (B, Lq, Lk, H, D, query chunk): chunk dividing Lq, not dividing (padding), larger than Lq
FLASH_CASES = [(2, 64, 64, 2, 16, 16), (2, 37, 23, 3, 8, 8), (1, 100, 7, 2, 4, 33), (1, 5, 2, 1, 8, 256)]


@pytest.mark.parametrize("b,lq,lk,h,d,chunk", FLASH_CASES)
def test_flash_attention_matches_reference_forward_and_gradients(b, lq, lk, h, d, chunk):
    rng = np.random.default_rng(lq + lk)
    q, k, v, w = (jnp.asarray(rng.standard_normal(s).astype(np.float32) * 2)
                  for s in [(b, lq, h, d), (b, lk, h, d), (b, lk, h, d), (b, lq, h, d)])
    scale = 1.0 / np.sqrt(d)
    out = A.flash_attention(q, k, v, query_chunk_size=chunk)
    ref = A._reference_attention(q, k, v, scale)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 2e-6
    assert _rel(out, jax.nn.dot_product_attention(q, k, v)) <= 2e-6

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    g = jax.grad(loss(lambda q, k, v: A.flash_attention(q, k, v, query_chunk_size=chunk)), (0, 1, 2))(q, k, v)
    gr = jax.grad(loss(lambda q, k, v: A._reference_attention(q, k, v, scale)), (0, 1, 2))(q, k, v)
    for a, r in zip(g, gr):  # fp32 rounding; a 2-key softmax gradient has some cancellation
        assert _rel(a, r) <= 3e-5


def test_flash_attention_jits_and_bf16_close():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 40, 2, 16)).astype(np.float32)) for _ in range(3))
    ref = A._reference_attention(q, k, v, 0.25)
    out = jax.jit(lambda q, k, v: A.flash_attention(q, k, v, query_chunk_size=16))(q, k, v)
    assert _rel(out, ref) <= 2e-6
    bf = A.flash_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                           query_chunk_size=16)
    assert bf.dtype == jnp.bfloat16
    assert _rel(bf.astype(jnp.float32), ref) <= 3e-2
    # bf16 backward (fp32 accumulation inside): gradients within bf16 rounding of the fp32 reference
    w = jnp.asarray(rng.standard_normal((1, 40, 2, 16)).astype(np.float32))
    grad = lambda f, *a: jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w), (0, 1, 2))(*a)  # noqa
    g_bf = grad(lambda q, k, v: A.flash_attention(q, k, v, query_chunk_size=16),
                *(x.astype(jnp.bfloat16) for x in (q, k, v)))
    g_ref = grad(lambda q, k, v: A._reference_attention(q, k, v, 0.25), q, k, v)
    for a, r in zip(g_bf, g_ref):
        assert a.dtype == jnp.bfloat16
        assert _rel(a.astype(jnp.float32), r) <= 2e-2  # measured 0.4-0.9%


def test_dispatch_uses_flash_on_cpu_only_above_threshold(monkeypatch):
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 32, 2, 8)).astype(np.float32)) for _ in range(3))
    calls = []
    real = A.flash_attention
    monkeypatch.setattr(A, "flash_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    small = A.dot_product_attention(q, k, v)
    assert calls == []  # 2·32·32 logits: XLA path
    monkeypatch.setattr(A, "FLASH_MIN_LOGITS", 16)
    big = A.dot_product_attention(q, k, v)
    assert calls == ([1] if jax.default_backend() == "cpu" else [])
    assert _rel(big, small) <= 2e-6
    assert _rel(A.dot_product_attention(q, k, v, implementation="flash", query_chunk_size=8), small) <= 2e-6


# (x shape, w shape): weight [C], per-head gamma [H, D], per-sample modulation [B, 1, C], scalar, batch > 1
BROADCAST_CASES = [((1, 7, 5), (5,)), ((1, 6, 3, 4), (3, 4)), ((1, 9, 5), (1, 1, 5)), ((1, 4, 5), ()),
                   ((3, 7, 5), (3, 1, 5)), ((1, 2, 3, 5), (1, 1, 1, 5)), ((1, 4, 5), (1, 4, 5))]


@pytest.mark.parametrize("xs,ws", BROADCAST_CASES)
def test_broadcast_multiply_is_exactly_x_times_w_with_gradients(xs, ws):
    from jaxshape.nn.norms import broadcast_multiply
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
        assert _rel(a, r) <= 1e-6  # the weight gradient sums the same terms, possibly in another order


def test_norms_give_the_same_numbers_for_batch_one_and_batch_two():
    """The norms compute statistics on a [rows, C] view; a sample's result must not depend on its batch mates."""
    from jaxshape.nn.norms import LayerNorm, MultiHeadRMSNorm, RMSNorm
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

    assert _rel(m.apply(v, x), conv(x, kern)) <= 1e-6
    w = jnp.asarray(rng.standard_normal((2, 4, 3, 2, 7)).astype(np.float32))
    gm = jax.grad(lambda x, k: jnp.sum(m.apply({"params": {"kernel": k, "bias": bias}}, x) * w), (0, 1))(x, kern)
    gc = jax.grad(lambda x, k: jnp.sum(conv(x, k) * w), (0, 1))(x, kern)
    for a, r in zip(gm, gc):
        assert _rel(a, r) <= 1e-6


# (in, out, kernel): every formulation, incl. the ones `auto` picks for tiny in (im2col), out << in (output_shift)
CONV_CASES = [(3, 5, 3), (16, 2, 3), (6, 6, 3), (4, 7, 1), (2, 3, 5)]


@pytest.mark.parametrize("cin,cout,k", CONV_CASES)
@pytest.mark.parametrize("formulation", [f for f in C.CONV_FORMULATIONS if f != "lax"])
def test_conv_formulations_equal_lax_conv_forward_and_gradients(cin, cout, k, formulation):
    if formulation == "winograd" and k == 5:
        pytest.skip("Winograd F(2, 3) is defined for 3³ kernels (error tested below)")
    rng = np.random.default_rng(cin * 10 + cout)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 4, cin)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, k, cin, cout)).astype(np.float32))
    g = jnp.asarray(rng.standard_normal((2, 5, 6, 4, cout)).astype(np.float32))

    def lax_conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1, 1), ((k // 2, k // 2),) * 3,
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

    out = C.conv3d_same(x, w, formulation)
    assert _rel(out, lax_conv(x, w)) <= 2e-6
    ga = jax.grad(lambda x, w: jnp.sum(C.conv3d_same(x, w, formulation) * g), (0, 1))(x, w)
    gr = jax.grad(lambda x, w: jnp.sum(lax_conv(x, w) * g), (0, 1))(x, w)
    for a, r in zip(ga, gr):
        assert _rel(a, r) <= 2e-6


def test_conv3d_module_formulation_field_keeps_params_and_numbers():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 4, 4, 6)).astype(np.float32))
    v = nn.meta.unbox(C.Conv3d(5, 3).init(jax.random.key(0), x))
    assert jax.tree.map(jnp.shape, v) == {"params": {"kernel": (3, 3, 3, 6, 5), "bias": (5,)}}
    ref = C.Conv3d(5, 3, formulation="lax").apply(v, x)
    for f in C.CONV_FORMULATIONS:
        assert _rel(C.Conv3d(5, 3, formulation=f).apply(v, x), ref) <= 2e-6
    with pytest.raises(ValueError, match="unknown conv formulation"):
        C.conv3d_same(x, v["params"]["kernel"], "fft")


def test_auto_formulation_choices():
    big, small = C.winograd_tiles((1, 32, 32, 32)), C.winograd_tiles((1, 8, 8, 8))
    assert (big, small, C.winograd_tiles((2, 5, 6, 3))) == (4096, 64, 36)
    assert C.auto_formulation(512, 16, 3, big) == "output_shift"
    assert C.auto_formulation(32, 1, 3, small) == "output_shift"
    for cin, cout in [(1, 32), (8, 8), (16, 16), (32, 32), (256, 256)]:
        assert C.auto_formulation(cin, cout, 3, big) == "winograd"
        assert C.auto_formulation(cin, cout, 3) == "winograd"
        assert C.auto_formulation(cin, cout, 3, small) == "im2col"
    assert C.auto_formulation(512, 512, 3, small) == "winograd"  # 64 tiles, but enough work per tile
    assert C.auto_formulation(512, 512, 3, C.winograd_tiles((1, 4, 4, 4))) == "im2col"
    assert C.auto_formulation(2, 8, 5, big) == "im2col"
    assert C.auto_formulation(128, 128, 5, big) == "im2col_z"
    assert C.auto_formulation(128, 128, 5, small) == "im2col_z"
    assert C.auto_formulation(64, 64, 1, big) == "im2col"
    # half precision: no Winograd (its transforms would round in bf16); accelerators: the native conv
    assert C.auto_formulation(32, 32, 3, big, jnp.bfloat16) == "im2col_z"
    assert C.auto_formulation(8, 16, 3, big, jnp.float16) == "im2col"
    for backend in ("gpu", "tpu"):
        assert C.auto_formulation(32, 32, 3, big, backend=backend) == "lax"


@pytest.mark.parametrize("shape", [(1, 8, 8, 8), (2, 3, 5, 2), (1, 1, 1, 1)])
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

    assert _rel(conv(x, w, "winograd"), conv(x, w, "lax")) <= 2e-6
    ga = jax.grad(lambda x, w: jnp.sum(conv(x, w, "winograd") * g), (0, 1))(x, w)
    gr = jax.grad(lambda x, w: jnp.sum(conv(x, w, "lax") * g), (0, 1))(x, w)
    for a, r in zip(ga, gr):
        assert _rel(a, r) <= 2e-6
    with pytest.raises(ValueError, match="3x3x3 kernel"):
        C.conv3d_same(x, jnp.zeros((5, 5, 5, cin, cout)), "winograd")


def test_unrolled_layer_stack_equals_scanned_stack():
    """``scan_unroll`` changes the program, not the model: the same parameter tree, outputs and gradients."""
    from jaxshape.models import VecSetDiT
    from jaxshape.nn import layer_unroll
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
    assert _rel(out_u, out_l) <= 1e-6
    loss = lambda m: lambda v: jnp.sum(m.apply(v, x, c, t) ** 2)  # noqa: E731
    for a, b in zip(jax.tree.leaves(jax.grad(loss(unrolled))(v)), jax.tree.leaves(jax.grad(loss(looped))(v))):
        assert _rel(a, b) <= 1e-5
    # automatic choice: unrolled on CPU for shallow stacks without remat only
    on_cpu = jax.default_backend() == "cpu"
    assert layer_unroll(None, 3, remat=False) == on_cpu
    assert not layer_unroll(None, 3, remat=True) and not layer_unroll(None, 24, remat=False)
    assert layer_unroll(True, 24, remat=True) and not layer_unroll(False, 2, remat=False)


def test_flash_attention_stays_local_when_the_batch_is_sharded():
    """The kernel loops over heads and query chunks, never over the batch: a batch-sharded call must compile
    without collectives (looping over a sharded axis makes XLA gather it onto every device)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    n = len(jax.devices())
    if n < 2:
        pytest.skip("needs several devices (tests/conftest.py simulates 8)")
    sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    q = jax.device_put(jnp.ones((n, 64, 2, 8)), sh)
    fn = jax.jit(jax.grad(lambda q: jnp.sum(A.flash_attention(q, q, q, query_chunk_size=16) ** 2)),
                 in_shardings=sh, out_shardings=sh)
    hlo = fn.lower(q).compile().as_text()
    for op in ("all-gather", "all-to-all", "all-reduce", "collective-permute"):
        assert f" {op}(" not in hlo, op


def test_benchmark_flop_count_is_the_direct_convs_whatever_the_formulation(monkeypatch):
    """experiments/bench_lib.count_flops reports conventional model FLOPs (2·voxels·27·in·out per 3³ conv) even where
    the conv runs as Winograd (3.4× fewer multiplies), and leaves the automatic rule as it found it."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    from bench_lib import count_flops

    for shape, cin, cout in [((1, 16, 16, 16), 32, 32), ((1, 8, 8, 8), 512, 512), ((2, 4, 4, 4), 8, 8)]:
        x = jax.ShapeDtypeStruct(shape + (cin,), jnp.float32)
        w = jax.ShapeDtypeStruct((3, 3, 3, cin, cout), jnp.float32)
        voxels = int(np.prod(shape))
        assert count_flops(C.conv3d_same, x, w) == 2 * voxels * 27 * cin * cout
    assert C.auto_formulation(512, 512, 3, 64) == "winograd"
