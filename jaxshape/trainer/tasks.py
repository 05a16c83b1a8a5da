"""Training tasks: which modules a stage trains, what it reads from a batch, its loss and its samples.

Stages: ``ss_vae`` (TRELLIS SS-VAE: dice + KL), ``ss_flow`` (TRELLIS flow DiT on frozen-encoder posterior means),
``vecset_vae`` (PartPacker VAE: MSE + L1 + KL on TSDF queries with the progressive FPS cut-off) and
``vecset_flow`` (PartPacker DiT on frozen-VAE posterior means). Flow stages condition on a class label (a learned
table whose last row is the learned null label) or on precomputed feature tokens (``cond_features``; the
unconditional value is zeros, as TRELLIS-image).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow
from jaxshape.models import (
    SparseStructureDecoder,
    SparseStructureEncoder,
    SparseStructureFlowModel,
    VecSetDiT,
    VecSetVAE,
)
from jaxshape.models.vecset_vae import posterior

STAGES = ("ss_vae", "ss_flow", "vecset_vae", "vecset_flow")
VECSET_INPUT_KEYS = ("pointcloud", "pointcloud_dorases", "fps_indices", "fps_indices_dorases")


class LabelConditioner(nn.Module):
    """Class label -> ``tokens`` condition tokens; label ``num_classes`` is the learned null (unconditional)."""

    num_classes: int
    channels: int
    tokens: int = 1

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        table = nn.Embed(self.num_classes + 1, self.channels * self.tokens,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")))
        return table(labels).reshape(labels.shape[0], self.tokens, self.channels)


def _dtype(name):
    return None if name in (None, "", "float32") else jnp.dtype(name)


def model_kwargs(cfg_model, config) -> dict:
    kw = dict(cfg_model)
    if config.get("dtype") not in (None, "", "float32"):
        kw["dtype"] = jnp.dtype(config.dtype)
    return kw


# ------------------------------------------------------------------------------------------------------------
# frozen VAE loading (flow stages)


def load_frozen_vae(path: str, which: str):
    """``(stage config dict, params)`` of a VAE trained by jaxshape: the EMA params of the latest checkpoint in
    the training workdir ``path``."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not path or not cfg_file.exists():
        raise FileNotFoundError(f"vae_checkpoint {path!r} is not a jaxshape training workdir (no config.json): "
                                f"train the {which} stage first and pass its --workdir")
    from jaxshape.trainer.checkpoint import restore_params

    vae_cfg = json.loads(cfg_file.read_text())
    if vae_cfg["stage"] != which:
        raise ValueError(f"vae_checkpoint {path!r} was trained as stage {vae_cfg['stage']!r}, expected {which!r}")
    params = restore_params(p / "checkpoints", use_ema=True)
    return vae_cfg, params


# ------------------------------------------------------------------------------------------------------------


class Task:
    """Base: subclasses define modules, ``init``, ``loss`` and ``sample``."""

    stage: str
    fields: tuple = ()
    targets: tuple = ()  # jaxshape.data target families the stage reads ("occupancy", "vecset")

    def __init__(self, config):
        self.config = config

    def external_frozen(self) -> dict:
        """Frozen inputs that do not come from ``init`` (a trained VAE's params), placed by the loop."""
        return {}

    def host_batch(self, batch: dict, step: int) -> dict:
        """Host-side per-step batch edits (shapes must stay in a small finite set: each one compiles once)."""
        return {k: batch[k] for k in self.fields}

    def validate(self, batch_shapes: dict) -> None:
        missing = [k for k in self.fields if k not in batch_shapes]
        if missing:
            raise ValueError(f"stage {self.stage}: the data has no field(s) {missing}; it provides "
                             f"{sorted(batch_shapes)}")


class SSVAETask(Task):
    stage = "ss_vae"
    fields = ("occupancy",)
    targets = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.encoder = SparseStructureEncoder(**model_kwargs(m.encoder, config))
        self.decoder = SparseStructureDecoder(**model_kwargs(m.decoder, config))
        if m.encoder.latent_channels != m.decoder.latent_channels:
            raise ValueError(f"model.encoder.latent_channels ({m.encoder.latent_channels}) != "
                             f"model.decoder.latent_channels ({m.decoder.latent_channels})")

    def init(self, rng, batch):
        k1, k2 = jax.random.split(rng)
        occ = batch["occupancy"].astype(jnp.float32)
        enc = self.encoder.init(k1, occ)
        z = jax.eval_shape(self.encoder.apply, nn.meta.unbox(enc), occ)
        dec = self.decoder.init(k2, jnp.zeros(z.shape, z.dtype))
        return {"encoder": enc["params"], "decoder": dec["params"]}, {}

    def loss(self, params, frozen, batch, rng):
        occ = batch["occupancy"].astype(jnp.float32)
        z, mean, logvar = self.encoder.apply({"params": params["encoder"]}, occ, sample_posterior=True,
                                             return_raw=True, rngs={"noise": rng})
        logits = self.decoder.apply({"params": params["decoder"]}, z)
        return flow.ss_vae_loss(logits, occ, mean, logvar, loss_type=self.config.loss.type,
                                kl_weight=self.config.loss.kl_weight)

    def sample(self, params, frozen, rng, batch):
        """Reconstructions of the first examples of ``batch`` (posterior mean)."""
        occ = batch["occupancy"].astype(jnp.float32)
        z = self.encoder.apply({"params": params["encoder"]}, occ)
        return [np.asarray(x[..., 0]) for x in self.decoder.apply({"params": params["decoder"]}, z)]


class _FlowTask(Task):
    """Shared flow-stage wiring: conditioning, CFG dropout, frozen VAE."""

    def _cond_module(self, channels):
        c = self.config.cond
        if c.kind == "class":
            return LabelConditioner(c.num_classes, channels, c.get("tokens", 1))
        if c.kind == "features":
            return None
        raise ValueError(f"cond.kind must be 'class' or 'features', got {c.kind!r}")

    @property
    def cond_fields(self):
        return ("class_label",) if self.config.cond.kind == "class" else ("cond_features",)

    def condition(self, params, batch, rng, drop: bool):
        c = self.config.cond
        if c.kind == "class":
            labels = batch["class_label"].astype(jnp.int32)
            if drop:
                labels = jnp.where(jax.random.uniform(rng, labels.shape) < c.p_uncond, c.num_classes, labels)
            return self.conditioner.apply({"params": params["conditioner"]}, labels)
        feats = batch["cond_features"].astype(jnp.float32)
        if drop:
            feats = flow.cfg_dropout(rng, feats, jnp.zeros_like(feats[:1]), c.p_uncond)
        return feats

    def uncondition(self, params, batch_size: int, like=None):
        c = self.config.cond
        if c.kind == "class":
            return self.conditioner.apply({"params": params["conditioner"]},
                                          jnp.full((batch_size,), c.num_classes, jnp.int32))
        return jnp.zeros_like(like)

    # family hooks: init_model(rng, x0, t, cond) -> (model params, frozen); noising(rng, x0) -> (x_t, target,
    # model time); velocity(params, frozen, x, t, cond); latent_shape(batch); sampler_args(); decode(frozen, z)

    def external_frozen(self):
        return {"vae": self.vae_params}

    def init(self, rng, batch):
        k_model, k_cond = jax.random.split(rng)
        x0 = jax.eval_shape(self.latents, self.external_frozen(), batch)
        b = x0.shape[0]
        params = {}
        if self.conditioner is not None:
            params["conditioner"] = self.conditioner.init(k_cond, jnp.zeros((b,), jnp.int32))["params"]
            cond = jnp.zeros((b, self.config.cond.get("tokens", 1), self.cond_channels))
        else:
            cond = batch["cond_features"].astype(jnp.float32)
        params["model"], frozen = self.init_model(k_model, jnp.zeros(x0.shape, jnp.float32), jnp.zeros((b,)), cond)
        return params, frozen

    def loss(self, params, frozen, batch, rng):
        kn, kc = jax.random.split(rng)
        x0 = self.latents(frozen, batch)
        x_t, target, t = self.noising(kn, x0)
        pred = self.velocity(params, frozen, x_t, t, self.condition(params, batch, kc, drop=True))
        loss = flow.mse(pred, target)
        return loss, {"mse": loss}

    def sample(self, params, frozen, rng, batch):
        b = batch[self.cond_fields[0]].shape[0]
        cond = self.condition(params, batch, rng, drop=False)
        noise = jax.random.normal(rng, (b,) + self.latent_shape(batch))
        z = flow.euler_sample(lambda x, t, c: self.velocity(params, frozen, x, t, c), noise, cond,
                              self.uncondition(params, b, cond), **self.sampler_args())
        return self.decode(frozen, z)


class SSFlowTask(_FlowTask):
    stage = "ss_flow"
    targets = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        self.fields = ("occupancy",) + self.cond_fields
        self.model = SparseStructureFlowModel(**model_kwargs(config.model, config))
        self.conditioner = self._cond_module(self.cond_channels)
        if config.get("pre_encode", False):
            self.fields = ("latent",) + self.cond_fields
        vae_cfg, vae_params = load_frozen_vae(config.vae_checkpoint, "ss_vae")
        enc_args = dict(vae_cfg["model"]["encoder"])
        dec_args = dict(vae_cfg["model"]["decoder"])
        self.encoder = SparseStructureEncoder(**enc_args)
        self.decoder = SparseStructureDecoder(**dec_args)
        self.vae_params = vae_params
        if enc_args["latent_channels"] != self.model.in_channels:
            raise ValueError(f"model.in_channels ({self.model.in_channels}) != the VAE's latent_channels "
                             f"({enc_args['latent_channels']})")

    encoder_fields = ("occupancy",)

    def latents(self, frozen, batch):
        if "latent" in batch:  # pre-encoded
            return batch["latent"].astype(jnp.float32)
        occ = batch["occupancy"].astype(jnp.float32)
        return jax.lax.stop_gradient(self.encoder.apply({"params": frozen["vae"]["encoder"]}, occ))

    cond_channels = property(lambda self: self.model.cond_channels)

    def init_model(self, rng, x0, t, cond):
        if x0.shape[1] != self.model.resolution:
            raise ValueError(f"model.resolution ({self.model.resolution}) != the VAE latent grid ({x0.shape[1]})")
        v = self.model.init(rng, x0, t, cond)
        return v["params"], {"buffers": v.get("buffers", {})}

    def velocity(self, params, frozen, x, t, cond):
        return self.model.apply({"params": params["model"], "buffers": frozen["buffers"]}, x, t, cond)

    def noising(self, rng, x0):
        kt, kn = jax.random.split(rng)
        f = self.config.flow
        t = flow.sample_t_trellis(kt, x0.shape[0], f.t_schedule, f.mean, f.std)
        x_t, target = flow.trellis_noising(x0, jax.random.normal(kn, x0.shape), t, f.sigma_min)
        return x_t, target, 1000.0 * t

    def latent_shape(self, batch):
        r = self.model.resolution
        return (r, r, r, self.model.in_channels)

    def sampler_args(self):
        s = self.config.sampler
        return dict(times=flow.trellis_timesteps(s.steps, s.rescale_t), guidance=s.cfg_strength,
                    convention="trellis", guidance_interval=tuple(s.cfg_interval))

    def decode(self, frozen, z):
        logits = self.decoder.apply({"params": frozen["vae"]["decoder"]}, z)
        return [np.asarray(x[..., 0]) for x in logits]


class VecSetVAETask(Task):
    stage = "vecset_vae"
    fields = VECSET_INPUT_KEYS + ("query_points", "query_gt")
    targets = ("vecset",)

    def __init__(self, config):
        super().__init__(config)
        self.model = VecSetVAE(**model_kwargs(config.model, config))
        probs = np.asarray(self.model.cutoff_fps_prob, np.float64)
        if len({len(self.model.cutoff_fps_point), len(self.model.cutoff_fps_salient_point), len(probs)}) != 1:
            raise ValueError("model.cutoff_fps_point, cutoff_fps_salient_point and cutoff_fps_prob must have the "
                             "same length")
        self.cutoff_probs = probs / probs.sum()

    def host_batch(self, batch, step):
        """PartPacker's progressive cut-off: one draw per step (deterministic in (seed, step), so a resumed run
        draws the same), keeping FPS-order prefixes."""
        out = super().host_batch(batch, step)
        if self.config.get("progressive_cutoff", True):
            i = np.random.default_rng([self.config.seed, step]).choice(len(self.cutoff_probs), p=self.cutoff_probs)
            n, m = self.model.cutoff_fps_point[i], self.model.cutoff_fps_salient_point[i]
            if n > out["fps_indices"].shape[1] or m > out["fps_indices_dorases"].shape[1]:
                raise ValueError(f"cut-off {i} needs {n} + {m} FPS indices; the data has "
                                 f"{out['fps_indices'].shape[1]} + {out['fps_indices_dorases'].shape[1]}")
            out["fps_indices"] = out["fps_indices"][:, :n]
            out["fps_indices_dorases"] = out["fps_indices_dorases"][:, :m]
        return out

    def init(self, rng, batch):
        v = self.model.init(rng, *(batch[k] for k in VECSET_INPUT_KEYS), batch["query_points"], method="init_all")
        return {"model": v["params"]}, {}

    def loss(self, params, frozen, batch, rng):
        data = {k: batch[k] for k in VECSET_INPUT_KEYS + ("query_points",)}
        mean, logvar = self.model.apply({"params": params["model"]}, data, method="encode")
        post = posterior(mean, logvar)
        z = post.mode() if self.model.use_ae else post.sample(rng)
        hidden = self.model.apply({"params": params["model"]}, z, method="decode")
        pred = self.model.apply({"params": params["model"]}, batch["query_points"], hidden, method="query")
        return flow.vecset_vae_loss(pred, batch["query_gt"], post.kl(), kl_weight=self.model.kl_weight)

    def sample(self, params, frozen, rng, batch):
        data = {k: batch[k] for k in VECSET_INPUT_KEYS}
        mean, _ = self.model.apply({"params": params["model"]}, data, method="encode")
        return decode_vecset_grids(self.model, params["model"], mean, self.config.sampler.grid_resolution)


def decode_vecset_grids(vae: VecSetVAE, vae_params, latents, resolution: int):
    """Dense (R+1)³ TSDF grids of each latent set (queried in chunks)."""
    from jaxshape.geometry import decode_dense

    grids = []
    query = jax.jit(lambda pts, hidden: vae.apply({"params": vae_params}, pts[None], hidden, method="query")[0])
    for z in latents:
        hidden = vae.apply({"params": vae_params}, z[None], method="decode")
        grids.append(decode_dense(lambda p: query(jnp.asarray(p), hidden), resolution,
                                  max_points_per_query=min(8192, (resolution + 1) ** 3)))
    return grids


class VecSetFlowTask(_FlowTask):
    stage = "vecset_flow"
    targets = ("vecset",)

    def __init__(self, config):
        super().__init__(config)
        self.fields = VECSET_INPUT_KEYS + self.cond_fields
        self.model = VecSetDiT(**model_kwargs(config.model, config))
        self.conditioner = self._cond_module(self.cond_channels)
        if config.get("pre_encode", False):
            self.fields = ("latent",) + self.cond_fields
        vae_cfg, vae_params = load_frozen_vae(config.vae_checkpoint, "vecset_vae")
        self.vae = VecSetVAE(**vae_cfg["model"])
        self.vae_params = vae_params
        if self.vae.latent_dim != self.model.latent_dim:
            raise ValueError(f"model.latent_dim ({self.model.latent_dim}) != the VAE's latent_dim "
                             f"({self.vae.latent_dim})")

    encoder_fields = VECSET_INPUT_KEYS

    def latents(self, frozen, batch):
        if "latent" in batch:  # pre-encoded
            return batch["latent"].astype(jnp.float32)
        data = {k: batch[k] for k in VECSET_INPUT_KEYS}
        tokens = self.config.get("latent_tokens", None)
        if tokens:  # FPS-order prefixes: (uniform, salient) latent tokens per shape (PartPacker: 2048 + 2048)
            data["fps_indices"] = data["fps_indices"][:, :tokens[0]]
            data["fps_indices_dorases"] = data["fps_indices_dorases"][:, :tokens[1]]
        mean, _ = self.vae.apply({"params": frozen["vae"]["model"]}, data, method="encode")
        return jax.lax.stop_gradient(jnp.nan_to_num(mean, nan=0.0))

    cond_channels = property(lambda self: self.model.context_dim or self.model.hidden_dim)

    def init_model(self, rng, x0, t, cond):
        return self.model.init(rng, x0, cond, t)["params"], {}

    def velocity(self, params, frozen, x, t, cond):
        return self.model.apply({"params": params["model"]}, x, cond, t)

    def noising(self, rng, x0):
        kt, kn = jax.random.split(rng)
        f = self.config.flow
        sigma, t = flow.sample_sigma_partpacker(kt, x0.shape[0], f.mean, f.std, f.shift)
        x_t, target = flow.partpacker_noising(x0, jax.random.normal(kn, x0.shape), sigma)
        return x_t, target, t

    def latent_shape(self, batch):
        return jax.eval_shape(self.latents, self.external_frozen(), batch).shape[1:]

    def sampler_args(self):
        s = self.config.sampler
        return dict(times=flow.partpacker_sigmas(s.steps, self.config.flow.shift), guidance=s.cfg_strength,
                    convention="partpacker")

    def decode(self, frozen, z):
        return decode_vecset_grids(self.vae, frozen["vae"]["model"], z, self.config.sampler.grid_resolution)


def make_task(config) -> Task:
    tasks = {"ss_vae": SSVAETask, "ss_flow": SSFlowTask, "vecset_vae": VecSetVAETask, "vecset_flow": VecSetFlowTask}
    if config.stage not in tasks:
        raise ValueError(f"stage must be one of {STAGES}, got {config.stage!r}")
    return tasks[config.stage](config)
