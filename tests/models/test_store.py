"""The model front door: ``build`` by class or released name, ``save`` / ``load`` round trips, folders of saved
models, and the errors that name what a path holds. (Training workdirs: tests/trainer/test_sample.py.)"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape.models import (
    MODEL_CLASSES,
    SparseStructureDecoder,
    SparseStructureFlowModel,
    build,
    components,
    load,
    load_all,
    model_spec,
    save,
)
from jaxshape.models.released import RELEASED

FLOW = dict(resolution=4, in_channels=4, model_channels=32, cond_channels=16, out_channels=4, num_blocks=2,
            num_heads=2, patch_size=1, qk_rms_norm=True)
DEC = dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=(8, 4))


def _init(module, seed=0):
    inputs = [jnp.zeros(s.shape, s.dtype) for s in module.example_inputs()]
    return jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(module.init)(jax.random.key(seed), *inputs)))


def test_build_by_class_or_released_name_and_spec_round_trip():
    assert set(MODEL_CLASSES) == {"SparseStructureEncoder", "SparseStructureDecoder", "SparseStructureFlowModel",
                                  "VecSetVAE", "VecSetDiT", "DinoViT"}
    released = build("ss_flow_txt_dit_B_16l8_fp16", use_fp16=False, dtype="bfloat16")
    assert released.model_channels == 768 and released.dtype == jnp.bfloat16 and not released.use_fp16
    assert build(**model_spec(released)) == released
    for name in RELEASED:
        assert build(**json.loads(json.dumps(model_spec(build(name))))) == build(name)
    with pytest.raises(ValueError, match=r"unknown model 'DiagonalGaussian'"):
        build("DiagonalGaussian", {})
    with pytest.raises(ValueError, match=r"SparseStructureDecoder: unknown constructor argument\(s\) \['chanels'\]"):
        build("SparseStructureDecoder", dict(DEC, chanels=(4,)))


def test_save_load_round_trip_with_buffers(tmp_path):
    flow = SparseStructureFlowModel(**FLOW)
    variables = _init(flow)
    assert set(variables) == {"params", "buffers"}
    save(tmp_path / "flow", flow, variables)
    module, loaded = load(tmp_path / "flow")
    assert module == flow
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))
    x, t, c = jnp.ones((1, 4, 4, 4, 4)), jnp.array([300.0]), jnp.ones((1, 3, 16))
    np.testing.assert_array_equal(module.apply(loaded, x, t, c), flow.apply(variables, x, t, c))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save(tmp_path / "flow", flow, variables)
    bf, bv = load(tmp_path / "flow", param_dtype="bfloat16", dtype=jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16 and all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(bv["params"]))


def test_folder_of_saved_models_and_which(tmp_path):
    save(tmp_path / "both" / "ss_dec", SparseStructureDecoder(**DEC), _init(SparseStructureDecoder(**DEC)))
    save(tmp_path / "both" / "flow", SparseStructureFlowModel(**FLOW), _init(SparseStructureFlowModel(**FLOW)))
    assert components(tmp_path / "both") == {"flow": "SparseStructureFlowModel", "ss_dec": "SparseStructureDecoder"}
    with pytest.raises(ValueError, match="holds several models"):
        load(tmp_path / "both")
    dec, _ = load(tmp_path / "both", "SparseStructureDecoder")
    assert dec == SparseStructureDecoder(**DEC)
    assert set(load_all(tmp_path / "both")) == {"flow", "ss_dec"}
    with pytest.raises(ValueError, match="no single component 'VecSetVAE'"):
        load(tmp_path / "both", "VecSetVAE")
    with pytest.raises(FileNotFoundError, match="holds no jaxshape model"):
        load(tmp_path)  # two levels down is not searched
