"""Training tasks: what a stage trains, what it reads from a batch, its loss, its samples and their meshes.

:class:`Task` is the protocol the loop (``jaxshape.trainer.loop.run``) and the sampler CLI (``jaxshape.sample``)
rely on; :class:`FlowTask` adds the hooks every flow stage defines. Stages:

* ``ss_vae``: TRELLIS's sparse-structure VAE (dice + KL);
* ``ss_flow``: TRELLIS's flow DiT on the frozen encoder's posterior means;
* ``vecset_vae``: PartPacker's VAE (MSE + L1 + KL on TSDF queries, the progressive FPS cut-off);
* ``vecset_flow``: PartPacker's DiT on the frozen VAE's posterior means.

Flow stages condition on a class label (a learned table whose last row is the learned null label) or on
precomputed feature tokens (``cond_features``; the unconditional value is zeros, as TRELLIS-image). A task builds
its modules from the config and reads nothing from disk until :meth:`Task.load_frozen`, which the loop calls once.

To add a stage: subclass :class:`Task` (or :class:`FlowTask`), define the abstract methods, add it to
:data:`TASKS` and its name to ``jaxshape.families``, and give it a schema in ``jaxshape/trainer/defaults.py``.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow, losses
from jaxshape.data.sources import make_data_iterator
from jaxshape.families import SPARSE_STRUCTURE, SS_FLOW, SS_VAE, STAGES, VECSET, VECSET_FLOW, VECSET_VAE
from jaxshape.geometry import Shape, extract_mesh, voxel_field_mesh
from jaxshape.models import build
from jaxshape.models.store import non_param_collections
from jaxshape.models.vecset_vae import decode_grids, posterior
from jaxshape.nn import LabelConditioner
from jaxshape.trainer.checkpoint import load_frozen_models
from jaxshape.trainer.latents import pre_encoded_iterator

VECSET_INPUT_KEYS = ("pointcloud", "pointcloud_dorases", "fps_indices", "fps_indices_dorases")


def _build(cls_name: str, args, config) -> nn.Module:
    """A model from its config block; the stage's compute ``dtype`` overrides the model's unless fp32."""
    overrides = {} if config.dtype in ("", "float32") else {"dtype": jnp.dtype(config.dtype)}
    return build(cls_name, dict(args), **overrides)


def _first(batches: Iterable[dict], fields: tuple, n: int) -> dict:
    """The first ``n`` examples of ``fields`` over ``batches`` (fewer if the batches run out)."""
    parts, have = [], 0
    for b in batches:
        parts.append({k: np.asarray(b[k]) for k in fields})
        have += len(parts[-1][fields[0]])
        if have >= n:
            break
    if not parts:
        raise ValueError(f"no examples to sample from (fields {fields})")
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in fields}


def occupancy_shapes(logits: list) -> list[Shape]:
    """Meshes of decoded sparse-structure logit grids (occupied iff > 0), with the occupancy grid beside each."""
    out = []
    for grid in logits:
        v, f = voxel_field_mesh(grid)
        out.append(Shape(v, f, arrays={"occupancy": np.asarray(grid) > 0}))
    return out


def tsdf_shapes(grids: list) -> list[Shape]:
    """Meshes (marching cubes at 0) of decoded vecset TSDF grids."""
    return [Shape(*extract_mesh(g)) for g in grids]


class Task(abc.ABC):
    """One training stage: its modules, batch fields, loss, samples and their meshes.

    The loop calls, in order: the constructor (modules from ``config``; no disk I/O), :meth:`load_frozen` (frozen
    inputs from disk), :meth:`validate` on the first batch's shapes, :meth:`init`, then :meth:`host_batch` and
    :meth:`loss` every step, and :meth:`sample_inputs` / :meth:`sample` / :meth:`to_meshes` when it writes samples.
    """

    stage: ClassVar[str]
    family: ClassVar[str]  # jaxshape.families: which targets its data carries

    def __init__(self, config):
        self.config = config

    @property
    @abc.abstractmethod
    def fields(self) -> tuple:
        """The batch fields :meth:`loss` reads."""

    @property
    @abc.abstractmethod
    def sample_fields(self) -> tuple:
        """The fields :meth:`sample_inputs` takes from data (``()``: samples need no data)."""

    @abc.abstractmethod
    def modules(self) -> dict:
        """The trained models by their key in the parameter tree (recorded in the workdir for
        ``jaxshape.models.load``)."""

    def load_frozen(self) -> dict:
        """Frozen inputs read from disk (a trained VAE), as a pytree of arrays; the loop places it beside the
        state. Default: none."""
        return {}

    def data_iterator(self, workdir: Path, external: dict, sharding=None):
        """This process's endless, checkpointable training iterator (``config.data``; ``jaxshape.data.sources``)."""
        return make_data_iterator(self.config.data, self.fields, self.family, process_index=jax.process_index(),
                                  process_count=jax.process_count(), sharding=sharding)

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict, external: dict) -> dict:
        """The trainable parameters, for a batch of zeros shaped like the data; ``external`` is
        :meth:`load_frozen`'s output (use it abstractly: shapes only)."""

    def frozen_variables(self) -> dict:
        """Non-trainable variables of the trained models, computed from the config alone (e.g. TRELLIS's
        ``pos_emb`` buffer); they sit beside :meth:`load_frozen`'s output in ``frozen``. Default: none."""
        return {}

    @abc.abstractmethod
    def loss(self, params: dict, frozen: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        """``(scalar loss, metrics)`` of one (micro-)batch; pure, jitted by the loop."""

    def sample_inputs(self, batches: Iterable[dict], n: int) -> dict:
        """The inputs of :meth:`sample` for ``n`` shapes, from host batches of data (read lazily)."""
        return _first(batches, self.sample_fields, n)

    @abc.abstractmethod
    def sample(self, params: dict, frozen: dict, rng: jax.Array, inputs: dict, progress=None) -> list:
        """One output per shape (decoded grids) for ``inputs``: reconstructions (VAE) or generations (flow).
        ``progress(k)``, if given, is called as work is done (flows: once per Euler step)."""

    @abc.abstractmethod
    def to_meshes(self, outputs: list) -> list[Shape]:
        """The :meth:`sample` outputs as meshes."""

    def host_batch(self, batch: dict, step: int) -> dict:
        """Host-side per-step batch edits (shapes must stay in a small finite set: each one compiles once)."""
        return {k: batch[k] for k in self.fields}

    def validate(self, batch_shapes: dict) -> None:
        missing = [k for k in self.fields if k not in batch_shapes]
        if missing:
            raise ValueError(f"stage {self.stage}: the data has no field(s) {missing}; it provides "
                             f"{sorted(batch_shapes)}")


# ------------------------------------------------------------------------------------------------------------
# VAE stages


class SSVAETask(Task):
    stage = SS_VAE
    family = SPARSE_STRUCTURE
    fields = ("occupancy",)
    sample_fields = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.encoder = _build("SparseStructureEncoder", m.encoder, config)
        self.decoder = _build("SparseStructureDecoder", m.decoder, config)
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


class VecSetVAETask(Task):
    stage = VECSET_VAE
    family = VECSET
    fields = VECSET_INPUT_KEYS + ("query_points", "query_gt")
    sample_fields = VECSET_INPUT_KEYS

    def __init__(self, config):
        super().__init__(config)
        self.model = _build("VecSetVAE", config.model, config)
        probs = np.asarray(self.model.cutoff_fps_prob, np.float64)
        if len({len(self.model.cutoff_fps_point), len(self.model.cutoff_fps_salient_point), len(probs)}) != 1:
            raise ValueError("model.cutoff_fps_point, cutoff_fps_salient_point and cutoff_fps_prob must have the "
                             "same length")
        self.cutoff_probs = probs / probs.sum()

    def modules(self):
        return {"model": self.model}

    def _cut(self, batch: dict, n: int, m: int) -> dict:
        """Keep FPS-order prefixes of ``n`` uniform and ``m`` salient indices (every prefix is an exact FPS set)."""
        if n > batch["fps_indices"].shape[1] or m > batch["fps_indices_dorases"].shape[1]:
            raise ValueError(f"a cut-off of {n} + {m} FPS indices needs that many in the data; it has "
                             f"{batch['fps_indices'].shape[1]} + {batch['fps_indices_dorases'].shape[1]}")
        return dict(batch, fps_indices=batch["fps_indices"][:, :n],
                    fps_indices_dorases=batch["fps_indices_dorases"][:, :m])

    def host_batch(self, batch, step):
        """PartPacker's progressive cut-off: one draw per step (deterministic in (seed, step), so a resumed run
        draws the same)."""
        out = super().host_batch(batch, step)
        if not self.config.progressive_cutoff:
            return out
        i = np.random.default_rng([self.config.seed, step]).choice(len(self.cutoff_probs), p=self.cutoff_probs)
        return self._cut(out, self.model.cutoff_fps_point[i], self.model.cutoff_fps_salient_point[i])

    def sample_inputs(self, batches, n):
        """The first ``n`` examples, cut to the largest training cut-off (the token count the VAE is trained at)."""
        inputs = super().sample_inputs(batches, n)
        if not self.config.progressive_cutoff:
            return inputs
        return self._cut(inputs, max(self.model.cutoff_fps_point), max(self.model.cutoff_fps_salient_point))

    def init(self, rng, batch, external):
        v = self.model.init(rng, *(batch[k] for k in VECSET_INPUT_KEYS), batch["query_points"], method="init_all")
        return {"model": v["params"]}

    def loss(self, params, frozen, batch, rng):
        variables = {"params": params["model"]}
        data = {k: batch[k] for k in VECSET_INPUT_KEYS + ("query_points",)}
        mean, logvar = self.model.apply(variables, data, method="encode")
        post = posterior(mean, logvar)
        z = post.mode() if self.model.use_ae else post.sample(rng)
        hidden = self.model.apply(variables, z, method="decode")
        pred = self.model.apply(variables, batch["query_points"], hidden, method="query")[..., 0]
        return losses.vecset_vae_loss(pred, batch["query_gt"], post.kl(), kl_weight=self.model.kl_weight)

    def sample(self, params, frozen, rng, inputs, progress=None):
        """Reconstructions (posterior mean): dense TSDF grids ``[R+1]³`` each."""
        data = {k: jnp.asarray(inputs[k]) for k in VECSET_INPUT_KEYS}
        mean, _ = self.model.apply({"params": params["model"]}, data, method="encode")
        return decode_grids(self.model, {"params": params["model"]}, mean, self.config.sampler.grid_resolution)

    def to_meshes(self, outputs):
        return tsdf_shapes(outputs)


# ------------------------------------------------------------------------------------------------------------
# flow stages


class FlowTask(Task):
    """A rectified-flow stage on the latents of a frozen VAE: conditioning, CFG dropout, the flow MSE and the
    Euler/CFG sampler are shared; each family defines the hooks below."""

    # the frozen VAE's parts: {role: model class}, read from `vae_checkpoint` by load_frozen
    vae_parts: ClassVar[dict]

    def __init__(self, config):
        super().__init__(config)
        c = config.cond
        if c.kind not in ("class", "features"):
            raise ValueError(f"cond.kind must be 'class' or 'features', got {c.kind!r}")
        self.vae: Optional[dict] = None  # role -> module, set by load_frozen

    def _init_conditioner(self, channels: int) -> None:
        c = self.config.cond
        self.conditioner = LabelConditioner(c.num_classes, channels, c.tokens) if c.kind == "class" else None

    @property
    def cond_fields(self) -> tuple:
        return ("class_label",) if self.config.cond.kind == "class" else ("cond_features",)

    @property
    def fields(self) -> tuple:
        return (("latent",) if self.config.pre_encode else self.encoder_fields) + self.cond_fields

    @property
    def sample_fields(self) -> tuple:
        return () if self.config.cond.kind == "class" else ("cond_features",)

    def modules(self):
        return {"model": self.model}

    def load_frozen(self):
        loaded = load_frozen_models(self.config.vae_checkpoint, self.vae_parts, self.stage)
        self.vae = {role: module for role, (module, _) in loaded.items()}
        self.check_vae()
        return {"vae": {role: variables for role, (_, variables) in loaded.items()}}

    def data_iterator(self, workdir, external, sharding=None):
        """With ``pre_encode``: the dataset encoded once by the frozen VAE (cached in the workdir)."""
        if self.config.pre_encode:
            return pre_encoded_iterator(self.config, self, external, workdir)
        return super().data_iterator(workdir, external, sharding)

    def _vae(self, role: str) -> nn.Module:
        if self.vae is None:
            raise RuntimeError(f"{type(self).__name__}.load_frozen() must run before the frozen VAE is used")
        return self.vae[role]

    # -- the family hooks

    encoder_fields: ClassVar[tuple]  # the data fields the frozen VAE encodes

    @abc.abstractmethod
    def check_vae(self) -> None:
        """Raise if the loaded VAE does not fit the flow model (latent width, grid size)."""

    @property
    @abc.abstractmethod
    def cond_channels(self) -> int:
        """Width of the condition tokens the model takes."""

    @abc.abstractmethod
    def latents(self, frozen: dict, batch: dict) -> jax.Array:
        """The clean latents ``x0`` of a batch (pre-encoded ``latent``, or the frozen VAE's posterior means)."""

    @abc.abstractmethod
    def init_model(self, rng, x0, t, cond) -> dict:
        """The flow model's parameters."""

    @abc.abstractmethod
    def noising(self, rng, x0) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(x_t, velocity target, model time)`` of the family's flow convention."""

    @abc.abstractmethod
    def velocity(self, params, frozen, x, t, cond) -> jax.Array:
        """The model's velocity prediction."""

    @abc.abstractmethod
    def latent_shape(self, frozen: dict) -> tuple:
        """Shape of one latent (what the sampler starts from as noise)."""

    @abc.abstractmethod
    def sampler_args(self) -> dict:
        """Keyword arguments of ``jaxshape.flow.euler_sample`` (time grid, guidance, convention)."""

    @abc.abstractmethod
    def decode(self, frozen: dict, z: jax.Array) -> list:
        """Decoded grids (one per shape) of sampled latents."""

    # -- shared flow wiring

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

    def init(self, rng, batch, external):
        k_model, k_cond = jax.random.split(rng)
        x0 = jax.eval_shape(self.latents, external, batch)
        b = x0.shape[0]
        params = {}
        if self.conditioner is not None:
            params["conditioner"] = self.conditioner.init(k_cond, jnp.zeros((b,), jnp.int32))["params"]
            cond = jnp.zeros((b, self.config.cond.tokens, self.cond_channels))
        else:
            cond = batch["cond_features"].astype(jnp.float32)
        params["model"] = self.init_model(k_model, jnp.zeros(x0.shape, jnp.float32), jnp.zeros((b,)), cond)
        return params

    def loss(self, params, frozen, batch, rng):
        kn, kc = jax.random.split(rng)
        x0 = self.latents(frozen, batch)
        x_t, target, t = self.noising(kn, x0)
        pred = self.velocity(params, frozen, x_t, t, self.condition(params, batch, kc, drop=True))
        loss = flow.mse(pred, target)
        return loss, {"mse": loss}

    def sample_inputs(self, batches, n):
        """Class labels ``0, 1, ..., n - 1`` (mod ``num_classes``), or the first ``n`` examples' features."""
        if self.config.cond.kind == "class":
            return {"class_label": (np.arange(n) % self.config.cond.num_classes).astype(np.int32)}
        return super().sample_inputs(batches, n)

    def sample(self, params, frozen, rng, inputs, progress=None):
        """Generations for ``inputs`` (labels or features); ``progress(steps done)`` is called per Euler step."""
        inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
        b = inputs[self.cond_fields[0]].shape[0]
        cond = self.condition(params, inputs, rng, drop=False)
        noise = jax.random.normal(rng, (b,) + tuple(self.latent_shape(frozen)))
        z = flow.euler_sample(lambda x, t, c: self.velocity(params, frozen, x, t, c), noise, cond,
                              self.uncondition(params, b, cond), progress=progress, **self.sampler_args())
        return self.decode(frozen, z)


class SSFlowTask(FlowTask):
    stage = SS_FLOW
    family = SPARSE_STRUCTURE
    vae_parts = {"encoder": "SparseStructureEncoder", "decoder": "SparseStructureDecoder"}
    encoder_fields = ("occupancy",)

    def __init__(self, config):
        super().__init__(config)
        self.model = _build("SparseStructureFlowModel", config.model, config)
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

    def noising(self, rng, x0):
        kt, kn = jax.random.split(rng)
        f = self.config.flow
        t = flow.sample_t_trellis(kt, x0.shape[0], f.t_schedule, f.mean, f.std)
        x_t, target = flow.trellis_noising(x0, jax.random.normal(kn, x0.shape), t, f.sigma_min)
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


class VecSetFlowTask(FlowTask):
    stage = VECSET_FLOW
    family = VECSET
    vae_parts = {"vae": "VecSetVAE"}
    encoder_fields = VECSET_INPUT_KEYS

    def __init__(self, config):
        super().__init__(config)
        self.model = _build("VecSetDiT", config.model, config)
        self._init_conditioner(self.cond_channels)

    @property
    def cond_channels(self):
        return self.model.cond_dim

    def check_vae(self):
        if self._vae("vae").latent_dim != self.model.latent_dim:
            raise ValueError(f"model.latent_dim ({self.model.latent_dim}) != the VAE's latent_dim "
                             f"({self._vae('vae').latent_dim})")

    def latent_tokens(self) -> tuple[int, int]:
        """(uniform, salient) latent tokens per shape: ``config.latent_tokens``, or the frozen VAE's largest
        training cut-off (the token count it learned to encode; PartPacker: 2048 + 2048)."""
        if self.config.latent_tokens:
            n, m = self.config.latent_tokens
            return int(n), int(m)
        vae = self._vae("vae")
        return max(vae.cutoff_fps_point), max(vae.cutoff_fps_salient_point) if vae.use_salient_point else 0

    def latents(self, frozen, batch):
        if "latent" in batch:  # pre-encoded
            return batch["latent"].astype(jnp.float32)
        data = {k: batch[k] for k in VECSET_INPUT_KEYS}
        n, m = self.latent_tokens()
        have = (data["fps_indices"].shape[1], data["fps_indices_dorases"].shape[1])
        if have[0] < n or have[1] < m:
            raise ValueError(f"vecset_flow: {n} + {m} latent tokens (latent_tokens) need that many FPS indices; "
                             f"the data has {have[0]} + {have[1]}")
        # FPS-order prefixes: every prefix of an FPS order is an exact FPS subset
        data["fps_indices"] = data["fps_indices"][:, :n]
        data["fps_indices_dorases"] = data["fps_indices_dorases"][:, :m]
        mean, _ = self._vae("vae").apply(frozen["vae"]["vae"], data, method="encode")
        return jax.lax.stop_gradient(jnp.nan_to_num(mean, nan=0.0))

    def init_model(self, rng, x0, t, cond):
        return self.model.init(rng, x0, cond, t)["params"]

    def velocity(self, params, frozen, x, t, cond):
        return self.model.apply({"params": params["model"]}, x, cond, t)

    def noising(self, rng, x0):
        kt, kn = jax.random.split(rng)
        f = self.config.flow
        sigma, t = flow.sample_sigma_partpacker(kt, x0.shape[0], f.mean, f.std, f.shift)
        x_t, target = flow.partpacker_noising(x0, jax.random.normal(kn, x0.shape), sigma)
        return x_t, target, t

    def latent_shape(self, frozen):
        return (sum(self.latent_tokens()), self.model.latent_dim)

    def sampler_args(self):
        s = self.config.sampler
        return dict(times=flow.partpacker_sigmas(s.steps, self.config.flow.shift), guidance=s.cfg_strength,
                    convention="partpacker")

    def decode(self, frozen, z):
        return decode_grids(self._vae("vae"), frozen["vae"]["vae"], z, self.config.sampler.grid_resolution)

    def to_meshes(self, outputs):
        return tsdf_shapes(outputs)


TASKS: dict[str, type[Task]] = {t.stage: t for t in (SSVAETask, SSFlowTask, VecSetVAETask, VecSetFlowTask)}
assert tuple(TASKS) == STAGES


def make_task(config) -> Task:
    if config.stage not in TASKS:
        raise ValueError(f"stage must be one of {STAGES}, got {config.stage!r}")
    return TASKS[config.stage](config)


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves of a pytree of arrays."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype if not hasattr(a, "dtype")
                                                       else a.dtype), tree)
