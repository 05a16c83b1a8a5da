"""PyTorch ``state_dict`` <-> Flax variables, derived from the module's own variable tree (strict both ways).

The Flax parameter tree mirrors upstream module paths, so the mapping is a rule, not a table:

* module names ``name_<i>`` <-> torch ``name.<i>`` (``blocks_3`` <-> ``blocks.3``, ``mlp_0`` <-> ``mlp.0``);
* a scanned stack (``module.scanned_stacks() -> {flax name: (torch prefix, length)}``) <-> ``prefix.<i>.*``,
  stacked on a new leading axis;
* leaves: ``kernel`` <-> ``weight`` (Dense ``[in, out]`` = ``weight.T``; Conv ``[kx, ky, kz, in, out]`` =
  ``weight.transpose(2, 3, 4, 1, 0)``; Conv2d ``[kh, kw, in, out]`` = ``weight.transpose(2, 3, 1, 0)``),
  ``scale`` <-> ``weight``, everything else (``bias``, ``gamma``, ``pos_emb``, ``part_embed``, ...) unchanged;
* collections ``params`` and ``buffers`` (non-trainable, e.g. TRELLIS's ``pos_emb``) are both state_dict keys.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

_INDEX = re.compile(r"^(.*)_(\d+)$")
COLLECTIONS = ("params", "buffers")


class ConversionError(ValueError):
    """A state_dict does not match the module: lists every missing, unexpected and mis-shaped key."""


def abstract_variables(module: nn.Module, unbox: bool = True) -> dict:
    """Shapes and dtypes of ``module``'s variables (no memory is allocated), initialised on the module's
    ``example_inputs()``; ``unbox=False`` keeps the logical-axis boxes (``nn.LogicallyPartitioned``)."""
    inputs = module.example_inputs()
    method = getattr(module, "init_method", None)

    def init():
        zeros = [jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s for s in inputs]
        kwargs = {} if method is None else {"method": method}
        return module.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, *zeros, **kwargs)

    shapes = jax.eval_shape(init)
    return nn.meta.unbox(shapes) if unbox else shapes


def _torch_module_path(names: tuple[str, ...]) -> str:
    parts = []
    for n in names:
        m = _INDEX.match(n)
        parts.append(f"{m.group(1)}.{m.group(2)}" if m else n)
    return ".".join(parts)


def _leaf_rule(leaf: str, ndim: int) -> tuple[str, str]:
    """(torch leaf name, transform) for a Flax leaf of per-layer rank ``ndim``."""
    if leaf == "kernel":
        if ndim == 2:
            return "weight", "linear"
        if ndim == 5:
            return "weight", "conv3d"
        if ndim == 4:
            return "weight", "conv2d"
        raise ConversionError(f"no rule for a kernel of rank {ndim}")
    if leaf == "scale":
        return "weight", "none"
    return leaf, "none"


def _to_torch_layout(x: np.ndarray, rule: str) -> np.ndarray:
    if rule == "linear":
        return x.T
    if rule == "conv3d":
        return x.transpose(4, 3, 0, 1, 2)
    if rule == "conv2d":
        return x.transpose(3, 2, 0, 1)
    return x


def _from_torch_layout(x: np.ndarray, rule: str) -> np.ndarray:
    if rule == "linear":
        return x.T
    if rule == "conv3d":
        return x.transpose(2, 3, 4, 1, 0)
    if rule == "conv2d":
        return x.transpose(2, 3, 1, 0)
    return x


def _entries(module: nn.Module):
    """Yield (collection, flax path, torch keys, per-layer flax shape, rule, dtype, stacked length or None)."""
    stacks = module.scanned_stacks() if hasattr(module, "scanned_stacks") else {}
    variables = abstract_variables(module)
    for col in COLLECTIONS:
        flat = traverse_util.flatten_dict(variables.get(col, {}))
        for path, leaf in flat.items():
            stacked = stacks.get(path[0]) if len(path) > 1 else None
            shape = tuple(leaf.shape[1:]) if stacked else tuple(leaf.shape)
            tleaf, rule = _leaf_rule(path[-1], len(shape))
            if stacked:
                prefix, length = stacked
                if leaf.shape[0] != length:
                    raise ConversionError(f"stack {path[0]} has {leaf.shape[0]} layers, expected {length}")
                inner = _torch_module_path(path[1:-1])
                keys = [".".join(p for p in (f"{prefix}.{i}", inner, tleaf) if p) for i in range(length)]
            else:
                keys = [".".join(p for p in (_torch_module_path(path[:-1]), tleaf) if p)]
            yield col, path, keys, shape, rule, leaf.dtype, (stacked[1] if stacked else None)


def expected_state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The torch key -> torch shape map that ``from_torch(module, ...)`` requires."""
    out = {}
    for _, _, keys, shape, rule, _, _ in _entries(module):
        tshape = _to_torch_layout(np.empty(shape, np.int8), rule).shape
        for k in keys:
            out[k] = tuple(tshape)
    return out


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy/JAX array or a torch tensor (bf16 tensors are widened to fp32 losslessly)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def from_torch(module: nn.Module, state_dict: Mapping[str, Any], *, prefix: str = "") -> dict:
    """Flax variables ``{"params": ..., "buffers": ...}`` for ``module`` from an upstream ``state_dict``.

    Strict: one :class:`ConversionError` lists every missing, unexpected and mis-shaped key. ``prefix`` is
    stripped from every key first (e.g. ``"dit."`` for PartPacker's ``flow.pt``); keys without it are
    unexpected. Values are cast to the module's parameter dtype (released fp16/bf16 tensors become fp32).
    """
    sd = {}
    unexpected = []
    for k, v in state_dict.items():
        if prefix and not k.startswith(prefix):
            unexpected.append(k)
            continue
        sd[k[len(prefix):]] = v
    entries = list(_entries(module))
    expected = {}
    for _, _, keys, shape, rule, _, _ in entries:
        tshape = tuple(_to_torch_layout(np.empty(shape, np.int8), rule).shape)
        for k in keys:
            expected[k] = tshape
    missing = sorted(set(expected) - set(sd))
    unexpected += sorted(set(sd) - set(expected))
    misshaped = sorted(
        f"{k}: got {tuple(to_numpy_shape(sd[k]))}, expected {expected[k]}"
        for k in set(expected) & set(sd) if tuple(to_numpy_shape(sd[k])) != expected[k]
    )
    if missing or unexpected or misshaped:
        lines = [f"state_dict does not match {type(module).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title} key(s):")
                lines += [f"    {i}" for i in items]
        raise ConversionError("\n".join(lines))
    out: dict = {}
    for col, path, keys, _, rule, dtype, stacked in entries:
        arrays = [_from_torch_layout(to_numpy(sd[k]).astype(np.float32, copy=False)
                                     if to_numpy(sd[k]).dtype.kind == "f" else to_numpy(sd[k]), rule)
                  for k in keys]
        value = np.stack(arrays) if stacked else arrays[0]
        out[(col,) + path] = jnp.asarray(value, dtype=dtype)
    return traverse_util.unflatten_dict(out)


def to_numpy_shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def to_torch(module: nn.Module, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The upstream ``state_dict`` (torch key -> numpy array, in the variables' dtype) for ``variables``.

    Exact inverse of :func:`from_torch`; strict about the variable tree in the same way.
    """
    variables = nn.meta.unbox(variables)
    entries = list(_entries(module))
    flat = {}
    for col in COLLECTIONS:
        for path, v in traverse_util.flatten_dict(dict(variables.get(col, {}))).items():
            flat[(col,) + path] = v
    want = {(col,) + path for col, path, *_ in entries}
    missing = sorted("/".join(p) for p in want - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - want)
    if missing or unexpected:
        raise ConversionError(f"variables do not match {type(module).__name__}: missing {missing}, "
                              f"unexpected {unexpected}")
    sd = {}
    for col, path, keys, shape, rule, _, stacked in entries:
        value = np.asarray(jax.device_get(flat[(col,) + path]))
        if stacked:
            for i, k in enumerate(keys):
                sd[k] = np.ascontiguousarray(_to_torch_layout(value[i], rule))
        else:
            sd[keys[0]] = np.ascontiguousarray(_to_torch_layout(value, rule))
    return sd
