"""TRELLIS.2's sparse-structure flow (``SparseStructureFlowModel(upstream="trellis2")``) against our PyTorch mirror
of ``trellis2/models/sparse_structure_flow.py`` (tests/torch_reference/trellis2_ss_flow.py): forward parity with the
checkpoint's complex ``rope_phases`` buffer, the released 1.3 B config's key set and parameter count, the
``scaled`` initialisation rule, the bf16 torso."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshape.convert import expected_state_dict_shapes, from_torch, to_torch
from jaxshape.models import SparseStructureFlowModel, build
from jaxshape.models.released import released_args
from tests.torch_reference import trellis2_ss_flow as T2
from tests.utils import max_rel_err, ncdhw

CASES = {
    # head_dim 16: freq_dim 2 per axis, 6 rotated pairs + 2 padded ones
    "rope-sharemod-scaled": dict(pe_mode="rope", share_mod=True, initialization="scaled", qk_rms_norm=True,
                                 qk_rms_norm_cross=True, mlp_ratio=5.3334, rope_freq=(1.0, 10000.0)),
    "rope-freq": dict(pe_mode="rope", rope_freq=(2.0, 100.0), qk_rms_norm=True),
    "ape": dict(pe_mode="ape"),
}
TINY = dict(resolution=4, in_channels=4, out_channels=4, model_channels=32, cond_channels=24, num_blocks=2,
            num_heads=2)


def _randomized(tmodel, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in tmodel.state_dict().items():
        if k in ("rope_phases", "pos_emb"):
            sd[k] = v.clone()
            continue
        std = v.shape[-1] ** -0.5 if v.ndim >= 2 else 0.3
        sd[k] = torch.randn(v.shape, generator=g) * std + (1.0 if k.endswith(("gamma", "norm2.weight")) else 0.0)
    tmodel.load_state_dict(sd)
    return {k: v.numpy() for k, v in sd.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_mirror(case):
    args = dict(TINY, **CASES[case])
    torch.manual_seed(0)
    tmodel = T2.SparseStructureFlowModel(**args).eval()
    sd = _randomized(tmodel, 1)
    assert ("rope_phases" in sd) == (args["pe_mode"] == "rope")
    if "rope_phases" in sd:
        assert sd["rope_phases"].dtype == np.complex64 and sd["rope_phases"].shape == (64, 8)
    model = SparseStructureFlowModel(**args, upstream="trellis2")
    variables = from_torch(model, sd)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 4, 4, 4)).astype(np.float32)
    t = np.array([15.0, 870.0], np.float32)
    cond = rng.standard_normal((2, 6, 24)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(ncdhw(x)), torch.from_numpy(t), torch.from_numpy(cond)).numpy()
    with jax.default_matmul_precision("highest"):
        out = model.apply(variables, jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))
    assert max_rel_err(ncdhw(out), ref) <= 1e-5
    back = to_torch(model, variables)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    if args["pe_mode"] == "rope":  # the buffer jaxshape builds equals upstream's to float32 rounding
        built = model.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))["buffers"]
        np.testing.assert_allclose(np.asarray(built["rope_phases"]), sd["rope_phases"], atol=2e-6)


def test_released_1_3b_key_set():  # the parameter count: tests/models/test_released_configs.py
    _, args = released_args("ss_flow_img_dit_1_3B_64_bf16")
    with torch.device("meta"):
        tmodel = T2.SparseStructureFlowModel(**{k: v for k, v in args.items() if k != "upstream"})
    ref = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    got = {k: tuple(v) for k, v in expected_state_dict_shapes(build("ss_flow_img_dit_1_3B_64_bf16")).items()}
    assert got == ref
    assert ref["rope_phases"] == (4096, 64) and ref["blocks.0.modulation"] == (9216,)
    assert ref["blocks.0.mlp.mlp.0.weight"] == (8192, 1536)  # int(1536 * 5.3334)


def test_scaled_initialisation():
    args = dict(TINY, model_channels=64, num_heads=4, num_blocks=3, pe_mode="rope", share_mod=True,
                initialization="scaled", qk_rms_norm=True)
    model = SparseStructureFlowModel(**args, upstream="trellis2")
    x, t, c = (jnp.zeros(s.shape) for s in model.example_inputs(cond_tokens=4))
    p = jax.tree.map(np.asarray, model.init(jax.random.key(3), x, t, c)["params"])
    p = jax.tree.map(lambda a: a.value if hasattr(a, "value") else a, p,
                     is_leaf=lambda a: hasattr(a, "value"))
    blocks = p["blocks"]
    np.testing.assert_allclose(blocks["self_attn"]["to_qkv"]["kernel"].std(), np.sqrt(2 / (5 * 64)), rtol=0.1)
    np.testing.assert_allclose(blocks["mlp"]["mlp_0"]["kernel"].std(), np.sqrt(2 / (5 * 64)), rtol=0.1)
    for out in (blocks["self_attn"]["to_out"], blocks["cross_attn"]["to_out"], blocks["mlp"]["mlp_2"]):
        np.testing.assert_allclose(out["kernel"].std(), 1 / np.sqrt(5 * 3 * 64), rtol=0.1)
    np.testing.assert_allclose(p["input_layer"]["kernel"].std(), 1 / np.sqrt(4), rtol=0.25)
    np.testing.assert_allclose(p["t_embedder"]["mlp_0"]["kernel"].std(), 0.02, rtol=0.1)
    np.testing.assert_allclose(blocks["modulation"].std(), 1 / np.sqrt(64), rtol=0.1)
    assert not p["adaLN_modulation_1"]["kernel"].any() and not p["out_layer"]["kernel"].any()
    assert not blocks["self_attn"]["to_qkv"]["bias"].any()


def test_bfloat16_torso_and_errors():
    args = dict(TINY, **CASES["rope-sharemod-scaled"])
    tmodel = T2.SparseStructureFlowModel(**args).eval()
    sd = _randomized(tmodel, 4)
    model = SparseStructureFlowModel(**args, upstream="trellis2")
    variables = from_torch(model, sd)
    x, t, c = (jnp.asarray(np.random.default_rng(0).standard_normal(s.shape), jnp.float32)
               for s in model.example_inputs(batch_size=1, cond_tokens=6))
    out32 = model.apply(variables, x, t * 500, c)
    out16 = model.clone(dtype=jnp.bfloat16).apply(variables, x, t * 500, c)
    assert out16.dtype == jnp.float32 and 0 < max_rel_err(out16, out32) < 0.05
    with pytest.raises(ValueError, match="no patchify"):
        SparseStructureFlowModel(**TINY, patch_size=2, upstream="trellis2")
    with pytest.raises(ValueError, match="upstream must be"):
        SparseStructureFlowModel(**TINY, upstream="trellis3")
