"""Helpers shared by the tests: random torch state_dicts, the parity metric, layout moves, committed key lists."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def randomize_state_dict(module, scale: float = 0.1, seed: int = 0, skip=("pos_emb",)) -> dict:
    """Replace every tensor of a torch module's state_dict by random normals (zero-init layers included), load
    them into the module and return the numpy state_dict."""
    import torch

    rng = np.random.default_rng(seed)
    sd = {}
    for k, v in module.state_dict().items():
        a = v.detach().float().numpy()
        if not any(s in k for s in skip):
            a = (rng.normal(size=a.shape) * scale).astype(np.float32)
            if k.endswith(("norm1.weight", "norm2.weight", "gamma")) or ".norm" in k and k.endswith("weight"):
                a = (1.0 + a).astype(np.float32)
        sd[k] = a
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
    return sd


def max_rel_err(out, ref) -> float:
    """max |out - ref| / max |ref| (the parity metric: <= 1e-5 passes)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def ncdhw(x):
    """channels-last -> upstream NCDHW."""
    return np.moveaxis(np.asarray(x), -1, 1)


def ndhwc(x):
    """upstream NCDHW -> channels-last."""
    return np.moveaxis(np.asarray(x), 1, -1)


# ------------------------------------------------------------------------------------------------------------
# committed facts of the upstream checkpoint files (names, shapes, dtypes: no weights)

REPO = Path(__file__).resolve().parents[1]  # the repository root
ASSETS = REPO / "tests" / "assets"
CHECKPOINT_KEYS = ASSETS / "checkpoint_keys"


def trellis_key_sections() -> dict:
    """``{section: {"params": n, "keys": {key: (shape, dtype, kind)}}}`` of ``trellis_ss_keys_all.txt`` (one
    section per released TRELLIS checkpoint: ``ss_enc``, ``ss_dec``, ``ss_flow_*``), keys in file order."""
    sections: dict = {}
    cur = None
    for line in (CHECKPOINT_KEYS / "trellis_ss_keys_all.txt").read_text().splitlines():
        if line.startswith("#####"):
            name, rest = line[5:].strip().split(":", 1)
            cur = sections[name.strip()] = {"params": int(rest.split("params=")[1].split()[0]), "keys": {}}
        elif line.strip() and cur is not None:
            key, shape, dtype, kind = line.strip().split("\t")
            cur["keys"][key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype, kind)
    return sections


def partpacker_keys(name: str, strip_prefix: str = "") -> dict:
    """``{key: shape}`` of a PartPacker key list (``partpacker_vae_keys.txt``, ``partpacker_dit_keys.txt``), with
    ``strip_prefix`` removed from the keys that start with it (``"dit."`` in ``flow.pt``)."""
    out = {}
    for line in (CHECKPOINT_KEYS / name).read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            key = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
            out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out
