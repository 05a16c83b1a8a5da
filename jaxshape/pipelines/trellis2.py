"""TRELLIS.2 image -> sparse structure (stage 1 of ``Trellis2ImageTo3DPipeline``; spec:
``trellis_sparse_structure.md`` §12.1, upstream ``trellis2/pipelines/trellis2_image_to_3d.py`` and
``trellis2/pipelines/samplers/``).

What differs from TRELLIS (:mod:`jaxshape.pipelines.trellis`, whose pipeline this one extends):

1. Preprocessing (:func:`jaxshape.image.trellis2_preprocess`): the object fills the square crop (no 1.2 margin), on
   black, resized to 512 px; the encoder is DINOv3 ViT-L/16 and the condition ``LN(x_prenorm)`` of every token
   (``[1, 1 + 4 + 1024, 1024]``).
2. The flow is the 1.3 B RoPE DiT (``SparseStructureFlowModel(upstream="trellis2")``).
3. ``FlowEulerGuidanceIntervalSampler`` of TRELLIS.2: ``v = w v_c + (1 − w) v_u`` inside ``guidance_interval``
   (the conditional prediction alone outside it) with CFG rescale (``guidance_rescale``); defaults from its
   ``pipeline.json`` (steps 12, w 7.5, rescale 0.7, interval [0.6, 1], rescale_t 5; third-party copies of the file,
   ``pipeline.json``'s own values win when ``from_pretrained`` reads one).
4. The decoded 64³ occupancy (``logits > 0``) is max-pooled to the pipeline type's resolution (``512``,
   ``1024_cascade``, ``1536_cascade``: 32³; ``1024``: 64³) before ``argwhere``: the coords stage 2 takes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxshape import flow
from jaxshape.pipelines.common import preprocessed_rgb
from jaxshape.pipelines.trellis import TrellisSparseStructurePipeline

T2_SAMPLER_DEFAULTS = {"steps": 12, "guidance_strength": 7.5, "guidance_rescale": 0.7, "guidance_interval": (0.6, 1.0),
                       "rescale_t": 5.0}
SS_RESOLUTIONS = {"512": 32, "1024": 64, "1024_cascade": 32, "1536_cascade": 32}  # Trellis2ImageTo3DPipeline.run


def pooled_coords(logits, resolution: int) -> np.ndarray:
    """``[N, 4]`` int32 ``(b, x, y, z)`` of ``max_pool3d(logits > 0, R / resolution) > 0.5`` (lexicographic, as
    ``torch.argwhere``)."""
    occ = np.asarray(logits)
    if occ.ndim == 5:
        occ = occ[..., 0]
    occ = occ > 0
    r = occ.shape[1]
    if r % resolution:
        raise ValueError(f"coords at {resolution}³ need a decoded grid of a multiple of that size, got {r}³ "
                         f"(pipeline_type sets the coords' resolution)")
    k = r // resolution
    if k > 1:
        b = occ.shape[0]
        occ = occ.reshape(b, resolution, k, resolution, k, resolution, k).any(axis=(2, 4, 6))
    return np.argwhere(occ).astype(np.int32)


@dataclasses.dataclass
class Trellis2SparseStructurePipeline(TrellisSparseStructurePipeline):
    """TRELLIS.2 stage 1 over its frozen modules: ``encoder`` (DINOv3 ``DinoViT``), ``flow_model``
    (``SparseStructureFlowModel(upstream="trellis2")``), ``decoder`` (TRELLIS's ``SparseStructureDecoder``);
    ``pipeline_type`` picks the coords' resolution (:data:`SS_RESOLUTIONS`)."""

    sampler: dict = dataclasses.field(default_factory=lambda: dict(T2_SAMPLER_DEFAULTS))
    pipeline_type: str = "1024_cascade"

    SAMPLER_DEFAULTS = T2_SAMPLER_DEFAULTS

    def __post_init__(self):
        if self.pipeline_type not in SS_RESOLUTIONS:
            raise ValueError(f"pipeline_type must be one of {sorted(SS_RESOLUTIONS)}, got {self.pipeline_type!r}")
        super().__post_init__()

    def preprocess(self, image) -> np.ndarray:
        """An RGBA image (or a preprocessed RGB array of the encoder's size) -> ``[512, 512, 3]`` in [0, 1]."""
        from jaxshape.image import trellis2_preprocess

        size = self.encoder.img_size
        ready = preprocessed_rgb(image, size)
        if ready is not None:
            return ready
        return trellis2_preprocess(image, size=size, patch_size=self.encoder.patch_size)

    def _euler_args(self, p: dict) -> dict:
        return dict(times=flow.trellis_timesteps(p["steps"], p["rescale_t"]), guidance=p["guidance_strength"],
                    convention="trellis2", guidance_interval=tuple(p["guidance_interval"]),
                    guidance_rescale=p["guidance_rescale"])

    def coords(self, logits) -> np.ndarray:
        return pooled_coords(logits, SS_RESOLUTIONS[self.pipeline_type])

    def sample_latents_multi_image(self, cond, **kwargs):
        raise ValueError("TRELLIS.2 has no multi-image mode upstream (run_multi_image is TRELLIS's); condition on one "
                         "image")

    def coords_resolution(self, logits) -> int:
        return SS_RESOLUTIONS[self.pipeline_type]
