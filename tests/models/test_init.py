"""Upstream initialisation: TRELLIS flow (xavier, N(0, .02) time MLP, zero adaLN and out layer -> output 0 at
init), VAE (PyTorch conv defaults, zero conv2)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape.models import SparseStructureEncoder, SparseStructureFlowModel


def test_flow_init_statistics_and_zero_output():
    m = SparseStructureFlowModel(resolution=4, in_channels=8, model_channels=256, cond_channels=128,
                                 out_channels=8, num_blocks=2, num_heads=4, patch_size=1, qk_rms_norm=True)
    x, t, c = jnp.ones((1, 4, 4, 4, 8)), jnp.array([500.0]), jnp.ones((1, 3, 128))
    v = m.init(jax.random.key(0), x, t, c)
    p = jax.tree.map(np.asarray, nn.meta.unbox(v["params"]))
    assert np.all(p["blocks"]["adaLN_modulation_1"]["kernel"] == 0) and np.all(p["out_layer"]["kernel"] == 0)
    qkv = p["blocks"]["self_attn"]["to_qkv"]["kernel"][0]  # [256, 768]: fan_in 256, fan_out 768
    bound = np.sqrt(6 / (256 + 768))
    assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
    assert np.all(p["blocks"]["self_attn"]["to_qkv"]["bias"] == 0)
    tw = p["t_embedder"]["mlp_0"]["kernel"]
    assert abs(tw.std() - 0.02) < 0.002
    np.testing.assert_array_equal(p["blocks"]["self_attn"]["q_rms_norm"]["gamma"], 1.0)
    qkv_per_block = p["blocks"]["self_attn"]["to_qkv"]["kernel"]
    assert not np.allclose(qkv_per_block[0], qkv_per_block[1])
    np.testing.assert_array_equal(np.asarray(m.apply(v, x, t, c)), 0.0)
@pytest.mark.slow
def test_vae_init_matches_torch_defaults():
    m = SparseStructureEncoder(in_channels=1, latent_channels=4, num_res_blocks=1, channels=[16, 32])
    v = nn.meta.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)))["params"])
    conv1 = np.asarray(v["blocks_0"]["conv1"]["kernel"])
    bound = 1 / np.sqrt(16 * 27)
    assert np.abs(conv1).max() <= bound and np.abs(conv1).max() > 0.95 * bound
    b = np.asarray(v["blocks_0"]["conv1"]["bias"])
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0
    conv2 = v["blocks_0"]["conv2"]
    assert np.all(np.asarray(conv2["kernel"]) == 0) and np.all(np.asarray(conv2["bias"]) == 0)
    down = np.asarray(v["blocks_1"]["conv"]["kernel"])
    assert down.shape == (2, 2, 2, 16, 32) and np.abs(down).max() <= 1 / np.sqrt(16 * 8)
    np.testing.assert_array_equal(np.asarray(v["out_layer_0"]["scale"]), 1.0)
