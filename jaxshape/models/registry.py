"""The one registry of buildable models: class names, the released checkpoints' constructor args, and the
JSON-able spec (``{"name", "args"}``) a saved model or a training workdir records for each module."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxshape.models.dino_vit import DinoViT
from jaxshape.models.released import RELEASED, released_args
from jaxshape.models.sparse_structure_flow import SparseStructureFlowModel
from jaxshape.models.sparse_structure_vae import SparseStructureDecoder, SparseStructureEncoder
from jaxshape.models.vecset_dit import VecSetDiT
from jaxshape.models.vecset_vae import VecSetVAE

MODEL_CLASSES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (
    SparseStructureEncoder, SparseStructureDecoder, SparseStructureFlowModel, VecSetVAE, VecSetDiT, DinoViT)}
_DTYPE_FIELDS = ("dtype", "param_dtype")
_INTERNAL_FIELDS = ("parent", "name")


def _coerce(name: str, value: Any) -> Any:
    if name in _DTYPE_FIELDS and isinstance(value, str):
        return jnp.dtype(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def build(name: str, args: Optional[Mapping[str, Any]] = None, **overrides) -> nn.Module:
    """A model by class name and constructor args, or by released checkpoint name.

    Args:
      name: a class of :data:`MODEL_CLASSES` (then ``args`` are its constructor args: upstream names plus
        ``dtype`` / ``param_dtype`` / ...), or a released checkpoint name of ``jaxshape.models.released.RELEASED``
        (e.g. ``"ss_dec_conv3d_16l8_fp16"``: ``args`` default to the released ones).
      args: constructor args; dtype fields may be strings (``"bfloat16"``), lists become tuples.
      **overrides: applied on top of ``args`` (e.g. ``dtype=jnp.bfloat16``, ``use_fp16=False``).

    Returns:
      The module. An unknown name or constructor argument is an error listing what is known.
    """
    if name in RELEASED:
        cls_name, released = released_args(name)
        args = {**released, **dict(args or {})}
        name = cls_name
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; known classes: {sorted(MODEL_CLASSES)}, released checkpoints: "
                         f"{sorted(RELEASED)}")
    cls = MODEL_CLASSES[name]
    kwargs = {k: _coerce(k, v) for k, v in {**dict(args or {}), **overrides}.items()}
    fields = {f.name for f in dataclasses.fields(cls)} - set(_INTERNAL_FIELDS)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown constructor argument(s) {unknown}; its fields are {sorted(fields)}")
    return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def model_spec(module: nn.Module) -> dict:
    """``{"name": class name, "args": every constructor field}`` (JSON-able; dtypes as names) such that
    ``build(**spec)`` rebuilds an equal module."""
    name = type(module).__name__
    if name not in MODEL_CLASSES:
        raise ValueError(f"{name} is not a registered model class ({sorted(MODEL_CLASSES)})")
    args = {}
    for f in dataclasses.fields(module):
        if f.name in _INTERNAL_FIELDS:
            continue
        v = getattr(module, f.name)
        args[f.name] = None if v is None else (jnp.dtype(v).name if f.name in _DTYPE_FIELDS else _jsonable(v))
    return {"name": name, "args": args}
