"""Every variant of the shipped training configs builds, and its models construct (eval_shape only)."""
import importlib.util

import jax
import pytest

from jaxshape import models
from tests.utils import REPO

CONFIGS = REPO / "configs"
VARIANTS = {"trellis_like.py": ["demo", "long", "image_demo", "vae_demo", "flow_demo", "flow_image_demo", "vae",
                                 "flow_L", "flow_B", "flow_XL", "flow_L_image", "finetune_flow_L",
                                 "flow_1_3B_image", "finetune_flow_1_3B"],
            "vecset_like.py": ["demo", "long", "image_demo", "vae_demo", "flow_demo", "flow_image_demo", "vae", "flow",
                               "flow_image", "finetune_flow", "parts_demo", "parts_flow_demo"]}
IMAGE = {"flow_L_image": ("dinov2_vitl14_reg", 1, "trellis", 1024),
         "finetune_flow_L": ("dinov2_vitl14_reg", 1, "trellis", 1024),
         "flow_1_3B_image": ("dinov3_vitl16", 1, "trellis2_train", 1024),
         "finetune_flow_1_3B": ("dinov3_vitl16", 1, "trellis2_train", 1024),
         "flow_image": ("dinov2_vitg14", 2, "partpacker", 1536),
         "finetune_flow": ("dinov2_vitg14", 2, "partpacker", 1536),
         "image_demo": ("dinov2_tiny", None, None, 96), "flow_image_demo": ("dinov2_tiny", None, None, 96)}
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
        if c.stage.endswith("flow") and c.cond.kind == "image":  # the encoder's width is the model's cond width
            from jaxshape.trainer.tasks import make_task

            encoder, views, preprocess, width = IMAGE[variant]
            task = make_task(c)
            assert c.cond.encoder == encoder and task.encoder.embed_dim == task.cond_channels == width
            size = 512 if encoder.startswith("dinov3") else 518
            assert views is None or (c.cond.views, c.cond.preprocess, c.cond.image_size) == (views, preprocess, size)
    if variant == "finetune_flow_L":  # the released img-L architecture, so the converted release loads into it
        from jaxshape.convert.state_dict import expected_state_dict_shapes

        assert cfg.init_from.endswith("ss_flow_img_dit_L_16l8_fp16")
        assert expected_state_dict_shapes(models.SparseStructureFlowModel(**cfg.model)) == \
            expected_state_dict_shapes(models.build("ss_flow_img_dit_L_16l8_fp16"))
    if variant in ("flow_1_3B_image", "finetune_flow_1_3B"):  # TRELLIS.2's released flow, so its checkpoint loads
        from jaxshape.convert.state_dict import expected_state_dict_shapes

        assert expected_state_dict_shapes(models.SparseStructureFlowModel(**cfg.model)) == \
            expected_state_dict_shapes(models.build("ss_flow_img_dit_1_3B_64_bf16"))
        assert bool(cfg.init_from) == (variant == "finetune_flow_1_3B")
    if variant == "finetune_flow":  # PartPacker's released DiT (use_parts), so the converted flow.pt loads into it
        from jaxshape.convert.state_dict import expected_state_dict_shapes

        assert cfg.model.use_parts and cfg.init_from and cfg.vae_checkpoint
        assert expected_state_dict_shapes(models.VecSetDiT(**cfg.model)) == \
            expected_state_dict_shapes(models.build("partpacker_dit"))
    if variant.startswith("parts_"):
        assert all(c.data.parts for c in stages) and stages[-1].model.use_parts
    image_stages = [c for c in stages if c.stage.endswith("flow") and c.cond.kind == "image"]
    assert bool(image_stages) == (variant in IMAGE)
    with pytest.raises(ValueError, match="unknown variant"):
        _load(name).get_config("nope")


def test_a_config_saved_before_new_fields_reads_with_their_defaults():
    """An older workdir's config.json (without fields added since) is completed from the schema, its own values
    kept, so `sample` / `evaluate` of a newer version read it."""
    from jaxshape.trainer.defaults import stage_config, with_defaults

    saved = stage_config("ss_flow").to_dict()
    del saved["eval"]["shuffled_condition"], saved["data"]["views"]
    saved["eval"]["num_samples"], saved["model"] = 3, {"resolution": 8}
    c = with_defaults(saved)
    assert c.eval.shuffled_condition is True and c.data.views == 0
    assert c.eval.num_samples == 3 and dict(c.model) == {"resolution": 8}
