"""Inconsistent configs and wrong inputs fail with a message naming the input and the rule, before compiling."""
import jax
import jax.numpy as jnp
import pytest

from jaxshape.models import SparseStructureDecoder, SparseStructureEncoder, SparseStructureFlowModel

FLOW = dict(resolution=8, in_channels=4, model_channels=64, cond_channels=32, out_channels=4, num_blocks=1,
            num_heads=4, patch_size=2)


def test_resolution_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="resolution 9 must be divisible by patch_size 2"):
        SparseStructureFlowModel(**{**FLOW, "resolution": 9})


def test_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="model_channels 64 must be divisible by num_heads 5"):
        SparseStructureFlowModel(**{**FLOW, "num_heads": 5})


def test_bad_pe_mode_and_rope_odd_head_dim():
    with pytest.raises(ValueError, match="pe_mode"):
        SparseStructureFlowModel(**{**FLOW, "pe_mode": "sincos"})
    with pytest.raises(ValueError, match="even head dim"):
        SparseStructureFlowModel(**{**FLOW, "pe_mode": "rope", "model_channels": 60, "num_heads": 4})


def test_flow_wrong_input_shapes():
    m = SparseStructureFlowModel(**FLOW)
    x, t, c = jnp.zeros((2, 8, 8, 8, 4)), jnp.zeros((2,)), jnp.zeros((2, 3, 32))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 8, 8, 8, 4\], got \(2, 4, 8, 8, 8\)"):
        m.init({"params": jax.random.key(0)}, jnp.zeros((2, 4, 8, 8, 8)), t, c)
    with pytest.raises(ValueError, match="t must have shape"):
        m.init({"params": jax.random.key(0)}, x, jnp.zeros((3,)), c)
    with pytest.raises(ValueError, match=r"cond must be \[B, M, 32\]"):
        m.init({"params": jax.random.key(0)}, x, t, jnp.zeros((2, 3, 31)))


def test_vae_config_and_input_errors():
    with pytest.raises(ValueError, match="channels must be a non-empty list"):
        SparseStructureEncoder(in_channels=1, latent_channels=8, num_res_blocks=1, channels=[])
    with pytest.raises(ValueError, match="norm_type"):
        SparseStructureDecoder(out_channels=1, latent_channels=8, num_res_blocks=1, channels=[8], norm_type="batch")
    enc = SparseStructureEncoder(in_channels=1, latent_channels=4, num_res_blocks=1, channels=[8, 16])
    with pytest.raises(ValueError, match=r"x must be \[B, X, Y, Z, 1\] with X, Y, Z divisible by 2"):
        enc.init(jax.random.key(0), jnp.zeros((1, 7, 8, 8, 1)))
    with pytest.raises(ValueError, match="noise must have the posterior's shape"):
        enc.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)), sample_posterior=True, noise=jnp.zeros((1, 2, 2, 2, 4)))
    dec = SparseStructureDecoder(out_channels=1, latent_channels=4, num_res_blocks=1, channels=[16, 8])
    with pytest.raises(ValueError, match=r"z must be \[B, X, Y, Z, 4\]"):
        dec.init(jax.random.key(0), jnp.zeros((1, 4, 4, 4, 8)))
