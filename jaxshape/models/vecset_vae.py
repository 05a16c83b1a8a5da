"""PartPacker vecset VAE (NVlabs/PartPacker ``vae.model.Model``): point cloud -> latent token set -> SDF queries.

Fields are upstream ``vae.configs.schema.ModelConfig``'s, with the released ``part_woenc`` values as defaults
(``cutoff_fps_*``, ``kl_weight`` and ``pretrain_path`` are training-side fields, kept so an upstream config
constructs the model; they do not change the network). Added: ``dtype`` (compute dtype; ``None`` = fp32 params'
dtype; upstream runs pure bf16), ``param_dtype``, ``remat_policy`` (``None`` disables rematerialisation of the
scanned encoder/decoder stacks), ``attention_impl`` and ``scan_unroll`` (``jaxshape.nn.layer_unroll``).

Methods (``module.apply(variables, ..., method=...)``):

* ``encode(data) -> (mean, logvar)`` fp32 ``[B, N' + M', latent_dim]``; ``logvar`` is already clamped to
  [-30, 20] (upstream ``posterior.logvar``) and is ``None`` with ``use_ae``. ``data`` uses upstream keys:
  ``pointcloud [B, N, 3]``, ``fps_indices [B, N'] int`` and, with ``use_salient_point``,
  ``pointcloud_dorases [B, M, 3]``, ``fps_indices_dorases [B, M'] int`` (M' may be 0; M = 0 attends over an
  empty key set, which gives a zero attention output like torch SDPA). Indices must lie in range: JAX
  gathers cannot raise, out-of-range indices are clipped (torch would raise).
* ``decode(latent [B, L, latent_dim]) -> hidden [B, L, dec_hidden_dim]``.
* ``query(query_points [B, Q, 3], hidden_states) -> pred [B, Q, 1]`` fp32 (upstream's shape; its callers squeeze).
  With ``use_flash_query`` the ``norm_query_context`` LayerNorm is applied here (upstream leaves it to the
  callers).
* ``__call__(data, sample_posterior=False, noise=None) -> (pred [B, Q], mean, logvar)``: encode, take the
  posterior mode (or a sample: ``noise`` array or the ``"noise"`` rng stream), decode, query
  ``data["query_points"]`` — upstream's ``training_step`` forward without the loss.

Posterior helpers: :class:`DiagonalGaussian` / :class:`DummyLatent` (``posterior(mean, logvar)`` picks one).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxshape.nn import (
    PARTPACKER_QK_NORMS,
    AttentionBlock,
    Dense,
    FlashQueryLayer,
    LayerNorm,
    fourier_point_features,
    layer_norm,
    layer_unroll,
    scan_blocks,
)
from jaxshape.nn.axes import EMBED, LATENT, POINTS

SALIENT_ATTN_MODES = ("dual", "dual_shared", "single")
FOURIER_VERSIONS = ("v1", "v2", "v3")


# --------------------------------------------------------------------------------------------------------------
# posterior


@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    """Stable-Diffusion style diagonal Gaussian over ``[B, L, D]`` latents (upstream
    ``DiagonalGaussianDistribution``). ``logvar`` is clamped to [-30, 20] on construction."""

    mean: jax.Array
    logvar: jax.Array

    def __post_init__(self):
        object.__setattr__(self, "logvar", jnp.clip(self.logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, rng: Optional[jax.Array] = None, *, noise: Optional[jax.Array] = None,
               weight: float = 1.0) -> jax.Array:
        """``mean + std * weight * eps`` with ``eps`` = ``noise`` or ``N(0, I)`` drawn (fp32) from ``rng``."""
        if noise is None:
            if rng is None:
                raise ValueError("DiagonalGaussian.sample needs an rng key or a noise array")
            noise = jax.random.normal(rng, self.mean.shape, jnp.float32)
        if noise.shape != self.mean.shape:
            raise ValueError(f"noise must have the posterior's shape {self.mean.shape}, got {noise.shape}")
        return self.mean + self.std * (weight * noise.astype(self.mean.dtype))

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """``0.5 * mean over tokens and channels of (mean² + var - 1 - logvar)`` -> ``[B]``."""
        return 0.5 * jnp.mean(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class DummyLatent:
    """``use_ae=True`` latent (upstream ``DummyLatent``): ``sample`` adds ``weight * noise`` only if
    ``weight > 0`` (default 0: the mean); ``kl = 0.5 * mean(mean²)`` over everything (a scalar, as upstream)."""

    mean: jax.Array

    def sample(self, rng: Optional[jax.Array] = None, *, noise: Optional[jax.Array] = None,
               weight: float = 0.0) -> jax.Array:
        if weight > 0:
            if noise is None:
                if rng is None:
                    raise ValueError("DummyLatent.sample with weight > 0 needs an rng key or a noise array")
                noise = jax.random.normal(rng, self.mean.shape, jnp.float32)
            return self.mean + noise.astype(self.mean.dtype) * weight
        return self.mean

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        return 0.5 * jnp.mean(jnp.square(self.mean))


def posterior(mean: jax.Array, logvar: Optional[jax.Array]):
    """The posterior object for ``encode``'s output: :class:`DummyLatent` if ``logvar is None`` (``use_ae``)."""
    return DummyLatent(mean) if logvar is None else DiagonalGaussian(mean, logvar)


# --------------------------------------------------------------------------------------------------------------
# model


def _check_points(name: str, x: Any) -> None:
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"VecSetVAE: {name} must have shape [B, N, 3], got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"VecSetVAE: {name} must be floating point, got {x.dtype}")


def _check_indices(name: str, idx: Any, batch: int) -> None:
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"VecSetVAE: {name} must be an integer array, got {idx.dtype}")
    if idx.ndim != 2 or idx.shape[0] != batch:
        raise ValueError(f"VecSetVAE: {name} must have shape [B, K] with B = {batch}, got {tuple(idx.shape)}")


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1, mode="clip")


class VecSetVAE(nn.Module):
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
    qknorm_type: str = "LayerNorm"
    salient_attn_mode: str = "dual"
    fourier_version: str = "v3"
    point_fourier_dim: int = 48
    query_hidden_dim: int = 1024
    query_num_heads: int = 16
    use_flash_query: bool = False
    latent_size: int = 4096
    latent_dim: int = 64
    use_ae: bool = False
    kl_weight: float = 1e-3
    pretrain_path: Optional[str] = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    remat_policy: Optional[str] = "nothing_saveable"
    attention_impl: Optional[str] = None
    scan_unroll: Optional[bool] = None

    init_method = "init_all"

    def __post_init__(self):
        name = "VecSetVAE"
        for width, heads, wn, hn in ((self.hidden_dim, self.num_heads, "hidden_dim", "num_heads"),
                                     (self.dec_hidden_dim, self.dec_num_heads, "dec_hidden_dim", "dec_num_heads"),
                                     (self.query_hidden_dim, self.query_num_heads, "query_hidden_dim",
                                      "query_num_heads")):
            if heads < 1 or width < 1 or width % heads:
                raise ValueError(f"{name}: {wn} {width} must be a positive multiple of {hn} {heads}")
        if self.salient_attn_mode not in SALIENT_ATTN_MODES:
            raise ValueError(f"{name}: salient_attn_mode must be one of {SALIENT_ATTN_MODES}, "
                             f"got {self.salient_attn_mode!r}")
        if self.qknorm_type not in PARTPACKER_QK_NORMS:
            raise ValueError(f"{name}: qknorm_type must be one of {tuple(PARTPACKER_QK_NORMS)}, "
                             f"got {self.qknorm_type!r}")
        if self.fourier_version not in FOURIER_VERSIONS:
            raise ValueError(f"{name}: fourier_version must be one of {FOURIER_VERSIONS}, "
                             f"got {self.fourier_version!r}")
        if self.point_fourier_dim < 6 or self.point_fourier_dim % 6:
            raise ValueError(f"{name}: point_fourier_dim must be a positive multiple of 6, "
                             f"got {self.point_fourier_dim}")
        if self.fourier_version == "v2" and self.point_fourier_dim < 12:
            raise ValueError(f"{name}: fourier_version 'v2' needs point_fourier_dim >= 12 (at least 2 frequencies)")
        if self.num_enc_layers < 0 or self.num_dec_layers < 0:
            raise ValueError(f"{name}: num_enc_layers / num_dec_layers must be >= 0, got "
                             f"{self.num_enc_layers} / {self.num_dec_layers}")
        if self.latent_dim < 1:
            raise ValueError(f"{name}: latent_dim must be >= 1, got {self.latent_dim}")
        if self.dec_hidden_dim != self.hidden_dim:
            # upstream builds attn_query / norm_query_context with dim_context = hidden_dim but feeds the decoder
            # output (dec_hidden_dim wide): it only runs when both are equal.
            raise ValueError(f"{name}: dec_hidden_dim ({self.dec_hidden_dim}) must equal hidden_dim "
                             f"({self.hidden_dim}); upstream's query head takes hidden_dim-wide context")
        super().__post_init__()

    # ---------------------------------------------------------------------------------------------- converter

    def scanned_stacks(self) -> dict:
        """Flax stack name -> (upstream ModuleList prefix, length), for the converter."""
        out = {}
        if self.num_enc_layers:
            out["encoder"] = ("encoder", self.num_enc_layers)
        if self.num_dec_layers:
            out["decoder"] = ("decoder", self.num_dec_layers)
        return out

    def example_inputs(self, batch_size: int = 1, num_points: int = 8, num_queries: int = 4):
        """Inputs of :meth:`init_all` (pointcloud, pointcloud_dorases, fps_indices, fps_indices_dorases,
        query_points)."""
        b = batch_size
        pts = jax.ShapeDtypeStruct((b, num_points, 3), jnp.float32)
        idx = jax.ShapeDtypeStruct((b, num_points // 2), jnp.int32)
        return (pts, pts, idx, idx, jax.ShapeDtypeStruct((b, num_queries, 3), jnp.float32))

    # ---------------------------------------------------------------------------------------------- modules

    @property
    def _qk_norm(self) -> Optional[str]:
        return PARTPACKER_QK_NORMS[self.qknorm_type] if self.qknorm else None

    def setup(self):
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        blk = dict(qk_norm=self._qk_norm, init_scheme="torch", attention_impl=self.attention_impl, **dt)
        remat = self.remat_policy is not None
        policy = self.remat_policy or "nothing_saveable"
        c = self.hidden_dim
        self.proj_input = Dense(c, init_scheme="torch", axes=(POINTS, EMBED), **dt)
        self.perceiver = AttentionBlock(c, self.num_heads, cross=True, **blk)
        if self.salient_attn_mode == "dual":  # upstream builds it even without salient points (then unused)
            self.perceiver_dorases = AttentionBlock(c, self.num_heads, cross=True, **blk)
        if self.num_enc_layers:
            self.encoder = scan_blocks(AttentionBlock, self.num_enc_layers, name="encoder", remat=remat,
                                       remat_policy=policy, num_broadcast_args=0,
                                       unroll=layer_unroll(self.scan_unroll, self.num_enc_layers, remat), channels=c,
                                       num_heads=self.num_heads, return_carry=True, **blk)
        self.norm_down = LayerNorm(1e-5, elementwise_affine=True, param_dtype=self.param_dtype)
        self.proj_down_mean = Dense(self.latent_dim, init_scheme="torch", axes=(EMBED, LATENT), **dt)
        if not self.use_ae:
            self.proj_down_std = Dense(self.latent_dim, init_scheme="torch", axes=(EMBED, LATENT), **dt)
        self.proj_up = Dense(self.dec_hidden_dim, init_scheme="torch", axes=(LATENT, EMBED), **dt)
        if self.num_dec_layers:
            self.decoder = scan_blocks(AttentionBlock, self.num_dec_layers, name="decoder", remat=remat,
                                       remat_policy=policy, num_broadcast_args=0,
                                       unroll=layer_unroll(self.scan_unroll, self.num_dec_layers, remat),
                                       channels=self.dec_hidden_dim,
                                       num_heads=self.dec_num_heads, return_carry=True, **blk)
        self.proj_query = Dense(self.query_hidden_dim, init_scheme="torch", axes=(POINTS, EMBED), **dt)
        if self.use_flash_query:
            self.attn_query = FlashQueryLayer(self.query_hidden_dim, self.query_num_heads, **blk)
        else:
            self.attn_query = AttentionBlock(self.query_hidden_dim, self.query_num_heads, cross=True, **blk)
        self.norm_out = LayerNorm(1e-5, elementwise_affine=True, param_dtype=self.param_dtype)
        self.proj_out = Dense(1, init_scheme="torch", axes=(EMBED, None), **dt)

    def _fourier(self, points: jax.Array) -> jax.Array:
        """Fourier features in fp32, then cast to the compute dtype (upstream: bf16)."""
        feat = fourier_point_features(points.astype(jnp.float32), self.point_fourier_dim // 6,
                                      self.fourier_version, layout="partpacker")
        return feat if self.dtype is None else feat.astype(self.dtype)

    # ---------------------------------------------------------------------------------------------- methods

    def encode(self, data: Mapping[str, jax.Array]):
        """``data`` -> ``(mean, logvar)`` fp32 ``[B, N' + M', latent_dim]`` (``logvar`` clamped; ``None`` if
        ``use_ae``)."""
        for key in ("pointcloud", "fps_indices") + (
                ("pointcloud_dorases", "fps_indices_dorases") if self.use_salient_point else ()):
            if key not in data:
                raise ValueError(f"VecSetVAE.encode: data is missing {key!r}")
        pc_raw = data["pointcloud"]
        _check_points("pointcloud", pc_raw)
        b = pc_raw.shape[0]
        _check_indices("fps_indices", data["fps_indices"], b)
        pc = self.proj_input(self._fourier(pc_raw))
        query = _gather(pc, data["fps_indices"])
        if self.use_salient_point:
            sal_raw = data["pointcloud_dorases"]
            _check_points("pointcloud_dorases", sal_raw)
            if sal_raw.shape[0] != b:
                raise ValueError(f"VecSetVAE: pointcloud_dorases batch {sal_raw.shape[0]} != pointcloud batch {b}")
            idx_s = data["fps_indices_dorases"]
            _check_indices("fps_indices_dorases", idx_s, b)
            sal = self.proj_input(self._fourier(sal_raw))  # shared projection
            if idx_s.shape[1] > 0:
                query = jnp.concatenate([query, _gather(sal, idx_s)], axis=1)  # uniform first, then salient
            if self.salient_attn_mode == "dual":
                h = self.perceiver(query, pc) + self.perceiver_dorases(query, sal)
            elif self.salient_attn_mode == "dual_shared":
                h = self.perceiver(query, pc) + self.perceiver(query, sal)
            else:  # single
                h = self.perceiver(query, jnp.concatenate([pc, sal], axis=1))
        else:
            h = self.perceiver(query, pc)
        if self.num_enc_layers:
            h, _ = self.encoder(h)
        h = self.norm_down(h)
        mean = self.proj_down_mean(h).astype(jnp.float32)
        if self.use_ae:
            return mean, None
        logvar = jnp.clip(self.proj_down_std(h).astype(jnp.float32), -30.0, 20.0)
        return mean, logvar

    def decode(self, latent: jax.Array) -> jax.Array:
        """``latent [B, L, latent_dim]`` -> decoder hidden states ``[B, L, dec_hidden_dim]`` (no final norm)."""
        if latent.ndim != 3 or latent.shape[-1] != self.latent_dim:
            raise ValueError(f"VecSetVAE.decode: latent must have shape [B, L, {self.latent_dim}], "
                             f"got {tuple(latent.shape)}")
        h = latent if self.dtype is None else latent.astype(self.dtype)
        h = self.proj_up(h)
        if self.num_dec_layers:
            h, _ = self.decoder(h)
        return h

    def query(self, query_points: jax.Array, hidden_states: jax.Array) -> jax.Array:
        """``query_points [B, Q, 3]`` against ``hidden_states = decode(z)`` -> prediction ``[B, Q, 1]`` fp32."""
        _check_points("query_points", query_points)
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.hidden_dim:
            raise ValueError(f"VecSetVAE.query: hidden_states must have shape [B, L, {self.hidden_dim}], "
                             f"got {tuple(hidden_states.shape)}")
        if hidden_states.shape[0] != query_points.shape[0]:
            raise ValueError(f"VecSetVAE.query: query_points batch {query_points.shape[0]} != hidden_states "
                             f"batch {hidden_states.shape[0]}")
        if self.use_flash_query:  # upstream `norm_query_context`, parameter-free
            hidden_states = layer_norm(hidden_states, 1e-6).astype(hidden_states.dtype)
        q = self.proj_query(self._fourier(query_points))
        o = self.attn_query(q, hidden_states)
        return self.proj_out(self.norm_out(o)).astype(jnp.float32)

    def __call__(self, data: Mapping[str, jax.Array], sample_posterior: bool = False,
                 noise: Optional[jax.Array] = None):
        """encode -> mode (or sample) -> decode -> query(``data["query_points"]``) -> ``(pred, mean, logvar)``."""
        if "query_points" not in data:
            raise ValueError("VecSetVAE: data is missing 'query_points'")
        mean, logvar = self.encode(data)
        post = posterior(mean, logvar)
        if sample_posterior and not self.use_ae:
            z = post.sample(None if noise is not None else self.make_rng("noise"), noise=noise)
        else:
            z = post.mode()
        return self.query(data["query_points"], self.decode(z))[..., 0], mean, logvar

    def init_all(self, pointcloud, pointcloud_dorases, fps_indices, fps_indices_dorases, query_points):
        """Touches every parameter (use as ``init(..., method="init_all")``; the converter does, with
        :meth:`example_inputs`). Returns ``__call__``'s output."""
        data = dict(pointcloud=pointcloud, pointcloud_dorases=pointcloud_dorases, fps_indices=fps_indices,
                    fps_indices_dorases=fps_indices_dorases, query_points=query_points)
        out = self(data)
        if not self.use_salient_point and self.salient_attn_mode == "dual":  # unused upstream params, keep keys
            q = self.proj_input(self._fourier(pointcloud))
            self.perceiver_dorases(q, q)
        return out


def decode_grids(vae: VecSetVAE, variables: dict, latents: jax.Array, resolution: int) -> list:
    """Dense ``(R+1)³`` TSDF grids (numpy, inside positive) of each latent set ``latents [B, L, latent_dim]``:
    decode once per shape, then query the grid of ``jaxshape.geometry.grid_points(R)`` in fixed-size chunks."""
    from jaxshape.geometry import decode_dense

    grids = []
    query = jax.jit(lambda v, pts, hidden: vae.apply(v, pts[None], hidden, method="query")[0, :, 0])
    decode = jax.jit(lambda v, z: vae.apply(v, z[None], method="decode"))
    for z in latents:
        hidden = decode(variables, z)
        grids.append(decode_dense(lambda p: query(variables, jnp.asarray(p), hidden), resolution,
                                  max_points_per_query=min(8192, (resolution + 1) ** 3)))
    return grids
