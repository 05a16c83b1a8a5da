"""Conversion: strictness, exact round trips, fp16 casting, file readers, the converter CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape.convert import ConversionError, from_torch, load_state_dict, to_torch
from jaxshape.convert.cli import main as convert_main
from jaxshape.convert.readers import read_safetensors
from jaxshape.convert.state_dict import abstract_variables, expected_state_dict_shapes
from jaxshape.models import SparseStructureEncoder, SparseStructureFlowModel, load

ENC = dict(in_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16])
FLOW = dict(resolution=4, in_channels=2, model_channels=32, cond_channels=16, out_channels=2, num_blocks=3,
            num_heads=2, patch_size=1, qk_rms_norm=True, qk_rms_norm_cross=True)


def random_state_dict(module, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in expected_state_dict_shapes(module).items()}


@pytest.mark.parametrize("module", [SparseStructureEncoder(**ENC), SparseStructureFlowModel(**FLOW)],
                         ids=["encoder", "flow"])
def test_round_trip_is_exact(module):
    sd = random_state_dict(module)
    back = to_torch(module, from_torch(module, sd))
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_scanned_blocks_are_stacked_in_order():
    m = SparseStructureFlowModel(**FLOW)
    sd = random_state_dict(m)
    v = from_torch(m, sd)
    stacked = np.asarray(v["params"]["blocks"]["self_attn"]["to_qkv"]["kernel"])
    assert stacked.shape == (3, 32, 96)
    for i in range(3):
        np.testing.assert_array_equal(stacked[i], sd[f"blocks.{i}.self_attn.to_qkv.weight"].T)
    np.testing.assert_array_equal(np.asarray(v["buffers"]["pos_emb"]), sd["pos_emb"])


def test_strictness_lists_every_problem():
    m = SparseStructureFlowModel(**FLOW)
    sd = random_state_dict(m)
    del sd["blocks.1.mlp.mlp.0.bias"]
    sd["blocks.0.cross_attn.to_q.wieght"] = sd.pop("blocks.0.cross_attn.to_q.weight")
    sd["input_layer.weight"] = np.zeros((32, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        from_torch(m, sd)
    msg = str(e.value)
    for needle in ("2 missing", "blocks.1.mlp.mlp.0.bias", "blocks.0.cross_attn.to_q.weight", "1 unexpected",
                   "blocks.0.cross_attn.to_q.wieght", "1 mis-shaped",
                   "input_layer.weight: got (32, 3), expected (32, 2)"):
        assert needle in msg, (needle, msg)


def test_fp16_tensors_are_cast_to_param_dtype():
    m = SparseStructureEncoder(**ENC)
    sd16 = random_state_dict(m, dtype=np.float16)
    v = from_torch(m, sd16)
    leaves = jax.tree.leaves(v)
    assert all(x.dtype == jnp.float32 for x in leaves)
    np.testing.assert_array_equal(np.asarray(v["params"]["blocks_0"]["conv1"]["kernel"]),
                                  sd16["blocks.0.conv1.weight"].astype(np.float32).transpose(2, 3, 4, 1, 0))


def test_prefix_is_stripped_and_foreign_keys_rejected():
    m = SparseStructureEncoder(**ENC)
    sd = {"dit." + k: v for k, v in random_state_dict(m).items()}
    from_torch(m, sd, prefix="dit.")
    sd["vae.something"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError, match="vae.something"):
        from_torch(m, sd, prefix="dit.")


def test_abstract_variables_allocate_nothing_large():
    leaves = jax.tree.leaves(abstract_variables(SparseStructureFlowModel(**FLOW)))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def test_safetensors_reader_mixed_dtypes_and_truncation(tmp_path):
    from safetensors.numpy import save_file

    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    back = read_safetensors(path)
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], sd["a"])
    assert back["b"].dtype == np.float16 and np.array_equal(back["b"], sd["b"])
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="corrupt"):
        load_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.safetensors")


def test_bf16_safetensors(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file

    x = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
    save_file({"x": x}, str(tmp_path / "b.safetensors"))
    back = read_safetensors(tmp_path / "b.safetensors")["x"]
    np.testing.assert_array_equal(back.astype(np.float32), x.astype(np.float32))


def test_torch_checkpoint_with_model_wrapper(tmp_path):
    import torch
    m = SparseStructureEncoder(**ENC)
    sd = random_state_dict(m)
    torch.save({"model": {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}}, tmp_path / "m.pt")
    loaded = load_state_dict(tmp_path / "m.pt")
    v = from_torch(m, loaded)
    ref = torch.from_numpy(sd["input_layer.weight"]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(v["params"]["input_layer"]["kernel"]), ref.transpose(2, 3, 4, 1, 0))
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="weights-only"):
        load_state_dict(tmp_path / "bad.pt")


def test_cli_writes_orbax_checkpoint_that_reproduces_outputs(tmp_path):
    from safetensors.numpy import save_file

    m = SparseStructureEncoder(**ENC)
    sd = {k: v.astype(np.float16) for k, v in random_state_dict(m, seed=3).items()}
    save_file(sd, str(tmp_path / "ss_enc.safetensors"))
    (tmp_path / "ss_enc.json").write_text(json.dumps({"name": "SparseStructureEncoder", "args": ENC}))
    out = tmp_path / "ckpt"
    assert convert_main(["--config", str(tmp_path / "ss_enc.json"), "--weights",
                         str(tmp_path / "ss_enc.safetensors"), "--out", str(out)]) == 0
    module, variables = load(out)
    x = jnp.asarray((np.random.default_rng(0).random((1, 8, 8, 8, 1)) > 0.5).astype(np.float32))
    direct = m.apply(from_torch(m, sd), x)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, x)), np.asarray(direct))
    with pytest.raises(FileExistsError):
        convert_main(["--config", str(tmp_path / "ss_enc.json"), "--weights", str(tmp_path / "ss_enc.safetensors"),
                      "--out", str(out)])


def test_cli_converts_a_partpacker_flow_pt_with_dit_prefix(tmp_path):
    """PartPacker's flow.pt: a {"model": state_dict} wrapper whose DiT keys start with 'dit.'."""
    import torch

    from jaxshape.models import VecSetDiT

    args = dict(hidden_dim=32, num_heads=2, latent_size=16, latent_dim=8, num_layers=2, qknorm=True,
                qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
    m = VecSetDiT(**args)
    sd = {"dit." + k: torch.from_numpy(v).to(torch.bfloat16) for k, v in random_state_dict(m, seed=5).items()}
    torch.save({"model": sd}, tmp_path / "flow.pt")
    out = tmp_path / "ckpt"
    assert convert_main(["--model", "VecSetDiT", "--args", json.dumps(args), "--weights", str(tmp_path / "flow.pt"),
                         "--prefix", "dit.", "--out", str(out)]) == 0
    module, variables = load(out)
    back = to_torch(module, variables)
    assert set(back) == {k[len("dit."):] for k in sd}
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k[len("dit."):]], v.float().numpy())
