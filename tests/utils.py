"""Helpers shared by the parity tests."""
from __future__ import annotations

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
