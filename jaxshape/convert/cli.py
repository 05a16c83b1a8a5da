"""Convert an official checkpoint into a saved jaxshape model.

    python -m jaxshape.convert --config ss_enc_conv3d_16l8_fp16.json \
        --weights ss_enc_conv3d_16l8_fp16.safetensors --out /path/to/ckpt

``--config`` is a TRELLIS ``{"name", "args"}`` JSON (or ``--model NAME --args '{...}'``, or ``--model`` with a
released checkpoint name such as ``ss_dec_conv3d_16l8_fp16`` or ``dinov2_vitl14_reg``). DINO image encoders also
convert from their other layouts (``jaxshape.convert.dino``): a torch-hub ``.pth`` with ``--model dinov2_vitg14``,
an HF ``.safetensors`` with ``--model``, or an HF folder (``--weights DIR`` with config.json; no ``--model``
needed). The output (``jaxshape.models.save``: ``model.json``
+ Orbax ``variables/``) holds ``{"params": ..., "buffers": ...}`` in ``--param-dtype`` (fp32 by default: released
fp16 tensors are cast); ``jaxshape.models.load(out)`` returns ``(module, variables)``, and a flow stage's
``vae_checkpoint`` accepts it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxshape.convert.dino import dino_args_from_hf_config, read_hf_folder, to_hub_names
from jaxshape.convert.readers import load_state_dict, read_model_json, strip_prefix
from jaxshape.convert.state_dict import from_torch
from jaxshape.models.dino_vit import DinoViT

log = logging.getLogger("jaxshape")


def convert(name: str | None, args: dict, weights: str | Path, out: str | Path, *, prefix: str = "",
            param_dtype: str = "float32", dtype: str | None = None) -> Path:
    """Build ``name(**args)`` (``jaxshape.models.build``), load ``weights`` strictly and save it to ``out``.
    ``weights`` may be an HF folder (then ``name=None`` takes the DINO encoder from its config.json)."""
    from jaxshape.models import build, save

    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a checkpoint")
    overrides = {"param_dtype": jnp.dtype(param_dtype)}
    if dtype is not None:
        overrides["dtype"] = jnp.dtype(dtype)
    if Path(weights).is_dir():  # an HF model folder (DINO encoders)
        config, state_dict = read_hf_folder(weights)
        if name is None:
            name, args = "DinoViT", dino_args_from_hf_config(config)
    else:
        state_dict = load_state_dict(weights)
    if name is None:
        raise ValueError(f"{weights}: give the model (--config or --model); only an HF folder carries its config")
    module = build(name, args, **overrides)
    state_dict = _with_rebuilt_buffers(module, strip_prefix(state_dict, prefix) if prefix else state_dict)
    if isinstance(module, DinoViT):
        state_dict = to_hub_names(state_dict)
    variables = from_torch(module, state_dict)
    return save(out, module, variables)


TRELLIS2_ONLY_ARGS = ("initialization", "rope_freq", "dtype")  # in TRELLIS.2's flow JSON, never in TRELLIS's


def model_json_args(path: str | Path) -> tuple[str, dict, str | None]:
    """``(class name, constructor args, compute dtype)`` of a TRELLIS / TRELLIS.2 model JSON. Both upstreams name
    their flow ``SparseStructureFlowModel``; a JSON with TRELLIS.2's own fields (``initialization``,
    ``rope_freq``, ``dtype``; TRELLIS has ``use_fp16`` instead) is TRELLIS.2's module (``upstream="trellis2"``), and
    its ``dtype`` is returned as the compute dtype."""
    name, args = read_model_json(path)
    dtype = None
    if name == "SparseStructureFlowModel" and "upstream" not in args and "use_fp16" not in args \
            and any(k in args for k in TRELLIS2_ONLY_ARGS):
        args["upstream"] = "trellis2"
        dtype = args.pop("dtype", None)
    return name, args, dtype


def _with_rebuilt_buffers(module, state_dict: dict) -> dict:
    """TRELLIS.2 loads checkpoints with ``strict=False`` and rebuilds its ``rope_phases`` buffer at construction: a
    file without it gets the module's own (the one buffer upstream may omit; every parameter stays required)."""
    from jaxshape.models import SparseStructureFlowModel
    from jaxshape.models.sparse_structure_flow import rope_buffer

    if (isinstance(module, SparseStructureFlowModel) and module.upstream == "trellis2" and module.pe_mode == "rope"
            and "rope_phases" not in state_dict):
        log.info("%s: no rope_phases in the file; built from the config (as TRELLIS.2 does)", type(module).__name__)
        return {**state_dict, "rope_phases": np.asarray(rope_buffer(module))}
    return state_dict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TRELLIS model JSON ({'name': ..., 'args': {...}})")
    p.add_argument("--model", help="model class name or released checkpoint name (instead of --config)")
    p.add_argument("--args", default="{}", help="constructor args as JSON (with --model)")
    p.add_argument("--weights", required=True, help=".safetensors / .pt / .pth file, or an HF model folder")
    p.add_argument("--prefix", default="", help="key prefix to strip, e.g. 'dit.' for PartPacker flow.pt")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--dtype", default=None, help="compute dtype stored with the model (default: upstream rule)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    a = p.parse_args(argv)
    json_dtype = None
    if a.config:
        name, args, json_dtype = model_json_args(a.config)
    elif a.model:
        name, args = a.model, json.loads(a.args)
    elif Path(a.weights).is_dir():
        name, args = None, {}
    else:
        p.error("give --config or --model (or --weights with an HF model folder)")
    out = convert(name, args, a.weights, a.out, prefix=a.prefix, param_dtype=a.param_dtype,
                  dtype=a.dtype or json_dtype)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
