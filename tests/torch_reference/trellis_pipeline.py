"""TRELLIS stage 1 glue in PyTorch, written from the spec (image_conditioning.md §2.1, §5.1; trellis_sparse_structure.md
§6): the conditioning of ``TrellisImageTo3DPipeline.encode_image`` on an HF DINOv2-with-registers model, the
``FlowEulerGuidanceIntervalSampler`` loop (two separate forwards, as upstream), the decode and ``argwhere``."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalized(images: np.ndarray) -> torch.Tensor:
    """``images [B, S, S, 3]`` float in [0, 1] -> ImageNet-normalised ``[B, 3, S, S]`` (torchvision's Normalize)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def encode_image(dino, images: np.ndarray) -> torch.Tensor:
    """``images [B, S, S, 3]`` float in [0, 1] -> ``LN(x_prenorm)`` (``dino.layernorm`` must be Identity)."""
    feats = dino(pixel_values=normalized(images)).last_hidden_state
    return F.layer_norm(feats, feats.shape[-1:])


@torch.no_grad()
def sample_guidance_interval(model, noise: torch.Tensor, cond: torch.Tensor, *, steps: int, cfg_strength: float,
                             cfg_interval, rescale_t: float) -> torch.Tensor:
    t_seq = np.linspace(1, 0, steps + 1)
    t_seq = rescale_t * t_seq / (1 + (rescale_t - 1) * t_seq)
    if cond.shape[0] == 1:  # run(num_samples > 1): the batch-1 condition is repeated
        cond = cond.repeat(noise.shape[0], 1, 1)
    neg = torch.zeros_like(cond)
    x = noise
    for t, t_prev in zip(t_seq[:-1], t_seq[1:]):
        tt = torch.tensor([1000 * t] * x.shape[0], dtype=torch.float32)
        pred = model(x, tt, cond)
        if cfg_interval[0] <= t <= cfg_interval[1]:
            pred = (1 + cfg_strength) * pred - cfg_strength * model(x, tt, neg)
        x = x - (t - t_prev) * pred
    return x


@torch.no_grad()
def decode_coords(decoder, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    logits = decoder(z)
    coords = torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()
    return logits.numpy(), coords.numpy()


@torch.no_grad()
def sample_multi_image(model, noise: torch.Tensor, cond: torch.Tensor, *, mode: str, steps: int, cfg_strength: float,
                       cfg_interval, rescale_t: float) -> torch.Tensor:
    """``run_multi_image``'s patched sampler (image_conditioning.md §5.3): ``cond [n_images, T, C]``, the negative
    condition zeros of one image; ``"stochastic"`` takes image ``k mod n`` at step k, ``"multidiffusion"`` averages
    the n conditional predictions (separate forwards, as upstream)."""
    t_seq = np.linspace(1, 0, steps + 1)
    t_seq = rescale_t * t_seq / (1 + (rescale_t - 1) * t_seq)
    b = noise.shape[0]
    neg = torch.zeros_like(cond[:1]).repeat(b, 1, 1)
    indices = (np.arange(steps) % cond.shape[0]).tolist()
    x = noise
    for t, t_prev in zip(t_seq[:-1], t_seq[1:]):
        tt = torch.tensor([1000 * t] * b, dtype=torch.float32)
        inside = cfg_interval[0] <= t <= cfg_interval[1]
        if mode == "stochastic":
            i = indices.pop(0)
            pred = model(x, tt, cond[i:i + 1].repeat(b, 1, 1))
        else:
            preds = [model(x, tt, cond[i:i + 1].repeat(b, 1, 1)) for i in range(cond.shape[0])]
            pred = sum(preds) / len(preds)
        if inside:
            pred = (1 + cfg_strength) * pred - cfg_strength * model(x, tt, neg)
        x = x - (t - t_prev) * pred
    return x
