"""Constructor arguments of the released upstream checkpoints (the ``args`` of their JSON configs).

``jaxshape.models.build(name, **overrides)`` constructs the matching module, e.g.
``build("ss_flow_img_dit_L_16l8_fp16", dtype=jnp.bfloat16)``.
"""
from __future__ import annotations

import copy

_SS_FLOW = dict(resolution=16, in_channels=8, out_channels=8, mlp_ratio=4, patch_size=1, pe_mode="ape",
                qk_rms_norm=True, use_fp16=True)

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
    # NVlabs/PartPacker vae.pt (part_woenc: the VecSetVAE defaults) and flow.pt (the DiT inside it, keys "dit.*")
    "partpacker_vae": ("VecSetVAE", {}),
    "partpacker_dit": ("VecSetDiT", dict(
        hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=24, qknorm=True,
        qknorm_type="RMSNorm", use_pos_embed=False, use_parts=True, part_embed_mode="part2_only")),
}


def released_args(name: str) -> tuple[str, dict]:
    """``(class name, constructor args)`` of a released checkpoint."""
    if name not in RELEASED:
        raise KeyError(f"unknown released model {name!r}; known: {sorted(RELEASED)}")
    cls, args = RELEASED[name]
    return cls, copy.deepcopy(args)
