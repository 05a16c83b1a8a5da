"""The vecset (PartPacker) stages: ``vecset_vae`` (MSE + L1 + KL on TSDF queries, the progressive FPS cut-off)
and ``vecset_flow`` (the DiT on the frozen VAE's posterior means)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxshape import flow, losses
from jaxshape.eval import to_unit_cube, volume_iou
from jaxshape.families import FAMILIES, VECSET, VECSET_FLOW, VECSET_VAE
from jaxshape.geometry import Shape, extract_mesh
from jaxshape.models.vecset_vae import decode_grids, posterior
from jaxshape.trainer.tasks.base import VECSET_INPUT_KEYS, FlowTask, VAETask, build_model


def tsdf_shapes(grids: list) -> list[Shape]:
    """Meshes (marching cubes at 0) of decoded vecset TSDF grids; a pair of grids (PartPacker's two volumes) is
    one shape, the two volumes' meshes together (``info["volume_faces"]``: the faces of each)."""
    out = []
    for g in grids:
        if not isinstance(g, tuple):
            out.append(Shape(*extract_mesh(g)))
            continue
        meshes = [extract_mesh(x) for x in g]
        offsets = np.cumsum([0] + [len(v) for v, _ in meshes])
        out.append(Shape(np.concatenate([v for v, _ in meshes]).astype(np.float32),
                         np.concatenate([f + o for (_, f), o in zip(meshes, offsets)]).astype(np.int64),
                         info={"volume_faces": [int(len(f)) for _, f in meshes]}))
    return out


def pointcloud_reference_points(examples: dict, n: int, seed: int) -> np.ndarray:
    """``[S, n, 3]`` of held-out examples' stored surface points (``pointcloud``, drawn without replacement when
    there are more, with it when fewer), mapped to the unit cube."""
    pc = np.asarray(examples["pointcloud"], np.float32)
    out = []
    for i, p in enumerate(pc):
        rng = np.random.default_rng(seed + i)
        out.append(p[rng.choice(len(p), n, replace=n > len(p))])
    return np.asarray(to_unit_cube(np.stack(out), FAMILIES[VECSET].mesh_bound))


class _VecsetEval:
    reference_fields = ("pointcloud",)

    reference_points = staticmethod(pointcloud_reference_points)


class VecSetVAETask(_VecsetEval, VAETask):
    stage = VECSET_VAE
    family = VECSET
    fields = VECSET_INPUT_KEYS + ("query_points", "query_gt")
    sample_fields = VECSET_INPUT_KEYS

    def __init__(self, config):
        super().__init__(config)
        self.model = build_model("VecSetVAE", config.model, config)
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

    @property
    def eval_fields(self):
        return tuple(dict.fromkeys(super().eval_fields + ("query_points", "query_gt")))

    def eval_num_queries(self, n):
        return (n, 0, 0)  # uniform volume queries only: their signs give the volume IoU

    def reconstruct(self, params, frozen, examples):
        """Grids of the posterior means, and the sign IoU at the examples' (uniform volume) query points."""
        v = {"params": params["model"]}
        inputs = self._cut(examples, max(self.model.cutoff_fps_point), max(self.model.cutoff_fps_salient_point)) \
            if self.config.progressive_cutoff else examples
        data = {k: jnp.asarray(inputs[k]) for k in VECSET_INPUT_KEYS}
        if not hasattr(self, "_recon"):
            def recon(v, data, queries):
                mean, _ = self.model.apply(v, data, method="encode")
                hidden = self.model.apply(v, mean, method="decode")
                return mean, self.model.apply(v, queries, hidden, method="query")[..., 0]

            self._recon = jax.jit(recon)
        mean, pred = self._recon(v, data, jnp.asarray(examples["query_points"]))
        iou = volume_iou(np.asarray(pred) > 0, np.asarray(examples["query_gt"]) > 0)
        grids = decode_grids(self.model, v, mean, self.config.sampler.grid_resolution)
        return grids, np.asarray(iou)


VOLUMES = ("_part0", "_part1")


class VecSetFlowTask(_VecsetEval, FlowTask):
    """With ``model.use_parts`` (PartPacker's released DiT): two latent volumes per shape, the VAE encoding of each
    volume's inputs (``<key>_part0`` / ``_part1``, ``prepare --parts``) concatenated along the tokens, an empty
    volume (``part_empty``) an all-zero latent (upstream: ``nan_to_num`` of encoding nothing); samples decode each
    half and mesh the two volumes together."""
    stage = VECSET_FLOW
    family = VECSET
    vae_parts = {"vae": "VecSetVAE"}

    def __init__(self, config):
        super().__init__(config)
        self.model = build_model("VecSetDiT", config.model, config)
        self._init_conditioner(self.cond_channels)

    @property
    def encoder_fields(self) -> tuple:
        if not self.model.use_parts:
            return VECSET_INPUT_KEYS
        return tuple(k + p for p in VOLUMES for k in VECSET_INPUT_KEYS) + ("part_empty",)

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
        if not self.model.use_parts:
            return self._encode(frozen, {k: batch[k] for k in VECSET_INPUT_KEYS})
        if "part_empty" not in batch:
            raise ValueError("vecset_flow with model.use_parts reads two volumes per shape (<key>_part0 / _part1 and "
                             "part_empty): prepare the data with `python -m jaxshape.data.prepare --parts` "
                             "(embedded set: data.parts=True)")
        volumes = []
        for i, p in enumerate(VOLUMES):
            z = self._encode(frozen, {k: batch[k + p] for k in VECSET_INPUT_KEYS})
            volumes.append(jnp.where(batch["part_empty"][:, i, None, None] > 0, 0.0, z))
        return jnp.concatenate(volumes, axis=1)

    def _encode(self, frozen, data):
        """The frozen VAE's posterior means of one volume's inputs at :meth:`latent_tokens` tokens."""
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

    def draw_t(self, rng, batch):
        f = self.config.flow
        return flow.sample_sigma_partpacker(rng, batch, f.mean, f.std, f.shift)[0]

    def noise_at(self, x0, noise, sigma):
        x_t, target = flow.partpacker_noising(x0, noise, sigma)
        return x_t, target, 1000.0 * sigma

    def latent_shape(self, frozen):
        return (sum(self.latent_tokens()) * (2 if self.model.use_parts else 1), self.model.latent_dim)

    def sampler_args(self):
        s = self.config.sampler
        return dict(times=flow.partpacker_sigmas(s.steps, self.config.flow.shift), guidance=s.cfg_strength,
                    convention="partpacker")

    def decode(self, frozen, z):
        def grids(x):
            return decode_grids(self._vae("vae"), frozen["vae"]["vae"], x, self.config.sampler.grid_resolution)

        if not self.model.use_parts:
            return grids(z)
        half = z.shape[1] // 2
        volumes = []
        for x in (z[:, :half], z[:, half:]):
            rms = np.sqrt(np.mean(np.square(np.asarray(x, np.float64)), axis=(1, 2)))
            out = grids(x)
            volumes.append([np.full_like(g, -1.0) if r < self.config.sampler.empty_volume_rms else g
                            for g, r in zip(out, rms)])
        return list(zip(*volumes))

    def to_meshes(self, outputs):
        return tsdf_shapes(outputs)
