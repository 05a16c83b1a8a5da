"""DINO checkpoints in every official layout -> the same Flax tree: torch-hub ``.pth``, HF safetensors with the
transformers 4.x (stored) and 5.x (in-memory) names, DINOv3's HF layout; strictness; the full-size key lists."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxshape.convert import ConversionError, from_torch, to_torch  # noqa: E402
from jaxshape.convert.cli import main as convert_main  # noqa: E402
from jaxshape.convert.dino import (  # noqa: E402
    dino_args_from_hf_config,
    dino_layout,
    from_hub_names,
    load_dino,
    to_hub_names,
)
from jaxshape.convert.state_dict import abstract_variables, expected_state_dict_shapes  # noqa: E402
from jaxshape.models import build, load  # noqa: E402
from tests.utils import CHECKPOINT_KEYS  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _numpy_sd(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _tiny(kind):
    from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    if kind == "dinov2_swiglu":
        cfg = Dinov2Config(**SMALL, image_size=56, patch_size=14, use_swiglu_ffn=True)
        return cfg, Dinov2Model(cfg).eval()
    if kind == "dinov2":
        cfg = Dinov2Config(**SMALL, image_size=56, patch_size=14)
        return cfg, Dinov2Model(cfg).eval()
    cfg = DINOv3ViTConfig(**SMALL, intermediate_size=64, num_register_tokens=4, patch_size=16, image_size=64)
    return cfg, DINOv3ViTModel(cfg).eval()


def _trees_equal(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (_, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _write_hf_folder(folder, cfg, state_dict):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("kind", ["dinov2_swiglu", "dinov2", "dinov3"])
def test_every_layout_gives_the_same_tree(kind, tmp_path):
    cfg, model = _tiny(kind)
    live = _numpy_sd(model)  # transformers 5.x in-memory names
    module = build("DinoViT", dino_args_from_hf_config(cfg.to_dict()))
    reference = from_torch(module, to_hub_names(live))
    hub = from_hub_names(to_hub_names(live), "hub")
    assert dino_layout(hub) == "hub"
    layout = "hf_dinov3" if kind == "dinov3" else "hf"
    stored = from_hub_names(to_hub_names(live), layout, "4.x")  # the names HF files hold
    if kind == "dinov3":
        assert all(not k.startswith("model.") for k in stored)
        assert not any(k.endswith("k_proj.bias") for k in stored)
    else:
        assert any("attention.attention.query" in k for k in stored)
    # 1. HF folder written with the stored names: our loader, and transformers' own, read it
    folder = tmp_path / "hf"
    _write_hf_folder(folder, cfg, stored)
    m2, v2 = load_dino(folder)
    assert m2 == module
    _trees_equal(v2, reference)
    loaded, info = type(model).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = torch.randn(1, 3, 56 if kind != "dinov3" else 64, 56 if kind != "dinov3" else 64)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(pixel_values=x).last_hidden_state.numpy(),
                                   model(pixel_values=x).last_hidden_state.numpy(), atol=1e-5)
    # 2. torch-hub .pth with the hub names
    pth = tmp_path / "hub.pth"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hub.items()}, pth)
    _, v3 = load_dino(pth, "DinoViT", **dino_args_from_hf_config(cfg.to_dict()))
    _trees_equal(v3, reference)
    # 3. to_torch is the inverse, in every layout
    back = to_torch(module, reference)
    assert set(back) == set(hub)
    for k in hub:
        np.testing.assert_array_equal(back[k], hub[k])
    for names in ("4.x", "5.x"):
        again = from_hub_names(back, layout, names)
        _trees_equal(from_torch(module, to_hub_names(again)), reference)
    if kind != "dinov3":
        live_again = from_hub_names(back, "hf", "5.x")
        assert set(live_again) == set(live)
        for k in live:
            np.testing.assert_array_equal(live_again[k], live[k])


def test_strict_lists_missing_unexpected_and_misshaped():
    cfg, model = _tiny("dinov2")
    module = build("DinoViT", dino_args_from_hf_config(cfg.to_dict()))
    sd = to_hub_names(_numpy_sd(model))
    del sd["mask_token"]  # every official file has it: a file without it is not an official one
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:-1]
    sd["head.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        from_torch(module, sd)
    msg = str(e.value)
    assert "missing" in msg and "mask_token" in msg
    assert "unexpected" in msg and "head.weight" in msg
    assert "mis-shaped" in msg and "blocks.0.attn.qkv.weight" in msg
    with pytest.raises(ValueError, match="not a DINOv2/DINOv3 state_dict"):
        to_hub_names({"foo.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="model_type"):
        dino_args_from_hf_config({"model_type": "vit", "patch_size": 16, "hidden_size": 8, "num_hidden_layers": 1,
                                  "num_attention_heads": 1, "layer_norm_eps": 1e-6})


def test_convert_cli_reads_an_hf_folder(tmp_path):
    cfg, model = _tiny("dinov2_swiglu")
    _write_hf_folder(tmp_path / "hf", cfg, _numpy_sd(model))  # 5.x names load too
    assert convert_main(["--weights", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 0
    module, variables = load(tmp_path / "out")
    m_ref, v_ref = load_dino(tmp_path / "hf")
    assert module == m_ref
    _trees_equal(variables, v_ref)


# ---------------------------------------------------------------------------------------------------------------
# full-size variants: key sets and parameter counts (jax.eval_shape, no memory)


def _listing_sections() -> dict[str, dict[str, tuple]]:
    sections, cur = {}, None
    for line in (CHECKPOINT_KEYS / "dinov2_keys.txt").read_text().splitlines():
        if line.startswith("## "):
            cur = sections[line[3:].split(":")[0].split(" (")[0]] = {}
        elif cur is not None and "\t" in line:
            key, shape = line.split("\t")
            cur[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return sections


def _fake_hub(module):
    """Zero-memory arrays of the hub shapes (broadcast views), to push through the layout renamers."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in expected_state_dict_shapes(module).items()}


LISTED = {
    # (variant, layout, names) -> listing section, tensors, elements
    ("dinov2_vitl14_reg", "hub", "4.x"): ("torch-hub dinov2_vitl14_reg", 344, 304_372_736),
    ("dinov2_vitg14", "hub", "4.x"): ("torch-hub dinov2_vitg14", 567, 1_136_480_768),
    ("dinov2_vitg14", "hf", "4.x"): ("HF Dinov2Model facebook/dinov2-giant, transformers 4.46.2 module names", 727,
                                     1_136_480_768),
    ("dinov2_vitg14", "hf", "5.x"): ("HF Dinov2Model giant, transformers 5.23.0 in-memory module names", 807,
                                     1_136_480_768),
    ("dinov2_vitl14_reg", "hf", "5.x"): (
        "HF Dinov2WithRegistersModel facebook/dinov2-with-registers-large, transformers 5.23.0 in-memory module names",
        440, 304_372_736),
}


@pytest.mark.parametrize("variant,layout,names", sorted(LISTED), ids=["-".join(k) for k in sorted(LISTED)])
def test_full_size_keys_equal_the_lists(variant, layout, names):
    section, tensors, elements = LISTED[(variant, layout, names)]
    listed = _listing_sections()[section]
    assert len(listed) == tensors
    module = build(variant)
    renamed = from_hub_names(_fake_hub(module), layout, names)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == listed
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_variables(module)))
    assert count == elements


def test_other_variants_follow_the_listed_ones():
    hub_l = expected_state_dict_shapes(build("dinov2_vitl14_reg"))
    assert expected_state_dict_shapes(build("dinov2_vitl14")) == {k: s for k, s in hub_l.items()
                                                                   if k != "register_tokens"}
    hub_g = expected_state_dict_shapes(build("dinov2_vitg14"))
    assert expected_state_dict_shapes(build("dinov2_vitg14_reg")) == {**hub_g, "register_tokens": (1, 4, 1536)}


def test_dinov3_vitl16_keys_equal_transformers():
    """facebook/dinov3-vitl16-pretrain-lvd1689m's architecture, instantiated by transformers on the meta device."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          patch_size=16, num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0,
                          query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True,
                          use_gated_mlp=False, hidden_act="gelu", image_size=224)
    with torch.device("meta"):
        hf = DINOv3ViTModel(cfg)
    stored = {k.removeprefix("model."): tuple(v.shape) for k, v in hf.state_dict().items()}
    module = build("dinov3_vitl16")
    renamed = from_hub_names(_fake_hub(module), "hf_dinov3")
    assert {k: tuple(v.shape) for k, v in renamed.items()} == stored
    hf_count = sum(int(np.prod(s)) for s in stored.values())
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_variables(module)))
    assert ours == hf_count + 24 * 1024  # the zero key third of each fused qkv bias
    built = build("DinoViT", dino_args_from_hf_config(cfg.to_dict()))
    assert built.clone(img_size=512) == module
