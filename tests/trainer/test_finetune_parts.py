"""Fine-tuning PartPacker's released DiT (``use_parts``): a tiny ``flow.pt`` + ``vae.pt`` written in the official
layout (``{"model": {"dit.*"}}``; a plain state dict), converted with ``python -m jaxshape.convert``, then a
``vecset_flow`` run on two-volume data with ``init_from`` the converted DiT and the converted VAE frozen. The run
starts at the file's parameters exactly, its latents are the VAE's encodings of the two volumes side by side (an
empty volume all zeros), and a killed fine-tune resumes bit-exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.convert.cli import main as convert_main
from jaxshape.data.synthetic import synthetic_example
from jaxshape.models import VecSetDiT, VecSetVAE, load
from jaxshape.trainer.loop import run
from jaxshape.trainer.sharding import make_mesh
from jaxshape.trainer.tasks import make_task
from tests.tiny_configs import tiny_config
from tests.torch_reference import partpacker as pp
from tests.utils import randomize_state_dict

DIT = dict(hidden_dim=32, num_heads=2, latent_size=48, latent_dim=8, num_layers=2, qknorm=True,
           qknorm_type="RMSNorm", use_pos_embed=False, use_parts=True)
VAE = dict(hidden_dim=32, num_heads=2, num_dec_layers=1, dec_hidden_dim=32, dec_num_heads=2, point_fourier_dim=24,
           query_hidden_dim=32, query_num_heads=2, latent_dim=8, qknorm_type="RMSNorm")


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The converted folders of a tiny official-layout ``flow.pt`` / ``vae.pt``, and the DiT's state dict."""
    root = tmp_path_factory.mktemp("partpacker")
    dit_sd = randomize_state_dict(pp.DiT(gradient_checkpointing=False, **DIT), scale=0.2, seed=3)
    vae_sd = randomize_state_dict(pp.Model(pp.ModelConfig(**VAE)), scale=0.2, seed=4)
    torch.save({"model": {"dit." + k: torch.from_numpy(v) for k, v in dit_sd.items()}}, root / "flow.pt")
    torch.save({k: torch.from_numpy(v) for k, v in vae_sd.items()}, root / "vae.pt")
    import json

    assert convert_main(["--model", "VecSetDiT", "--args", json.dumps(DIT), "--weights", str(root / "flow.pt"),
                         "--prefix", "dit.", "--out", str(root / "dit")]) == 0
    assert convert_main(["--model", "VecSetVAE", "--args", json.dumps(VAE), "--weights", str(root / "vae.pt"),
                         "--out", str(root / "vae")]) == 0
    return root, dit_sd, vae_sd


def _cfg(root, **over):
    over = {"model.use_parts": True, "data.synthetic.parts": True, "latent_tokens": (32, 16),
            "init_from": str(root / "dit"), **over}
    return tiny_config("vecset_flow", {"vecset_vae": str(root / "vae")}, **over)


def test_two_volume_latents_are_the_vaes_encodings_side_by_side(official):
    root, _, vae_sd = official
    task = make_task(_cfg(root))
    frozen = task.load_frozen()
    exs = [synthetic_example(i, 0, resolution=8, num_points=128, num_salient=64, num_fps=32, num_fps_salient=16,
                             num_queries=128, parts=True) for i in range(6)]
    batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in task.encoder_fields}
    empty = np.asarray(batch["part_empty"])
    assert empty[:, 0].sum() == 0 and 0 < empty[:, 1].sum() < len(exs)  # spheres: no second volume
    z = np.asarray(task.latents(frozen, batch))
    assert z.shape == (6, 96, 8) and task.latent_shape(frozen) == (96, 8)
    vae = VecSetVAE(**VAE)
    variables = from_torch(vae, vae_sd)
    for i, p in enumerate(("_part0", "_part1")):
        data = {k: batch[k + p] for k in ("pointcloud", "pointcloud_dorases", "fps_indices", "fps_indices_dorases")}
        want, _ = vae.apply(variables, data, method="encode")
        want = np.where(empty[:, i, None, None] > 0, 0.0, np.asarray(want))
        np.testing.assert_allclose(z[:, 48 * i:48 * (i + 1)], want, atol=1e-6, rtol=0)
    assert np.abs(z[empty[:, 1] > 0, 48:]).max() == 0 and np.abs(z[:, 48:]).max() > 0.01


@pytest.mark.slow
def test_a_fine_tune_starts_at_the_official_weights_and_resumes_bit_exactly(official, tmp_path):
    root, dit_sd, _ = official
    one = make_mesh(1, 1, jax.devices()[:1])
    want = from_torch(VecSetDiT(**DIT), dit_sd)["params"]
    start = run(_cfg(root), tmp_path / "start", mesh=make_mesh(2, 4), max_steps=0)["state"]
    assert int(start.step) == 0
    for tree in (start.params["model"], start.ema_params["model"]):
        got, ref = jax.tree.leaves_with_path(tree), dict(jax.tree.leaves_with_path(want))
        assert len(got) == len(ref)
        for path, leaf in got:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref[path]), err_msg=str(path))
    cfg = _cfg(root, steps=4, ckpt_every=1, sample_at_end=True)
    straight = run(cfg, tmp_path / "straight", mesh=one)
    assert np.isfinite(straight["losses"]).all()
    run(cfg, tmp_path / "killed", mesh=one, max_steps=2)  # killed after step 2 (checkpointed)
    resumed = run(cfg, tmp_path / "killed", mesh=one)
    for a, b in zip(_leaves(straight["state"].params), _leaves(resumed["state"].params)):
        np.testing.assert_array_equal(a, b)
    # the trained DiT loads as PartPacker's (use_parts) and its samples mesh both volumes
    module, _ = load(tmp_path / "straight")
    assert module.use_parts
    rows = (tmp_path / "straight").glob("**/samples.jsonl")
    import json

    infos = [json.loads(line) for f in rows for line in f.read_text().splitlines()]
    assert infos and all(len(r["volume_faces"]) == 2 and sum(r["volume_faces"]) == r["faces"] for r in infos)


def test_an_empty_sampled_volume_decodes_to_no_surface(official):
    root, _, _ = official
    z = np.zeros((2, 96, 8), np.float32)
    z[:, :48] = np.random.default_rng(0).normal(size=(2, 48, 8))
    z[1, 48:] = 0.05  # RMS 0.05: below the threshold
    for rms, want_blank in ((0.0, False), (0.5, True)):
        task = make_task(_cfg(root, **{"sampler.empty_volume_rms": rms}))
        frozen = task.load_frozen()
        pairs = task.decode(frozen, jnp.asarray(z))
        assert len(pairs) == 2 and all(len(p) == 2 for p in pairs)
        assert (pairs[1][1] == -1.0).all() == want_blank and not (pairs[1][0] == -1.0).all()
        if want_blank:
            assert not task.to_meshes(pairs)[1].info["volume_faces"][1]
