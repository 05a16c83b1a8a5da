"""Fine-tuning TRELLIS.2's stage-1 flow: a tiny checkpoint in its release layout (``ckpts/*.json`` with TRELLIS.2's
own fields + a bf16 ``.safetensors`` without the ``rope_phases`` buffer), converted with ``python -m
jaxshape.convert --config`` (which recognises TRELLIS.2's module from the JSON), then an ``ss_flow`` run with
``init_from`` it: the run starts at the file's parameters exactly and trains."""
import json

import jax
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.convert.cli import main as convert_main
from jaxshape.models import SparseStructureFlowModel, load
from jaxshape.trainer.loop import run
from jaxshape.trainer.sharding import make_mesh
from tests.tiny_configs import tiny_config

safetensors_torch = pytest.importorskip("safetensors.torch")
FLOW = dict(resolution=4, in_channels=4, out_channels=4, model_channels=32, cond_channels=32, num_blocks=2,
            num_heads=2, mlp_ratio=5.3334, pe_mode="rope", share_mod=True, initialization="scaled",
            qk_rms_norm=True, qk_rms_norm_cross=True)


@pytest.mark.slow
def test_a_trellis2_flow_fine_tune_starts_at_the_released_layout_weights(vae_dirs, tmp_path):
    from tests.torch_reference import trellis2_ss_flow as T2

    tflow = T2.SparseStructureFlowModel(**FLOW)
    g = torch.Generator().manual_seed(7)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.2).bfloat16() for k, v in tflow.state_dict().items()
          if k != "rope_phases"}
    safetensors_torch.save_file(sd, str(tmp_path / "ss_flow_img_dit_1_3B_64_bf16.safetensors"))
    (tmp_path / "ss_flow_img_dit_1_3B_64_bf16.json").write_text(json.dumps(
        {"name": "SparseStructureFlowModel", "args": dict(FLOW, dtype="bfloat16")}))
    assert convert_main(["--config", str(tmp_path / "ss_flow_img_dit_1_3B_64_bf16.json"), "--weights",
                         str(tmp_path / "ss_flow_img_dit_1_3B_64_bf16.safetensors"), "--out",
                         str(tmp_path / "ckpt")]) == 0
    module, variables = load(tmp_path / "ckpt")
    assert module.upstream == "trellis2" and module.dtype == np.dtype("bfloat16")
    from jaxshape.models.sparse_structure_flow import rope_buffer

    ref_module = SparseStructureFlowModel(**FLOW, upstream="trellis2")
    want = from_torch(ref_module, {**{k: v.float().numpy() for k, v in sd.items()},
                                   "rope_phases": np.asarray(rope_buffer(ref_module))})["params"]
    cfg = tiny_config("ss_flow", vae_dirs, init_from=str(tmp_path / "ckpt"), steps=3)
    cfg.model = dict(FLOW, upstream="trellis2")
    start = run(cfg, tmp_path / "start", mesh=make_mesh(1, 1, jax.devices()[:1]), max_steps=0)["state"]
    ref = dict(jax.tree.leaves_with_path(want))
    got = jax.tree.leaves_with_path(start.params["model"])
    assert len(got) == len(ref)
    for path, leaf in got:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref[path]), err_msg=str(path))
    out = run(cfg, tmp_path / "ft", mesh=make_mesh(1, 1, jax.devices()[:1]))
    assert out["step"] == 3 and np.isfinite(out["losses"]).all()
