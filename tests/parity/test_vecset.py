"""Parity of jaxshape's VecSetVAE / VecSetDiT with the PyTorch PartPacker mirror (tests/torch_reference).

fp32 on both sides, ``jax.default_matmul_precision("highest")``, every torch tensor replaced by a random normal
(so zero-initialised adaLN / proj_out / norms are exercised), weights moved with ``jaxshape.convert.from_torch``.
Tolerance: max-abs error <= 1e-5 * max|reference|. Points are uniform in [-1, 1]; Fourier v1/v2 (frequencies up
to 512π / 1024π) need nothing special at this tolerance because both sides round ``p * f`` identically in fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshape.convert import ConversionError, expected_state_dict_shapes, from_torch, to_torch
from jaxshape.models import VecSetDiT, VecSetVAE
from jaxshape.models.vecset_vae import DiagonalGaussian, DummyLatent, posterior
from jaxshape.nn import fourier_point_features
from jaxshape.nn.embeddings import fourier_frequencies
from tests.torch_reference import partpacker as pp
from tests.utils import partpacker_keys

RTOL = 1e-5

TINY_VAE = dict(hidden_dim=64, num_heads=4, num_dec_layers=1, dec_hidden_dim=64, dec_num_heads=4,
                point_fourier_dim=24, query_hidden_dim=64, query_num_heads=4, latent_dim=8)


def _randomize(module, seed: int) -> dict:
    """Set every tensor of ``module``'s state_dict to a random normal (fan-in scaled for matrices)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        std = 1.0 / np.sqrt(v.shape[-1]) if v.ndim >= 2 else 0.5
        sd[k] = torch.randn(v.shape, generator=g) * std
    module.load_state_dict(sd)
    module.eval()
    return {k: v.numpy() for k, v in sd.items()}


def _err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))
    return float(np.max(np.abs(ours - ref))) if ours.size else 0.0


def _close(ours, ref, what: str) -> float:
    e = _err(ours, ref)
    scale = max(float(np.max(np.abs(np.asarray(ref)))) if np.asarray(ref).size else 0.0, 1e-30)
    assert e <= RTOL * scale, f"{what}: max-abs error {e:.3g} > {RTOL} * {scale:.3g}"
    print(f"{what}: max-abs err {e:.2e} (max|ref| {scale:.2e})")
    return e


# ------------------------------------------------------------------------------------------------ Fourier


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_fourier_features(version):
    pts = np.random.default_rng(0).uniform(-1, 1, (2, 50, 3)).astype(np.float32)
    ref = pp.fourier_encoding(torch.from_numpy(pts), 48, version).numpy()
    ours = np.asarray(fourier_point_features(jnp.asarray(pts), 8, version, layout="partpacker"))
    assert ours.shape == (2, 50, 51)
    assert _err(ours, ref) <= 1e-5 * np.abs(ref).max()
    # Hunyuan / TripoSG / Dora layout against a NumPy formula: [x, y, z, sin(x f, y f, z f), cos(...)]
    f = fourier_frequencies(8, version)
    spec = (pts[..., :, None] * f).reshape(2, 50, 24)
    want = np.concatenate([pts, np.sin(spec), np.cos(spec)], axis=-1)
    got = np.asarray(fourier_point_features(jnp.asarray(pts), 8, version, layout="hunyuan"))
    assert _err(got, want) <= 1e-5 * np.abs(want).max()


# ------------------------------------------------------------------------------------------------ VAE


def _vae_data(rng, b=2, n=64, m=32, n_fps=16, m_fps=8, q=20):
    data = dict(
        pointcloud=rng.uniform(-1, 1, (b, n, 3)).astype(np.float32),
        pointcloud_dorases=rng.uniform(-1, 1, (b, m, 3)).astype(np.float32),
        fps_indices=np.stack([rng.permutation(n)[:n_fps] for _ in range(b)]).astype(np.int64),
        fps_indices_dorases=(np.stack([rng.permutation(m)[:m_fps] for _ in range(b)]).astype(np.int64)
                             if m else np.zeros((b, 0), np.int64)),
        query_points=rng.uniform(-1, 1, (b, q, 3)).astype(np.float32),
    )
    return data


def _vae_pair(seed=0, **overrides):
    cfg = dict(TINY_VAE, **overrides)
    tmodel = pp.Model(pp.ModelConfig(**cfg))
    sd = _randomize(tmodel, seed)
    model = VecSetVAE(**cfg)
    return tmodel, model, from_torch(model, sd), sd


# (salient mode, qknorm_type or None, num_enc_layers, fourier_version, use_flash_query, query width/heads)
VAE_CASES = [
    ("dual", "LayerNorm", 0, "v3", False, (64, 4)),
    ("dual_shared", "RMSNorm", 1, "v1", True, (32, 2)),
    ("single", None, 1, "v2", False, (32, 2)),
    ("none", "LayerNorm", 2, "v3", True, (64, 4)),
    ("dual", "RMSNorm", 0, "v3", False, (64, 4)),
]


@pytest.mark.parametrize("mode,qk,enc,fourier,flash,qdim", VAE_CASES)
def test_vae_parity(mode, qk, enc, fourier, flash, qdim):
    kw = dict(salient_attn_mode="dual" if mode == "none" else mode, use_salient_point=mode != "none",
              qknorm=qk is not None, qknorm_type=qk or "LayerNorm", num_enc_layers=enc, fourier_version=fourier,
              use_flash_query=flash, query_hidden_dim=qdim[0], query_num_heads=qdim[1])
    tmodel, model, variables, _ = _vae_pair(seed=len(mode) + enc, **kw)
    rng = np.random.default_rng(1)
    data = _vae_data(rng)
    tdata = {k: torch.from_numpy(v) for k, v in data.items()}
    with jax.default_matmul_precision("highest"), torch.no_grad():
        tpost = tmodel.encode(tdata)
        mean, logvar = model.apply(variables, {k: jnp.asarray(v) for k, v in data.items()}, method="encode")
        _close(mean, tpost.mean.numpy(), f"{mode}/{qk}/enc{enc}/{fourier} mean")
        _close(logvar, tpost.logvar.numpy(), f"{mode}/{qk}/enc{enc}/{fourier} logvar")
        # posterior with injected noise, kl
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        tz = tpost.sample(noise=torch.from_numpy(noise))
        post = posterior(mean, logvar)
        z = post.sample(noise=jnp.asarray(noise))
        _close(z, tz.numpy(), "posterior sample")
        _close(post.kl(), tpost.kl().numpy(), "kl")
        assert post.kl().shape == (2,)
        # decode and query (from the same latent)
        thid = tmodel.decode(tz)
        hid = model.apply(variables, jnp.asarray(tz.numpy()), method="decode")
        _close(hid, thid.numpy(), "decode")
        tpred = tmodel.query(tdata["query_points"], thid)
        pred = model.apply(variables, jnp.asarray(data["query_points"]), jnp.asarray(thid.numpy()), method="query")
        assert pred.shape == tpred.shape == (2, data["query_points"].shape[1], 1)  # upstream's [B, Q, 1]
        _close(pred, tpred.numpy(), f"query (flash={flash})")
        # whole forward with the injected sample
        full, m2, _ = model.apply(variables, {k: jnp.asarray(v) for k, v in data.items()}, sample_posterior=True,
                                  noise=jnp.asarray(noise))
        _close(full, tpred.numpy()[..., 0], "__call__(sample_posterior=True)")
        np.testing.assert_array_equal(np.asarray(m2), np.asarray(mean))


def test_vae_empty_salient_set():
    tmodel, model, variables, _ = _vae_pair(seed=7, salient_attn_mode="dual")
    data = _vae_data(np.random.default_rng(2), m=0, m_fps=0)
    with jax.default_matmul_precision("highest"), torch.no_grad():
        tpost = tmodel.encode({k: torch.from_numpy(v) for k, v in data.items()})
        mean, logvar = model.apply(variables, {k: jnp.asarray(v) for k, v in data.items()}, method="encode")
    assert mean.shape == (2, 16, 8)
    _close(mean, tpost.mean.numpy(), "empty salient mean")
    _close(logvar, tpost.logvar.numpy(), "empty salient logvar")


def test_vae_use_ae():
    tmodel, model, variables, sd = _vae_pair(seed=3, use_ae=True)
    assert not any(k.startswith("proj_down_std") for k in sd)
    data = _vae_data(np.random.default_rng(3))
    with jax.default_matmul_precision("highest"), torch.no_grad():
        tpost = tmodel.encode({k: torch.from_numpy(v) for k, v in data.items()})
        mean, logvar = model.apply(variables, {k: jnp.asarray(v) for k, v in data.items()}, method="encode")
        pred, _, _ = model.apply(variables, {k: jnp.asarray(v) for k, v in data.items()}, sample_posterior=True)
        tpred = tmodel.query(torch.from_numpy(data["query_points"]), tmodel.decode(tpost.sample()))
    assert logvar is None
    post = posterior(mean, logvar)
    assert isinstance(post, DummyLatent)
    _close(mean, tpost.mean.numpy(), "use_ae mean")
    _close(post.kl(), tpost.kl().numpy(), "use_ae kl")
    _close(pred, tpred.numpy()[..., 0], "use_ae forward (no sampling noise)")


def test_posterior_helpers():
    mean = jnp.zeros((1, 2, 3))
    post = DiagonalGaussian(mean, jnp.full((1, 2, 3), 100.0))
    assert float(post.logvar.max()) == 20.0
    s = post.sample(jax.random.key(0))
    assert s.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="noise"):
        post.sample(noise=jnp.zeros((1, 2)))


# ------------------------------------------------------------------------------------------------ DiT

# (use_pos_embed, use_parts, part_embed_mode, qknorm_type or None, context_dim)
DIT_CASES = [
    (False, True, "part2_only", "RMSNorm", None),
    (True, True, "part", "LayerNorm", 48),
    (False, True, "element", None, None),
    (True, False, "part2_only", "RMSNorm", 48),
]


@pytest.mark.parametrize("pos,parts,mode,qk,ctx", DIT_CASES)
def test_dit_parity(pos, parts, mode, qk, ctx):
    kw = dict(hidden_dim=64, num_heads=4, latent_size=16, latent_dim=8, num_layers=2, qknorm=qk is not None,
              qknorm_type=qk or "LayerNorm", use_pos_embed=pos, use_parts=parts, part_embed_mode=mode,
              context_dim=ctx)
    tmodel = pp.DiT(gradient_checkpointing=False, **kw)
    sd = _randomize(tmodel, 11)
    model = VecSetDiT(gradient_checkpointing=False, **kw)
    variables = from_torch(model, sd)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 8)).astype(np.float32)
    c = rng.standard_normal((2, 10, ctx or 64)).astype(np.float32)
    t = np.array([3.5, 870.0], np.float32)
    with jax.default_matmul_precision("highest"), torch.no_grad():
        ref = tmodel(torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(t)).numpy()
        ours = model.apply(variables, jnp.asarray(x), jnp.asarray(c), jnp.asarray(t))
    _close(ours, ref, f"DiT pos={pos} parts={parts}/{mode} qk={qk}")


# ------------------------------------------------------------------------------------------------ converter


def test_round_trip_and_strictness():
    _, model, variables, sd = _vae_pair(seed=5, num_enc_layers=2, qknorm_type="RMSNorm")
    back = to_torch(model, variables)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    dkw = dict(hidden_dim=64, num_heads=4, latent_size=16, latent_dim=8, num_layers=2, qknorm=True,
               qknorm_type="RMSNorm", use_pos_embed=True, use_parts=True, part_embed_mode="element")
    dsd = _randomize(pp.DiT(**dkw), 6)
    dit = VecSetDiT(**dkw)
    dback = to_torch(dit, from_torch(dit, dsd))
    assert set(dback) == set(dsd)
    for k in dsd:
        np.testing.assert_array_equal(dback[k], dsd[k])
    # with the flow.pt prefix
    from_torch(dit, {"dit." + k: v for k, v in dsd.items()}, prefix="dit.")

    dropped = dict(sd)
    del dropped["decoder.0.attn.qkv_proj.bias"]
    with pytest.raises(ConversionError, match=r"decoder\.0\.attn\.qkv_proj\.bias"):
        from_torch(model, dropped)
    renamed = dict(sd)
    renamed["perceiver.attn.q_proj.wieght"] = renamed.pop("perceiver.attn.q_proj.weight")
    with pytest.raises(ConversionError) as info:
        from_torch(model, renamed)
    assert "perceiver.attn.q_proj.wieght" in str(info.value) and "perceiver.attn.q_proj.weight" in str(info.value)


def test_released_shapes_and_counts():
    vae_keys = partpacker_keys("partpacker_vae_keys.txt")
    got = expected_state_dict_shapes(VecSetVAE())
    assert len(got) == 244 and got == vae_keys
    assert sum(int(np.prod(s)) for s in got.values()) == 340_296_833
    dit_keys = partpacker_keys("partpacker_dit_keys.txt", strip_prefix="dit.")
    dit = VecSetDiT(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
                    qknorm_type="RMSNorm", use_pos_embed=False, use_parts=True, part_embed_mode="part2_only")
    got = expected_state_dict_shapes(dit)
    assert len(got) == 537 and got == dit_keys
    assert sum(int(np.prod(s)) for s in got.values()) == 1_249_511_488


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs,name", [
    (dict(hidden_dim=60, num_heads=8), "hidden_dim"),
    (dict(dec_num_heads=7), "dec_hidden_dim"),
    (dict(query_num_heads=5), "query_hidden_dim"),
    (dict(salient_attn_mode="triple"), "salient_attn_mode"),
    (dict(qknorm_type="GroupNorm"), "qknorm_type"),
    (dict(fourier_version="v4"), "fourier_version"),
    (dict(point_fourier_dim=50), "point_fourier_dim"),
])
def test_vae_config_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VecSetVAE(**dict(TINY_VAE, **kwargs))


@pytest.mark.parametrize("kwargs,name", [
    (dict(hidden_dim=60, num_heads=8), "hidden_dim"),
    (dict(qknorm_type="BatchNorm"), "qknorm_type"),
    (dict(part_embed_mode="tokens"), "part_embed_mode"),
])
def test_dit_config_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VecSetDiT(**kwargs)


def test_input_errors():
    model = VecSetVAE(**TINY_VAE)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *[
        jnp.zeros(s.shape, s.dtype) for s in model.example_inputs()], method="init_all"))
    data = {k: jnp.asarray(v) for k, v in _vae_data(np.random.default_rng(0), b=1, n=8, m=8, n_fps=4,
                                                     m_fps=4, q=3).items()}

    def encode(d):
        return jax.eval_shape(lambda v: model.apply(v, d, method="encode"), variables)

    encode(data)
    with pytest.raises(ValueError, match="pointcloud"):
        encode(dict(data, pointcloud=jnp.zeros((1, 8, 4))))
    with pytest.raises(ValueError, match="fps_indices"):
        encode(dict(data, fps_indices=data["fps_indices"].astype(jnp.float32)))
    with pytest.raises(ValueError, match="fps_indices_dorases"):
        encode(dict(data, fps_indices_dorases=jnp.zeros((1, 4))))
    with pytest.raises(ValueError, match="pointcloud_dorases"):
        encode({k: v for k, v in data.items() if k != "pointcloud_dorases"})
    with pytest.raises(ValueError, match="latent"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 4, 7)), method="decode"), variables)
    with pytest.raises(ValueError, match="query_points"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 4)), jnp.zeros((1, 4, 64)), method="query"),
                       variables)
    dit = VecSetDiT(hidden_dim=32, num_heads=4, latent_size=8, latent_dim=4, num_layers=1)
    dvars = jax.eval_shape(lambda: dit.init(jax.random.key(0), *[jnp.zeros(s.shape, s.dtype)
                                                                  for s in dit.example_inputs()]))
    with pytest.raises(ValueError, match="x must"):
        jax.eval_shape(lambda v: dit.apply(v, jnp.zeros((1, 8, 5)), jnp.zeros((1, 3, 32)), jnp.zeros((1,))), dvars)
    with pytest.raises(ValueError, match="c must"):
        jax.eval_shape(lambda v: dit.apply(v, jnp.zeros((1, 8, 4)), jnp.zeros((1, 3, 31)), jnp.zeros((1,))), dvars)
