"""Readers for official checkpoint files. Nothing here unpickles code.

* ``.safetensors``: parsed directly (header JSON + raw little-endian buffers; F32/F16/BF16/F64/int types), so
  neither torch nor a framework plug-in is needed; a truncated or corrupt file is a clear error.
* ``.pt`` / ``.pth`` / ``.ckpt``: ``torch.load(weights_only=True)`` (needs torch); a PartPacker-style
  ``{"model": state_dict}`` wrapper is unwrapped.
* TRELLIS model JSON: ``{"name": class name, "args": {...}}``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "C64": np.complex64, "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: truncated safetensors file (header of {header_len} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        if base + end > len(data):
            raise ValueError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte {base + end}, "
                             f"file has {len(data)}")
        arr = np.frombuffer(data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def read_torch_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0); or convert it to "
                          ".safetensors elsewhere") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return dict(obj)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state_dict from ``.safetensors`` or a torch ``.pt``/``.pth``/``.ckpt`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return read_torch_checkpoint(path)
    raise ValueError(f"{path}: unknown checkpoint format {path.suffix!r} (expected .safetensors, .pt, .pth)")


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys starting with ``prefix``, with it removed (e.g. ``"dit."`` in PartPacker's ``flow.pt``)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def read_model_json(path: str | Path) -> tuple[str, dict]:
    """``(class name, constructor args)`` from a TRELLIS ``{"name": ..., "args": {...}}`` JSON file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "name" not in cfg or "args" not in cfg:
        raise ValueError(f"{path}: expected an object with 'name' and 'args' (TRELLIS model config)")
    return cfg["name"], dict(cfg["args"])
