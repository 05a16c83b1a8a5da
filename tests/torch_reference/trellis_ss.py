"""PyTorch reference mirror of TRELLIS's sparse-structure stage (SS-VAE + SS flow DiT).

Written for the jaxshape test-suite from the specification in
``shared/reference/trellis_sparse_structure.md`` (sections 2, 3 and Appendix A). Class names,
constructor arguments and submodule attribute names follow upstream TRELLIS so that
``state_dict()`` keys are identical to the released checkpoints; the code itself is our own.

Deliberate differences from upstream (all documented):

* ``SparseStructureEncoder.forward`` takes an extra ``noise`` argument that replaces
  ``torch.randn_like`` for the posterior sample (lets tests inject the noise).
* ``pe_mode="rope"``: upstream TRELLIS v1's dense RoPE path does not run. We implement the 3-D RoPE
  of TRELLIS.2 (``trellis2/modules/attention/rope.py``) instead, applied to the self-attention q/k
  after the optional per-head RMS norm. It adds no state_dict entries.
* Attention is plain softmax attention (``F.scaled_dot_product_attention``), no flash-attn/xformers.
"""
from __future__ import annotations

import math
from typing import List, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "pixel_shuffle_3d",
    "patchify",
    "unpatchify",
    "ChannelLayerNorm32",
    "ResBlock3d",
    "DownsampleBlock3d",
    "UpsampleBlock3d",
    "SparseStructureEncoder",
    "SparseStructureDecoder",
    "LayerNorm32",
    "MultiHeadRMSNorm",
    "RotaryPositionEmbedder",
    "MultiHeadAttention",
    "FeedForwardNet",
    "ModulatedTransformerCrossBlock",
    "TimestepEmbedder",
    "AbsolutePositionEmbedder",
    "SparseStructureFlowModel",
]


# ------------------------------------------------------------------------------------------------
# spatial helpers
# ------------------------------------------------------------------------------------------------

def pixel_shuffle_3d(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """NCDHW 3-D pixel shuffle:
    ``out[b, c, r*x+i, r*y+j, r*z+k] = in[b, c*r^3 + i*r^2 + j*r + k, x, y, z]``."""
    r = int(scale_factor)
    b, c, d1, d2, d3 = x.shape
    assert c % (r ** 3) == 0, f"channels {c} not divisible by {r}^3"
    co = c // r ** 3
    y = x.reshape(b, co, r, r, r, d1, d2, d3)          # (b, c, i, j, k, X, Y, Z)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)               # (b, c, X, i, Y, j, Z, k)
    return y.reshape(b, co, d1 * r, d2 * r, d3 * r)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, D1, D2, D3] -> [N, C*p^3, D1/p, D2/p, D3/p]`` with
    ``out[n, c*p^3 + i*p^2 + j*p + k, X, Y, Z] = in[n, c, pX+i, pY+j, pZ+k]``
    (works for any number of spatial dims; channel-major)."""
    p = int(patch_size)
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    for s in spatial:
        assert s % p == 0, f"spatial size {s} not divisible by patch size {p}"
    shape = [n, c]
    for s in spatial:
        shape += [s // p, p]
    y = x.reshape(shape)                                # (n, c, X, i, Y, j, Z, k)
    coarse = [2 + 2 * a for a in range(nd)]
    fine = [3 + 2 * a for a in range(nd)]
    y = y.permute(0, 1, *fine, *coarse)                 # (n, c, i, j, k, X, Y, Z)
    return y.reshape(n, c * p ** nd, *[s // p for s in spatial])


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify`."""
    p = int(patch_size)
    n, cp = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    assert cp % (p ** nd) == 0, f"channels {cp} not divisible by {p}^{nd}"
    c = cp // p ** nd
    y = x.reshape(n, c, *([p] * nd), *spatial)          # (n, c, i, j, k, X, Y, Z)
    order = []
    for a in range(nd):
        order += [2 + nd + a, 2 + a]                    # X, i, Y, j, Z, k
    y = y.permute(0, 1, *order)
    return y.reshape(n, c, *[s * p for s in spatial])


# ------------------------------------------------------------------------------------------------
# precision helpers (upstream modules/utils.py semantics)
# ------------------------------------------------------------------------------------------------

_FP16_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.Linear)


def _module_to_f16(m: nn.Module) -> None:
    if isinstance(m, _FP16_MODULES):
        for p in m.parameters():
            p.data = p.data.half()


def _module_to_f32(m: nn.Module) -> None:
    if isinstance(m, _FP16_MODULES):
        for p in m.parameters():
            p.data = p.data.float()


def _zero_(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.detach().zero_()
    return m


# ------------------------------------------------------------------------------------------------
# norms
# ------------------------------------------------------------------------------------------------

class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis (dim 1) of an N-C-spatial tensor, in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = x.dim()
        y = x.movedim(1, nd - 1)
        y = super().forward(y)
        return y.movedim(nd - 1, 1).contiguous()


class _GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm_layer(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    if norm_type == "group":
        return _GroupNorm32(32, channels)
    raise ValueError(f"Invalid norm type {norm_type}")


# ------------------------------------------------------------------------------------------------
# SS-VAE
# ------------------------------------------------------------------------------------------------

class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: Optional[int] = None,
                 norm_type: Literal["group", "layer"] = "layer"):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.norm1 = _norm_layer(norm_type, channels)
        self.norm2 = _norm_layer(norm_type, self.out_channels)
        self.conv1 = nn.Conv3d(channels, self.out_channels, 3, padding=1)
        self.conv2 = _zero_(nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1))
        if channels != self.out_channels:
            self.skip_connection = nn.Conv3d(channels, self.out_channels, 1)
        else:
            self.skip_connection = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int,
                 mode: Literal["conv", "avgpool"] = "conv"):
        assert mode in ("conv", "avgpool"), f"Invalid mode {mode}"
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mode = mode
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)
        else:
            assert in_channels == out_channels, "avgpool mode needs in_channels == out_channels"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv":
            return self.conv(x)
        return F.avg_pool3d(x, 2)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int,
                 mode: Literal["conv", "nearest"] = "conv"):
        assert mode in ("conv", "nearest"), f"Invalid mode {mode}"
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mode = mode
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)
        else:
            assert in_channels == out_channels, "nearest mode needs in_channels == out_channels"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv":
            return pixel_shuffle_3d(self.conv(x), 2)
        return F.interpolate(x, scale_factor=2, mode="nearest")


class _SSVAEBase(nn.Module):
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def convert_to_fp16(self) -> None:
        """Cast Conv/Linear params inside ``blocks`` and ``middle_block`` to float16."""
        self.use_fp16 = True
        self.dtype = torch.float16
        self.blocks.apply(_module_to_f16)
        self.middle_block.apply(_module_to_f16)

    def convert_to_fp32(self) -> None:
        self.use_fp16 = False
        self.dtype = torch.float32
        self.blocks.apply(_module_to_f32)
        self.middle_block.apply(_module_to_f32)


class SparseStructureEncoder(_SSVAEBase):
    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int,
                 channels: List[int], num_res_blocks_middle: int = 2,
                 norm_type: Literal["group", "layer"] = "layer", use_fp16: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = channels
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            # NB: ResBlocks always use their own default norm_type ("layer"), as upstream.
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock3d(ch, ch))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[-1], channels[-1]) for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(
            _norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False,
                noise: Optional[torch.Tensor] = None):
        h = self.input_layer(x).to(self.dtype)
        for blk in self.blocks:
            h = blk(h)
        h = self.middle_block(h)
        h = self.out_layer(h.to(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std) if noise is None else noise.to(std.dtype)
            z = mean + std * eps
        else:
            z = mean
        if return_raw:
            return z, mean, logvar
        return z


class SparseStructureDecoder(_SSVAEBase):
    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int,
                 channels: List[int], num_res_blocks_middle: int = 2,
                 norm_type: Literal["group", "layer"] = "layer", use_fp16: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = channels
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[0], channels[0]) for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock3d(ch, ch))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            _norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x).to(self.dtype)
        h = self.middle_block(h)
        for blk in self.blocks:
            h = blk(h)
        return self.out_layer(h.to(x.dtype))


# ------------------------------------------------------------------------------------------------
# transformer pieces
# ------------------------------------------------------------------------------------------------

class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm: ``normalize(x.float(), dim=-1) * gamma * sqrt(dim)``, cast back."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


class RotaryPositionEmbedder(nn.Module):
    """TRELLIS.2-style N-D RoPE phase generator (no parameters, no buffers).

    ``freq_dim = head_dim // 2 // dim``; ``freqs = 1 / 10000 ** (arange(freq_dim) / freq_dim)``.
    For coords ``[..., L, dim]`` the phase angles are ``concat_a(coord_a * freqs)`` -> ``[..., L, dim*freq_dim]``,
    padded with zero angle to ``head_dim // 2``; returned as unit complex numbers (complex64).
    """

    def __init__(self, head_dim: int, dim: int = 3, rope_freq=(1.0, 10000.0)):
        super().__init__()
        assert head_dim % 2 == 0, "head_dim must be even"
        self.head_dim = head_dim
        self.dim = dim
        self.rope_freq = rope_freq
        self.freq_dim = head_dim // 2 // dim

    def freqs(self, device=None) -> torch.Tensor:
        f = torch.arange(self.freq_dim, dtype=torch.float32, device=device) / self.freq_dim
        return self.rope_freq[0] / (self.rope_freq[1] ** f)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        assert indices.shape[-1] == self.dim, f"last dim of indices must be {self.dim}"
        freqs = self.freqs(indices.device)
        ang = indices.to(torch.float32)[..., None] * freqs           # [..., L, dim, fd]
        ang = ang.reshape(*indices.shape[:-1], self.dim * self.freq_dim)
        pad = self.head_dim // 2 - ang.shape[-1]
        if pad > 0:
            ang = torch.cat([ang, ang.new_zeros(*ang.shape[:-1], pad)], dim=-1)
        return torch.polar(torch.ones_like(ang), ang)

    @staticmethod
    def apply_rotary_embedding(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """Rotate adjacent pairs (2i, 2i+1) of the last dim of ``x [..., L, H, D]`` by ``phases [..., L, D/2]``."""
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        out = torch.view_as_real(xc * phases.unsqueeze(-2))
        return out.reshape(*x.shape).to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention; inputs/outputs ``[B, L, H, D]``, scale ``1/sqrt(D)``."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


class MultiHeadAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int, ctx_channels: Optional[int] = None,
                 type: Literal["self", "cross"] = "self",
                 attn_mode: Literal["full", "windowed"] = "full",
                 window_size: Optional[int] = None, shift_window=None,
                 qkv_bias: bool = True, use_rope: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        assert channels % num_heads == 0
        assert type in ("self", "cross"), f"Invalid attention type: {type}"
        assert attn_mode in ("full", "windowed"), f"Invalid attention mode: {attn_mode}"
        assert type == "self" or attn_mode == "full", "Cross-attention only supports full attention"
        if attn_mode == "windowed":
            raise NotImplementedError("Windowed attention is not implemented")
        assert not (use_rope and type == "cross"), "RoPE is only used in self-attention"
        self.channels = channels
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self.num_heads = num_heads
        self._type = type
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.shift_window = shift_window
        self.use_rope = use_rope
        self.qk_rms_norm = qk_rms_norm

        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)
        if use_rope:
            self.rope = RotaryPositionEmbedder(self.head_dim, 3)   # parameter-free

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                indices: Optional[torch.Tensor] = None,
                phases: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, L, C]``; ``context [B, M, C_ctx]`` (cross); for RoPE pass either ``phases``
        (complex ``[L, head_dim/2]`` or ``[B, L, head_dim/2]``) or integer ``indices [L, 3]`` / ``[B, L, 3]``."""
        B, L, _ = x.shape
        H = self.num_heads
        if self._type == "self":
            q, k, v = self.to_qkv(x).reshape(B, L, 3, H, -1).unbind(dim=2)
        else:
            M = context.shape[1]
            q = self.to_q(x).reshape(B, L, H, -1)
            k, v = self.to_kv(context).reshape(B, M, 2, H, -1).unbind(dim=2)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        if self.use_rope:
            if phases is None:
                assert indices is not None, "RoPE attention needs `phases` or `indices`"
                phases = self.rope(indices)
            q = RotaryPositionEmbedder.apply_rotary_embedding(q, phases)
            k = RotaryPositionEmbedder.apply_rotary_embedding(k, phases)
        h = _attention(q, k, v).reshape(B, L, -1)
        return self.to_out(h)


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ModulatedTransformerCrossBlock(nn.Module):
    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: Literal["full", "windowed"] = "full", window_size: Optional[int] = None,
                 shift_window=None, use_checkpoint: bool = False, use_rope: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 qkv_bias: bool = True, share_mod: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(
            channels, num_heads=num_heads, type="self", attn_mode=attn_mode,
            window_size=window_size, shift_window=shift_window, qkv_bias=qkv_bias,
            use_rope=use_rope, qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(
            channels, ctx_channels=ctx_channels, num_heads=num_heads, type="cross",
            attn_mode="full", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def _forward(self, x, mod, context, phases=None):
        if self.share_mod:
            chunks = mod.chunk(6, dim=1)
        else:
            chunks = self.adaLN_modulation(mod).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + gate_msa.unsqueeze(1) * self.self_attn(h, phases=phases)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(h)
        return x

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor,
                phases: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, mod, context, phases,
                                                     use_reentrant=False)
        return self._forward(x, mod, context, phases)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features ``[cos, sin]`` (256-d) followed by Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        idx = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * idx / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class AbsolutePositionEmbedder(nn.Module):
    """Per axis ``[sin(p*w), cos(p*w)]`` with ``w_j = 1/10000^(j/fd)``, ``fd = channels//in_channels//2``;
    axes concatenated, zero-padded at the end to ``channels``."""

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, D = x.shape
        assert D == self.in_channels, "Input dimension must match number of input channels"
        f = torch.arange(self.freq_dim, dtype=torch.float32, device=x.device) / self.freq_dim
        freqs = 1.0 / (10000 ** f)
        ang = x.to(torch.float32)[..., None] * freqs                      # [N, D, fd]
        emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).reshape(N, -1)
        if emb.shape[1] < self.channels:
            emb = torch.cat([emb, emb.new_zeros(N, self.channels - emb.shape[1])], dim=-1)
        return emb


def _grid_coords(n: int, device=None) -> torch.Tensor:
    ax = torch.arange(n, device=device)
    g = torch.meshgrid(ax, ax, ax, indexing="ij")
    return torch.stack(g, dim=-1).reshape(-1, 3)


class SparseStructureFlowModel(nn.Module):
    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: Optional[int] = None,
                 num_head_channels: Optional[int] = 64, mlp_ratio: float = 4, patch_size: int = 2,
                 pe_mode: Literal["ape", "rope"] = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, share_mod: bool = False, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False):
        super().__init__()
        assert pe_mode in ("ape", "rope"), f"Invalid pe_mode {pe_mode}"
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.pe_mode = pe_mode
        self.use_fp16 = use_fp16
        self.use_checkpoint = use_checkpoint
        self.share_mod = share_mod
        self.qk_rms_norm = qk_rms_norm
        self.qk_rms_norm_cross = qk_rms_norm_cross
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(), nn.Linear(model_channels, 6 * model_channels, bias=True))

        grid = resolution // patch_size
        if pe_mode == "ape":
            pos_embedder = AbsolutePositionEmbedder(model_channels, 3)
            self.register_buffer("pos_emb", pos_embedder(_grid_coords(grid)))
        else:
            # parameter-free; phases are recomputed in forward (no state_dict entries)
            self.rope = RotaryPositionEmbedder(model_channels // self.num_heads, 3)

        self.input_layer = nn.Linear(in_channels * patch_size ** 3, model_channels)
        self.blocks = nn.ModuleList([
            ModulatedTransformerCrossBlock(
                model_channels, cond_channels, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                attn_mode="full", use_checkpoint=use_checkpoint, use_rope=(pe_mode == "rope"),
                share_mod=share_mod, qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)
        ])
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size ** 3)

        self.initialize_weights()
        if use_fp16:
            self.convert_to_fp16()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def convert_to_fp16(self) -> None:
        """Cast Linear params inside ``blocks`` to float16 (as upstream, ``self.dtype`` is untouched)."""
        self.blocks.apply(_module_to_f16)

    def convert_to_fp32(self) -> None:
        self.blocks.apply(_module_to_f32)

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.share_mod:
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)
        else:
            for blk in self.blocks:
                nn.init.zeros_(blk.adaLN_modulation[-1].weight)
                nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        R, p = self.resolution, self.patch_size
        assert list(x.shape) == [x.shape[0], self.in_channels, R, R, R], \
            f"Input shape mismatch, got {list(x.shape)}, expected {[x.shape[0], self.in_channels, R, R, R]}"
        B = x.shape[0]
        h = patchify(x, p)
        h = h.reshape(B, h.shape[1], -1).permute(0, 2, 1).contiguous()   # [B, L, C_in*p^3]
        h = self.input_layer(h)
        phases = None
        if self.pe_mode == "ape":
            h = h + self.pos_emb[None]
        else:
            phases = self.rope(_grid_coords(R // p, device=x.device))
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb = t_emb.to(self.dtype)
        h = h.to(self.dtype)
        cond = cond.to(self.dtype)
        for blk in self.blocks:
            h = blk(h, t_emb, cond, phases=phases)
        h = h.to(x.dtype)
        h = F.layer_norm(h, h.shape[-1:])
        h = self.out_layer(h)
        h = h.permute(0, 2, 1).reshape(B, h.shape[2], *[R // p] * 3)
        return unpatchify(h, p).contiguous()
