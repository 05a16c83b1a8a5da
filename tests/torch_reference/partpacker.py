"""PyTorch reference mirror of NVlabs/PartPacker's vecset VAE (`vae.model.Model`) and flow DiT
(`flow.modules.dit.DiT`).

Written for the jaxshape parity tests from `shared/reference/vecset_partpacker.md` (§1-§4, §7). Module trees,
attribute names and therefore `state_dict` keys/shapes reproduce the upstream ones exactly, so the official
`vae.pt` / `flow.pt` (keys prefixed `dit.` stripped) load with `load_state_dict(strict=True)`.

Parity mode is float32 everywhere: the upstream bf16 casts are kept as `.to(self.precision)` /
`.to(weight dtype)` with `precision = torch.float32` by default. Only the inference paths needed by the tests are
mirrored (no training_step, no hierarchical mesh extraction, no gradient checkpointing numerics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ModelConfig",
    "fourier_encoding",
    "attention",
    "FeedForward",
    "RMSNorm",
    "SelfAttention",
    "CrossAttention",
    "AttentionBlock",
    "FlashQueryLayer",
    "DiagonalGaussianDistribution",
    "DummyLatent",
    "Model",
    "TimestepEmbedder",
    "DiTLayer",
    "DiT",
]


# ----------------------------------------------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    """VAE config; field names as upstream `vae.configs.schema.ModelConfig`, defaults = released `part_woenc`."""

    use_salient_point: bool = True
    cutoff_fps_point: Tuple[int, ...] = (256, 512, 512, 512, 1024, 1024, 2048)
    cutoff_fps_salient_point: Tuple[int, ...] = (0, 0, 256, 512, 512, 1024, 2048)
    cutoff_fps_prob: Tuple[float, ...] = (0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.2)
    num_enc_layers: int = 0
    hidden_dim: int = 1024
    num_heads: int = 16
    num_dec_layers: int = 24
    dec_hidden_dim: int = 1024
    dec_num_heads: int = 16
    qknorm: bool = True
    qknorm_type: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    salient_attn_mode: Literal["dual_shared", "single", "dual"] = "dual"
    fourier_version: Literal["v1", "v2", "v3"] = "v3"
    point_fourier_dim: int = 48  # divisible by 6
    query_hidden_dim: int = 1024
    query_num_heads: int = 16
    use_flash_query: bool = False
    latent_size: int = 4096  # informs the DiT only; the VAE is token-count agnostic
    latent_dim: int = 64
    use_ae: bool = False
    kl_weight: float = 1e-3
    pretrain_path: Optional[str] = None  # upstream field; ignored here


# ----------------------------------------------------------------------------------------------------------------
# Fourier point features (spec §1.2)


def fourier_encoding(points: torch.Tensor, point_fourier_dim: int = 48, version: str = "v3") -> torch.Tensor:
    """[..., 3] -> [..., 6F + 3], layout [sin x f.., cos x f.., sin y.., cos y.., sin z.., cos z.., x, y, z].

    Computed in the dtype of `points` (float32 expected); the caller casts to the model precision.
    """
    nf = point_fourier_dim // (2 * points.shape[-1])
    if version == "v1":
        freq = (512.0 ** (torch.arange(1, nf + 1, dtype=torch.float32, device=points.device) / nf)) * math.pi
    elif version == "v2":
        freq = (1024.0 ** (torch.arange(nf, dtype=torch.float32, device=points.device) / (nf - 1))) * math.pi
    elif version == "v3":
        freq = 2.0 ** torch.arange(nf, dtype=torch.float32, device=points.device)
    else:
        raise ValueError(f"unknown fourier_version {version!r}")
    spec = points.unsqueeze(-1) * freq  # [..., 3, F]
    enc = torch.stack([spec.sin(), spec.cos()], dim=-2)  # [..., 3, 2, F]
    enc = enc.reshape(*points.shape[:-1], 2 * nf * points.shape[-1])  # [..., 6F]
    return torch.cat([enc, points], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# primitives (spec §1.3)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B,N,H,D], k/v [B,M,H,D] -> [B,N,H,D]; SDPA, default scale, no mask. Zero keys (M = 0) -> zeros
    (what torch CPU SDPA returns; made explicit so it does not depend on the backend)."""
    if k.shape[1] == 0:
        return torch.zeros_like(q)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class RMSNorm(nn.Module):
    """PartPacker RMSNorm: normalise in fp32, round to the weight dtype, multiply by the weight (two roundings in
    bf16; in fp32 simply x * rsqrt(mean(x^2) + eps) * weight)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        r = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * r).to(dtype=self.weight.dtype) * self.weight


def _make_qk_norms(module: nn.Module, dim: int, qknorm_type: str) -> None:
    if qknorm_type == "RMSNorm":
        module.q_norm = RMSNorm(dim, eps=1e-6)
        module.k_norm = RMSNorm(dim, eps=1e-6)
    else:  # upstream: anything else -> parameter-free LayerNorm
        module.q_norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        module.k_norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)


class SelfAttention(nn.Module):
    """Fused blocked qkv_proj ([q | k | v] output rows); qk-norm over the full width before the head split."""

    def __init__(self, hidden_dim, num_heads, input_dim=None, output_dim=None, dropout=0, causal=False,
                 qknorm=False, qknorm_type="LayerNorm"):
        super().__init__()
        assert hidden_dim % num_heads == 0
        if dropout or causal:
            raise NotImplementedError("dropout / causal are unused by PartPacker and not mirrored")
        self.hidden_dim = hidden_dim
        self.input_dim = input_dim if input_dim is not None else hidden_dim
        self.output_dim = output_dim if output_dim is not None else hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.qknorm = qknorm
        self.qkv_proj = nn.Linear(self.input_dim, 3 * hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, self.output_dim)
        if qknorm:
            _make_qk_norms(self, hidden_dim, qknorm_type)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv_proj(x).reshape(B, N, 3, self.hidden_dim).unbind(dim=2)
        if self.qknorm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = q.reshape(B, N, self.num_heads, self.head_dim)
        k = k.reshape(B, N, self.num_heads, self.head_dim)
        v = v.reshape(B, N, self.num_heads, self.head_dim)
        return self.out_proj(attention(q, k, v).reshape(B, N, -1))


class CrossAttention(nn.Module):
    def __init__(self, hidden_dim, num_heads, input_dim=None, context_dim=None, output_dim=None, dropout=0,
                 qknorm=False, qknorm_type="LayerNorm"):
        super().__init__()
        assert hidden_dim % num_heads == 0
        if dropout:
            raise NotImplementedError("dropout is unused by PartPacker and not mirrored")
        self.hidden_dim = hidden_dim
        self.input_dim = input_dim if input_dim is not None else hidden_dim
        self.context_dim = context_dim if context_dim is not None else hidden_dim
        self.output_dim = output_dim if output_dim is not None else hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.qknorm = qknorm
        self.q_proj = nn.Linear(self.input_dim, hidden_dim)
        self.k_proj = nn.Linear(self.context_dim, hidden_dim)
        self.v_proj = nn.Linear(self.context_dim, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, self.output_dim)
        if qknorm:
            _make_qk_norms(self, hidden_dim, qknorm_type)

    def forward(self, x, context):
        B, N, _ = x.shape
        M = context.shape[1]
        q = self.q_proj(x)
        k = self.k_proj(context)
        v = self.v_proj(context)
        if self.qknorm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = q.reshape(B, N, self.num_heads, self.head_dim)
        k = k.reshape(B, M, self.num_heads, self.head_dim)
        v = v.reshape(B, M, self.num_heads, self.head_dim)
        return self.out_proj(attention(q, k, v).reshape(B, N, -1))


# ----------------------------------------------------------------------------------------------------------------
# blocks (spec §1.4)


class AttentionBlock(nn.Module):
    """Pre-LN block: x += Attn(LN0(x)[, LN0(c)]); x += FF4(LN0(x)). LN0 = LayerNorm(eps 1e-6, no affine)."""

    def __init__(self, dim, num_heads, dim_context=None, qknorm=False, gradient_checkpointing=True,
                 qknorm_type="LayerNorm"):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.dim_context = dim_context
        self.gradient_checkpointing = gradient_checkpointing
        self.norm_attn = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        if dim_context is not None:
            self.norm_context = nn.LayerNorm(dim_context, eps=1e-6, elementwise_affine=False)
            self.attn = CrossAttention(dim, num_heads, context_dim=dim_context, qknorm=qknorm, qknorm_type=qknorm_type)
        else:
            self.attn = SelfAttention(dim, num_heads, qknorm=qknorm, qknorm_type=qknorm_type)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(dim)

    def forward(self, x, c=None):
        if self.training and self.gradient_checkpointing:
            return checkpoint(self._forward, x, c, use_reentrant=False)
        return self._forward(x, c)

    def _forward(self, x, c=None):
        if c is not None:
            x = x + self.attn(self.norm_attn(x), self.norm_context(c))
        else:
            x = x + self.attn(self.norm_attn(x))
        return x + self.ff(self.norm_ff(x))


class FlashQueryLayer(nn.Module):
    """y = FF1(CrossAttn(LN0(x), c)): no residuals, no LN before FF, context not normalised here."""

    def __init__(self, dim, num_heads, dim_context, qknorm=False, gradient_checkpointing=True,
                 qknorm_type="LayerNorm"):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.dim_context = dim_context
        self.gradient_checkpointing = gradient_checkpointing
        self.norm_attn = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = CrossAttention(dim, num_heads, context_dim=dim_context, qknorm=qknorm, qknorm_type=qknorm_type)
        self.ff = FeedForward(dim, mult=1)

    def forward(self, x, c):
        if self.training and self.gradient_checkpointing:
            return checkpoint(self._forward, x, c, use_reentrant=False)
        return self._forward(x, c)

    def _forward(self, x, c):
        return self.ff(self.attn(self.norm_attn(x), c))


# ----------------------------------------------------------------------------------------------------------------
# posterior (spec §1.6)


class DiagonalGaussianDistribution:
    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, deterministic: bool = False):
        self.mean = mean
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(mean)

    def sample(self, weight: float = 1.0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """mean + std * weight * eps; `noise` (our addition) replaces eps ~ N(0, I)."""
        if noise is None:
            noise = torch.randn(self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * (weight * noise)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other=None, dims=(1, 2)) -> torch.Tensor:
        dims = list(dims)
        if self.deterministic:
            return torch.tensor([0.0])
        if other is None:
            return 0.5 * torch.mean(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.mean(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample, dims=(1, 2)) -> torch.Tensor:
        if self.deterministic:
            return torch.tensor([0.0])
        return 0.5 * torch.mean(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims)
        )


class DummyLatent:
    """`use_ae=True` latent: sample adds weight*noise only if weight > 0; kl = 0.5*mean(mean^2) (scalar)."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean

    def sample(self, weight: float = 0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weight > 0:
            if noise is None:
                noise = torch.randn_like(self.mean)
            return self.mean + noise * weight
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return 0.5 * torch.mean(self.mean.pow(2))


# ----------------------------------------------------------------------------------------------------------------
# VAE (spec §1.5-§1.7)


class Model(nn.Module):
    """Mirror of `vae.model.Model` (inference paths)."""

    def __init__(self, config: ModelConfig, precision: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.precision = precision  # upstream: always torch.bfloat16
        in_dim = 3 + config.point_fourier_dim

        self.proj_input = nn.Linear(in_dim, config.hidden_dim)
        self.perceiver = AttentionBlock(config.hidden_dim, num_heads=config.num_heads, dim_context=config.hidden_dim,
                                        qknorm=config.qknorm, qknorm_type=config.qknorm_type)
        if config.salient_attn_mode == "dual":
            self.perceiver_dorases = AttentionBlock(config.hidden_dim, num_heads=config.num_heads,
                                                    dim_context=config.hidden_dim, qknorm=config.qknorm,
                                                    qknorm_type=config.qknorm_type)
        self.encoder = nn.ModuleList([
            AttentionBlock(config.hidden_dim, config.num_heads, qknorm=config.qknorm, qknorm_type=config.qknorm_type)
            for _ in range(config.num_enc_layers)
        ])

        self.norm_down = nn.LayerNorm(config.hidden_dim)  # eps 1e-5, affine
        self.proj_down_mean = nn.Linear(config.hidden_dim, config.latent_dim)
        if not config.use_ae:
            self.proj_down_std = nn.Linear(config.hidden_dim, config.latent_dim)
        self.proj_up = nn.Linear(config.latent_dim, config.dec_hidden_dim)

        self.decoder = nn.ModuleList([
            AttentionBlock(config.dec_hidden_dim, config.dec_num_heads, qknorm=config.qknorm,
                           qknorm_type=config.qknorm_type)
            for _ in range(config.num_dec_layers)
        ])

        self.proj_query = nn.Linear(in_dim, config.query_hidden_dim)
        if config.use_flash_query:
            self.norm_query_context = nn.LayerNorm(config.hidden_dim, eps=1e-6, elementwise_affine=False)
            self.attn_query = FlashQueryLayer(config.query_hidden_dim, num_heads=config.query_num_heads,
                                              dim_context=config.hidden_dim, qknorm=config.qknorm,
                                              qknorm_type=config.qknorm_type)
        else:
            # NB upstream uses dim_context=hidden_dim (not dec_hidden_dim)
            self.attn_query = AttentionBlock(config.query_hidden_dim, num_heads=config.query_num_heads,
                                             dim_context=config.hidden_dim, qknorm=config.qknorm,
                                             qknorm_type=config.qknorm_type)
        self.norm_out = nn.LayerNorm(config.query_hidden_dim)  # eps 1e-5, affine
        self.proj_out = nn.Linear(config.query_hidden_dim, 1)

    def fourier_encoding(self, points: torch.Tensor) -> torch.Tensor:
        enc = fourier_encoding(points, self.config.point_fourier_dim, self.config.fourier_version)
        return enc.to(dtype=self.precision)

    @staticmethod
    def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, idx.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def encode(self, data: dict):
        """data: pointcloud [B,N,3], fps_indices [B,N'] and, with use_salient_point, pointcloud_dorases [B,M,3],
        fps_indices_dorases [B,M'] (M' may be 0). Returns DiagonalGaussianDistribution (or DummyLatent)."""
        cfg = self.config
        pc = self.proj_input(self.fourier_encoding(data["pointcloud"]))
        query = self._gather(pc, data["fps_indices"])

        if cfg.use_salient_point:
            pcs = self.proj_input(self.fourier_encoding(data["pointcloud_dorases"]))  # shared projection
            idx_s = data["fps_indices_dorases"]
            if idx_s.shape[1] > 0:
                query = torch.cat([query, self._gather(pcs, idx_s)], dim=1)  # uniform first, then salient
            if cfg.salient_attn_mode == "dual_shared":
                h = self.perceiver(query, pc) + self.perceiver(query, pcs)
            elif cfg.salient_attn_mode == "dual":
                h = self.perceiver(query, pc) + self.perceiver_dorases(query, pcs)
            else:  # "single"
                h = self.perceiver(query, torch.cat([pc, pcs], dim=1))
        else:
            h = self.perceiver(query, pc)

        for block in self.encoder:
            h = block(h)

        h = self.norm_down(h)
        mean = self.proj_down_mean(h).float()
        if cfg.use_ae:
            return DummyLatent(mean)
        logvar = self.proj_down_std(h).float()
        return DiagonalGaussianDistribution(mean, logvar)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.proj_up(latent.to(dtype=self.precision))
        for block in self.decoder:
            h = block(h)
        return h

    def query(self, query_points: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """query_points [B,Q,3] (float32), hidden_states = decode(z) -> prediction [B,Q,1] (float32), as upstream.

        Unlike upstream `query` (which leaves `norm_query_context` to its callers), this applies
        `norm_query_context` itself when `use_flash_query`, and casts to float32 like the callers do."""
        if self.config.use_flash_query:
            hidden_states = self.norm_query_context(hidden_states)
        q = self.proj_query(self.fourier_encoding(query_points))
        o = self.attn_query(q, hidden_states)
        return self.proj_out(self.norm_out(o)).float()


# ----------------------------------------------------------------------------------------------------------------
# DiT (spec §2.2-§2.3, §2.7)


class TimestepEmbedder(nn.Module):
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
        """[cos, sin] order; freqs = exp(-ln(max_period) * k / half) in float32."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(device=t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(dtype=dtype))


class DiTLayer(nn.Module):
    """adaLN self-attn (shift1, scale1, gate1), un-modulated cross-attn (no context norm), adaLN FF."""

    def __init__(self, dim, num_heads, qknorm=False, gradient_checkpointing=True, qknorm_type="LayerNorm",
                 context_dim=None):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.gradient_checkpointing = gradient_checkpointing
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn1 = SelfAttention(dim, num_heads, qknorm=qknorm, qknorm_type=qknorm_type)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn2 = CrossAttention(dim, num_heads, context_dim=context_dim if context_dim is not None else dim,
                                    qknorm=qknorm, qknorm_type=qknorm_type)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(dim)
        self.adaln_linear = nn.Linear(dim, dim * 6, bias=True)

    def forward(self, x, c, t_emb):
        if self.training and self.gradient_checkpointing:
            return checkpoint(self._forward, x, c, t_emb, use_reentrant=False)
        return self._forward(x, c, t_emb)

    def _forward(self, x, c, t_emb):
        B = x.shape[0]
        mod = self.adaln_linear(F.silu(t_emb)).view(B, 6, -1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)  # each [B, 1, C]
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn1(h)
        x = x + self.attn2(self.norm2(x), c)
        h = self.norm3(x) * (1 + scale2) + shift2
        return x + gate2 * self.ff(h)


class DiT(nn.Module):
    """Mirror of `flow.modules.dit.DiT`. Constructor arguments and defaults as upstream; `context_dim` is our
    addition (upstream hard-wires the condition width to hidden_dim; default None keeps that)."""

    def __init__(
        self,
        hidden_dim=1024,
        num_heads=16,
        latent_size=2048,
        latent_dim=8,
        num_layers=24,
        qknorm=False,
        gradient_checkpointing=True,
        qknorm_type="LayerNorm",
        use_pos_embed=False,
        use_parts=False,
        part_embed_mode="part2_only",
        context_dim=None,
    ):
        super().__init__()
        self.proj_in = nn.Linear(latent_dim, hidden_dim)

        self.use_pos_embed = use_pos_embed
        if use_pos_embed:
            self.pos_embed = nn.Parameter(torch.randn(1, latent_size, hidden_dim) / hidden_dim**0.5)

        self.use_parts = use_parts
        self.part_embed_mode = part_embed_mode
        if use_parts:
            if part_embed_mode == "element":
                self.part_embed = nn.Parameter(torch.randn(latent_size, hidden_dim) / hidden_dim**0.5)
            elif part_embed_mode == "part":
                self.part_embed = nn.Parameter(torch.randn(2, hidden_dim))  # upstream: no 1/sqrt(C) here
            elif part_embed_mode == "part2_only":
                self.part_embed = nn.Parameter(torch.randn(1, hidden_dim) / hidden_dim**0.5)
            else:
                raise ValueError(f"unknown part_embed_mode {part_embed_mode!r}")

        self.timestep_embed = TimestepEmbedder(hidden_dim)
        self.layers = nn.ModuleList([
            DiTLayer(hidden_dim, num_heads, qknorm, gradient_checkpointing, qknorm_type, context_dim=context_dim)
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(hidden_dim, eps=1e-6, elementwise_affine=False)
        self.proj_out = nn.Linear(hidden_dim, latent_dim)
        self.init_weight()

    def init_weight(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.timestep_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.timestep_embed.mlp[2].weight, std=0.02)
        for layer in self.layers:
            nn.init.zeros_(layer.adaln_linear.weight)
            nn.init.zeros_(layer.adaln_linear.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B,N,latent_dim], c [B,M,context] (already normalised DINO tokens), t [B] = 1000*sigma."""
        x = self.proj_in(x)
        if self.use_pos_embed:
            x = x + self.pos_embed
        if self.use_parts:
            half = x.shape[1] // 2
            if self.part_embed_mode == "element":
                x = x + self.part_embed
            elif self.part_embed_mode == "part":
                x = torch.cat([x[:, :half] + self.part_embed[0], x[:, half:] + self.part_embed[1]], dim=1)
            else:  # part2_only
                x = torch.cat([x[:, :half], x[:, half:] + self.part_embed[0]], dim=1)
        t_emb = self.timestep_embed(t)
        for layer in self.layers:
            x = layer(x, c, t_emb)
        return self.proj_out(self.norm_out(x))
