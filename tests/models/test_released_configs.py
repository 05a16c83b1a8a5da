"""Released full-size configs (TRELLIS and PartPacker), checked with jax.eval_shape only (no memory): state_dict key
sets and shapes equal the upstream checkpoint key lists, and parameter counts are exact."""

import jax
import numpy as np
import pytest

from jaxshape.convert.state_dict import abstract_variables, expected_state_dict_shapes
from jaxshape.models import build
from jaxshape.models.released import RELEASED
from tests.utils import REPO, partpacker_keys, trellis_key_sections

SECTION = {
    "ss_enc_conv3d_16l8_fp16": "ss_enc", "ss_dec_conv3d_16l8_fp16": "ss_dec",
    "ss_flow_img_dit_L_16l8_fp16": "ss_flow_img_dit_L_16l8_fp16",
    "ss_flow_txt_dit_B_16l8_fp16": "ss_flow_txt_dit_B_16l8_fp16",
    "ss_flow_txt_dit_L_16l8_fp16": "ss_flow_txt_dit_L_16l8_fp16",
    "ss_flow_txt_dit_XL_16l8_fp16": "ss_flow_txt_dit_XL_16l8_fp16",
}
PARAMS = {
    "ss_enc_conv3d_16l8_fp16": 59_298_192, "ss_dec_conv3d_16l8_fp16": 73_671_201,
    "ss_flow_img_dit_L_16l8_fp16": 555_543_560, "ss_flow_txt_dit_B_16l8_fp16": 156_726_536,
    "ss_flow_txt_dit_L_16l8_fp16": 542_960_648, "ss_flow_txt_dit_XL_16l8_fp16": 975_440_648,
    "partpacker_vae": 340_296_833, "partpacker_dit": 1_249_511_488,
    "ss_flow_img_dit_1_3B_64_bf16": 1_292_179_976,  # trellis_sparse_structure.md §12.1 (upstream instantiated)
}


def _released_keys(name):
    if name == "ss_flow_img_dit_1_3B_64_bf16":  # no key list was published: our mirror on the meta device
        import torch

        from tests.torch_reference import trellis2_ss_flow as T2

        args = {k: v for k, v in RELEASED[name][1].items() if k != "upstream"}
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in T2.SparseStructureFlowModel(**args).state_dict().items()}
    if name == "partpacker_vae":
        return partpacker_keys("partpacker_vae_keys.txt")
    if name == "partpacker_dit":
        return partpacker_keys("partpacker_dit_keys.txt", strip_prefix="dit.")
    return {k: shape for k, (shape, _, _) in trellis_key_sections()[SECTION[name]]["keys"].items()}


@pytest.mark.parametrize("name", sorted(n for n, (cls, _) in RELEASED.items() if cls != "DinoViT"))
def test_released_keys_and_parameter_count(name):  # the DINO encoders: tests/convert/test_dino_convert.py
    module = build(name)
    assert expected_state_dict_shapes(module) == _released_keys(name)
    params = abstract_variables(module)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == PARAMS[name]


def test_released_torso_dtype_follows_use_fp16_and_dtype_override():
    import jax.numpy as jnp

    from jaxshape.models.sparse_structure_vae import torso_dtype

    assert torso_dtype(None, True) == jnp.float16
    assert torso_dtype(jnp.bfloat16, True) == jnp.bfloat16
    assert build("ss_flow_txt_dit_B_16l8_fp16", dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_configs_module_exposes_released_args():
    import importlib.util

    spec = importlib.util.spec_from_file_location("released_cfg", REPO / "configs" / "released.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("ss_flow_txt_dit_XL_16l8_fp16")
    assert cfg.name == "SparseStructureFlowModel" and cfg.args.qk_rms_norm_cross and cfg.args.model_channels == 1280
    assert set(mod.available()) == set(RELEASED)
