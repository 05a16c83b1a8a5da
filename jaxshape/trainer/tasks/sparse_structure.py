"""The sparse-structure (TRELLIS) stages: ``ss_vae`` (dice + KL) and ``ss_flow`` (the flow DiT on the frozen
encoder's posterior means)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow, losses
from jaxshape.eval import occupancy_to_points, volume_iou
from jaxshape.families import SPARSE_STRUCTURE, SS_FLOW, SS_VAE
from jaxshape.geometry import occupancy_shapes
from jaxshape.models.store import non_param_collections
from jaxshape.trainer.tasks.base import FlowTask, VAETask, build_model


def occupancy_reference_points(examples: dict, n: int, seed: int) -> np.ndarray:
    """Surface samples ``[S, n, 3]`` (unit cube = TRELLIS's frame) of held-out occupancy grids."""
    occ = np.asarray(examples["occupancy"])[..., 0] > 0.5
    return np.stack([occupancy_to_points(o, n, seed=seed + i, bound=0.5)[0] for i, o in enumerate(occ)])


class _SparseStructureEval:
    reference_fields = ("occupancy",)

    reference_points = staticmethod(occupancy_reference_points)


class SSVAETask(_SparseStructureEval, VAETask):
    stage = SS_VAE
    family = SPARSE_STRUCTURE
    fields = ("occupancy",)
    sample_fields = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.encoder = build_model("SparseStructureEncoder", m.encoder, config)
        self.decoder = build_model("SparseStructureDecoder", m.decoder, config)
        if m.encoder.latent_channels != m.decoder.latent_channels:
            raise ValueError(f"model.encoder.latent_channels ({m.encoder.latent_channels}) != "
                             f"model.decoder.latent_channels ({m.decoder.latent_channels})")

    def modules(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    def init(self, rng, batch, external):
        k1, k2 = jax.random.split(rng)
        occ = batch["occupancy"].astype(jnp.float32)
        enc = self.encoder.init(k1, occ)
        z = jax.eval_shape(self.encoder.apply, nn.meta.unbox(enc), occ)
        dec = self.decoder.init(k2, jnp.zeros(z.shape, z.dtype))
        return {"encoder": enc["params"], "decoder": dec["params"]}

    def loss(self, params, frozen, batch, rng):
        occ = batch["occupancy"].astype(jnp.float32)
        z, mean, logvar = self.encoder.apply({"params": params["encoder"]}, occ, sample_posterior=True,
                                             return_raw=True, rngs={"noise": rng})
        logits = self.decoder.apply({"params": params["decoder"]}, z)
        return losses.ss_vae_loss(logits, occ, mean, logvar, loss_type=self.config.loss.type,
                                  kl_weight=self.config.loss.kl_weight)

    def sample(self, params, frozen, rng, inputs, progress=None):
        """Reconstructions (posterior mean) of ``inputs["occupancy"]``: decoder logits ``[R, R, R]`` each."""
        occ = jnp.asarray(inputs["occupancy"], jnp.float32)
        z = self.encoder.apply({"params": params["encoder"]}, occ)
        return [np.asarray(x[..., 0]) for x in self.decoder.apply({"params": params["decoder"]}, z)]

    def to_meshes(self, outputs):
        return occupancy_shapes(outputs)

    def reconstruct(self, params, frozen, examples):
        if not hasattr(self, "_recon"):
            self._recon = jax.jit(lambda p, x: self.decoder.apply(
                {"params": p["decoder"]}, self.encoder.apply({"params": p["encoder"]}, x))[..., 0])
        logits = list(np.asarray(self._recon(params, jnp.asarray(examples["occupancy"], jnp.float32))))
        occ = np.asarray(examples["occupancy"])[..., 0] > 0.5
        return logits, np.asarray(volume_iou(np.stack(logits) > 0, occ))


class SSFlowTask(_SparseStructureEval, FlowTask):
    stage = SS_FLOW
    family = SPARSE_STRUCTURE
    vae_parts = {"encoder": "SparseStructureEncoder", "decoder": "SparseStructureDecoder"}
    encoder_fields = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        self.model = build_model("SparseStructureFlowModel", config.model, config)
        self._init_conditioner(self.model.cond_channels)

    @property
    def cond_channels(self):
        return self.model.cond_channels

    def check_vae(self):
        latent = self._vae("encoder").latent_channels
        if latent != self.model.in_channels or self._vae("decoder").latent_channels != latent:
            raise ValueError(f"model.in_channels ({self.model.in_channels}) != the VAE's latent_channels "
                             f"(encoder {latent}, decoder {self._vae('decoder').latent_channels})")

    def latents(self, frozen, batch):
        if "latent" in batch:  # pre-encoded
            return batch["latent"].astype(jnp.float32)
        occ = batch["occupancy"].astype(jnp.float32)
        return jax.lax.stop_gradient(self._vae("encoder").apply(frozen["vae"]["encoder"], occ))

    def init_model(self, rng, x0, t, cond):
        if x0.shape[1] != self.model.resolution:
            raise ValueError(f"model.resolution ({self.model.resolution}) != the VAE latent grid ({x0.shape[1]})")
        return self.model.init(rng, x0, t, cond)["params"]

    def frozen_variables(self):
        return {"buffers": non_param_collections(self.model).get("buffers", {})}

    def velocity(self, params, frozen, x, t, cond):
        return self.model.apply({"params": params["model"], "buffers": frozen["buffers"]}, x, t, cond)

    def draw_t(self, rng, batch):
        f = self.config.flow
        return flow.sample_t_trellis(rng, batch, f.t_schedule, f.mean, f.std)

    def noise_at(self, x0, noise, t):
        x_t, target = flow.trellis_noising(x0, noise, t, self.config.flow.sigma_min)
        return x_t, target, 1000.0 * t

    def latent_shape(self, frozen):
        r = self.model.resolution
        return (r, r, r, self.model.in_channels)

    def sampler_args(self):
        s = self.config.sampler
        return dict(times=flow.trellis_timesteps(s.steps, s.rescale_t), guidance=s.cfg_strength,
                    convention="trellis", guidance_interval=tuple(s.cfg_interval))

    def decode(self, frozen, z):
        logits = self._vae("decoder").apply(frozen["vae"]["decoder"], z)
        return [np.asarray(x[..., 0]) for x in logits]

    def to_meshes(self, outputs):
        return occupancy_shapes(outputs)
