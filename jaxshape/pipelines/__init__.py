"""Image-to-3D inference pipelines over loaded modules (one file per upstream pipeline).

* :mod:`jaxshape.pipelines.trellis`: TRELLIS image -> sparse structure (stage 1: DINOv2-L/14-reg condition,
  guidance-interval Euler CFG on the SS flow, SS decoder, occupied coords in upstream's order).
* :mod:`jaxshape.pipelines.partpacker`: PartPacker image -> parts (DINOv2-g condition, Euler CFG on the DiT, two
  volumes decoded hierarchically by the VAE, marching cubes, cleaning, connected components as coloured parts).
* :func:`from_pretrained` (:mod:`jaxshape.pipelines.pretrained`): either pipeline from the released folder.
"""
from jaxshape.pipelines.partpacker import (
                                           PP_DECODE_DEFAULTS,
                                           PP_SAMPLER_DEFAULTS,
                                           PartPackerPipeline,
                                           clean_mesh,
                                           save_parts,
                                           split_parts,
)
from jaxshape.pipelines.pretrained import find_encoder, from_pretrained
from jaxshape.pipelines.trellis import (
                                        SS_SAMPLER_DEFAULTS,
                                        TrellisSparseStructurePipeline,
                                        save_sparse_structure,
                                        sparse_structure_coords,
)

__all__ = ["PP_DECODE_DEFAULTS", "PP_SAMPLER_DEFAULTS", "PartPackerPipeline", "SS_SAMPLER_DEFAULTS",
           "TrellisSparseStructurePipeline", "clean_mesh", "find_encoder", "from_pretrained", "save_parts",
           "save_sparse_structure", "sparse_structure_coords", "split_parts"]
