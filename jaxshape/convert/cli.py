"""Convert an official checkpoint into an Orbax checkpoint.

    python -m jaxshape.convert --config ss_enc_conv3d_16l8_fp16.json \
        --weights ss_enc_conv3d_16l8_fp16.safetensors --out /path/to/ckpt

``--config`` is a TRELLIS ``{"name", "args"}`` JSON (or ``--model NAME --args '{...}'``). The Orbax checkpoint
holds ``{"params": ..., "buffers": ...}`` in ``--param-dtype`` (fp32 by default: released fp16 tensors are cast)
and a ``model.json`` beside it with the class name and args, so ``jaxshape.convert.cli.load_converted`` rebuilds
the module.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp

from jaxshape.convert.readers import load_state_dict, read_model_json
from jaxshape.convert.state_dict import from_torch


def model_registry() -> dict:
    from jaxshape import models

    return {name: getattr(models, name) for name in models.__all__}


def build_model(name: str, args: dict, param_dtype: str = "float32", dtype: str | None = None):
    registry = model_registry()
    if name not in registry:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(registry)}")
    cls = registry[name]
    kwargs = dict(args)
    kwargs["param_dtype"] = jnp.dtype(param_dtype)
    if dtype is not None:
        kwargs["dtype"] = jnp.dtype(dtype)
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown constructor argument(s) {unknown}")
    return cls(**kwargs)


def convert(name: str, args: dict, weights: str | Path, out: str | Path, *, prefix: str = "",
            param_dtype: str = "float32", dtype: str | None = None) -> Path:
    import orbax.checkpoint as ocp

    module = build_model(name, args, param_dtype, dtype)
    variables = from_torch(module, load_state_dict(weights), prefix=prefix)
    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a checkpoint")
    out.mkdir(parents=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "variables", variables)
        ckptr.wait_until_finished()
    (out / "model.json").write_text(json.dumps({"name": name, "args": args, "dtype": dtype}, indent=2))
    return out


def load_converted(path: str | Path, param_dtype: str = "float32"):
    """``(module, variables)`` from a directory written by :func:`convert`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta = json.loads((path / "model.json").read_text())
    module = build_model(meta["name"], meta["args"], param_dtype, meta.get("dtype"))
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / "variables")
    return module, variables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TRELLIS model JSON ({'name': ..., 'args': {...}})")
    p.add_argument("--model", help="model class name (instead of --config)")
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
