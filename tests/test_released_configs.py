"""Released full-size TRELLIS configs, checked with jax.eval_shape only (no memory): state_dict key sets and
shapes equal the upstream checkpoint key lists, and parameter counts are exact."""
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxshape.convert.state_dict import abstract_variables, expected_state_dict_shapes
from jaxshape.models.released import RELEASED, build_released

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "checkpoint_keys" / "trellis_ss_keys_all.txt"

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
}


def _key_file_sections():
    if not KEYS_FILE.exists():
        pytest.skip(f"{KEYS_FILE} not found (shared/ is expected beside the repository)")
    sections, cur = {}, None
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#####"):
            cur = sections[line[5:].split(":")[0].strip()] = {}
        elif line.strip():
            key, shape = line.strip().split("\t")[:2]
            cur[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return sections


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_keys_and_parameter_count(name):
    sections = _key_file_sections()
    module = build_released(name)
    assert expected_state_dict_shapes(module) == sections[SECTION[name]]
    params = abstract_variables(module)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == PARAMS[name]


def test_released_torso_dtype_follows_use_fp16_and_dtype_override():
    import jax.numpy as jnp

    from jaxshape.models.sparse_structure_vae import torso_dtype

    assert torso_dtype(None, True) == jnp.float16
    assert torso_dtype(jnp.bfloat16, True) == jnp.bfloat16
    assert build_released("ss_flow_txt_dit_B_16l8_fp16", dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_configs_module_exposes_released_args():
    import importlib.util

    spec = importlib.util.spec_from_file_location("released_cfg", Path(__file__).parents[1] / "configs" / "released.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("ss_flow_txt_dit_XL_16l8_fp16")
    assert cfg.name == "SparseStructureFlowModel" and cfg.args.qk_rms_norm_cross and cfg.args.model_channels == 1280
    assert set(mod.available()) == set(RELEASED)
