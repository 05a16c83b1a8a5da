"""PyTorch mirror of TRELLIS.2's sparse-structure flow DiT (``trellis2/models/sparse_structure_flow.py`` with
``trellis2/modules/transformer/modulated.py``), written for the jaxshape tests from
``shared/reference/trellis_sparse_structure.md`` §12.1 and a reading of upstream; class, argument and attribute
names follow upstream so ``state_dict()`` keys equal the released checkpoint's. What differs from TRELLIS v1's module
(tests/torch_reference/trellis_ss.py):

* no patchify: one token per latent voxel;
* ``pe_mode="rope"`` keeps a complex64 ``rope_phases`` buffer ``[R³, head_dim / 2]`` (``rope_freq``), applied to q and
  k of the self-attention after the per-head RMS norm;
* ``share_mod``: one model-level ``adaLN_modulation`` of the time embedding, plus a learned per-block ``modulation``
  ``[6C]`` (init ``randn / √C``) added to it;
* ``initialization="scaled"``; ``dtype`` (a string) instead of ``use_fp16``.

Attention is plain ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.torch_reference.trellis_ss import (
    AbsolutePositionEmbedder,
    FeedForwardNet,
    LayerNorm32,
    MultiHeadAttention,
    RotaryPositionEmbedder,
    TimestepEmbedder,
    _grid_coords,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModulatedTransformerCrossBlock(nn.Module):
    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 use_rope: bool = False, rope_freq: Tuple[float, float] = (1.0, 10000.0),
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False, share_mod: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads=num_heads, type="self", use_rope=use_rope,
                                            qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(channels, ctx_channels=ctx_channels, num_heads=num_heads, type="cross",
                                             qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        if share_mod:
            self.modulation = nn.Parameter(torch.randn(6 * channels) / channels ** 0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x, mod, context, phases=None):
        if self.share_mod:
            chunks = (self.modulation + mod).type(mod.dtype).chunk(6, dim=1)
        else:
            chunks = self.adaLN_modulation(mod).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + self.self_attn(h, phases=phases) * gate_msa.unsqueeze(1)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return x + self.mlp(h) * gate_mlp.unsqueeze(1)


class SparseStructureFlowModel(nn.Module):
    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: Optional[int] = None,
                 num_head_channels: Optional[int] = 64, mlp_ratio: float = 4,
                 pe_mode: Literal["ape", "rope"] = "ape", rope_freq: Tuple[float, float] = (1.0, 10000.0),
                 dtype: str = "float32", use_checkpoint: bool = False, share_mod: bool = False,
                 initialization: str = "vanilla", qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 **kwargs):
        super().__init__()
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.pe_mode = pe_mode
        self.share_mod = share_mod
        self.initialization = initialization
        self.dtype = _DTYPES[dtype]
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        coords = _grid_coords(resolution)
        if pe_mode == "ape":
            self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels, 3)(coords))
            self.rope_phases = None
        else:
            rope = RotaryPositionEmbedder(model_channels // self.num_heads, 3, rope_freq)
            self.register_buffer("rope_phases", rope(coords))
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList([
            ModulatedTransformerCrossBlock(model_channels, cond_channels, self.num_heads, mlp_ratio,
                                           use_rope=pe_mode == "rope", rope_freq=rope_freq, qk_rms_norm=qk_rms_norm,
                                           qk_rms_norm_cross=qk_rms_norm_cross, share_mod=share_mod)
            for _ in range(num_blocks)])
        self.out_layer = nn.Linear(model_channels, out_channels)
        self.initialize_weights()
        self.blocks.to(self.dtype)

    def initialize_weights(self) -> None:
        c = self.model_channels
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if self.initialization == "scaled":
                    nn.init.normal_(m.weight, std=np.sqrt(2.0 / (5.0 * c)))
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.initialization == "scaled":
            for block in self.blocks:
                for lin in (block.self_attn.to_out, block.cross_attn.to_out, block.mlp.mlp[2]):
                    nn.init.normal_(lin.weight, std=1.0 / np.sqrt(5 * self.num_blocks * c))
            nn.init.normal_(self.input_layer.weight, std=1.0 / np.sqrt(self.in_channels))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        mods = [self.adaLN_modulation[-1]] if self.share_mod else [b.adaLN_modulation[-1] for b in self.blocks]
        for lin in mods:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.input_layer(x.reshape(b, self.in_channels, -1).permute(0, 2, 1))
        if self.pe_mode == "ape":
            h = h + self.pos_emb[None]
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb, h, cond = t_emb.to(self.dtype), h.to(self.dtype), cond.to(self.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond, self.rope_phases)
        h = F.layer_norm(h.to(x.dtype), h.shape[-1:])
        h = self.out_layer(h)
        return h.permute(0, 2, 1).reshape(b, self.out_channels, *[self.resolution] * 3)
