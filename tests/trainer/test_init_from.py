"""Fine-tuning: ``init_from`` starts a stage from given weights (a training workdir, a converted / saved model):
the parameters and their EMA equal the file's, the optimizer state is fresh, an existing checkpoint wins over
init_from, and a mismatched architecture is one clear error."""
import jax
import numpy as np
import pytest

from jaxshape.models import load, save
from jaxshape.trainer.loop import run
from jaxshape.trainer.sharding import make_mesh
from tests.tiny_configs import tiny_config as _cfg


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ss_flow", "vecset_flow"])
def test_init_from_a_workdir_and_a_saved_model(stage, vae_dirs, tmp_path):
    one = make_mesh(1, 1, jax.devices()[:1])
    base = run(_cfg(stage, vae_dirs), tmp_path / "base", mesh=one)
    module, variables = load(tmp_path / "base")  # the EMA of the newest step
    save(tmp_path / "saved", module, variables)
    for source in (tmp_path / "base", tmp_path / "saved"):
        out = run(_cfg(stage, vae_dirs, init_from=str(source), steps=3), tmp_path / f"ft_{source.name}",
                  mesh=make_mesh(2, 4), max_steps=0)
        state = out["state"]
        for a, b in zip(_leaves(state.params["model"]), _leaves(variables["params"])):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(_leaves(state.ema_params["model"]), _leaves(variables["params"])):
            np.testing.assert_array_equal(a, b)
        assert int(state.step) == 0
    # the fine-tuned run trains from there, and a resumed run ignores init_from (its checkpoint wins)
    ft = run(_cfg(stage, vae_dirs, init_from=str(tmp_path / "saved")), tmp_path / "ft", mesh=one)
    assert np.isfinite(ft["losses"]).all() and ft["losses"][0] < base["losses"][0]
    again = run(_cfg(stage, vae_dirs, init_from=str(tmp_path / "nowhere"), steps=4), tmp_path / "ft", mesh=one)
    assert again["step"] == 4
    with pytest.raises(FileNotFoundError, match="init_from .*nowhere.*jaxshape.convert"):
        run(_cfg(stage, vae_dirs, init_from=str(tmp_path / "nowhere")), tmp_path / "fresh", mesh=one)


def test_init_from_a_different_architecture_fails_clearly(vae_dirs, tmp_path):
    one = make_mesh(1, 1, jax.devices()[:1])
    run(_cfg("ss_flow", vae_dirs), tmp_path / "base", mesh=one)
    with pytest.raises(ValueError, match=r"init_from .*do not match.*model_channels|init_from .*do not match"):
        run(_cfg("ss_flow", vae_dirs, init_from=str(tmp_path / "base"), **{"model.model_channels": 48}),
            tmp_path / "wide", mesh=one, max_steps=0)


@pytest.mark.slow
def test_a_fine_tune_resumes_bit_exactly(vae_dirs, tmp_path):
    one = make_mesh(1, 1, jax.devices()[:1])
    run(_cfg("ss_flow", vae_dirs), tmp_path / "base", mesh=one)
    cfg = _cfg("ss_flow", vae_dirs, init_from=str(tmp_path / "base"), steps=4, ckpt_every=1)
    straight = run(cfg, tmp_path / "straight", mesh=one)["state"]
    run(cfg, tmp_path / "killed", mesh=one, max_steps=2)  # killed after step 2 (checkpointed)
    resumed = run(cfg, tmp_path / "killed", mesh=one)["state"]
    for a, b in zip(_leaves(straight.params), _leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
