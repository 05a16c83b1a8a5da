"""Image-to-3D inference pipelines over loaded modules (one file per upstream pipeline).

* :mod:`jaxshape.pipelines.trellis`: TRELLIS image -> sparse structure (stage 1: DINOv2-L/14-reg condition,
  guidance-interval Euler CFG on the SS flow, SS decoder, occupied coords in upstream's order).
"""
from jaxshape.pipelines.trellis import (
                                        SS_SAMPLER_DEFAULTS,
                                        TrellisSparseStructurePipeline,
                                        save_sparse_structure,
                                        sparse_structure_coords,
)

__all__ = ["SS_SAMPLER_DEFAULTS", "TrellisSparseStructurePipeline", "save_sparse_structure",
           "sparse_structure_coords"]
