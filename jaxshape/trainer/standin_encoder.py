"""A stand-in image encoder for the CPU image-conditioned demos: a small DINO ViT taught to tell the embedded
procedural shapes apart from their rendered views.

The released encoders (DINOv2-L / -g, DINOv3-L) cannot run at CPU demo size, and a random-init ``dinov2_tiny``
barely carries the shape in its tokens (its nearest view has the right class 32 % of the time over 10 classes), so a
demo conditioned through it cannot show whether the 3-D model follows its image. This module gives it image
knowledge the way the released encoders got theirs, at toy scale: multi-view contrastive learning (SimCLR's
NT-Xent) where the two views of a pair are two rendered views of the same shape (TRELLIS's conditioning cameras,
``jaxshape.data.render``) through the demo's own preprocessing, and every other shape in the batch is a negative,
plus (``class_weight``; 0 = label-free) the cross-entropy of the shape's class. The heads are discarded; what is
kept is the ViT, saved with ``jaxshape.models.save`` so that ``cond.encoder_checkpoint`` loads it like any DINO.

The shapes are drawn from the embedded generator with their own seed (``shape_seed``), never the demos' data seed, so
no shape a demo holds out is seen here. ``cond.encoder_checkpoint="standin"`` builds it on first use under the cache
(``JAXSHAPE_CACHE``) and reuses it; ``python -m jaxshape.trainer.standin_encoder --out DIR`` writes one anywhere.
The folder's ``standin.json`` records the config, the loss curve and the held-out retrieval accuracies of the
trained encoder beside the random init's.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxshape.models import build, encode_condition, save

log = logging.getLogger(__name__)

REPORT_FILE = "standin.json"


@dataclasses.dataclass(frozen=True)
class StandinConfig:
    """What the stand-in is trained on and how; every field enters its cache key."""
    encoder: str = "dinov2_tiny"  # a released encoder name (jaxshape.models.released)
    image_size: int = 112  # the side the demo feeds it (cond.image_size)
    preprocess: str = "partpacker"  # the demo's view preprocessing (cond.preprocess)
    num_shapes: int = 2000  # embedded shapes rendered, round-robin over the classes
    holdout: int = 200  # the last ones, kept out of training for the retrieval report
    shape_seed: int = 7  # the embedded generator's seed; the demos' data use seed 0
    views: int = 8  # rendered views per shape (TRELLIS's conditioning cameras)
    view_size: int = 128  # their side in pixels before preprocessing
    steps: int = 1500
    batch_shapes: int = 32  # shapes per step, two views of each
    lr: float = 1e-3  # AdamW, linear warm-up then cosine decay to 0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    temperature: float = 0.1
    proj_dim: int = 128  # the projection head's output (discarded after training)
    class_weight: float = 1.0  # + this x cross-entropy of the shape's class from a linear head (0: label-free)
    seed: int = 0  # init and batch draws

    def __post_init__(self):
        from jaxshape.data.pipeline import IMAGE_PREPROCESS

        if self.preprocess not in IMAGE_PREPROCESS:
            raise ValueError(f"preprocess must be one of {IMAGE_PREPROCESS}, got {self.preprocess!r}")
        if self.views < 2:
            raise ValueError(f"views must be >= 2 (a positive pair is two views of one shape), got {self.views}")
        if not 2 <= self.holdout < self.num_shapes - 1:
            raise ValueError(f"holdout must be in [2, num_shapes - 2], got {self.holdout} of {self.num_shapes}")
        if not 2 <= self.batch_shapes <= self.num_shapes - self.holdout:
            raise ValueError(f"batch_shapes must be in [2, num_shapes - holdout], got {self.batch_shapes}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps} of {self.steps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"{self.encoder}-{self.preprocess}{self.image_size}-{hashlib.sha256(blob).hexdigest()[:12]}"


def render_corpus(cfg: StandinConfig, root: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(views uint8 [num_shapes, views, S, S, 3], class labels [num_shapes])``: each embedded shape of
    ``shape_seed`` rendered from ``views`` cameras and preprocessed as the demo preprocesses its views."""
    from jaxshape.data.pipeline import ViewConfig, preprocess_view
    from jaxshape.data.procedural import ensure_embedded
    from jaxshape.data.workers import render_mesh_views
    from jaxshape.image import decode_png

    vc = ViewConfig(count=1, preprocess=cfg.preprocess, size=cfg.image_size)
    jobs = ensure_embedded(cfg.num_shapes, cfg.shape_seed, root)
    out = np.zeros((len(jobs), cfg.views, cfg.image_size, cfg.image_size, 3), np.uint8)
    t0 = time.time()
    for i, (path, _) in enumerate(jobs):
        rec = render_mesh_views(path, f"standin_{i:05d}", cfg.views, cfg.view_size, cfg.shape_seed)
        for v, png in enumerate(rec["cond_views"]):
            out[i, v] = np.round(preprocess_view(decode_png(png), vc) * 255.0).astype(np.uint8)
        if (i + 1) % 500 == 0:
            log.info("stand-in corpus: %d / %d shapes rendered (%.0f s)", i + 1, len(jobs), time.time() - t0)
    return out, np.array([c for _, c in jobs], np.int32)


class ProjectionHead(nn.Module):
    """SimCLR's MLP head (on the batch-standardised :func:`pooled_features`); L2-normalised."""
    hidden: int
    features: int

    @nn.compact
    def __call__(self, pooled):
        h = nn.gelu(nn.Dense(self.hidden, name="fc1")(pooled), approximate=False)
        z = nn.Dense(self.features, name="fc2")(h)
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)


def pooled_features(encoder: nn.Module, variables, images) -> jax.Array:
    """``[N, 2C]``: the CLS token and the mean patch token of ``x_norm`` for images ``[N, S, S, 3]`` in [0, 1]."""
    tokens = encode_condition(encoder, variables, images, tap="last_hidden_state")
    prefix = 1 + encoder.num_register_tokens
    return jnp.concatenate([tokens[:, 0], tokens[:, prefix:].mean(axis=1)], axis=-1)


def batch_standardize(f: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Each feature to zero mean and unit variance over the batch (BatchNorm without affine or running stats). The
    heads read this, as SimCLR's head has BatchNorm: the pooled ViT features share a large common component, and
    without it neither head learns (measured: class accuracy at chance after 800 steps, 0.88 with it)."""
    return (f - f.mean(axis=0)) / (f.std(axis=0) + eps)


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's NT-Xent over the ``2B`` unit embeddings ``z1, z2 [B, D]``: ``z1[i]`` and ``z2[i]`` are a positive
    pair, all other ``2B - 2`` embeddings of the batch its negatives; the mean over the ``2B`` anchors."""
    z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    b = z1.shape[0]
    logits = (z @ z.T) / temperature
    logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)
    positive = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positive).mean()


def retrieval_accuracy(encoder: nn.Module, variables, views: np.ndarray, labels: np.ndarray,
                       batch: int = 256) -> dict:
    """How well the encoder's pooled features identify a shape: for each shape, view 0 is the query and view 1 of
    every shape the gallery (cosine similarity of the features standardised over query and gallery together);
    ``instance``: the nearest is the same shape (chance 1/N), ``class``: it has the same class."""
    fn = jax.jit(lambda v, x: pooled_features(encoder, v, x))
    feats = []
    for k in (0, 1):
        f = np.concatenate([np.asarray(fn(variables, views[i:i + batch, k].astype(np.float32) / 255.0))
                            for i in range(0, len(views), batch)])
        feats.append(f)
    both = np.concatenate(feats)
    feats = [(f - both.mean(0)) / (both.std(0) + 1e-5) for f in feats]
    feats = [f / np.linalg.norm(f, axis=-1, keepdims=True).clip(1e-6) for f in feats]
    nearest = np.argmax(feats[0] @ feats[1].T, axis=1)
    n = len(views)
    return {"instance": float(np.mean(nearest == np.arange(n))), "class": float(np.mean(labels[nearest] == labels)),
            "chance_instance": 1.0 / n, "chance_class": float(np.mean(labels[:, None] == labels[None, :]))}


def init_encoder(cfg: StandinConfig) -> tuple[nn.Module, dict]:
    """``cfg.encoder`` and its random initialisation from ``cfg.seed`` (where training starts)."""
    encoder = build(cfg.encoder)
    x0 = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    return encoder, jax.jit(encoder.init)(jax.random.fold_in(jax.random.key(cfg.seed), 0x5E1F), x0)


def optimizer(cfg: StandinConfig):
    """The trainer's optimizer (``jaxshape.trainer.optim``): global-norm clipping at 1, AdamW, linear warm-up then
    cosine decay to 0 over ``cfg.steps``."""
    import ml_collections

    from jaxshape.trainer.optim import make_optimizer

    return make_optimizer(ml_collections.ConfigDict(dict(
        lr=cfg.lr, weight_decay=cfg.weight_decay, b1=0.9, b2=0.99, eps=1e-8, schedule="cosine",
        warmup_steps=cfg.warmup_steps, decay_steps=cfg.steps, end_lr=0.0, clip="global_norm", max_grad_norm=1.0)))


def pretrain(cfg: StandinConfig, views: np.ndarray, labels: np.ndarray, log_every: int = 250
             ) -> tuple[nn.Module, dict, list]:
    """Train ``cfg.encoder`` on ``views [N, V, S, S, 3]`` uint8 of shapes of class ``labels [N]`` (all of them: the
    caller holds out) with :func:`nt_xent` (+ ``class_weight`` x the class cross-entropy); returns
    ``(encoder, its variables, [(step, loss)])``; the heads are dropped."""
    encoder, init = init_encoder(cfg)
    head = ProjectionHead(hidden=4 * encoder.embed_dim, features=cfg.proj_dim)
    classifier = nn.Dense(int(labels.max()) + 1)
    key = jax.random.key(cfg.seed)
    params = {"encoder": init["params"],
              "head": head.init(jax.random.fold_in(key, 0x4EAD), jnp.zeros((1, 2 * encoder.embed_dim)))["params"],
              "classifier": classifier.init(jax.random.fold_in(key, 0xC1A5),
                                            jnp.zeros((1, 2 * encoder.embed_dim)))["params"]}
    tx = optimizer(cfg)
    opt_state = tx.init(params)

    def loss_fn(p, images, y):
        b = images.shape[0]
        x = images.reshape((2 * b,) + images.shape[2:]).astype(jnp.float32) / 255.0  # [v0 of 0, v1 of 0, ...]
        f = batch_standardize(pooled_features(encoder, {"params": p["encoder"]}, x))
        z = head.apply({"params": p["head"]}, f).reshape(b, 2, -1)
        loss = nt_xent(z[:, 0], z[:, 1], cfg.temperature)
        if cfg.class_weight:
            logits = classifier.apply({"params": p["classifier"]}, f)
            loss += cfg.class_weight * optax.softmax_cross_entropy_with_integer_labels(logits, jnp.repeat(y, 2)).mean()
        return loss

    @jax.jit
    def step(p, o, images, y):
        loss, g = jax.value_and_grad(loss_fn)(p, images, y)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    rng = np.random.default_rng([cfg.seed, 0xC0DE])
    n, v = views.shape[:2]
    history, t0, running = [], time.time(), []
    for s in range(cfg.steps):
        shapes = rng.choice(n, cfg.batch_shapes, replace=False)
        pair = np.stack([rng.choice(v, 2, replace=False) for _ in shapes])
        params, opt_state, loss = step(params, opt_state, views[shapes[:, None], pair], labels[shapes])
        running.append(loss)
        if (s + 1) % log_every == 0 or s + 1 == cfg.steps:
            mean = float(np.mean(jax.device_get(running)))
            history.append((s + 1, mean))
            running = []
            log.info("stand-in encoder: step %d / %d, loss %.4f (%.1f s)", s + 1, cfg.steps, mean,
                     time.time() - t0)
    return encoder, {"params": params["encoder"]}, history


def build_standin(cfg: StandinConfig, out: str | Path, root: Optional[str] = None) -> Path:
    """Render, train, report and save the stand-in to the new folder ``out`` (``jaxshape.models.save`` layout
    plus ``standin.json``); written beside it first and renamed, so ``out`` is complete or absent."""
    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite")
    t0 = time.time()
    views, labels = render_corpus(cfg, root)
    t_render = time.time() - t0
    train, held = slice(0, cfg.num_shapes - cfg.holdout), slice(cfg.num_shapes - cfg.holdout, None)
    encoder, init = init_encoder(cfg)
    before = retrieval_accuracy(encoder, init, views[held], labels[held])
    t1 = time.time()
    encoder, variables, history = pretrain(cfg, views[train], labels[train])
    t_train = time.time() - t1
    after = retrieval_accuracy(encoder, variables, views[held], labels[held])
    log.info("stand-in encoder: held-out retrieval instance %.3f (init %.3f), class %.3f (init %.3f)",
             after["instance"], before["instance"], after["class"], before["class"])
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp, encoder, variables)
    report = {"config": dataclasses.asdict(cfg), "history": history, "heldout_random_init": before,
              "heldout_trained": after, "render_s": round(t_render, 1), "train_s": round(t_train, 1)}
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / REPORT_FILE).is_file():  # another process wrote it first: theirs stands
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def standin_path(cfg: StandinConfig, root: Optional[str] = None) -> Path:
    from jaxshape.data.procedural import cache_dir

    return Path(root or cache_dir(), "encoders", cfg.key())


def ensure_standin(cfg: StandinConfig, root: Optional[str] = None) -> Path:
    """The cached stand-in of ``cfg``, built on first use (a few minutes on a CPU)."""
    path = standin_path(cfg, root)
    if not (path / REPORT_FILE).is_file():
        log.info("building the stand-in image encoder %s (once; cached at %s)", cfg.key(), path)
        build_standin(cfg, path, root)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="new folder to write (jaxshape.models.save layout + standin.json)")
    for f in dataclasses.fields(StandinConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = StandinConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(StandinConfig)})
    out = build_standin(cfg, args.out)
    report = json.loads((out / REPORT_FILE).read_text())
    print(json.dumps({k: report[k] for k in ("heldout_random_init", "heldout_trained", "render_s", "train_s")}))


if __name__ == "__main__":
    main()
