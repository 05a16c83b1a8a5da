"""Convert an official checkpoint into a saved jaxshape model.

    python -m jaxshape.convert --config ss_enc_conv3d_16l8_fp16.json \
        --weights ss_enc_conv3d_16l8_fp16.safetensors --out /path/to/ckpt

``--config`` is a TRELLIS ``{"name", "args"}`` JSON (or ``--model NAME --args '{...}'``, or ``--model`` with a
released checkpoint name such as ``ss_dec_conv3d_16l8_fp16``). The output (``jaxshape.models.save``: ``model.json``
+ Orbax ``variables/``) holds ``{"params": ..., "buffers": ...}`` in ``--param-dtype`` (fp32 by default: released
fp16 tensors are cast); ``jaxshape.models.load(out)`` returns ``(module, variables)``, and a flow stage's
``vae_checkpoint`` accepts it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp

from jaxshape.convert.readers import load_state_dict, read_model_json
from jaxshape.convert.state_dict import from_torch


def convert(name: str, args: dict, weights: str | Path, out: str | Path, *, prefix: str = "",
            param_dtype: str = "float32", dtype: str | None = None) -> Path:
    """Build ``name(**args)`` (``jaxshape.models.build``), load ``weights`` strictly and save it to ``out``."""
    from jaxshape.models import build, save

    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a checkpoint")
    overrides = {"param_dtype": jnp.dtype(param_dtype)}
    if dtype is not None:
        overrides["dtype"] = jnp.dtype(dtype)
    module = build(name, args, **overrides)
    variables = from_torch(module, load_state_dict(weights), prefix=prefix)
    return save(out, module, variables)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TRELLIS model JSON ({'name': ..., 'args': {...}})")
    p.add_argument("--model", help="model class name or released checkpoint name (instead of --config)")
    p.add_argument("--args", default="{}", help="constructor args as JSON (with --model)")
    p.add_argument("--weights", required=True, help=".safetensors / .pt / .pth file")
    p.add_argument("--prefix", default="", help="key prefix to strip, e.g. 'dit.' for PartPacker flow.pt")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--dtype", default=None, help="compute dtype stored with the model (default: upstream rule)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    a = p.parse_args(argv)
    if a.config:
        name, args = read_model_json(a.config)
    elif a.model:
        name, args = a.model, json.loads(a.args)
    else:
        p.error("give --config or --model")
    out = convert(name, args, a.weights, a.out, prefix=a.prefix, param_dtype=a.param_dtype, dtype=a.dtype)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
