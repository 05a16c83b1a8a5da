"""The CPU flash-attention kernel equals softmax attention to fp32 rounding, forward and gradients, and the
dispatcher picks it only above its threshold. (No timing here; see experiments/bench_attention.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape.kernels.flash_attention import flash_attention
from jaxshape.nn import attention as A
from tests.utils import max_rel_err

pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# (B, Lq, Lk, H, D, query chunk): chunk dividing Lq, not dividing (padding), larger than Lq
FLASH_CASES = [(2, 64, 64, 2, 16, 16), (2, 37, 23, 3, 8, 8), (1, 100, 7, 2, 4, 33), (1, 5, 2, 1, 8, 256)]


@pytest.mark.parametrize("b,lq,lk,h,d,chunk", FLASH_CASES)
def test_flash_attention_matches_reference_forward_and_gradients(b, lq, lk, h, d, chunk):
    rng = np.random.default_rng(lq + lk)
    q, k, v, w = (jnp.asarray(rng.standard_normal(s).astype(np.float32) * 2)
                  for s in [(b, lq, h, d), (b, lk, h, d), (b, lk, h, d), (b, lq, h, d)])
    scale = 1.0 / np.sqrt(d)
    out = flash_attention(q, k, v, query_chunk_size=chunk)
    ref = A._reference_attention(q, k, v, scale)
    assert out.shape == ref.shape
    assert max_rel_err(out, ref) <= 2e-6
    assert max_rel_err(out, jax.nn.dot_product_attention(q, k, v)) <= 2e-6

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    g = jax.grad(loss(lambda q, k, v: flash_attention(q, k, v, query_chunk_size=chunk)), (0, 1, 2))(q, k, v)
    gr = jax.grad(loss(lambda q, k, v: A._reference_attention(q, k, v, scale)), (0, 1, 2))(q, k, v)
    for a, r in zip(g, gr):  # fp32 rounding; a 2-key softmax gradient has some cancellation
        assert max_rel_err(a, r) <= 3e-5


def test_flash_attention_jits_and_bf16_close():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 40, 2, 16)).astype(np.float32)) for _ in range(3))
    ref = A._reference_attention(q, k, v, 0.25)
    out = jax.jit(lambda q, k, v: flash_attention(q, k, v, query_chunk_size=16))(q, k, v)
    assert max_rel_err(out, ref) <= 2e-6
    bf = flash_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                           query_chunk_size=16)
    assert bf.dtype == jnp.bfloat16
    assert max_rel_err(bf.astype(jnp.float32), ref) <= 3e-2
    # bf16 backward (fp32 accumulation inside): gradients within bf16 rounding of the fp32 reference
    w = jnp.asarray(rng.standard_normal((1, 40, 2, 16)).astype(np.float32))
    grad = lambda f, *a: jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w), (0, 1, 2))(*a)  # noqa
    g_bf = grad(lambda q, k, v: flash_attention(q, k, v, query_chunk_size=16),
                *(x.astype(jnp.bfloat16) for x in (q, k, v)))
    g_ref = grad(lambda q, k, v: A._reference_attention(q, k, v, 0.25), q, k, v)
    for a, r in zip(g_bf, g_ref):
        assert a.dtype == jnp.bfloat16
        assert max_rel_err(a.astype(jnp.float32), r) <= 2e-2  # measured 0.4-0.9%


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
    assert max_rel_err(big, small) <= 2e-6
    assert max_rel_err(A.dot_product_attention(q, k, v, implementation="flash", query_chunk_size=8), small) <= 2e-6


def test_flash_attention_stays_local_when_the_batch_is_sharded():
    """The kernel loops over heads and query chunks, never over the batch: a batch-sharded call must compile
    without collectives (looping over a sharded axis makes XLA gather it onto every device)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    n = len(jax.devices())
    assert n == 8  # tests/conftest.py simulates 8 CPU devices
    sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    q = jax.device_put(jnp.ones((n, 64, 2, 8)), sh)
    fn = jax.jit(jax.grad(lambda q: jnp.sum(flash_attention(q, q, q, query_chunk_size=16) ** 2)),
                 in_shardings=sh, out_shardings=sh)
    hlo = fn.lower(q).compile().as_text()
    for op in ("all-gather", "all-to-all", "all-reduce", "collective-permute"):
        assert f" {op}(" not in hlo, op
