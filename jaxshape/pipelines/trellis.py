"""TRELLIS image -> sparse structure (stage 1 of ``TrellisImageTo3DPipeline``; spec:
``image_conditioning.md`` §5.1, ``trellis_sparse_structure.md`` §6).

1. Each RGBA image is preprocessed (``jaxshape.image.trellis_preprocess``: crop by alpha, 518 px, on black) unless it
   is already an RGB array of the encoder's size, then read once by the frozen DINOv2 ViT-L/14-reg:
   ``cond = LN(x_prenorm)`` ``[1, 1374, 1024]``; the unconditional branch is zeros.
2. Noise ``[num_samples, 16, 16, 16, 8]`` (channels-last): from ``seed`` with ``jax.random`` or injected (``noise=``;
   TRELLIS's ``torch.randn(n, 8, 16, 16, 16)`` transposed by ``(0, 2, 3, 4, 1)`` reproduces a PyTorch run).
3. ``FlowEulerGuidanceIntervalSampler``: steps 25, ``(1 + w) v_c − w v_u`` with w = 7.5 for t in [0.5, 1] on the
   rescaled grid (rescale_t 3), the conditional prediction alone elsewhere; both branches batched in one forward.
4. ``logits = decoder(z)`` ``[B, 64, 64, 64]``; the occupied voxels ``argwhere(logits > 0)`` as int32 rows
   ``(b, x, y, z)`` in lexicographic order -- the ``coords`` TRELLIS's stage 2 (``sample_slat``) takes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow
from jaxshape.pipelines.common import merged, preprocessed_rgb

log = logging.getLogger("jaxshape")

# pipeline.json's sparse_structure_sampler params and args (image_conditioning.md §6.1)
SS_SAMPLER_DEFAULTS = {"steps": 25, "cfg_strength": 7.5, "cfg_interval": (0.5, 1.0), "rescale_t": 3.0}


def sparse_structure_coords(logits) -> np.ndarray:
    """``[N, 4]`` int32 ``(b, x, y, z)`` of the voxels with logit > 0 of ``logits [B, R, R, R]`` (or
    ``[B, R, R, R, 1]``), in TRELLIS's order (``torch.argwhere`` on ``[B, 1, R, R, R]``, the channel column
    dropped: lexicographic)."""
    logits = np.asarray(logits)
    if logits.ndim == 5:
        logits = logits[..., 0]
    return np.argwhere(logits > 0).astype(np.int32)


@dataclasses.dataclass
class TrellisSparseStructurePipeline:
    """The three frozen modules of TRELLIS stage 1 with their variables (``jaxshape.models.load`` /
    ``jaxshape.convert`` outputs): ``encoder`` (a ``DinoViT``), ``flow_model`` (``SparseStructureFlowModel``),
    ``decoder`` (``SparseStructureDecoder``)."""

    encoder: object
    encoder_variables: dict
    flow_model: object
    flow_variables: dict
    decoder: object
    decoder_variables: dict
    dtype: Optional[str] = None  # "float32" / "bfloat16" / "float16"; None: each module's own (use_fp16) rule
    sampler: dict = dataclasses.field(default_factory=lambda: dict(SS_SAMPLER_DEFAULTS))  # pipeline.json's params

    SAMPLER_DEFAULTS = SS_SAMPLER_DEFAULTS

    def __post_init__(self):
        if self.encoder.embed_dim != self.flow_model.cond_channels:
            raise ValueError(f"the encoder gives {self.encoder.embed_dim}-wide tokens but the flow model takes "
                             f"cond_channels={self.flow_model.cond_channels}")
        if self.decoder.latent_channels != self.flow_model.out_channels:
            raise ValueError(f"the decoder reads {self.decoder.latent_channels} latent channels but the flow model "
                             f"gives {self.flow_model.out_channels}")
        self.sampler = merged(self.SAMPLER_DEFAULTS, self.SAMPLER_DEFAULTS, self.sampler)
        if self.dtype is not None:
            if self.dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"dtype must be 'float32', 'bfloat16', 'float16' or None, got {self.dtype!r}")
            dt = jnp.dtype(self.dtype)
            self.encoder, self.flow_model, self.decoder = (m.clone(dtype=dt) for m in
                                                           (self.encoder, self.flow_model, self.decoder))
        self._encode = jax.jit(self._encode_fn)
        self._decode = jax.jit(lambda v, z: self.decoder.apply(v, z)[..., 0].astype(jnp.float32))
        flow_model = self.flow_model
        self._velocity = lambda v, x, t, c: flow_model.apply(v, x, t, c).astype(jnp.float32)  # compiled once

        def mean_velocity(v, x, t, c):  # c [B, n_images, T, C]: the mean of the n predictions, one forward
            b, n = c.shape[:2]
            xs = jnp.repeat(x, n, axis=0)
            out = flow_model.apply(v, xs, jnp.repeat(t, n), c.reshape((b * n,) + c.shape[2:]))
            return out.astype(jnp.float32).reshape((b, n) + out.shape[1:]).mean(axis=1)

        self._mean_velocity = mean_velocity

    # -- the condition

    def preprocess(self, image) -> np.ndarray:
        """An RGBA uint8 ``[H, W, 4]`` image (a PIL image or an array) -> TRELLIS's preprocessed ``[S, S, 3]``
        float32 in [0, 1] (S = the encoder's ``img_size``); an RGB array of that size passes through."""
        from jaxshape.image import trellis_preprocess

        arr = np.asarray(image)
        size = self.encoder.img_size
        ready = preprocessed_rgb(arr, size)
        if ready is not None:
            return ready
        if arr.ndim == 3 and arr.shape[-1] == 3:
            raise ValueError(f"an RGB image must already be preprocessed to {size}x{size}, got "
                             f"{arr.shape[:2]}; pass the RGBA image to crop it by its alpha")
        if arr.ndim != 3 or arr.shape[-1] != 4:
            raise ValueError(f"image must be RGBA [H, W, 4] (or a preprocessed RGB [{size}, {size}, 3]), got shape "
                             f"{arr.shape}")
        return trellis_preprocess(arr, size=size, patch_size=self.encoder.patch_size).astype(np.float32) / 255

    def _encode_fn(self, variables, images):
        from jaxshape.models import encode_condition

        return encode_condition(self.encoder, variables, images, "prenorm_ln")

    def get_cond(self, images: Sequence) -> jax.Array:
        """``[n_images, 1374, 1024]`` condition tokens, the encoder run once per image."""
        batch = np.stack([self.preprocess(im) for im in images])
        return self._encode(self.encoder_variables, jnp.asarray(batch))

    # -- sampling

    def latent_shape(self) -> tuple:
        r = self.flow_model.resolution
        return (r, r, r, self.flow_model.in_channels)

    # the sampler: TRELLIS.2 overrides these three
    def _params(self, sampler: dict) -> dict:
        return merged(self.SAMPLER_DEFAULTS, self.sampler, sampler)

    def _euler_args(self, p: dict) -> dict:
        """``FlowEulerGuidanceIntervalSampler`` of TRELLIS: ``(1 + w) v_c − w v_u`` inside the interval."""
        return dict(times=flow.trellis_timesteps(p["steps"], p["rescale_t"]), guidance=p["cfg_strength"],
                    convention="trellis", guidance_interval=tuple(p["cfg_interval"]))

    def coords(self, logits) -> np.ndarray:
        """The occupied voxels of decoded ``logits`` as stage 2 takes them."""
        return sparse_structure_coords(logits)

    def coords_resolution(self, logits) -> int:
        """The grid :meth:`coords` indexes."""
        return int(np.shape(logits)[1])

    def _noise(self, num_samples, seed, noise):
        shape = (num_samples,) + self.latent_shape()
        if noise is None:
            return jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        if tuple(np.shape(noise)) != shape:
            raise ValueError(f"noise must have shape {shape} (channels-last), got {tuple(np.shape(noise))}")
        return jnp.asarray(noise, jnp.float32)

    def sample_latents(self, cond: jax.Array, *, num_samples: int = 1, seed: int = 42,
                       noise: Optional[np.ndarray] = None, progress: Optional[Callable[[int], None]] = None,
                       **sampler) -> jax.Array:
        """Sparse-structure latents ``[num_samples, 16, 16, 16, 8]`` for one image's ``cond [1, T, C]`` (or a
        condition per sample, ``[num_samples, T, C]``: a batch of images, shardable over devices).
        ``sampler`` overrides the pipeline's ``sampler`` (:data:`SS_SAMPLER_DEFAULTS` unless ``pipeline.json``
        says otherwise: ``steps``, ``cfg_strength``, ``cfg_interval``, ``rescale_t``)."""
        p = self._params(sampler)
        noise = self._noise(num_samples, seed, noise)
        if cond.ndim != 3 or cond.shape[0] not in (1, num_samples):
            raise ValueError(f"sample_latents takes one image's condition [1, T, C] (or one per sample, "
                             f"[{num_samples}, T, C]), got {tuple(cond.shape)}")
        return flow.euler_sample(self._velocity, noise, cond, jnp.zeros_like(cond), progress=progress,
                                 params=self.flow_variables, **self._euler_args(p))

    def sample_latents_multi_image(self, cond: jax.Array, *, mode: str = "stochastic", num_samples: int = 1,
                                   seed: int = 42, noise: Optional[np.ndarray] = None,
                                   progress: Optional[Callable[[int], None]] = None, **sampler) -> jax.Array:
        """Latents for one object seen in several images, ``cond [n_images, T, C]`` (``run_multi_image``):
        ``"stochastic"``: step k is conditioned on image ``k mod n`` (a warning if n > steps);
        ``"multidiffusion"``: every step uses the mean of the n conditional predictions, guided inside the interval
        as ``(1 + w) mean_i v(c_i) − w v(∅)``. The unconditional branch is zeros, as for one image."""
        if mode not in ("stochastic", "multidiffusion"):
            raise ValueError(f"mode must be 'stochastic' or 'multidiffusion', got {mode!r}")
        p = self._params(sampler)
        if cond.ndim != 3:
            raise ValueError(f"cond must be [n_images, T, C], got {tuple(cond.shape)}")
        n = cond.shape[0]
        noise = self._noise(num_samples, seed, noise)
        kw = dict(progress=progress, params=self.flow_variables, **self._euler_args(p))
        if mode == "stochastic":
            if n > p["steps"]:
                log.warning("%d conditioning images but %d steps: images %d.. are never used", n, p["steps"],
                            p["steps"])
            steps = [cond[k % n:k % n + 1] for k in range(p["steps"])]
            return flow.euler_sample(self._velocity, noise, cond[:1], jnp.zeros_like(cond[:1]), step_conds=steps,
                                     **kw)
        return flow.euler_sample(self._mean_velocity, noise, cond[None], jnp.zeros_like(cond[None]), **kw)

    def decode(self, z: jax.Array, chunk: int = 1) -> np.ndarray:
        """Decoder logits ``[B, 64, 64, 64]`` of latents ``z``, ``chunk`` latents at a time (the memory knob)."""
        if chunk < 1:
            raise ValueError(f"decode chunk must be >= 1, got {chunk}")
        return np.concatenate([np.asarray(self._decode(self.decoder_variables, z[i:i + chunk]))
                               for i in range(0, z.shape[0], chunk)])

    def __call__(self, image, *, num_samples: int = 1, seed: int = 42, noise: Optional[np.ndarray] = None,
                 decode_chunk: int = 1, progress=None, **sampler) -> dict:
        """One image -> ``{"coords" [N, 4] int32, "logits" [B, 64, 64, 64], "latent" [B, 16, 16, 16, 8],
        "cond" [1, T, C]}``."""
        cond = self.get_cond([image])
        z = self.sample_latents(cond, num_samples=num_samples, seed=seed, noise=noise, progress=progress, **sampler)
        logits = self.decode(z, decode_chunk)
        return {"coords": self.coords(logits), "coords_resolution": self.coords_resolution(logits), "logits": logits,
                "latent": np.asarray(z), "cond": np.asarray(cond)}


    def run_multi_image(self, images: Sequence, *, mode: str = "stochastic", num_samples: int = 1, seed: int = 42,
                        noise: Optional[np.ndarray] = None, decode_chunk: int = 1, progress=None, **sampler) -> dict:
        """Several images of one object -> the result of :meth:`__call__` (``cond`` holds every image's)."""
        cond = self.get_cond(list(images))
        z = self.sample_latents_multi_image(cond, mode=mode, num_samples=num_samples, seed=seed, noise=noise,
                                            progress=progress, **sampler)
        logits = self.decode(z, decode_chunk)
        return {"coords": self.coords(logits), "coords_resolution": self.coords_resolution(logits), "logits": logits,
                "latent": np.asarray(z), "cond": np.asarray(cond)}


def save_sparse_structure(result: dict, directory: str | Path, info: Optional[dict] = None) -> list[str]:
    """Write a pipeline result: ``coords.npy`` (``[N, 4]`` int32 ``(b, x, y, z)``; in PyTorch,
    ``torch.from_numpy(np.load("coords.npy")).cuda()`` is the ``coords`` argument of TRELLIS's
    ``TrellisImageTo3DPipeline.sample_slat(cond, coords)``), and per sample a preview mesh of the voxels
    (``sample_<i>.glb`` + ``.png``; a preview only: TRELLIS's mesh comes from stage 2) with its occupancy grid.
    Returns the ``.glb`` paths."""
    from jaxshape.geometry import occupancy_shapes, save_shapes

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "coords.npy", result["coords"])
    shapes = occupancy_shapes(result["logits"])
    for b, shape in enumerate(shapes):
        shape.info.update(voxels=int((result["coords"][:, 0] == b).sum()), **(info or {}))
    paths = save_shapes(shapes, directory)
    (directory / "coords.json").write_text(json.dumps({"file": "coords.npy", "columns": ["batch", "x", "y", "z"],
                                                       "resolution": int(result.get("coords_resolution",
                                                                                    result["logits"].shape[1]))}))
    return paths
