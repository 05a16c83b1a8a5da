"""Optimiser pieces (jaxshape.trainer.optim): TRELLIS's adaptive percentile gradient clipping."""
import jax.numpy as jnp
import numpy as np
import optax

from jaxshape.trainer.optim import adaptive_grad_clip


def test_adaptive_clip_uses_percentile_once_buffer_is_full():
    tx = adaptive_grad_clip(max_norm=10.0, percentile=50.0, buffer_size=4)
    st = tx.init({"w": jnp.zeros(2)})
    for n in (1.0, 2.0, 3.0, 4.0):  # fill the buffer; threshold stays max_norm (10): nothing clipped
        g = {"w": jnp.array([n, 0.0])}
        out, st = tx.update(g, st)
        np.testing.assert_allclose(out["w"], g["w"])
    out, st = tx.update({"w": jnp.array([8.0, 0.0])}, st)  # threshold = median(1..4) = 2.5
    np.testing.assert_allclose(float(optax.tree.norm(out)), 2.5, rtol=1e-6)
    out, st = tx.update({"w": jnp.array([jnp.nan, 0.0])}, st)  # non-finite norms are not pushed
    assert int(st.count) == 5
