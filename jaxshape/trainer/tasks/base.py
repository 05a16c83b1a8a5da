"""The task protocol: :class:`Task` (what a training stage trains, reads, optimises and samples) and
:class:`FlowTask` (the rectified-flow wiring every flow stage shares, with the hooks each family defines)."""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import ClassVar, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow
from jaxshape.data.sources import make_data_iterator
from jaxshape.geometry import Shape
from jaxshape.models import build
from jaxshape.nn import LabelConditioner
from jaxshape.trainer.checkpoint import load_frozen_models
from jaxshape.trainer.latents import pre_encoded_iterator

log = logging.getLogger("jaxshape.train")
VECSET_INPUT_KEYS = ("pointcloud", "pointcloud_dorases", "fps_indices", "fps_indices_dorases")


def build_model(cls_name: str, args, config) -> nn.Module:
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


def input_infos(inputs: dict, n: int) -> list[dict]:
    """Per shape, the scalar sample inputs it was made from (e.g. ``{"class_label": 3}``), for ``samples.jsonl``."""
    return [{k: np.asarray(v)[i].item() for k, v in inputs.items() if np.ndim(v) == 1} for i in range(n)]


COND_KINDS = ("class", "features", "image")
COND_POOLS = ("", "cls_mean")
COND_STATS_FILE = "cond_stats.npz"  # cond.standardize: the training-set statistics, in the stage's workdir


def encoder_overrides(cond) -> dict:
    """Constructor overrides of the frozen image encoder: its compute dtype."""
    return {} if cond.encoder_dtype in ("", "float32") else {"dtype": jnp.dtype(cond.encoder_dtype)}


def load_image_encoder(encoder: nn.Module, cond, seed: int) -> dict:
    """The frozen encoder's variables: ``cond.encoder_checkpoint`` (a ``jaxshape.convert`` / ``models.save``
    folder, a torch-hub ``.pth`` or an HF file / folder: ``jaxshape.convert.dino.load_dino``); ``"standin"``: the
    contrastive stand-in of ``cond.encoder`` trained on renders of embedded shapes for ``cond.image_size`` and
    ``cond.preprocess`` (``jaxshape.trainer.standin_encoder``, built once and cached); when empty, a random
    initialisation from ``seed`` -- a stand-in that runs the pipeline but carries almost no image knowledge."""
    from jaxshape.convert.dino import load_dino
    from jaxshape.models import load

    path = cond.encoder_checkpoint
    if path == "standin":
        from jaxshape.trainer.standin_encoder import StandinConfig, ensure_standin

        path = str(ensure_standin(StandinConfig(encoder=cond.encoder, image_size=cond.image_size,
                                                preprocess=cond.preprocess)))
    if not path:
        log.warning("cond.encoder_checkpoint is empty: the image encoder %s is a random-init stand-in (point it at "
                    "converted DINO weights for a real one)", cond.encoder)
        x = jnp.zeros((1, cond.image_size, cond.image_size, 3), jnp.float32)
        return jax.jit(encoder.init)(jax.random.fold_in(jax.random.key(seed), 0x1A6E), x)
    p = Path(path)
    if (p / "model.json").is_file():
        module, variables = load(p)
    else:
        module, variables = load_dino(p, None if (p / "config.json").is_file() else cond.encoder)
    # the same architecture; the compute dtype and the position-table interpolation rule (which differs between
    # the hub and HF copies of one model, and only acts off the native size) are cond.encoder's
    same = dict(dtype=encoder.dtype, param_dtype=encoder.param_dtype, interpolate_mode=encoder.interpolate_mode,
                interpolate_offset=encoder.interpolate_offset)
    if module.clone(**same) != encoder:
        raise ValueError(f"cond.encoder_checkpoint {path} holds {module}, not cond.encoder={cond.encoder!r} "
                         f"({encoder}); set cond.encoder to the checkpoint's architecture")
    return variables


def encode_images(encoder: nn.Module, variables, images, tap: str) -> jax.Array:
    """``[B·k, T, C]`` fp32 condition tokens of ``images [B, k, S, S, 3]`` in [0, 1] (ImageNet-normalised here),
    computed under ``stop_gradient`` in the encoder's dtype."""
    from jaxshape.models import encode_condition

    b, k = images.shape[:2]
    x = images.reshape((b * k,) + images.shape[2:])
    return jax.lax.stop_gradient(encode_condition(encoder, jax.lax.stop_gradient(variables), x, tap))


def pool_tokens(tokens: jax.Array, pool: str, num_register_tokens: int = 0) -> jax.Array:
    """``cond.pool`` of condition tokens ``[N, T, C]`` in DINO's order ``[CLS, registers, patches]``: ``""`` keeps
    them all; ``"cls_mean"`` gives ``[N, 2, C]``, the CLS token and the mean of the patch tokens (registers left
    out), the two features DINOv2's linear-probe head reads."""
    if pool == "":
        return tokens
    if pool == "cls_mean":
        return jnp.stack([tokens[:, 0], tokens[:, 1 + num_register_tokens:].mean(axis=1)], axis=1)
    raise ValueError(f"cond.pool must be one of {COND_POOLS}, got {pool!r}")


def first_view(batch: dict) -> dict:
    """Sampling and evaluation condition on one view per example: ``cond_image[:, :1]``."""
    if "cond_image" in batch:
        return {**batch, "cond_image": batch["cond_image"][:, :1]}
    return batch


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

    def view_config(self):
        """How the data draws rendered views (``cond_image``); None: the stage reads none."""
        return None

    def data_iterator(self, workdir: Path, external: dict, sharding=None):
        """This process's endless, checkpointable training iterator (``config.data``; ``jaxshape.data.sources``)."""
        return make_data_iterator(self.config.data, self.fields, self.family, process_index=jax.process_index(),
                                  process_count=jax.process_count(), sharding=sharding, views=self.view_config())

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict, external: dict) -> dict:
        """The trainable parameters, for a batch of zeros shaped like the data; ``external`` is
        :meth:`load_frozen`'s output (use it abstractly: shapes only)."""

    def sharded_frozen(self) -> dict:
        """Parts of the frozen inputs placed with the model-parallel rules instead of replicated:
        ``{key: boxed abstract variables}`` (logical-axis annotated, like the trained models). Default: none."""
        return {}

    def frozen_variables(self) -> dict:
        """Non-trainable variables of the trained models, computed from the config alone (e.g. TRELLIS's
        ``pos_emb`` buffer); they sit beside :meth:`load_frozen`'s output in ``frozen``. Default: none."""
        return {}

    def workdir_frozen(self, frozen: dict, workdir, *, compute: bool) -> dict:
        """Frozen inputs a training run derives from its data once and keeps in the stage's ``workdir`` (read
        back by sampling and evaluation; with ``compute``, made when missing); they sit beside :meth:`load_frozen`'s
        output in ``frozen``. Default: none."""
        return {}

    def trained_frozen(self, stage_dir) -> dict:
        """Every frozen input of a trained stage, for sampling and evaluation: :meth:`frozen_variables`,
        :meth:`load_frozen` and what the training run kept in ``stage_dir`` (:meth:`workdir_frozen`)."""
        frozen = self.load_frozen()
        return {**self.frozen_variables(), **frozen, **self.workdir_frozen(frozen, stage_dir, compute=False)}

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

    # -- evaluation on held-out shapes (jaxshape.trainer.evaluation)

    reference_fields: ClassVar[tuple]  # the data fields a reference shape is made of

    @property
    def eval_fields(self) -> tuple:
        """The fields of a held-out example the evaluation reads."""
        return tuple(dict.fromkeys(self.sample_fields + self.reference_fields))

    def eval_num_queries(self, n: int):
        """Vecset queries of a held-out example: ``None`` (the stage reads none) or ``(volume, near, sharp)``."""
        return None

    @abc.abstractmethod
    def reference_points(self, examples: dict, n: int, seed: int) -> np.ndarray:
        """``[S, n, 3]`` surface samples of held-out examples' true shapes in the unit-cube frame
        (``jaxshape.eval``), seeded per shape by ``seed + i``."""

    def validate(self, batch_shapes: dict) -> None:
        missing = [k for k in self.fields if k not in batch_shapes]
        if missing:
            raise ValueError(f"stage {self.stage}: the data has no field(s) {missing}; it provides "
                             f"{sorted(batch_shapes)}")



class VAETask(Task):
    """A VAE stage: its evaluation reconstructs held-out shapes from the posterior mean (what a flow decodes)."""

    @abc.abstractmethod
    def reconstruct(self, params: dict, frozen: dict, examples: dict) -> tuple[list, np.ndarray]:
        """``(outputs, iou [S])``: :meth:`sample`-style decoded grids of the posterior means of ``examples`` and
        each shape's volume IoU against its true occupancy."""


class FlowTask(Task):
    """A rectified-flow stage on the latents of a frozen VAE: conditioning, CFG dropout, the flow MSE and the
    Euler/CFG sampler are shared; each family defines the hooks below."""

    # the frozen VAE's parts: {role: model class}, read from `vae_checkpoint` by load_frozen
    vae_parts: ClassVar[dict]

    def __init__(self, config):
        super().__init__(config)
        c = config.cond
        if c.kind not in COND_KINDS:
            raise ValueError(f"cond.kind must be one of {COND_KINDS}, got {c.kind!r}")
        if c.pool not in COND_POOLS:
            raise ValueError(f"cond.pool must be one of {COND_POOLS}, got {c.pool!r}")
        if c.pool and c.kind != "image":
            raise ValueError(f"cond.pool={c.pool!r} pools an image encoder's tokens: it needs cond.kind='image', "
                             f"not {c.kind!r}")
        if c.standardize and c.kind == "class":
            raise ValueError("cond.standardize standardises image or feature tokens; cond.kind='class' has none")
        if c.standardize and c.stats_examples < 2:
            raise ValueError(f"cond.stats_examples must be >= 2 with cond.standardize, got {c.stats_examples}")
        self.vae: Optional[dict] = None  # role -> module, set by load_frozen
        # image: the frozen image encoder (jaxshape.models.DinoViT); its variables are loaded by load_frozen
        self.encoder = build(c.encoder, **encoder_overrides(c)) if c.kind == "image" else None

    def _init_conditioner(self, channels: int) -> None:
        c = self.config.cond
        self.conditioner = LabelConditioner(c.num_classes, channels, c.tokens) if c.kind == "class" else None

    @property
    def cond_fields(self) -> tuple:
        return {"class": ("class_label",), "features": ("cond_features",), "image": ("cond_image",)}[
            self.config.cond.kind]

    def view_config(self):
        """How the data draws ``cond_image`` for ``cond.kind = "image"`` (``jaxshape.data.pipeline.ViewConfig``)."""
        if self.config.cond.kind != "image":
            return None
        from jaxshape.data.pipeline import ViewConfig

        c = self.config.cond
        return ViewConfig(count=c.views, preprocess=c.preprocess, size=c.image_size,
                          patch_size=self.encoder.patch_size)

    @property
    def fields(self) -> tuple:
        return (("latent",) if self.config.pre_encode else self.encoder_fields) + self.cond_fields

    @property
    def sample_fields(self) -> tuple:
        return () if self.config.cond.kind == "class" else self.cond_fields

    def modules(self):
        return {"model": self.model}

    def load_frozen(self):
        loaded = load_frozen_models(self.config.vae_checkpoint, self.vae_parts, self.stage)
        self.vae = {role: module for role, (module, _) in loaded.items()}
        self.check_vae()
        frozen = {"vae": {role: variables for role, (_, variables) in loaded.items()}}
        if self.encoder is not None:
            if self.encoder.embed_dim != self.cond_channels:
                raise ValueError(f"cond.encoder {self.config.cond.encoder!r} gives {self.encoder.embed_dim}-wide "
                                 f"tokens but the flow model takes cond_channels={self.cond_channels}")
            frozen["encoder"] = load_image_encoder(self.encoder, self.config.cond, self.config.seed)
        return frozen

    def data_iterator(self, workdir, external, sharding=None):
        """With ``pre_encode``: the dataset encoded once by the frozen VAE (cached in the workdir)."""
        if self.config.pre_encode:
            return pre_encoded_iterator(self.config, self, external, workdir)
        return super().data_iterator(workdir, external, sharding)

    def sharded_frozen(self):
        """The frozen image encoder is FSDP-sharded like a trained model (ViT-g/14 is 1.1 B parameters)."""
        if self.encoder is None:
            return {}
        from jaxshape.convert.state_dict import abstract_variables

        return {"encoder": abstract_variables(self.encoder, unbox=False)}

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
    def draw_t(self, rng, batch: int) -> jax.Array:
        """Training times ``[batch]`` in the family's convention (TRELLIS t, PartPacker σ; 0 = data, 1 = noise)."""

    @abc.abstractmethod
    def noise_at(self, x0, noise, t) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(x_t, velocity target, model time)`` at times ``t [B]`` of the family's flow convention."""

    def noising(self, rng, x0) -> tuple[jax.Array, jax.Array, jax.Array]:
        """:meth:`noise_at` at times from :meth:`draw_t` with fresh Gaussian noise."""
        kt, kn = jax.random.split(rng)
        return self.noise_at(x0, jax.random.normal(kn, x0.shape), self.draw_t(kt, x0.shape[0]))

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

    def condition(self, params, frozen, batch, rng, drop: bool):
        """The condition tokens of a batch: learned label tokens, the records' features, or (``image``) the frozen
        encoder's tokens of ``cond_image [B, k, S, S, 3]`` -- ``[B·k, T, C]``, example-major (PartPacker's
        ``repeat_interleave`` order), under ``stop_gradient``, pooled by ``cond.pool``; with ``cond.standardize``,
        minus the training-set mean and over the std of each (token, channel) (``frozen["cond_stats"]``,
        :meth:`workdir_frozen`). With ``drop``, CFG dropout to the null condition (the null label; zeros for
        features and images, after the encoder's LayerNorm and any standardisation) with ``cond.p_uncond``."""
        c = self.config.cond
        if c.kind == "class":
            labels = batch["class_label"].astype(jnp.int32)
            if drop:
                labels = jnp.where(jax.random.uniform(rng, labels.shape) < c.p_uncond, c.num_classes, labels)
            return self.conditioner.apply({"params": params["conditioner"]}, labels)
        feats = self.condition_tokens(frozen, batch)
        if c.standardize:
            stats = frozen["cond_stats"]
            if stats["mean"].shape != feats.shape[1:]:  # a workdir's cond_stats.npz from another cond config
                raise ValueError(f"cond.standardize: the statistics ({COND_STATS_FILE}) are for condition tokens "
                                 f"{tuple(stats['mean'].shape)}, the condition gives {tuple(feats.shape[1:])}; "
                                 f"delete the file to recompute it for this cond config")
            feats = (feats - stats["mean"]) / stats["std"]
        if drop:
            feats = flow.cfg_dropout(rng, feats, jnp.zeros_like(feats[:1]), c.p_uncond)
        return feats

    def condition_tokens(self, frozen, batch) -> jax.Array:
        """The image or feature condition tokens before ``cond.standardize``: the frozen encoder's ``cond.tap``
        of every view, pooled by ``cond.pool`` (``[B·k, T, C]``), or the records' ``cond_features``."""
        c = self.config.cond
        if c.kind == "image":
            return pool_tokens(encode_images(self.encoder, frozen["encoder"], batch["cond_image"], c.tap), c.pool,
                               self.encoder.num_register_tokens)
        return batch["cond_features"].astype(jnp.float32)

    def workdir_frozen(self, frozen: dict, workdir, *, compute: bool) -> dict:
        """With ``cond.standardize``: ``{"cond_stats": {"mean", "std"}}``, the per-(token, channel) statistics of
        the condition tokens over the first ``cond.stats_examples`` training examples (every view the data draws
        for them), read from ``workdir / cond_stats.npz`` or, with ``compute``, computed and written there (by
        process 0; every process computes the same from the same examples). ``frozen``: :meth:`load_frozen`'s."""
        c = self.config.cond
        if not c.standardize:
            return {}
        path = Path(workdir) / COND_STATS_FILE
        if path.is_file():
            with np.load(path) as z:
                return {"cond_stats": {"mean": jnp.asarray(z["mean"]), "std": jnp.asarray(z["std"])}}
        if not compute:
            raise FileNotFoundError(f"cond.standardize is on but {path} is missing: the training run of this stage "
                                    f"writes it before its first step")
        it = make_data_iterator(self.config.data, self.cond_fields, self.family, process_index=0, process_count=1,
                                one_epoch=True, split="train", views=self.view_config())
        tokens = jax.jit(self.condition_tokens)
        total = total_sq = None
        n = seen = 0
        for batch in it:
            take = min(len(batch[self.cond_fields[0]]), c.stats_examples - seen)
            f = np.asarray(tokens(frozen, {k: np.asarray(batch[k])[:take] for k in self.cond_fields}), np.float64)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f ** 2).sum(0) if total_sq is None else total_sq + (f ** 2).sum(0)
            n += len(f)
            seen += take
            if seen >= c.stats_examples:
                break
        if n < 2:
            raise ValueError(f"cond.standardize needs at least 2 training examples for its statistics, the data has "
                             f"{n}")
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0) + 1e-6)
        if jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, mean=mean.astype(np.float32), std=std.astype(np.float32), examples=seen, tokens=n)
            tmp.replace(path)
        log.info("cond.standardize: condition statistics over %d views of %d training examples -> %s", n, seen, path)
        return {"cond_stats": {"mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(std, jnp.float32)}}

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
        elif self.config.cond.kind == "image":
            cond = jax.eval_shape(self.condition_tokens, external, {"cond_image": batch["cond_image"][:, :1]})
            cond = jnp.zeros(cond.shape, jnp.float32)
        else:
            cond = batch["cond_features"].astype(jnp.float32)
        params["model"] = self.init_model(k_model, jnp.zeros(x0.shape, jnp.float32), jnp.zeros((b,)), cond)
        return params

    @property
    def eval_fields(self) -> tuple:
        """The held-out fields: the VAE's inputs, the conditions, the reference shapes and (for per-shape
        conditions) the class labels the condition report reads."""
        extra = () if self.config.cond.kind == "class" else ("class_label",)
        return tuple(dict.fromkeys(self.encoder_fields + self.cond_fields + self.reference_fields + extra))

    def bucket_losses(self, params, frozen, batch, rng, times) -> jax.Array:
        """The flow MSE of ``batch`` at each fixed time of ``times`` (``[T]``), with one fixed noise draw per
        example (``fold_in(rng, i)``) and the condition kept (no CFG dropout): the SD3 / MaxDiffusion evaluation
        protocol. Returns ``[T]``."""
        x0 = self.latents(frozen, batch)
        # example i's noise from fold_in(rng, i): the same whatever the batch it is evaluated in
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), x0.shape[1:]))(
            jnp.arange(x0.shape[0]))
        cond = self.condition(params, frozen, first_view(batch), rng, drop=False)

        def one(t):
            x_t, target, mt = self.noise_at(x0, noise, jnp.full((x0.shape[0],), t, jnp.float32))
            return flow.mse(self.velocity(params, frozen, x_t, mt, cond), target)

        return jax.lax.map(one, jnp.asarray(times, jnp.float32))

    def loss(self, params, frozen, batch, rng):
        kn, kc = jax.random.split(rng)
        x0 = self.latents(frozen, batch)
        cond = self.condition(params, frozen, batch, kc, drop=True)
        if cond.shape[0] != x0.shape[0]:  # k views per example: the latent repeated per view (PartPacker)
            x0 = jnp.repeat(x0, cond.shape[0] // x0.shape[0], axis=0)
        x_t, target, t = self.noising(kn, x0)
        pred = self.velocity(params, frozen, x_t, t, cond)
        loss = flow.mse(pred, target)
        return loss, {"mse": loss}

    def sample_inputs(self, batches, n):
        """Class labels ``0, 1, ..., n - 1`` (mod ``num_classes``), or the first ``n`` examples' features."""
        if self.config.cond.kind == "class":
            return {"class_label": (np.arange(n) % self.config.cond.num_classes).astype(np.int32)}
        return super().sample_inputs(batches, n)

    def sample(self, params, frozen, rng, inputs, progress=None):
        """Generations for ``inputs`` (labels or features); ``progress(steps done)`` is called per Euler step."""
        inputs = first_view({k: jnp.asarray(v) for k, v in inputs.items()})
        b = inputs[self.cond_fields[0]].shape[0]
        cond = self.condition(params, frozen, inputs, rng, drop=False)
        noise = jax.random.normal(rng, (b,) + tuple(self.latent_shape(frozen)))
        z = flow.euler_sample(lambda x, t, c: self.velocity(params, frozen, x, t, c), noise, cond,
                              self.uncondition(params, b, cond), progress=progress, **self.sampler_args())
        return self.decode(frozen, z)
