"""DINOv2 / DINOv3 checkpoints in their three layouts <-> the torch-hub names :class:`jaxshape.models.DinoViT` mirrors.

Layouts (``dino_layout``):

* ``"hub"``: facebookresearch/dinov2 ``.pth`` (``blocks.N.attn.qkv``, ``ls1.gamma``, ``mlp.fc1`` or ``mlp.w12`` /
  ``w3``, ``register_tokens``, ``mask_token``): the canonical names; the generic rule of
  ``jaxshape.convert.state_dict`` converts them.
* ``"hf"``: transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` -- both the 4.x names stored in the hub's
  safetensors files (``attention.attention.query``, ``attention.output.dense``, ``mlp.weights_in`` /
  ``weights_out``) and the 5.x in-memory names (``attention.q_proj`` ... ``o_proj``, ``mlp.gate_proj`` /
  ``up_proj`` / ``down_proj``).
* ``"hf_dinov3"``: transformers ``DINOv3ViTModel`` (``layer.N.`` or, in 5.x memory, ``model.layer.N.``;
  ``attention.q_proj`` with no key bias, ``mlp.up_proj`` / ``down_proj`` or gated ``gate_proj`` / ``up_proj`` /
  ``down_proj``, ``embeddings.mask_token`` [1, 1, C]).

:func:`to_hub_names` renames any of them to the hub layout (q, k, v rows concatenated into ``qkv``; gate then up
into ``w12``; an absent key bias as zeros; an empty ``[1, 0, C]`` register table dropped); :func:`from_hub_names`
is its inverse for each layout (what ``to_torch`` writes for a user who wants an HF file). :func:`load_dino` reads a
hub ``.pth``, an HF ``.safetensors`` file or an HF folder (``config.json`` + one file or an index of shards) into
``(module, variables)``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from jaxshape.convert.readers import load_state_dict, read_safetensors
from jaxshape.convert.state_dict import from_torch, to_numpy

DINO_LAYOUTS = ("hub", "hf", "hf_dinov3")
HF_NAME_SETS = ("4.x", "5.x")

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_V3_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
# per-block renames shared by the HF layouts (hub name <- HF name)
_BLOCK_SAME = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
               "norm2.bias": "norm2.bias", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
_QKV_NAMES = {"4.x": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
              "5.x": ("attention.q_proj", "attention.k_proj", "attention.v_proj")}
_OUT_NAMES = {"4.x": "attention.output.dense", "5.x": "attention.o_proj"}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_V3_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HUB_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")


def dino_layout(state_dict: Mapping[str, Any]) -> str:
    """``"hub"``, ``"hf"`` or ``"hf_dinov3"`` from the key names (an error names what was found)."""
    keys = set(state_dict)
    if "embeddings.position_embeddings" in keys or any(_HF_LAYER.match(k) for k in keys):
        return "hf"
    if "embeddings.patch_embeddings.weight" in keys or any(_V3_LAYER.match(k) for k in keys):
        return "hf_dinov3"
    if "patch_embed.proj.weight" in keys or any(_HUB_LAYER.match(k) for k in keys):
        return "hub"
    raise ValueError(f"not a DINOv2/DINOv3 state_dict: none of the hub (blocks.N...), HF (encoder.layer.N...) or "
                     f"HF DINOv3 (layer.N...) key names; first keys: {sorted(keys)[:5]}")


def _split_layers(state_dict, pattern, top):
    layers: dict[int, dict[str, Any]] = {}
    out, unexpected = {}, []
    for k, v in state_dict.items():
        m = pattern.match(k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
        elif k in top:
            out[top[k]] = v
        else:
            unexpected.append(k)
    return layers, out, unexpected


def _take(layer: dict, name: str, used: set):
    used.add(name)
    return layer[name]


def to_hub_names(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Any DINO layout (``dino_layout``) -> the hub's key names, as numpy arrays. Keys the layout does not know are
    kept under their own names, so the strict ``from_torch`` that follows lists them as unexpected."""
    layout = dino_layout(state_dict)
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    if layout == "hub":
        return sd
    pattern, top = (_HF_LAYER, _HF_TOP) if layout == "hf" else (_V3_LAYER, _V3_TOP)
    layers, out, unexpected = _split_layers(sd, pattern, top)
    for k in unexpected:
        out[k] = sd[k]
    if layout == "hf_dinov3":
        if "mask_token" in out and out["mask_token"].ndim == 3:
            out["mask_token"] = out["mask_token"].reshape(1, -1)
        if "register_tokens" in out and out["register_tokens"].shape[1] == 0:
            del out["register_tokens"]
    for i, layer in sorted(layers.items()):
        used: set = set()
        p = f"blocks.{i}."
        for hub, hf in _BLOCK_SAME.items():
            if hf in layer:
                out[p + hub] = _take(layer, hf, used)
        names = _QKV_NAMES["5.x"] if layout == "hf_dinov3" or "attention.q_proj.weight" in layer else \
            _QKV_NAMES["4.x"]
        if all(f"{n}.weight" in layer for n in names):
            out[p + "attn.qkv.weight"] = np.concatenate([_take(layer, f"{n}.weight", used) for n in names])
            biases = [layer.get(f"{n}.bias") for n in names]
            if any(b is not None for b in biases):
                c = out[p + "attn.qkv.weight"].shape[1]
                out[p + "attn.qkv.bias"] = np.concatenate(
                    [_take(layer, f"{n}.bias", used) if b is not None else np.zeros((c,), np.float32)
                     for n, b in zip(names, biases)])
        out_name = _OUT_NAMES["5.x"] if layout == "hf_dinov3" or "attention.o_proj.weight" in layer else \
            _OUT_NAMES["4.x"]
        for leaf in ("weight", "bias"):
            if f"{out_name}.{leaf}" in layer:
                out[f"{p}attn.proj.{leaf}"] = _take(layer, f"{out_name}.{leaf}", used)
        gated = "mlp.weights_in.weight" in layer or "mlp.gate_proj.weight" in layer
        for leaf in ("weight", "bias"):
            if f"mlp.weights_in.{leaf}" in layer:
                out[f"{p}mlp.w12.{leaf}"] = _take(layer, f"mlp.weights_in.{leaf}", used)
            if f"mlp.weights_out.{leaf}" in layer:
                out[f"{p}mlp.w3.{leaf}"] = _take(layer, f"mlp.weights_out.{leaf}", used)
            if gated and f"mlp.gate_proj.{leaf}" in layer:
                out[f"{p}mlp.w12.{leaf}"] = np.concatenate([_take(layer, f"mlp.gate_proj.{leaf}", used),
                                                            _take(layer, f"mlp.up_proj.{leaf}", used)])
            if gated and f"mlp.down_proj.{leaf}" in layer:
                out[f"{p}mlp.w3.{leaf}"] = _take(layer, f"mlp.down_proj.{leaf}", used)
            if not gated:
                for hub, hf in (("fc1", "fc1"), ("fc2", "fc2"), ("fc1", "up_proj"), ("fc2", "down_proj")):
                    if f"mlp.{hf}.{leaf}" in layer:
                        out[f"{p}mlp.{hub}.{leaf}"] = _take(layer, f"mlp.{hf}.{leaf}", used)
        for name in set(layer) - used:
            out[f"{p}{name}"] = layer[name]  # unknown: left for from_torch to report
    return out


def from_hub_names(state_dict: Mapping[str, Any], layout: str, names: str = "4.x") -> dict[str, np.ndarray]:
    """The inverse of :func:`to_hub_names`: hub-named arrays in ``layout`` (``"hub"``, ``"hf"`` with ``names``
    ``"4.x"`` (what HF files store) or ``"5.x"``, ``"hf_dinov3"`` in its stored names ``layer.N.``). DINOv3's key
    bias is dropped: it is the zero third of the fused bias (``DinoViT.qkv_bias``)."""
    if layout not in DINO_LAYOUTS or names not in HF_NAME_SETS:
        raise ValueError(f"layout must be one of {DINO_LAYOUTS} and names one of {HF_NAME_SETS}, got "
                         f"{layout!r}, {names!r}")
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    if layout == "hub":
        return sd
    top = {hub: hf for hf, hub in (_HF_TOP if layout == "hf" else _V3_TOP).items()}
    out = {}
    for k, v in sd.items():
        m = _HUB_LAYER.match(k)
        if not m:
            if k == "mask_token" and layout == "hf_dinov3":
                v = v.reshape(1, 1, -1)
            out[top[k]] = v
            continue
        i, name = m.groups()
        p = f"encoder.layer.{i}." if layout == "hf" else f"layer.{i}."
        inv_same = {hub: hf for hub, hf in _BLOCK_SAME.items()}
        nameset = "5.x" if layout == "hf_dinov3" else names
        if name in inv_same:
            out[p + inv_same[name]] = v
        elif name.startswith("attn.qkv."):
            leaf = name.split(".")[-1]
            for n, part, which in zip(_QKV_NAMES[nameset], np.split(v, 3), "qkv"):
                if not (layout == "hf_dinov3" and leaf == "bias" and which == "k"):
                    out[f"{p}{n}.{leaf}"] = part
        elif name.startswith("attn.proj."):
            out[f"{p}{_OUT_NAMES[nameset]}.{name.split('.')[-1]}"] = v
        elif name.startswith("mlp."):
            _, layer, leaf = name.split(".")
            if layer in ("fc1", "fc2"):
                hf = layer if layout == "hf" else {"fc1": "up_proj", "fc2": "down_proj"}[layer]
                out[f"{p}mlp.{hf}.{leaf}"] = v
            elif layer == "w12" and nameset == "4.x":
                out[f"{p}mlp.weights_in.{leaf}"] = v
            elif layer == "w12":
                gate, up = np.split(v, 2)
                out[f"{p}mlp.gate_proj.{leaf}"], out[f"{p}mlp.up_proj.{leaf}"] = gate, up
            else:
                out[f"{p}mlp.{'weights_out' if nameset == '4.x' else 'down_proj'}.{leaf}"] = v
        else:
            raise ValueError(f"from_hub_names: unknown hub key {k!r}")
    return out


def dino_args_from_hf_config(config: Mapping[str, Any]) -> dict:
    """``DinoViT`` constructor args from an HF ``config.json`` (``model_type`` ``dinov2``,
    ``dinov2_with_registers`` or ``dinov3_vit``). HF's table interpolation rule comes with it: ``"size"`` for
    ``Dinov2Model``, ``"antialias"`` for the with-registers model."""
    kind = config.get("model_type")
    common = dict(patch_size=int(config["patch_size"]), embed_dim=int(config["hidden_size"]),
                  depth=int(config["num_hidden_layers"]), num_heads=int(config["num_attention_heads"]),
                  layer_norm_eps=float(config["layer_norm_eps"]))
    if kind in ("dinov2", "dinov2_with_registers"):
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"config.json: hidden_act {config.get('hidden_act')!r} is not supported (gelu only)")
        return dict(common, img_size=int(config["image_size"]), mlp_ratio=float(config.get("mlp_ratio", 4)),
                    ffn_layer="swiglu" if config.get("use_swiglu_ffn") else "mlp",
                    num_register_tokens=int(config.get("num_register_tokens", 0)) if kind != "dinov2" else 0,
                    interpolate_mode="size" if kind == "dinov2" else "antialias",
                    qkv_bias=bool(config.get("qkv_bias", True)))
    if kind == "dinov3_vit":
        gated = bool(config.get("use_gated_mlp", False))
        act = config.get("hidden_act", "gelu")
        if (gated and act != "silu") or (not gated and act != "gelu"):
            raise ValueError(f"config.json: hidden_act {act!r} with use_gated_mlp={gated} is not supported "
                             f"(gelu MLP or silu-gated SwiGLU)")
        if not (config.get("mlp_bias", True) and config.get("proj_bias", True)):
            raise ValueError("config.json: mlp_bias / proj_bias false is not supported")
        return dict(common, img_size=int(config.get("image_size", 224)), pos_embed="rope",
                    rope_theta=float(config.get("rope_theta", 100.0)),
                    ffn_hidden_features=int(config["intermediate_size"]), ffn_layer="swiglu" if gated else "mlp",
                    num_register_tokens=int(config.get("num_register_tokens", 0)),
                    qkv_bias=bool(config.get("query_bias", True) or config.get("value_bias", True)))
    raise ValueError(f"config.json: model_type {kind!r} is not a DINO ViT (dinov2, dinov2_with_registers, "
                     f"dinov3_vit)")


def read_hf_folder(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config.json, state_dict)`` of an HF model folder: ``model.safetensors`` or the shards listed in
    ``model.safetensors.index.json``."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (an HF model folder has config.json + model.safetensors)")
    config = json.loads(cfg_path.read_text())
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict = {}
        for shard in shards:
            sd.update(read_safetensors(path / shard))
        return config, sd
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    return config, read_safetensors(single)


def load_dino(path: str | Path, name: Optional[str] = None, **overrides):
    """``(DinoViT, variables)`` from an official file: a torch-hub ``.pth`` (``name`` = the hub name, e.g.
    ``"dinov2_vitl14_reg"``), an HF folder (config.json + safetensors; ``name`` optional) or an HF ``.safetensors``
    file (``name`` required). Loading is strict: every missing, unexpected or mis-shaped tensor is listed
    (``mask_token`` is expected). ``overrides`` go to the constructor (``dtype``, ``param_dtype``, ...)."""
    from jaxshape.models import build

    path = Path(path)
    if path.is_dir():
        config, sd = read_hf_folder(path)
        module = build(name, **overrides) if name else build("DinoViT", dino_args_from_hf_config(config), **overrides)
    else:
        if name is None:
            raise ValueError(f"{path}: give the encoder's name (e.g. 'dinov2_vitl14_reg'); only an HF folder "
                             f"carries its own config")
        sd = load_state_dict(path)
        module = build(name, **overrides)
    return module, from_torch(module, to_hub_names(sd))
