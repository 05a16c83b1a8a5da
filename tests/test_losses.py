"""VAE losses and occupancy metrics (jaxshape.losses): values at known points."""
import jax.numpy as jnp
import numpy as np

from jaxshape import losses


def test_losses():
    logits = jnp.array([[10.0, -10.0, 10.0]])
    y = jnp.array([[1.0, 0.0, 1.0]])
    assert float(losses.dice_loss(logits, y)) < 1e-4
    assert float(losses.dice_loss(-logits, y)) > 0.6
    assert float(losses.gaussian_kl(jnp.zeros(5), jnp.zeros(5))) == 0.0
    np.testing.assert_allclose(float(losses.gaussian_kl(jnp.ones(4), jnp.zeros(4))), 0.5)
    loss, m = losses.ss_vae_loss(logits[None], y[None], jnp.zeros(3), jnp.zeros(3), loss_type="bce", kl_weight=1.0)
    assert float(loss) < 1e-4 and float(m["iou_fg"]) == 1.0 and float(m["f1"]) == 1.0
    pred, gt = jnp.array([[0.5, -0.5]]), jnp.array([[1.0, -1.0]])
    loss, m = losses.vecset_vae_loss(pred, gt, jnp.array([0.2]), kl_weight=1e-3)
    np.testing.assert_allclose(float(loss), 0.25 + 0.5 + 2e-4, rtol=1e-6)
    assert float(m["iou_fg"]) == 1.0 and float(m["iou_bg"]) == 1.0
