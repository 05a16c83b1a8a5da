"""The DINOv2 / DINOv3 vision transformers that condition the image-to-3D models, as one Flax module.

One class covers the released encoders (``jaxshape.models.released``: ``dinov2_vitl14_reg`` for TRELLIS,
``dinov2_vitg14`` for PartPacker, ``dinov2_vitl14`` for Hunyuan3D-2.1 / TripoSG, ``dinov3_vitl16`` for TRELLIS.2):
patch 14 or 16; a learned absolute position table (DINOv2, with the interpolation rule of the checkpoint's origin)
or DINOv3's 2-D RoPE; 0 or 4 register tokens between CLS and the patches; MLP (exact GELU) or SwiGLU FFN; LayerScale.
Parameter names are the torch-hub ones (``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed/proj``, ``blocks/{norm1, attn/qkv, attn/proj, ls1, norm2, mlp/fc1|fc2 or w12|w3, ls2}``, ``norm``), so
a hub ``.pth`` converts by the generic rule and the Hugging Face layouts by a renaming
(``jaxshape.convert.dino``). ``mask_token`` is kept (every checkpoint holds it) and unused at inference.

Call ``(x [B, H, W, 3]) -> {"x_prenorm": [B, T, C], "x_norm": [B, T, C]}`` with ``x`` ImageNet-normalised
(``jaxshape.image.imagenet_normalize``), channels-last, ``H`` and ``W`` multiples of ``patch_size``;
``T = 1 + num_register_tokens + (H / p)(W / p)`` in the order ``[CLS, registers, patches (row-major)]``.
``x_prenorm`` is the residual stream after the last block, ``x_norm`` the final LayerNorm of it (HF's
``last_hidden_state``). :func:`image_condition` turns them into the condition tokens the 3-D models read.
Norms and softmax are fp32; everything else, the patch embedding included, computes in ``dtype`` (fp32 if None;
PartPacker runs its DINO in bf16); a learned position table is resampled in fp32, as upstream.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape.nn import (
    POSITION_INTERPOLATIONS,
    LayerNorm,
    ViTBlock,
    layer_norm,
    layer_unroll,
    partitioned,
    patch_rope_phases_2d,
    resample_position_table,
    scan_blocks,
)
from jaxshape.nn.axes import CONV_IN, CONV_K, EMBED

POSITION_EMBEDDINGS = ("learned", "rope")
FFN_LAYERS = ("mlp", "swiglu")
# The condition taps of the image-to-3D models (image_condition):
#   "prenorm_ln": all tokens of x_prenorm through a parameter-free LayerNorm (eps 1e-5) in fp32 -- TRELLIS,
#                 TRELLIS.2, PartPacker, Direct3D-S2;
#   "last_hidden_state": DINO's own final norm (x_norm) -- Hunyuan3D-2.1, TripoSG, Step1X-3D.
CONDITION_TAPS = ("prenorm_ln", "last_hidden_state")


def swiglu_hidden_features(embed_dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU width: ``int(int(C·ratio)·2/3)`` rounded up to a multiple of 8 (ViT-g: 4096)."""
    h = int(embed_dim * mlp_ratio)
    return (int(h * 2 / 3) + 7) // 8 * 8


class DinoViT(nn.Module):
    """DINOv2 / DINOv3 ViT (see the module docstring).

    Fields: ``img_size`` (the learned table's native size: ``img_size / patch_size`` patches a side), ``patch_size``,
    ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``ffn_hidden_features`` (explicit FFN width, e.g. DINOv3's
    ``intermediate_size``; default: ``C·mlp_ratio``, or :func:`swiglu_hidden_features` for SwiGLU), ``ffn_layer``
    (``"mlp"`` | ``"swiglu"``), ``num_register_tokens``, ``pos_embed`` (``"learned"`` | ``"rope"``),
    ``interpolate_mode`` (learned table at another size: ``"hub_offset"`` = torch-hub without registers,
    ``"antialias"`` = hub with registers and HF with registers, ``"size"`` = HF ``Dinov2Model``;
    ``jaxshape.nn.embeddings.position_interpolation_matrix``), ``interpolate_offset`` (0.1, hub), ``rope_theta``
    (DINOv3: 100), ``layer_norm_eps`` (DINOv2 1e-6, DINOv3 1e-5), ``layerscale``, ``qkv_bias`` (DINOv3's k bias
    is absent upstream; here it is the zero third of the fused bias, which cannot change the output: a key bias adds
    one constant per query row to the logits), plus ``dtype``, ``param_dtype``, ``use_checkpoint``
    (remat the scanned blocks), ``remat_policy``, ``attention_impl``, ``scan_unroll``.
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn_hidden_features: Optional[int] = None
    ffn_layer: str = "mlp"
    num_register_tokens: int = 0
    pos_embed: str = "learned"
    interpolate_mode: str = "antialias"
    interpolate_offset: float = 0.1
    rope_theta: float = 100.0
    layer_norm_eps: float = 1e-6
    layerscale: bool = True
    qkv_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_checkpoint: bool = False
    remat_policy: str = "nothing_saveable"
    attention_impl: Optional[str] = None
    scan_unroll: Optional[bool] = None

    def __post_init__(self):
        name = "DinoViT"
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{name}: embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.pos_embed not in POSITION_EMBEDDINGS:
            raise ValueError(f"{name}: pos_embed must be one of {POSITION_EMBEDDINGS}, got {self.pos_embed!r}")
        if self.ffn_layer not in FFN_LAYERS:
            raise ValueError(f"{name}: ffn_layer must be one of {FFN_LAYERS}, got {self.ffn_layer!r}")
        if self.interpolate_mode not in POSITION_INTERPOLATIONS:
            raise ValueError(f"{name}: interpolate_mode must be one of {POSITION_INTERPOLATIONS}, got "
                             f"{self.interpolate_mode!r}")
        if self.pos_embed == "learned" and self.img_size % self.patch_size:
            raise ValueError(f"{name}: img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.pos_embed == "rope" and (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"{name}: 2-D RoPE needs a head dim divisible by 4, got "
                             f"{self.embed_dim // self.num_heads}")
        if self.depth < 1 or self.num_register_tokens < 0:
            raise ValueError(f"{name}: depth must be >= 1 and num_register_tokens >= 0, got {self.depth}, "
                             f"{self.num_register_tokens}")
        super().__post_init__()

    @property
    def ffn_hidden(self) -> int:
        if self.ffn_hidden_features is not None:
            return self.ffn_hidden_features
        if self.ffn_layer == "swiglu":
            return swiglu_hidden_features(self.embed_dim, self.mlp_ratio)
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        """Patches a side of the learned position table (37 for the released DINOv2 at 518 px)."""
        return self.img_size // self.patch_size

    def num_tokens(self, height: int, width: int) -> int:
        """Output tokens for an ``height × width`` image: CLS + registers + patches."""
        return 1 + self.num_register_tokens + (height // self.patch_size) * (width // self.patch_size)

    def scanned_stacks(self) -> dict:
        """Flax stack name -> (upstream ModuleList prefix, length), for the converter."""
        return {"blocks": ("blocks", self.depth)}

    def example_inputs(self, batch_size: int = 1):
        return (jax.ShapeDtypeStruct((batch_size, self.img_size, self.img_size, 3), jnp.float32),)

    def _check_input(self, x: jax.Array) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"DinoViT: x must be an image batch [B, H, W, 3] (channels-last, ImageNet-normalised), "
                             f"got shape {tuple(x.shape)}")
        h, w = x.shape[1:3]
        p = self.patch_size
        if h % p or w % p or h == 0 or w == 0:
            raise ValueError(f"DinoViT: the image size {h}×{w} must be a positive multiple of patch_size {p} "
                             f"(resize or crop it first)")
        return h // p, w // p

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        rows, cols = self._check_input(x)
        c, p, b = self.embed_dim, self.patch_size, x.shape[0]
        torso = self.dtype if self.dtype is not None else jnp.float32
        small = nn.initializers.normal(1e-6)

        # patch embedding: Conv2d(3, C, p, stride p) as non-overlapping patches (ky, kx, c_in) @ [p·p·3, C]
        tokens = _PatchEmbed(c, p, param_dtype=self.param_dtype, name="patch_embed")(x.astype(torso))  # [B, N, C]

        cls = self.param("cls_token", partitioned(small, (None, None, EMBED)), (1, 1, c), self.param_dtype)
        self.param("mask_token", partitioned(nn.initializers.zeros_init(), (None, EMBED)), (1, c), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(tokens.dtype), (b, 1, c))
        rope = None
        if self.pos_embed == "learned":
            g = self.grid_size
            table = self.param("pos_embed", partitioned(nn.initializers.truncated_normal(0.02), (None, None, EMBED)),
                               (1, 1 + g * g, c), self.param_dtype)
            table = resample_position_table(table.astype(jnp.float32), g, rows, cols, self.interpolate_mode,
                                            self.interpolate_offset).astype(tokens.dtype)
            cls = cls + table[:, :1]
            tokens = tokens + table[:, 1:]
        else:
            head_dim = c // self.num_heads
            phases = patch_rope_phases_2d(rows, cols, head_dim, self.rope_theta)
            prefix = np.zeros((1 + self.num_register_tokens, head_dim // 2), np.float32)  # zero phase: no rotation
            rope = jnp.asarray(np.concatenate([prefix, phases]))
        parts = [cls]
        if self.num_register_tokens:
            reg = self.param("register_tokens", partitioned(small, (None, None, EMBED)),
                             (1, self.num_register_tokens, c), self.param_dtype)
            parts.append(jnp.broadcast_to(reg.astype(tokens.dtype), (b, self.num_register_tokens, c)))
        h = jnp.concatenate(parts + [tokens], axis=1)

        blocks = scan_blocks(
            ViTBlock, self.depth, name="blocks", remat=self.use_checkpoint, remat_policy=self.remat_policy,
            num_broadcast_args=1, unroll=layer_unroll(self.scan_unroll, self.depth, self.use_checkpoint),
            channels=c, num_heads=self.num_heads, ffn_hidden=self.ffn_hidden, ffn_layer=self.ffn_layer,
            layer_norm_eps=self.layer_norm_eps, layerscale=self.layerscale, qkv_bias=self.qkv_bias,
            dtype=torso, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
        )
        h, _ = blocks(h.astype(torso), rope)
        x_norm = LayerNorm(self.layer_norm_eps, param_dtype=self.param_dtype, name="norm")(h)
        return {"x_prenorm": h, "x_norm": x_norm}


class _PatchEmbed(nn.Module):
    """Hub ``patch_embed``: ``proj = Conv2d(3, C, p, stride=p)`` (kernel ``[p, p, 3, C]``), computed as a matmul of
    the non-overlapping patches flattened in (ky, kx, c_in) order; tokens row-major. Computes in ``x.dtype``."""

    features: int
    patch_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _PatchProjection(self.features, self.patch_size, self.param_dtype, name="proj")(x)


class _PatchProjection(nn.Module):
    features: int
    patch_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, c = self.patch_size, self.features
        b, hh, ww, cin = x.shape
        rows, cols = hh // p, ww // p
        kernel = self.param("kernel", partitioned(nn.initializers.lecun_normal(), (CONV_K, CONV_K, CONV_IN, EMBED)),
                            (p, p, cin, c), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), (EMBED,)), (c,), self.param_dtype)
        patches = x.reshape(b, rows, p, cols, p, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, p * p * cin)
        y = jnp.dot(patches, kernel.astype(x.dtype).reshape(p * p * cin, c))
        return y + bias.astype(x.dtype)


def image_condition(outputs: Mapping[str, jax.Array], tap: str = "prenorm_ln", *, num_register_tokens: int = 0,
                    keep_registers: bool = True, dtype: Any = None) -> jax.Array:
    """The condition tokens ``[B, T', C]`` an image-to-3D model reads from a :class:`DinoViT` output.

    ``tap``: ``"prenorm_ln"`` (TRELLIS, TRELLIS.2, PartPacker, Direct3D-S2): ``x_prenorm`` through a parameter-free
    LayerNorm with eps 1e-5, computed in fp32 (two-pass variance); ``"last_hidden_state"`` (Hunyuan3D-2.1, TripoSG,
    Step1X-3D): ``x_norm``. All tokens are kept unless ``keep_registers=False``, which drops the
    ``num_register_tokens`` tokens after CLS. ``dtype``: cast at the end (PartPacker: bf16); default fp32 for
    ``"prenorm_ln"``, the output's dtype otherwise. The unconditional branch of both pipelines is
    ``jnp.zeros_like`` of this.
    """
    if tap == "prenorm_ln":
        tokens = layer_norm(outputs["x_prenorm"], 1e-5)
    elif tap == "last_hidden_state":
        tokens = outputs["x_norm"]
    else:
        raise ValueError(f"tap must be one of {CONDITION_TAPS}, got {tap!r}")
    if not keep_registers and num_register_tokens:
        tokens = jnp.concatenate([tokens[:, :1], tokens[:, 1 + num_register_tokens:]], axis=1)
    return tokens if dtype is None else tokens.astype(dtype)


def encode_condition(encoder: nn.Module, variables, images, tap: str = "prenorm_ln", dtype: Any = jnp.float32):
    """The condition tokens ``[N, T, C]`` of ``images [N, S, S, 3]`` in [0, 1] (preprocessed,
    ``jaxshape.image``): ImageNet-normalised in fp32, read by ``encoder`` (a :class:`DinoViT`), then
    :func:`image_condition` of ``tap`` cast to ``dtype`` -- what the training step and the pipelines feed a
    3-D model."""
    from jaxshape.image import IMAGENET_MEAN, IMAGENET_STD

    x = (images.astype(jnp.float32) - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD,
                                                                                              jnp.float32)
    return image_condition(encoder.apply(variables, x), tap, dtype=dtype)
