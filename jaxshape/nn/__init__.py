"""Shared building blocks used by both model families (one copy of each). Models import from here only."""
from jaxshape.nn import axes
from jaxshape.nn.attention import PARTPACKER_QK_NORMS, MultiHeadAttention, dot_product_attention
from jaxshape.nn.conv3d import Conv3d, DownsampleBlock3d, ResBlock3d, UpsampleBlock3d
from jaxshape.nn.embeddings import (
    POSITION_INTERPOLATIONS,
    LabelConditioner,
    TimestepEmbedder,
    absolute_position_embedding_3d,
    apply_rope,
    fourier_point_features,
    grid_coords_3d,
    patch_rope_phases_2d,
    position_interpolation_matrix,
    resample_position_table,
    rope_phases_3d,
    timestep_embedding,
)
from jaxshape.nn.initializers import partitioned
from jaxshape.nn.linear import Dense, torso_dtype
from jaxshape.nn.norms import LayerNorm, MultiHeadRMSNorm, RMSNorm, layer_norm
from jaxshape.nn.spatial import patchify, pixel_shuffle_3d, space_to_depth_3d, unpatchify
from jaxshape.nn.transformer import (
    AttentionBlock,
    FeedForward,
    FlashQueryLayer,
    LayerScale,
    ModulatedCrossBlock,
    ViTBlock,
    layer_unroll,
    scan_blocks,
)

__all__ = [
    "PARTPACKER_QK_NORMS", "POSITION_INTERPOLATIONS", "AttentionBlock", "Conv3d", "Dense", "DownsampleBlock3d",
    "FeedForward", "FlashQueryLayer", "LabelConditioner", "LayerNorm", "LayerScale", "ModulatedCrossBlock",
    "MultiHeadAttention", "MultiHeadRMSNorm", "RMSNorm", "ResBlock3d", "TimestepEmbedder", "UpsampleBlock3d",
    "ViTBlock", "absolute_position_embedding_3d", "apply_rope", "axes", "dot_product_attention",
    "fourier_point_features", "grid_coords_3d", "layer_norm", "layer_unroll", "partitioned", "patch_rope_phases_2d",
    "patchify", "pixel_shuffle_3d", "position_interpolation_matrix", "resample_position_table", "rope_phases_3d",
    "scan_blocks", "space_to_depth_3d", "timestep_embedding", "torso_dtype", "unpatchify",
]
