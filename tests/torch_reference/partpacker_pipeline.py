"""PartPacker image -> volumes glue in PyTorch, written from the spec (image_conditioning.md §2.2, §5.4;
vecset_partpacker.md §1.9): ``Model.get_cond`` on an HF ``Dinov2Model`` whose final layernorm is Identity, the
``Model.forward`` sampling loop (``[cond ; zeros]`` in one forward), the split into two volumes and the VAE's
hierarchical decode with PyMCubes, then ``trimesh.Trimesh(v, f)`` (default processing) as ``infer.py`` builds it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.torch_reference.trellis_pipeline import normalized


@torch.no_grad()
def encode_image(dino, images: np.ndarray) -> torch.Tensor:
    """``images [B, S, S, 3]`` in [0, 1] -> ``layer_norm(last_hidden_state.float())`` (eps 1e-5, no affine)."""
    feats = dino(pixel_values=normalized(images)).last_hidden_state
    return F.layer_norm(feats.float(), feats.shape[-1:], eps=1e-5)


@torch.no_grad()
def sample(dit, noise: torch.Tensor, cond: torch.Tensor, *, steps: int, cfg_scale: float,
           shift: float) -> torch.Tensor:
    sigmas = np.linspace(1, 0, steps + 1)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    b = noise.shape[0]
    cond = cond.repeat(b, 1, 1)
    cond_input = torch.cat([cond, torch.zeros_like(cond)], dim=0)
    x = noise
    for sigma, sigma_prev in zip(sigmas[:-1], sigmas[1:]):
        t = torch.tensor([1000 * sigma] * b * 2, dtype=x.dtype)
        pred = dit(torch.cat([x, x], dim=0), cond_input, t).float()
        cond_v, uncond_v = pred.chunk(2, dim=0)
        x = x - (sigma - sigma_prev) * (uncond_v + (cond_v - uncond_v) * cfg_scale)
    return x


def _grid_points(r: int) -> torch.Tensor:
    a = torch.from_numpy(np.linspace(-1, 1, r + 1, dtype=np.float32))
    return torch.stack(torch.meshgrid(a, a, a, indexing="ij"), dim=-1).reshape(-1, 3)


def _dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    w = torch.ones(1, 1, k, k, k)
    return F.conv3d(mask[None, None].float(), w, padding=k // 2)[0, 0] > 0


@torch.no_grad()
def decode_hierarchical(vae, latent: torch.Tensor, resolution: int, min_resolution: int, chunk: int = 8192):
    """``latent [1, L, D]`` -> the float32 ``[R+1]³`` grid (NaN where not queried)."""
    hidden = vae.decode(latent)

    def query(points: torch.Tensor) -> torch.Tensor:
        return torch.cat([vae.query(points[i:i + chunk][None], hidden)[0, :, 0]
                          for i in range(0, points.shape[0], chunk)])

    levels, r = [], resolution
    while r >= min_resolution:
        levels.append(r)
        r //= 2
    levels = levels[::-1]
    r0 = levels[0]
    G = query(_grid_points(r0)).reshape(r0 + 1, r0 + 1, r0 + 1)
    for r in levels[1:]:
        s = G >= 0
        m = G.abs() < 0.95
        for ax in range(3):
            a = [slice(None)] * 3
            c = [slice(None)] * 3
            a[ax], c[ax] = slice(None, -1), slice(1, None)
            d = s[tuple(a)] != s[tuple(c)]
            m[tuple(a)] |= d
            m[tuple(c)] |= d
        if r < 512:
            m = _dilate(m, 3)
        mf = torch.zeros((r + 1,) * 3, dtype=torch.bool)
        mf[::2, ::2, ::2] = m
        mf = _dilate(mf, 3 if r < 512 else 5)
        idx = torch.nonzero(mf)
        pts = idx * 2 / r - 1
        G = torch.full((r + 1,) * 3, -100.0)
        G[idx[:, 0], idx[:, 1], idx[:, 2]] = query(pts.float())
    G[G <= -100] = float("nan")
    return G.numpy()


def extract_mesh(G: np.ndarray):
    """PyMCubes at 0, ``2 v / R − 1``, then ``trimesh.Trimesh(v, f)`` with its default processing (merges equal
    vertices, drops non-finite ones and their faces)."""
    import mcubes
    import trimesh

    r = G.shape[0] - 1
    v, f = mcubes.marching_cubes(G.astype(np.float32), 0.0)
    v = 2 * v / r - 1
    mesh = trimesh.Trimesh(v, f)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)
