"""Every variant of the shipped training configs builds, and its models construct (eval_shape only)."""
import importlib.util

import jax
import pytest

from jaxshape import models
from tests.utils import REPO

CONFIGS = REPO / "configs"
VARIANTS = {"trellis_like.py": ["demo", "vae_demo", "flow_demo", "vae", "flow_L", "flow_B", "flow_XL"],
            "vecset_like.py": ["demo", "vae_demo", "flow_demo", "vae", "flow"]}
MODEL = {"ss_flow": "SparseStructureFlowModel", "vecset_vae": "VecSetVAE", "vecset_flow": "VecSetDiT"}


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], CONFIGS / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_config_variant_builds(name, variant):
    from jaxshape.convert.state_dict import abstract_variables

    cfg = _load(name).get_config(variant)
    stages = [cfg.stages[s] for s in cfg.order] if "order" in cfg else [cfg]
    for c in stages:
        if c.stage == "ss_vae":
            mods = [models.SparseStructureEncoder(**c.model.encoder), models.SparseStructureDecoder(**c.model.decoder)]
        else:
            mods = [getattr(models, MODEL[c.stage])(**c.model)]
        for m in mods:
            assert jax.tree.leaves(abstract_variables(m))
    with pytest.raises(ValueError, match="unknown variant"):
        _load(name).get_config("nope")
