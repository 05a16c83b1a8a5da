"""DinoViT against real third-party code: transformers' Dinov2Model (SwiGLU, ViT-g-like), Dinov2WithRegistersModel
(MLP, ViT-L-reg-like) and DINOv3ViTModel (RoPE), built from tiny random configs (no download), LayerScale and the
LayerNorm affines randomised; the position-table interpolation rules against torch.nn.functional.interpolate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxshape.convert import from_torch  # noqa: E402
from jaxshape.convert.dino import dino_args_from_hf_config, to_hub_names  # noqa: E402
from jaxshape.models import DinoViT, build, image_condition  # noqa: E402
from jaxshape.nn import position_interpolation_matrix, resample_position_table  # noqa: E402

WIDTH, LAYERS, HEADS = 64, 2, 4


def _randomise(model: "torch.nn.Module", seed: int = 0) -> None:
    """LayerScale, LN affines, CLS / register / position tokens away from their 1 / 0 / tiny defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "lambda1" in name or ("norm" in name and name.endswith("weight")):
                p.copy_(1.0 + 0.3 * noise)
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif any(s in name for s in ("cls_token", "register_tokens", "position_embeddings")):
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
    model.eval()


def _hf_model(kind: str):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        DINOv3ViTConfig,
        DINOv3ViTModel,
    )

    common = dict(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    if kind == "dinov2_swiglu":  # ViT-g/14's layout (PartPacker)
        cfg = Dinov2Config(**common, image_size=518, patch_size=14, use_swiglu_ffn=True)
        model = Dinov2Model(cfg)
    elif kind == "dinov2_reg":  # ViT-L/14-reg's layout (TRELLIS)
        cfg = Dinov2WithRegistersConfig(**common, image_size=518, patch_size=14, num_register_tokens=4)
        model = Dinov2WithRegistersModel(cfg)
    elif kind == "dinov3":  # ViT-L/16's layout (TRELLIS.2)
        cfg = DINOv3ViTConfig(**common, intermediate_size=4 * WIDTH, num_register_tokens=4, patch_size=16)
        model = DINOv3ViTModel(cfg)
    elif kind == "dinov3_gated":
        cfg = DINOv3ViTConfig(**common, intermediate_size=3 * WIDTH, num_register_tokens=0, patch_size=16,
                              use_gated_mlp=True, hidden_act="silu")
        model = DINOv3ViTModel(cfg)
    else:
        raise ValueError(kind)
    _randomise(model)
    return cfg, model


def _final_norm_name(kind):
    return "norm" if kind.startswith("dinov3") else "layernorm"


def _reference(kind, model, x_nchw):
    """HF outputs: last_hidden_state (= x_norm) and, with the final norm replaced by Identity, x_prenorm."""
    with torch.no_grad():
        x_norm = model(pixel_values=x_nchw).last_hidden_state.numpy()
        name = _final_norm_name(kind)
        final = getattr(model, name)
        setattr(model, name, torch.nn.Identity())
        try:
            x_prenorm = model(pixel_values=x_nchw).last_hidden_state
        finally:
            setattr(model, name, final)
        cond = torch.nn.functional.layer_norm(x_prenorm, (x_prenorm.shape[-1],)).numpy()
    return x_prenorm.numpy(), x_norm, cond


def _ours(cfg, model):
    module = build("DinoViT", dino_args_from_hf_config(cfg.to_dict()))
    return module, from_torch(module, to_hub_names(model.state_dict()))


SIZES = {
    "dinov2_swiglu": [(518, 518), (224, 224), (518, 364)],
    "dinov2_reg": [(518, 518), (224, 224), (518, 364)],
    "dinov3": [(512, 512), (224, 224), (512, 384)],
    "dinov3_gated": [(256, 192)],
}
CASES = [(k, s) for k, sizes in SIZES.items() for s in sizes]


@pytest.mark.parametrize("kind,size", CASES, ids=[f"{k}-{h}x{w}" for k, (h, w) in CASES])
def test_matches_transformers(kind, size, highest_matmul_precision):
    cfg, model = _hf_model(kind)
    module, variables = _ours(cfg, model)
    h, w = size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    ref_prenorm, ref_norm, ref_cond = _reference(kind, model, x)
    out = module.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert out["x_prenorm"].shape == (1, module.num_tokens(h, w), WIDTH) == ref_prenorm.shape
    tol = 1e-5 * max(1.0, float(np.abs(ref_prenorm).max()))
    assert float(np.abs(np.asarray(out["x_prenorm"]) - ref_prenorm).max()) <= tol
    assert float(np.abs(np.asarray(out["x_norm"]) - ref_norm).max()) <= 1e-5 * max(1.0, float(np.abs(ref_norm).max()))
    cond = image_condition(out)
    assert cond.dtype == jnp.float32
    assert float(np.abs(np.asarray(cond) - ref_cond).max()) <= 2e-5


def test_condition_taps_and_registers():
    module = build("dinov2_tiny", depth=1)
    x = jax.random.normal(jax.random.key(0), (2, 56, 42, 3))
    variables = module.init(jax.random.key(1), x)
    out = module.apply(variables, x)
    assert out["x_prenorm"].shape == (2, 1 + 4 + 4 * 3, 96)
    full = image_condition(out)
    pre = np.asarray(out["x_prenorm"], np.float64)
    centred = pre - pre.mean(-1, keepdims=True)
    expected = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5)  # no affine, eps 1e-5
    np.testing.assert_allclose(np.asarray(full), expected, atol=2e-5)
    no_reg = image_condition(out, num_register_tokens=4, keep_registers=False)
    assert no_reg.shape == (2, 1 + 12, 96)
    np.testing.assert_array_equal(np.asarray(no_reg[:, 1:]), np.asarray(full[:, 5:]))
    np.testing.assert_array_equal(np.asarray(image_condition(out, "last_hidden_state")), np.asarray(out["x_norm"]))
    assert image_condition(out, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="tap must be one of"):
        image_condition(out, "patch_tokens")


def test_bad_inputs_are_named():
    module = build("dinov2_tiny", depth=1)
    variables = module.init(jax.random.key(1), jnp.zeros((1, 28, 28, 3)))
    with pytest.raises(ValueError, match="multiple of patch_size 14"):
        module.apply(variables, jnp.zeros((1, 30, 28, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        module.apply(variables, jnp.zeros((1, 3, 28, 28)))
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        DinoViT(pos_embed="sincos")
    with pytest.raises(ValueError, match="interpolate_mode must be one of"):
        DinoViT(interpolate_mode="bilinear")


def test_bf16_drift_is_small():
    """The bf16 encoder (PartPacker runs its DINO so) against fp32 on the conditioning tokens of a 12-layer model:
    the spec measured mean |Δ| 0.007 and min per-token cosine 0.9998 at this depth."""
    cfg = dict(img_size=224, patch_size=14, embed_dim=128, depth=12, num_heads=4, num_register_tokens=4)
    f32 = DinoViT(**cfg)
    x = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
    variables = f32.init(jax.random.key(1), x)
    ref = np.asarray(image_condition(f32.apply(variables, x)))
    low = np.asarray(image_condition(DinoViT(**cfg, dtype=jnp.bfloat16).apply(variables, x)))
    assert float(np.abs(low - ref).mean()) <= 0.02
    cos = (low * ref).sum(-1) / (np.linalg.norm(low, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert float(cos.min()) >= 0.999


# ---------------------------------------------------------------------------------------------------------------
# the four interpolation rules of the position table

TORCH_CALL = {
    "hub_offset": lambda t, r, c: torch.nn.functional.interpolate(
        t, scale_factor=((r + 0.1) / 37, (c + 0.1) / 37), mode="bicubic", antialias=False),
    "antialias": lambda t, r, c: torch.nn.functional.interpolate(
        t, size=(r, c), mode="bicubic", antialias=True, align_corners=False),
    "size": lambda t, r, c: torch.nn.functional.interpolate(
        t, size=(r, c), mode="bicubic", antialias=False, align_corners=False),
}


@pytest.mark.parametrize("mode", sorted(TORCH_CALL))
@pytest.mark.parametrize("rows,cols", [(16, 16), (37, 26), (74, 74), (37, 37), (26, 37)])
def test_interpolation_matches_torch(mode, rows, cols, highest_matmul_precision):
    grid = torch.randn(1, 8, 37, 37, generator=torch.Generator().manual_seed(3))
    ref = TORCH_CALL[mode](grid, rows, cols)[0].numpy().transpose(1, 2, 0)
    wh = position_interpolation_matrix(37, rows, mode)
    ww = position_interpolation_matrix(37, cols, mode)
    ours = np.einsum("hi,ijc,wj->hwc", wh, grid[0].numpy().transpose(1, 2, 0), ww)
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) <= 2e-5


def test_native_size_table_is_returned_unchanged():
    table = jax.random.normal(jax.random.key(0), (1, 1 + 37 * 37, 8))
    assert resample_position_table(table, 37, 37, 37, "hub_offset") is table
    # a non-square input with one native side is still resampled on that side (hub rule), unlike "size"
    resampled = resample_position_table(table, 37, 37, 26, "hub_offset")
    assert float(jnp.abs(resampled[0, 1:].reshape(37, 26, 8)[:, 0] - table[0, 1:].reshape(37, 37, 8)[:, 0]).max()) > 0
    np.testing.assert_allclose(position_interpolation_matrix(37, 37, "size"), np.eye(37), atol=1e-7)
    np.testing.assert_allclose(position_interpolation_matrix(37, 37, "antialias"), np.eye(37), atol=1e-7)
