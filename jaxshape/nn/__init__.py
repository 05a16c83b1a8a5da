"""Shared building blocks used by both model families (one copy of each)."""
from jaxshape.nn.attention import MultiHeadAttention, dot_product_attention
from jaxshape.nn.conv3d import Conv3d, DownsampleBlock3d, ResBlock3d, UpsampleBlock3d
from jaxshape.nn.embeddings import (
    TimestepEmbedder,
    absolute_position_embedding_3d,
    apply_rope,
    fourier_point_features,
    grid_coords_3d,
    rope_phases_3d,
    timestep_embedding,
)
from jaxshape.nn.linear import Dense
from jaxshape.nn.norms import LayerNorm, MultiHeadRMSNorm, RMSNorm
from jaxshape.nn.spatial import patchify, pixel_shuffle_3d, space_to_depth_3d, unpatchify
from jaxshape.nn.transformer import FeedForward, ModulatedCrossBlock, layer_unroll, scan_blocks

__all__ = [
    "Conv3d", "Dense", "DownsampleBlock3d", "FeedForward", "LayerNorm", "ModulatedCrossBlock",
    "MultiHeadAttention", "MultiHeadRMSNorm", "RMSNorm", "ResBlock3d", "TimestepEmbedder", "UpsampleBlock3d",
    "absolute_position_embedding_3d", "apply_rope", "dot_product_attention", "fourier_point_features",
    "grid_coords_3d", "layer_unroll", "patchify", "pixel_shuffle_3d", "rope_phases_3d", "scan_blocks",
    "space_to_depth_3d", "timestep_embedding", "unpatchify",
]
