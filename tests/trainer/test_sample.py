"""Shapes and weights out of trained workdirs: ``python -m jaxshape.sample``, ``jaxshape.models.load`` on a
training workdir, and a flow stage's frozen VAE given as converted official checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from jaxshape.convert import to_torch
from jaxshape.convert.cli import main as convert_main
from jaxshape.models import SparseStructureDecoder, SparseStructureFlowModel, components, load
from jaxshape.models.store import read_train_params
from jaxshape.nn import absolute_position_embedding_3d, grid_coords_3d
from jaxshape.sample import find_stage_dir, sample
from jaxshape.trainer.loop import run
from tests.tiny_configs import tiny_config
from tests.trainer.conftest import one_device
from tests.utils import REPO


def _rows(directory):
    return [json.loads(line) for line in Path(directory, "samples.jsonl").read_text().splitlines()]


def _logged_losses(workdir):
    return [json.loads(line)["loss"] for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sample_cli_on_a_pipeline_workdir(vae_dirs, flow_dirs, tmp_path):
    """The CLI picks the flow stage of a pipeline folder, samples class labels 0, 1, 0 (2 classes) and writes a
    mesh, a preview and the occupancy grid per shape; the same seed gives the same shapes."""
    root = tmp_path / "pipeline"
    root.mkdir()
    os.symlink(vae_dirs["ss_vae"], root / "ss_vae")
    os.symlink(flow_dirs["ss_flow"], root / "ss_flow")
    assert find_stage_dir(root) == root / "ss_flow"
    assert find_stage_dir(root, "ss_vae") == root / "ss_vae"
    out = tmp_path / "cli"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxshape.sample", "--workdir", str(root), "--num", "3",
                           "--seed", "1", "--steps", "3", "--cfg", "1.5", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample ss_flow" in proc.stderr  # the progress bar
    rows = _rows(out)
    assert [r["class_label"] for r in rows] == [0, 1, 0]
    assert all(r["step"] == 3 and r["seed"] == 1 and r["ema"] for r in rows)
    for i, r in enumerate(rows):
        occ = np.load(out / f"sample_{i}_occupancy.npy")
        assert occ.shape == (8, 8, 8) and occ.dtype == bool
        if occ.any():  # a mesh and its preview exist exactly for the shapes with occupied voxels
            assert (out / r["mesh"]).is_file() and (out / r["preview"]).is_file()
            mesh = trimesh.load(out / r["mesh"], force="mesh")
            assert len(mesh.faces) == r["faces"] > 0
        else:
            assert "mesh" not in r
    # in-process, same seed and settings: the same occupancy grids, bit for bit; another seed: different noise
    again = tmp_path / "again"
    sample(root, num=3, seed=1, steps=3, cfg=1.5, out=again, progress=False)
    for i in range(3):
        np.testing.assert_array_equal(np.load(again / f"sample_{i}_occupancy.npy"),
                                      np.load(out / f"sample_{i}_occupancy.npy"))
    with pytest.raises(FileExistsError, match="not empty"):
        sample(root, num=1, out=again, progress=False)
    with pytest.raises(ValueError, match="--cfg / --steps apply to flow stages"):
        sample(root, stage="ss_vae", cfg=2.0, progress=False)


def test_sample_reconstructions_and_vecset_generations(vae_dirs, flow_dirs, tmp_path):
    """VAE stages reconstruct the first examples of their data; the vecset flow generates TSDF grids of the
    configured resolution; the loop's own end-of-run samples are in the workdir too."""
    sample(vae_dirs["ss_vae"], num=2, out=tmp_path / "ss", progress=False)
    assert np.load(tmp_path / "ss" / "sample_1_occupancy.npy").shape == (8, 8, 8)
    assert len(_rows(tmp_path / "ss")) == 2
    sample(vae_dirs["vecset_vae"], num=2, out=tmp_path / "vs", progress=False)
    sample(flow_dirs["vecset_flow"], num=2, out=tmp_path / "vf", progress=False)
    assert [r["class_label"] for r in _rows(tmp_path / "vf")] == [0, 1]
    for sub in ("vs", "vf"):
        assert len(_rows(tmp_path / sub)) == 2
    for stage in ("ss_flow", "vecset_flow"):
        rows = _rows(Path(flow_dirs[stage]) / "samples" / "step_0000003")
        assert [r["class_label"] for r in rows] == [0, 1, 0, 1][: len(rows)] and len(rows) == 2


def test_models_load_reads_training_workdirs(vae_dirs, flow_dirs):
    """``load`` returns the stage's modules with the EMA (or raw) parameters of any step, and rebuilds TRELLIS's
    ``pos_emb`` buffer; several components need ``which``."""
    assert components(vae_dirs["ss_vae"]) == {"encoder": "SparseStructureEncoder",
                                              "decoder": "SparseStructureDecoder"}
    with pytest.raises(ValueError, match="holds several models"):
        load(vae_dirs["ss_vae"])
    decoder, variables = load(vae_dirs["ss_vae"], "SparseStructureDecoder")
    assert isinstance(decoder, SparseStructureDecoder) and decoder.channels == (8, 4)
    ema = read_train_params(Path(vae_dirs["ss_vae"]) / "checkpoints")["decoder"]
    assert jax.tree.all(jax.tree.map(np.array_equal, variables["params"], ema))
    _, raw = load(vae_dirs["ss_vae"], "decoder", ema=False)
    assert not jax.tree.all(jax.tree.map(np.array_equal, raw["params"], ema))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 2 .* steps: \[3\]"):
        load(vae_dirs["ss_vae"], "decoder", step=2)
    flow, fv = load(flow_dirs["ss_flow"])
    assert isinstance(flow, SparseStructureFlowModel)
    np.testing.assert_allclose(fv["buffers"]["pos_emb"], absolute_position_embedding_3d(grid_coords_3d(4), 32),
                               rtol=0, atol=1e-7)  # computed inside jit as in training: equal up to fp32 rounding
    x, t, c = jnp.ones((1, 4, 4, 4, 4)), jnp.array([500.0]), jnp.ones((1, 1, 32))
    assert np.isfinite(np.asarray(flow.apply(fv, x, t, c))).all()


def _official_ss_vae(vae_dir, out):
    """The jaxshape ss_vae workdir's EMA weights written as TRELLIS releases them (safetensors + {"name", "args"}
    JSON per model), then converted with ``python -m jaxshape.convert`` into ``out/ss_enc`` and ``out/ss_dec``."""
    from safetensors.numpy import save_file

    model_cfg = json.loads(Path(vae_dir, "config.json").read_text())["model"]
    for part, cls, key in (("ss_enc", "SparseStructureEncoder", "encoder"),
                           ("ss_dec", "SparseStructureDecoder", "decoder")):
        module, variables = load(vae_dir, key)
        save_file(to_torch(module, variables), str(out / f"{part}.safetensors"))
        (out / f"{part}.json").write_text(json.dumps({"name": cls, "args": model_cfg[key]}))
        assert convert_main(["--config", str(out / f"{part}.json"), "--weights", str(out / f"{part}.safetensors"),
                             "--out", str(out / "converted" / part)]) == 0
    return out / "converted"


@pytest.mark.slow
def test_flow_stages_train_on_converted_official_vaes(vae_dirs, flow_dirs, tmp_path):
    """A converted official SS encoder + decoder (a folder holding both, or the two paths) and a converted
    PartPacker ``vae.pt`` are valid ``vae_checkpoint``s: training gives exactly the losses of the workdir VAE
    they were written from."""
    import torch

    converted = _official_ss_vae(vae_dirs["ss_vae"], tmp_path)
    reference = _logged_losses(flow_dirs["ss_flow"])
    for spec in (str(converted), f"{converted / 'ss_enc'},{converted / 'ss_dec'}"):
        losses = run(tiny_config("ss_flow", vae_dirs, vae_checkpoint=spec), tmp_path / f"ss{len(spec)}",
                     mesh=one_device())["losses"]
        np.testing.assert_array_equal(losses, reference)
    with pytest.raises(ValueError, match="must hold exactly one SparseStructureDecoder"):
        run(tiny_config("ss_flow", vae_dirs, vae_checkpoint=str(converted / "ss_enc")), tmp_path / "x",
            mesh=one_device())

    vae, variables = load(vae_dirs["vecset_vae"])
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in to_torch(vae, variables).items()}
    torch.save({"model": sd}, tmp_path / "vae.pt")  # PartPacker's release format
    args = json.loads(Path(vae_dirs["vecset_vae"], "config.json").read_text())["model"]
    assert convert_main(["--model", "VecSetVAE", "--args", json.dumps(args), "--weights", str(tmp_path / "vae.pt"),
                         "--out", str(tmp_path / "vecset_vae")]) == 0
    losses = run(tiny_config("vecset_flow", vae_dirs, vae_checkpoint=str(tmp_path / "vecset_vae")),
                 tmp_path / "vf", mesh=one_device())["losses"]
    np.testing.assert_array_equal(losses, _logged_losses(flow_dirs["vecset_flow"]))
