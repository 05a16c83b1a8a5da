"""Trained tiny workdirs shared by the trainer tests (one session-wide run each)."""
import jax
import pytest

from jaxshape.trainer.loop import run
from jaxshape.trainer.sharding import make_mesh
from tests.tiny_configs import get_config, tiny_config


def one_device():
    return make_mesh(1, 1, jax.devices()[:1])


@pytest.fixture(scope="session")
def vae_dirs(tmp_path_factory):
    """One 3-step run of each VAE stage (their workdirs feed the flow stages)."""
    root = tmp_path_factory.mktemp("vaes")
    out = {}
    for stage in ("ss_vae", "vecset_vae"):
        run(get_config(stage), root / stage, mesh=one_device())
        out[stage] = str(root / stage)
    return out


@pytest.fixture(scope="session")
def flow_dirs(vae_dirs, tmp_path_factory):
    """One 3-step run of each flow stage on the fixture VAEs, writing its samples at the end."""
    root = tmp_path_factory.mktemp("flows")
    out = {}
    for stage in ("ss_flow", "vecset_flow"):
        run(tiny_config(stage, vae_dirs, sample_at_end=True), root / stage, mesh=one_device())
        out[stage] = str(root / stage)
    return out
