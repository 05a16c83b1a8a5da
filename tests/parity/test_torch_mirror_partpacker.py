"""Checks for the PyTorch PartPacker reference mirror (tests/torch_reference/partpacker.py)."""

import math

import numpy as np
import pytest
import torch

from tests.torch_reference import partpacker as pp
from tests.utils import partpacker_keys


def _shape_map(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _released_dit():
    return pp.DiT(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
                  qknorm_type="RMSNorm", use_pos_embed=False, use_parts=True, part_embed_mode="part2_only")


# ------------------------------------------------------------------------------------------- released key maps


def test_released_vae_keys_and_count():
    expected = partpacker_keys("partpacker_vae_keys.txt")
    assert len(expected) == 244
    with torch.device("meta"):
        model = pp.Model(pp.ModelConfig())
    assert _shape_map(model) == expected
    assert sum(p.numel() for p in model.parameters()) == 340_296_833


def test_released_dit_keys_and_count():
    expected = partpacker_keys("partpacker_dit_keys.txt", strip_prefix="dit.")
    assert len(expected) == 537
    with torch.device("meta"):
        dit = _released_dit()
    assert _shape_map(dit) == expected
    assert sum(p.numel() for p in dit.parameters()) == 1_249_511_488


# ------------------------------------------------------------------------------------------- functional checks


def test_fourier_v3_hand_values():
    p = (0.5, -0.25, 1.0)
    out = pp.fourier_encoding(torch.tensor([p], dtype=torch.float32), 48, "v3")[0].double().numpy()
    assert out.shape == (51,)
    expected = []
    for c in p:
        expected += [math.sin(c * 2.0**k) for k in range(8)]
        expected += [math.cos(c * 2.0**k) for k in range(8)]
    expected += list(p)
    np.testing.assert_allclose(out, np.array(expected), atol=2e-6)
    # spot values written out by hand: sin(0.5*4)=sin(2), cos(-0.25*8)=cos(2), sin(1*128)
    assert out[2] == pytest.approx(0.9092974268, abs=1e-6)
    assert out[16 + 8 + 3] == pytest.approx(-0.4161468365, abs=1e-6)
    assert out[32 + 7] == pytest.approx(0.7210377105, abs=1e-5)


def test_fourier_v1_v2_frequencies():
    x = torch.tensor([[1.0, 0.0, 0.0]])
    # spectrum of x=1 equals the frequency bands; recover them via atan2(sin, cos) mod 2pi
    for version, freqs in [("v1", [math.pi * 512 ** (k / 8) for k in range(1, 9)]),
                           ("v2", [math.pi * 1024 ** (k / 7) for k in range(8)])]:
        out = pp.fourier_encoding(x, 48, version)[0].double()
        ang = torch.atan2(out[:8], out[8:16]).numpy() % (2 * math.pi)
        np.testing.assert_allclose(ang, np.array(freqs) % (2 * math.pi), atol=2e-3)
        # y = z = 0 -> sin 0, cos 1
        np.testing.assert_allclose(out[16:24].numpy(), 0.0, atol=1e-7)
        np.testing.assert_allclose(out[24:32].numpy(), 1.0, atol=1e-7)


def test_self_attention_blocked_qkv_fullwidth_norm():
    torch.manual_seed(0)
    C, H, D = 16, 4, 4
    attn = pp.SelfAttention(C, H, qknorm=True, qknorm_type="LayerNorm")
    x = torch.randn(2, 5, C)
    qkv = x @ attn.qkv_proj.weight.T + attn.qkv_proj.bias
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]

    def ln(a):
        return (a - a.mean(-1, keepdim=True)) / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + 1e-6)

    q, k = ln(q), ln(k)
    q, k, v = (a.reshape(2, 5, H, D).transpose(1, 2) for a in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(2, 5, C) @ attn.out_proj.weight.T + attn.out_proj.bias
    torch.testing.assert_close(attn(x), o, atol=1e-5, rtol=1e-5)


def test_rmsnorm_fp32():
    norm = pp.RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 8)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(norm(x), ref)


def _tiny_cfg(**kw):
    base = dict(hidden_dim=64, num_heads=4, num_dec_layers=2, dec_hidden_dim=64, dec_num_heads=4,
                query_hidden_dim=64, query_num_heads=4, latent_dim=8)
    base.update(kw)
    return pp.ModelConfig(**base)


def _tiny_data(B=2, N=40, M=24, n_fps=8, m_fps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = {
        "pointcloud": torch.rand(B, N, 3, generator=g) * 2 - 1,
        "pointcloud_dorases": torch.rand(B, M, 3, generator=g) * 2 - 1,
        "fps_indices": torch.stack([torch.randperm(N, generator=g)[:n_fps] for _ in range(B)]),
        "fps_indices_dorases": torch.stack([torch.randperm(M, generator=g)[:m_fps] for _ in range(B)])
        if m_fps > 0 else torch.zeros(B, 0, dtype=torch.int64),
    }
    return data


@pytest.mark.parametrize(
    "cfg_kw",
    [
        dict(salient_attn_mode="dual"),
        dict(salient_attn_mode="dual_shared", qknorm_type="RMSNorm", fourier_version="v1"),
        dict(salient_attn_mode="single", use_flash_query=True, fourier_version="v2"),
        dict(use_salient_point=False, num_enc_layers=1, qknorm=False),
        dict(salient_attn_mode="dual", use_ae=True),
    ],
    ids=["dual", "dual_shared-rms-v1", "single-flash-v2", "no_salient-enc1-noqk", "dual-ae"],
)
def test_tiny_vae_roundtrip(cfg_kw):
    torch.manual_seed(0)
    cfg = _tiny_cfg(**cfg_kw)
    model = pp.Model(cfg).eval()
    data = _tiny_data()
    with torch.no_grad():
        post = model.encode(data)
        n_tok = 8 + (6 if cfg.use_salient_point else 0)
        assert post.mode().shape == (2, n_tok, 8)
        z = post.sample(noise=torch.zeros(2, n_tok, 8)) if not cfg.use_ae else post.sample()
        torch.testing.assert_close(z, post.mode())
        h = model.decode(z)
        assert h.shape == (2, n_tok, 64)
        pred = model.query(torch.rand(2, 33, 3) * 2 - 1, h)
    assert pred.shape == (2, 33, 1) and pred.dtype == torch.float32  # upstream query: [B, Q, 1]
    for t in (post.mode(), h, pred, post.kl()):
        assert torch.isfinite(t).all()
    if cfg.use_ae:
        assert isinstance(post, pp.DummyLatent) and post.kl().shape == ()
    else:
        assert post.kl().shape == (2,)


def test_dual_sums_two_residual_blocks():
    torch.manual_seed(0)
    model = pp.Model(_tiny_cfg(salient_attn_mode="dual")).eval()
    # zero both perceiver residual branches -> hidden = 2 * query  (the query enters the sum twice)
    with torch.no_grad():
        for blk in (model.perceiver, model.perceiver_dorases):
            for layer in (blk.attn.out_proj, blk.ff.net[2]):
                layer.weight.zero_()
                layer.bias.zero_()
        data = _tiny_data()
        pc = model.proj_input(model.fourier_encoding(data["pointcloud"]))
        pcs = model.proj_input(model.fourier_encoding(data["pointcloud_dorases"]))
        q = torch.cat([pp.Model._gather(pc, data["fps_indices"]),
                       pp.Model._gather(pcs, data["fps_indices_dorases"])], dim=1)
        expected = model.proj_down_mean(model.norm_down(2 * q))
        torch.testing.assert_close(model.encode(data).mode(), expected)


@pytest.mark.parametrize("mode", ["dual", "dual_shared", "single"])
def test_empty_salient_sets(mode):
    torch.manual_seed(0)
    model = pp.Model(_tiny_cfg(salient_attn_mode=mode)).eval()
    data = _tiny_data(M=0, m_fps=0)
    data["pointcloud_dorases"] = torch.zeros(2, 0, 3)
    with torch.no_grad():
        post = model.encode(data)
    assert post.mode().shape == (2, 8, 8)
    assert torch.isfinite(post.mode()).all()


def test_gaussian_posterior():
    zeros = torch.zeros(2, 5, 4)
    post = pp.DiagonalGaussianDistribution(zeros, zeros)
    assert post.kl().shape == (2,)
    torch.testing.assert_close(post.kl(), torch.zeros(2))
    noise = torch.randn(2, 5, 4)
    torch.testing.assert_close(post.sample(noise=noise), noise)
    mean = torch.full((1, 2, 3), 2.0)
    logvar = torch.full((1, 2, 3), 100.0)  # clamped to 20
    post = pp.DiagonalGaussianDistribution(mean, logvar)
    assert post.logvar.max().item() == 20.0
    expected_kl = 0.5 * (4.0 + math.exp(20.0) - 1.0 - 20.0)
    assert post.kl().item() == pytest.approx(expected_kl, rel=1e-5)
    torch.testing.assert_close(post.sample(noise=torch.ones(1, 2, 3)), mean + math.exp(10.0))


@pytest.mark.parametrize("part_mode", ["part2_only", "part", "element"])
def test_tiny_dit_forward(part_mode):
    torch.manual_seed(0)
    L = 6
    dit = pp.DiT(hidden_dim=32, num_heads=4, latent_size=2 * L if part_mode == "element" else L, latent_dim=8,
                 num_layers=2, qknorm=True, qknorm_type="RMSNorm", use_parts=True, part_embed_mode=part_mode).eval()
    # upstream init zeroes proj_out -> output exactly 0
    x, c, t = torch.randn(2, 2 * L, 8), torch.randn(2, 7, 32), torch.tensor([1000.0, 250.0])
    with torch.no_grad():
        assert torch.count_nonzero(dit(x, c, t)) == 0
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
        out = dit(x, c, t)
    assert out.shape == (2, 2 * L, 8)
    assert torch.isfinite(out).all()


def test_dit_part2_only_affects_second_half():
    torch.manual_seed(0)
    dit = pp.DiT(hidden_dim=32, num_heads=4, latent_size=4, latent_dim=8, num_layers=1, use_parts=True,
                 part_embed_mode="part2_only").eval()
    x = torch.randn(1, 8, 8)
    with torch.no_grad():
        h = dit.proj_in(x)
        h[:, 4:] += dit.part_embed[0]
        # replicate the first stage through a hook on layer 0 input
        seen = {}
        dit.layers[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone()))
        dit(x, torch.randn(1, 3, 32), torch.tensor([500.0]))
    torch.testing.assert_close(seen["x"], h)


def test_timestep_embedding_order():
    emb = pp.TimestepEmbedder.timestep_embedding(torch.tensor([0.0, 3.0]), 256)
    assert emb.shape == (2, 256)
    torch.testing.assert_close(emb[0, :128], torch.ones(128))  # cos first
    torch.testing.assert_close(emb[0, 128:], torch.zeros(128))
    assert emb[1, 128].item() == pytest.approx(math.sin(3.0), abs=1e-6)
    assert emb[1, 1].item() == pytest.approx(math.cos(3.0 * math.exp(-math.log(1e4) / 128)), abs=1e-6)
