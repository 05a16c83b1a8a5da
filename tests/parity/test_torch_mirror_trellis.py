"""Checks for the PyTorch reference mirror of TRELLIS's sparse-structure models
(tests/torch_reference/trellis_ss.py): state_dict layout against the shipped key lists, plus small
functional checks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.torch_reference import trellis_ss as T
from tests.utils import trellis_key_sections

_FLOW_COMMON = dict(resolution=16, in_channels=8, out_channels=8, mlp_ratio=4, patch_size=1,
                    pe_mode="ape", qk_rms_norm=True, use_fp16=True)

CONFIGS = {
    "ss_enc": (T.SparseStructureEncoder,
               dict(in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2,
                    channels=[32, 128, 512], use_fp16=True), 59_298_192),
    "ss_dec": (T.SparseStructureDecoder,
               dict(out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2,
                    channels=[512, 128, 32], use_fp16=True), 73_671_201),
    "ss_flow_img_dit_L_16l8_fp16": (T.SparseStructureFlowModel,
               dict(_FLOW_COMMON, model_channels=1024, cond_channels=1024, num_blocks=24,
                    num_heads=16), 555_543_560),
    "ss_flow_txt_dit_B_16l8_fp16": (T.SparseStructureFlowModel,
               dict(_FLOW_COMMON, model_channels=768, cond_channels=768, num_blocks=12,
                    num_heads=12), 156_726_536),
    "ss_flow_txt_dit_L_16l8_fp16": (T.SparseStructureFlowModel,
               dict(_FLOW_COMMON, model_channels=1024, cond_channels=768, num_blocks=24,
                    num_heads=16), 542_960_648),
    "ss_flow_txt_dit_XL_16l8_fp16": (T.SparseStructureFlowModel,
               dict(_FLOW_COMMON, model_channels=1280, cond_channels=768, num_blocks=28,
                    num_heads=16, qk_rms_norm_cross=True), 975_440_648),
}


@pytest.fixture(scope="module")
def key_sections():
    return trellis_key_sections()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_matches_released_keys(name, key_sections):
    cls, kwargs, n_params = CONFIGS[name]
    assert name in key_sections
    expected = key_sections[name]
    with torch.device("meta"):
        model = cls(**kwargs)
    sd = model.state_dict()
    assert list(sd) == list(expected["keys"]), "state_dict keys (or their order) differ"
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for k, v in sd.items():
        shape, dtype, kind = expected["keys"][k]
        assert tuple(v.shape) == shape, (k, tuple(v.shape), shape)
        assert str(v.dtype) == dtype, (k, v.dtype, dtype)
        assert (k in params) == (kind == "param") and (k in buffers) == (kind == "buffer"), k
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == n_params == expected["params"]


# ------------------------------------------------------------------------------------------------
# spatial rearrangements
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_3d_index_rule(r):
    B, C, X, Y, Z = 2, 2, 2, 3, 2
    x = torch.arange(B * C * r ** 3 * X * Y * Z).reshape(B, C * r ** 3, X, Y, Z)
    out = T.pixel_shuffle_3d(x, r)
    assert out.shape == (B, C, r * X, r * Y, r * Z)
    for b, c, i, j, k, xx, yy, zz in itertools.product(
            range(B), range(C), range(r), range(r), range(r), range(X), range(Y), range(Z)):
        assert out[b, c, r * xx + i, r * yy + j, r * zz + k] == \
            x[b, c * r ** 3 + i * r * r + j * r + k, xx, yy, zz]


@pytest.mark.parametrize("p", [2, 3])
def test_patchify_index_rule_and_inverse(p):
    N, C, X, Y, Z = 2, 2, 2, 1, 3
    x = torch.arange(N * C * (p * X) * (p * Y) * (p * Z)).reshape(N, C, p * X, p * Y, p * Z)
    out = T.patchify(x, p)
    assert out.shape == (N, C * p ** 3, X, Y, Z)
    for n, c, i, j, k, xx, yy, zz in itertools.product(
            range(N), range(C), range(p), range(p), range(p), range(X), range(Y), range(Z)):
        assert out[n, c * p ** 3 + i * p * p + j * p + k, xx, yy, zz] == \
            x[n, c, p * xx + i, p * yy + j, p * zz + k]
    assert torch.equal(T.unpatchify(out, p), x)
    # upsample-by-pixel-shuffle is the same rule as unpatchify
    assert torch.equal(T.pixel_shuffle_3d(out, p), x)


# ------------------------------------------------------------------------------------------------
# small functional runs
# ------------------------------------------------------------------------------------------------

def _randomize_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(p.dtype))
    return model


def test_tiny_vae_forward():
    torch.manual_seed(0)
    enc = _randomize_(T.SparseStructureEncoder(1, 4, 1, [8, 16], num_res_blocks_middle=1)).eval()
    dec = _randomize_(T.SparseStructureDecoder(1, 4, 1, [16, 8], num_res_blocks_middle=1), 1).eval()
    x = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    with torch.no_grad():
        z, mean, logvar = enc(x, sample_posterior=False, return_raw=True)
        assert z.shape == mean.shape == logvar.shape == (2, 4, 4, 4, 4)
        assert torch.equal(z, mean)
        noise = torch.randn_like(mean)
        zs = enc(x, sample_posterior=True, noise=noise)
        torch.testing.assert_close(zs, mean + torch.exp(0.5 * logvar) * noise)
        logits = dec(z)
    assert logits.shape == (2, 1, 8, 8, 8)
    assert torch.isfinite(logits).all() and logits.abs().sum() > 0


def test_tiny_vae_fp16_torso_dtypes():
    enc = T.SparseStructureEncoder(1, 4, 1, [8, 16], num_res_blocks_middle=1, use_fp16=True)
    assert enc.blocks[0].conv1.weight.dtype == torch.float16
    assert enc.blocks[0].norm1.weight.dtype == torch.float32
    assert enc.input_layer.weight.dtype == torch.float32
    assert enc.out_layer[2].weight.dtype == torch.float32
    assert torch.count_nonzero(enc.blocks[0].conv2.weight) == 0


def _tiny_flow(pe_mode, **kw):
    torch.manual_seed(0)
    args = dict(resolution=8, in_channels=4, model_channels=48, cond_channels=32, out_channels=4,
                num_blocks=2, num_heads=2, patch_size=2, pe_mode=pe_mode, qk_rms_norm=True)
    args.update(kw)
    return T.SparseStructureFlowModel(**args)


@pytest.mark.parametrize("pe_mode,share_mod", [("ape", False), ("rope", False), ("rope", True)])
def test_tiny_flow_forward(pe_mode, share_mod):
    model = _tiny_flow(pe_mode, share_mod=share_mod, qk_rms_norm_cross=share_mod)
    keys = set(model.state_dict())
    assert ("pos_emb" in keys) == (pe_mode == "ape")
    assert not any("rope" in k for k in keys)
    x = torch.randn(2, 4, 8, 8, 8)
    t = torch.tensor([10.0, 900.0])
    cond = torch.randn(2, 5, 32)
    with torch.no_grad():
        out0 = model(x, t, cond)
        assert out0.shape == x.shape and torch.count_nonzero(out0) == 0   # zero-initialised out layer
        _randomize_(model)
        out = model(x, t, cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("pe_mode", ["ape", "rope"])
def test_tiny_flow_fp16_torso(pe_mode):
    model = _randomize_(_tiny_flow(pe_mode, use_fp16=True, qk_rms_norm_cross=True))
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.float16
    assert model.blocks[0].self_attn.q_rms_norm.gamma.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.input_layer.weight.dtype == torch.float32
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([250.0]), torch.randn(1, 5, 32))
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()


def test_tiny_flow_rope_is_position_dependent():
    """With RoPE the output must change when tokens are permuted (ape-free model is otherwise
    permutation-equivariant)."""
    model = _randomize_(_tiny_flow("rope", patch_size=1, resolution=4)).eval()
    x = torch.randn(1, 4, 4, 4, 4)
    t = torch.tensor([500.0])
    cond = torch.randn(1, 3, 32)
    with torch.no_grad():
        out = model(x, t, cond)
        out_perm = model(x.flip(2), t, cond).flip(2)
    assert not torch.allclose(out, out_perm, atol=1e-4)


def test_rope_phases_and_rotation():
    head_dim = 20                                   # freq_dim = 3, 9 active pairs + 1 padded pair
    rope = T.RotaryPositionEmbedder(head_dim, 3)
    coords = torch.tensor([[0, 0, 0], [1, 2, 3], [3, 1, 0]])
    ph = rope(coords)
    assert ph.shape == (3, head_dim // 2) and ph.dtype == torch.complex64
    freqs = 1.0 / 10000 ** (np.arange(3) / 3)
    ang = np.concatenate([coords.numpy()[:, a:a + 1] * freqs for a in range(3)], axis=1)
    np.testing.assert_allclose(torch.angle(ph[:, :9]).numpy(), np.angle(np.exp(1j * ang)), atol=1e-6)
    assert torch.equal(ph[:, 9], torch.ones(3, dtype=torch.complex64))
    q = torch.randn(2, 3, 4, head_dim)             # [B, L, H, D]
    qr = T.RotaryPositionEmbedder.apply_rotary_embedding(q, ph)
    norms = lambda v: v.reshape(*v.shape[:-1], -1, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(norms(qr), norms(q))
    assert torch.equal(qr[:, 0], q[:, 0])          # zero position: identity
    assert torch.equal(qr[..., 18:], q[..., 18:])  # padded pair untouched
    # explicit pair rotation for token 1, pair 0 (x-axis, freq 1): angle = 1
    c, s = np.cos(1.0), np.sin(1.0)
    a, b = q[..., 1, :, 0], q[..., 1, :, 1]
    torch.testing.assert_close(qr[..., 1, :, 0], a * c - b * s)
    torch.testing.assert_close(qr[..., 1, :, 1], a * s + b * c)
    # relative-position property: <R(p)q, R(p')k> depends only on p - p'
    k = torch.randn(head_dim)
    p0, p1 = torch.tensor([[1, 2, 3], [2, 0, 1]]), torch.tensor([[3, 4, 5], [4, 2, 3]])
    d0 = [(T.RotaryPositionEmbedder.apply_rotary_embedding(v[None, None], rope(p0[i:i + 1]))).flatten()
          for i, v in enumerate([q[0, 0, 0], k])]
    d1 = [(T.RotaryPositionEmbedder.apply_rotary_embedding(v[None, None], rope(p1[i:i + 1]))).flatten()
          for i, v in enumerate([q[0, 0, 0], k])]
    torch.testing.assert_close(d0[0] @ d0[1], d1[0] @ d1[1], atol=1e-5, rtol=1e-5)


def test_timestep_and_ape_embeddings():
    t = torch.tensor([0.0, 3.0])
    e = T.TimestepEmbedder.timestep_embedding(t, 256)
    f = np.exp(-np.log(10000) * np.arange(128) / 128)
    np.testing.assert_allclose(e.numpy(), np.concatenate(
        [np.cos(t.numpy()[:, None] * f), np.sin(t.numpy()[:, None] * f)], 1), atol=1e-5)
    ape = T.AbsolutePositionEmbedder(16, 3)        # fd = 2, 12 used + 4 zero padding
    coords = torch.tensor([[1, 2, 3]])
    pe = ape(coords)[0].numpy()
    w = 1.0 / 10000 ** (np.arange(2) / 2)
    ref = np.concatenate([np.concatenate([np.sin(c * w), np.cos(c * w)]) for c in (1, 2, 3)] + [np.zeros(4)])
    np.testing.assert_allclose(pe, ref, atol=1e-6)


def test_attention_layouts_and_rmsnorm():
    torch.manual_seed(0)
    C, H, D = 12, 3, 4
    attn = T.MultiHeadAttention(C, H, qk_rms_norm=True)
    with torch.no_grad():
        attn.q_rms_norm.gamma.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, C)
    q, k, v = attn.to_qkv(x).split(C, dim=-1)       # fused layout [q | k | v]
    q, k, v = (a.reshape(2, 5, H, D) for a in (q, k, v))
    q = q / q.norm(dim=-1, keepdim=True) * D ** 0.5 * attn.q_rms_norm.gamma
    k = k / k.norm(dim=-1, keepdim=True) * D ** 0.5
    w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / D ** 0.5, dim=-1)
    ref = attn.to_out(torch.einsum("bhlm,bmhd->blhd", w, v).reshape(2, 5, C))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)

    cross = T.MultiHeadAttention(C, H, ctx_channels=7, type="cross")
    ctx = torch.randn(2, 6, 7)
    k, v = cross.to_kv(ctx).split(C, dim=-1)         # fused layout [k | v]
    q = cross.to_q(x).reshape(2, 5, H, D)
    k, v = k.reshape(2, 6, H, D), v.reshape(2, 6, H, D)
    w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / D ** 0.5, dim=-1)
    ref = cross.to_out(torch.einsum("bhlm,bmhd->blhd", w, v).reshape(2, 5, C))
    torch.testing.assert_close(cross(x, ctx), ref, atol=1e-5, rtol=1e-5)
