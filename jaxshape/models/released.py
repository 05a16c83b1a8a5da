"""Constructor arguments of the released upstream checkpoints (the ``args`` of their JSON configs).

``jaxshape.models.build(name, **overrides)`` constructs the matching module, e.g.
``build("ss_flow_img_dit_L_16l8_fp16", dtype=jnp.bfloat16)``.
"""
from __future__ import annotations

import copy

_SS_FLOW = dict(resolution=16, in_channels=8, out_channels=8, mlp_ratio=4, patch_size=1, pe_mode="ape",
                qk_rms_norm=True, use_fp16=True)

_DINOV2_L = dict(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, ffn_layer="mlp")
_DINOV2_G = dict(img_size=518, patch_size=14, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=4, ffn_layer="swiglu")

RELEASED: dict[str, tuple[str, dict]] = {
    # microsoft/TRELLIS-image-large/ckpts
    "ss_enc_conv3d_16l8_fp16": ("SparseStructureEncoder", dict(
        in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=(32, 128, 512),
        use_fp16=True)),
    "ss_dec_conv3d_16l8_fp16": ("SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=(512, 128, 32),
        use_fp16=True)),
    "ss_flow_img_dit_L_16l8_fp16": ("SparseStructureFlowModel", dict(
        _SS_FLOW, model_channels=1024, cond_channels=1024, num_blocks=24, num_heads=16)),
    # microsoft/TRELLIS-text-{base,large,xlarge}/ckpts
    "ss_flow_txt_dit_B_16l8_fp16": ("SparseStructureFlowModel", dict(
        _SS_FLOW, model_channels=768, cond_channels=768, num_blocks=12, num_heads=12)),
    "ss_flow_txt_dit_L_16l8_fp16": ("SparseStructureFlowModel", dict(
        _SS_FLOW, model_channels=1024, cond_channels=768, num_blocks=24, num_heads=16)),
    "ss_flow_txt_dit_XL_16l8_fp16": ("SparseStructureFlowModel", dict(
        _SS_FLOW, model_channels=1280, cond_channels=768, num_blocks=28, num_heads=16, qk_rms_norm_cross=True)),
    # microsoft/TRELLIS.2-4B/ckpts (configs/gen/ss_flow_img_dit_1_3B_64_bf16.json; conditioned on dinov3_vitl16)
    "ss_flow_img_dit_1_3B_64_bf16": ("SparseStructureFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=1536, cond_channels=1024, num_blocks=30,
        num_heads=12, mlp_ratio=5.3334, pe_mode="rope", share_mod=True, initialization="scaled", qk_rms_norm=True,
        qk_rms_norm_cross=True, upstream="trellis2")),
    # NVlabs/PartPacker vae.pt (part_woenc: the VecSetVAE defaults) and flow.pt (the DiT inside it, keys "dit.*")
    "partpacker_vae": ("VecSetVAE", {}),
    "partpacker_dit": ("VecSetDiT", dict(
        hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
        qknorm_type="RMSNorm", use_pos_embed=False, use_parts=True, part_embed_mode="part2_only")),
    # the DINO image encoders (jaxshape.models.dino_vit; torch-hub names). The hub's interpolation rule of its
    # position table (used only at a size other than 518²): "hub_offset" without registers, "antialias" with them.
    "dinov2_vitl14_reg": ("DinoViT", dict(_DINOV2_L, num_register_tokens=4, interpolate_mode="antialias")),  # TRELLIS
    "dinov2_vitl14": ("DinoViT", dict(_DINOV2_L, interpolate_mode="hub_offset")),  # Hunyuan3D-2.1, TripoSG
    "dinov2_vitg14": ("DinoViT", dict(_DINOV2_G, interpolate_mode="hub_offset")),  # PartPacker
    "dinov2_vitg14_reg": ("DinoViT", dict(_DINOV2_G, num_register_tokens=4, interpolate_mode="antialias")),
    # HF facebook/dinov3-vitl16-pretrain-lvd1689m (TRELLIS.2, at 512 px)
    "dinov3_vitl16": ("DinoViT", dict(
        img_size=512, patch_size=16, embed_dim=1024, depth=24, num_heads=16, ffn_hidden_features=4096,
        num_register_tokens=4, pos_embed="rope", rope_theta=100.0, layer_norm_eps=1e-5)),
    # a CPU-size ViT with the TRELLIS encoder's layout (registers, MLP), for tests and demos
    "dinov2_tiny": ("DinoViT", dict(img_size=224, patch_size=14, embed_dim=96, depth=4, num_heads=4,
                                    num_register_tokens=4, interpolate_mode="antialias")),
}


def released_args(name: str) -> tuple[str, dict]:
    """``(class name, constructor args)`` of a released checkpoint."""
    if name not in RELEASED:
        raise KeyError(f"unknown released model {name!r}; known: {sorted(RELEASED)}")
    cls, args = RELEASED[name]
    return cls, copy.deepcopy(args)
