"""TRELLIS sparse-structure models: jaxshape vs our PyTorch mirror (fp32, highest matmul precision, random
non-zero weights incl. every zero-initialised layer). Pass: max |jax - torch| <= 1e-5 * max |torch|."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.models import SparseStructureDecoder, SparseStructureEncoder, SparseStructureFlowModel
from jaxshape.nn import absolute_position_embedding_3d, grid_coords_3d, timestep_embedding
from tests.torch_reference import trellis_ss as T
from tests.utils import max_rel_err, ncdhw, ndhwc, randomize_state_dict

TOL = 1e-5
ENC = dict(in_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16, 32])
DEC = dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8])


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def test_encoder_mean_logvar_and_sample_with_injected_noise():
    torch.manual_seed(0)
    tm = T.SparseStructureEncoder(**ENC)
    sd = randomize_state_dict(tm, seed=1)
    m = SparseStructureEncoder(**ENC)
    v = from_torch(m, sd)
    rng = np.random.default_rng(0)
    x = (rng.random((2, 1, 16, 16, 16)) > 0.7).astype(np.float32)
    noise = rng.normal(size=(2, 4, 4, 4, 4)).astype(np.float32)
    with torch.no_grad():
        z_ref, mean_ref, logvar_ref = tm(torch.from_numpy(x), sample_posterior=True, return_raw=True,
                                         noise=torch.from_numpy(noise))
    z, mean, logvar = m.apply(v, jnp.asarray(ndhwc(x)), sample_posterior=True, return_raw=True,
                              noise=jnp.asarray(ndhwc(noise)))
    for out, ref in ((mean, mean_ref), (logvar, logvar_ref), (z, z_ref)):
        assert max_rel_err(ncdhw(out), ref.numpy()) <= TOL
    # the mean path (sample_posterior=False) returns the posterior mean exactly
    np.testing.assert_array_equal(np.asarray(m.apply(v, jnp.asarray(ndhwc(x)))), np.asarray(mean))
    # posterior noise from the "noise" rng stream is reproducible and changes z
    z1 = m.apply(v, jnp.asarray(ndhwc(x)), sample_posterior=True, rngs={"noise": jax.random.key(3)})
    z2 = m.apply(v, jnp.asarray(ndhwc(x)), sample_posterior=True, rngs={"noise": jax.random.key(3)})
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))
    assert not np.allclose(np.asarray(z1), np.asarray(mean))


def test_decoder():
    torch.manual_seed(0)
    tm = T.SparseStructureDecoder(**DEC)
    sd = randomize_state_dict(tm, seed=2)
    m = SparseStructureDecoder(**DEC)
    v = from_torch(m, sd)
    z = np.random.default_rng(1).normal(size=(2, 4, 4, 4, 4)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(z)).numpy()
    out = m.apply(v, jnp.asarray(ndhwc(z)))
    assert out.shape == (2, 16, 16, 16, 1)
    assert max_rel_err(ncdhw(out), ref) <= TOL


def test_timestep_embedding_and_ape_match_mirror():
    t = np.array([0.0, 1.0, 37.5, 999.0], np.float32)
    ref = T.TimestepEmbedder.timestep_embedding(torch.from_numpy(t), 256).numpy()
    out = np.asarray(timestep_embedding(jnp.asarray(t), 256))
    # a 1-ulp difference in an fp32 frequency (torch's exp is not correctly rounded everywhere) moves the
    # argument t·f by up to t·f·2^-24: allow that, nothing more
    assert np.all(np.abs(out - ref) < 1e-6 + 6e-8 * t[:, None])
    for channels in (768, 1024, 1280):
        with torch.no_grad():
            tm = T.SparseStructureFlowModel(resolution=16, in_channels=8, model_channels=channels, cond_channels=8,
                                            out_channels=8, num_blocks=1, num_heads=channels // 64, patch_size=1)
        pe = np.asarray(absolute_position_embedding_3d(grid_coords_3d(16), channels))
        np.testing.assert_allclose(pe, tm.pos_emb.numpy(), atol=2e-6, rtol=0)


FLOW_CASES = {
    "ape-qkrms-p1": dict(pe_mode="ape", qk_rms_norm=True, patch_size=1),
    "ape-qkrms-cross-p2": dict(pe_mode="ape", qk_rms_norm=True, qk_rms_norm_cross=True, patch_size=2),
    "ape-sharemod-p1": dict(pe_mode="ape", share_mod=True, patch_size=1),
    "rope-qkrms-p1": dict(pe_mode="rope", qk_rms_norm=True, patch_size=1),
    "rope-sharemod-cross-p2": dict(pe_mode="rope", share_mod=True, qk_rms_norm_cross=True, patch_size=2),
}


@pytest.mark.parametrize("case", sorted(FLOW_CASES))
def test_flow_model(case):
    args = dict(resolution=8, in_channels=4, model_channels=48, cond_channels=24, out_channels=4, num_blocks=2,
                num_heads=4, mlp_ratio=2, **FLOW_CASES[case])
    torch.manual_seed(0)
    tm = T.SparseStructureFlowModel(**args)
    sd = randomize_state_dict(tm, seed=3)
    m = SparseStructureFlowModel(**args)
    v = from_torch(m, sd)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 4, 8, 8, 8)).astype(np.float32)
    t = np.array([12.5, 870.0], np.float32)
    cond = rng.normal(size=(2, 7, 24)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(cond)).numpy()
    out = m.apply(v, jnp.asarray(ndhwc(x)), jnp.asarray(t), jnp.asarray(cond))
    assert np.abs(ref).max() > 0.1
    assert max_rel_err(ncdhw(out), ref) <= TOL


def test_flow_gradients_match_torch():
    """Backward parity: d(sum(out * w))/d(x, cond) and a weight gradient."""
    args = dict(resolution=4, in_channels=2, model_channels=32, cond_channels=16, out_channels=2, num_blocks=2,
                num_heads=2, patch_size=1, qk_rms_norm=True)
    torch.manual_seed(0)
    tm = T.SparseStructureFlowModel(**args)
    sd = randomize_state_dict(tm, seed=5)
    m = SparseStructureFlowModel(**args)
    v = from_torch(m, sd)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 2, 4, 4, 4)).astype(np.float32)
    cond = rng.normal(size=(1, 3, 16)).astype(np.float32)
    w = rng.normal(size=(1, 2, 4, 4, 4)).astype(np.float32)
    t = np.array([500.0], np.float32)
    xt, ct = torch.from_numpy(x).requires_grad_(), torch.from_numpy(cond).requires_grad_()
    (tm(xt, torch.from_numpy(t), ct) * torch.from_numpy(w)).sum().backward()

    def loss(params, x, c):
        out = m.apply({**v, "params": params}, x, jnp.asarray(t), c)
        return jnp.sum(out * jnp.asarray(ndhwc(w)))

    gp, gx, gc = jax.grad(loss, argnums=(0, 1, 2))(v["params"], jnp.asarray(ndhwc(x)), jnp.asarray(cond))
    assert max_rel_err(ncdhw(gx), xt.grad.numpy()) <= 1e-4
    assert max_rel_err(gc, ct.grad.numpy()) <= 1e-4
    ref_w = tm.blocks[1].self_attn.to_qkv.weight.grad.numpy()
    assert max_rel_err(np.asarray(gp["blocks"]["self_attn"]["to_qkv"]["kernel"][1]).T, ref_w) <= 1e-4
