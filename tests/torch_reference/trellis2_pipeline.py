"""TRELLIS.2 stage 1 glue in PyTorch + Pillow, written from upstream's ``Trellis2ImageTo3DPipeline``
(``preprocess_image``, ``get_cond`` with ``DinoV3FeatureExtractor``, ``sample_sparse_structure``) and its
``FlowEulerGuidanceIntervalSampler`` (guidance interval + CFG mixin with rescale), two forwards per guided step as
upstream."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tests.torch_reference.trellis_pipeline import normalized

SIGMA_MIN = 1e-5


def preprocess(rgba: np.ndarray, size: int) -> np.ndarray:
    """RGBA uint8 -> the ``[size, size, 3]`` float image the feature extractor normalises."""
    image = Image.fromarray(rgba, "RGBA")
    scale = min(1, 1024 / max(image.size))
    if scale < 1:
        image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    alpha = np.array(image)[:, :, 3]
    bbox = np.argwhere(alpha > 0.8 * 255)
    bbox = np.min(bbox[:, 1]), np.min(bbox[:, 0]), np.max(bbox[:, 1]), np.max(bbox[:, 0])
    center = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    side = int(max(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    box = center[0] - side // 2, center[1] - side // 2, center[0] + side // 2, center[1] + side // 2
    out = np.array(image.crop(box)).astype(np.float32) / 255
    out = Image.fromarray((out[:, :, :3] * out[:, :, 3:4] * 255).astype(np.uint8))
    out = out.resize((size, size), Image.Resampling.LANCZOS)
    return np.array(out.convert("RGB")).astype(np.float32) / 255


@torch.no_grad()
def encode_image(dinov3, images: np.ndarray) -> torch.Tensor:
    """``F.layer_norm`` of the last layer's hidden states (``dinov3.norm`` must be Identity)."""
    h = dinov3(pixel_values=normalized(images)).last_hidden_state
    return F.layer_norm(h, h.shape[-1:])


@torch.no_grad()
def sample(model, noise, cond, *, steps, guidance_strength, guidance_rescale, guidance_interval, rescale_t):
    t_seq = np.linspace(1, 0, steps + 1)
    t_seq = (rescale_t * t_seq / (1 + (rescale_t - 1) * t_seq)).tolist()
    b = noise.shape[0]
    cond = cond.repeat(b, 1, 1) if cond.shape[0] == 1 else cond
    neg = torch.zeros_like(cond)
    x = noise
    for t, t_prev in zip(t_seq[:-1], t_seq[1:]):
        tt = torch.tensor([1000 * t] * b, dtype=torch.float32)
        w = guidance_strength if guidance_interval[0] <= t <= guidance_interval[1] else 1
        if w == 1:
            pred = model(x, tt, cond)
        else:
            pos, negp = model(x, tt, cond), model(x, tt, neg)
            pred = w * pos + (1 - w) * negp
            if guidance_rescale > 0:
                a = SIGMA_MIN + (1 - SIGMA_MIN) * t
                x0_pos = (1 - SIGMA_MIN) * x - a * pos
                x0_cfg = (1 - SIGMA_MIN) * x - a * pred
                dims = list(range(1, x.ndim))
                x0_rescaled = x0_cfg * (x0_pos.std(dim=dims, keepdim=True) / x0_cfg.std(dim=dims, keepdim=True))
                x0 = guidance_rescale * x0_rescaled + (1 - guidance_rescale) * x0_cfg
                pred = ((1 - SIGMA_MIN) * x - x0) / a
        x = x - (t - t_prev) * pred
    return x


@torch.no_grad()
def decode_coords(decoder, z, resolution: int):
    decoded = decoder(z) > 0
    if resolution != decoded.shape[2]:
        ratio = decoded.shape[2] // resolution
        decoded = F.max_pool3d(decoded.float(), ratio, ratio, 0) > 0.5
    return torch.argwhere(decoded)[:, [0, 2, 3, 4]].int().numpy()
