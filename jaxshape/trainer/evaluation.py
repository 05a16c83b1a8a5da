"""Evaluation of a stage on held-out shapes (``config.eval``; the protocol is ``docs/evaluation.md``).

* VAE stages: reconstructions of ``eval.num_shapes`` held-out shapes from the posterior mean -- volume IoU, Chamfer
  L1 / L2 and F-scores against the true surfaces.
* Flow stages: the flow MSE at fixed times ``eval.t_buckets`` with fixed noise on the held-out shapes' latents (the
  SD3 / MaxDiffusion protocol: comparable across steps and runs, unlike the training loss); and, when asked,
  ``eval.num_samples`` generated shapes -- for the labels (or features) of the first held-out shapes -- scored by
  MMD / COV / 1-NNA against those shapes and, for class conditioning, by class consistency against all of them;
  for per-shape conditions (images, features), by how close each sample is to the shape whose condition made it
  against the other shapes and against samples made with the conditions shuffled (``condition_report``).

The held-out shapes are ``data.holdout`` of the data by a stable hash of the mesh id (never trained on), read
spread evenly over the id-ordered held-out records; every draw is seeded by ``eval.seed``, so two evaluations of
the same parameters give the same numbers.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxshape.data.pipeline import read_spread
from jaxshape.data.sources import make_data_iterator, records_path
from jaxshape.eval.protocol import (
    condition_report,
    derangement,
    generation_report,
    reconstruction_report,
    shape_surface_points,
)
from jaxshape.families import FAMILIES
from jaxshape.trainer.tasks import FlowTask, Task
from jaxshape.trainer.tasks.base import _first

log = logging.getLogger("jaxshape.train")
REFERENCE_SEED_OFFSET = 1_000_003  # reference shape i is sampled with seed offset + eval.seed + i


def heldout_examples(task: Task, config, n: int) -> dict:
    """``n`` held-out examples (host numpy) with the fields the evaluation reads: spread evenly over the id-ordered
    held-out records (so a class-ordered set gives every class), or the first ``n`` synthetic ones."""
    nq = task.eval_num_queries(config.eval.num_queries)
    if config.data.source == "synthetic":
        it = make_data_iterator(config.data, task.eval_fields, task.family, process_index=0, process_count=1,
                                one_epoch=True, split="holdout", num_queries=nq, views=task.view_config())
        return _first(it, task.eval_fields, n)
    if not config.data.holdout > 0:
        raise ValueError("evaluating on held-out shapes needs data.holdout > 0 (the fraction of shapes kept out of "
                         "training)")
    return read_spread(records_path(config.data, task.family), n, task.eval_fields, split="holdout",
                       holdout=config.data.holdout, num_queries=nq, seed=config.eval.seed, views=task.view_config())


def pool_class_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of the nearest-neighbour (Chamfer L2) classifier on labelled shapes ``[P, N, 3]``:
    the class consistency true shapes get from the same pool -- the ceiling a generator's score is read against."""
    from jaxshape.eval.metrics import pairwise_chamfer

    d = np.asarray(pairwise_chamfer(points, points), np.float64)
    np.fill_diagonal(d, np.inf)
    labels = np.asarray(labels)
    return float(np.mean(labels[d.argmin(axis=1)] == labels))


class Evaluator:
    """Scores parameters of ``task`` on held-out shapes; built once per run (it reads the held-out data)."""

    def __init__(self, task: Task, config, examples: Optional[dict] = None):
        self.task, self.config, self.ec = task, config, config.eval
        self.examples = examples if examples is not None else heldout_examples(task, config, self.ec.num_shapes)
        self.n = len(next(iter(self.examples.values())))
        if self.n == 0:
            raise ValueError("the held-out split holds no shapes: raise data.holdout")
        self.bound = FAMILIES[task.family].mesh_bound
        if not 0 < self.ec.set_points <= self.ec.points:
            raise ValueError(f"eval.set_points ({self.ec.set_points}) must be in [1, eval.points = {self.ec.points}]")
        # references draw from their own seed stream: a shape equal to its reference is not also sampled at the
        # same surface points (which would give Chamfer 0 instead of the sampling floor)
        self.ref_points = task.reference_points(self.examples, self.ec.points, REFERENCE_SEED_OFFSET + self.ec.seed)
        self.is_flow = isinstance(task, FlowTask)
        self.ceiling = None
        if self.is_flow:
            self._buckets = jax.jit(lambda p, f, b, r: task.bucket_losses(p, f, b, r, tuple(self.ec.t_buckets)))
            if "class_label" in task.cond_fields and self.n > 1:
                self.ceiling = pool_class_accuracy(self.ref_points[:, :self.ec.set_points],
                                                   self.examples["class_label"])

    def _batch(self, fields, lo=0, hi=None) -> dict:
        return {k: jnp.asarray(self.examples[k][lo:hi]) for k in fields if k in self.examples}

    def __call__(self, params, frozen, *, with_samples: bool = True, progress: bool = False) -> tuple[dict, dict]:
        """``(scalars, details)``: ``eval/...`` metrics for the log (``@`` written ``_``: ``eval/recon_f_0.05``,
        ``eval/mse_t0.5``, as TensorBoard takes them), and per-shape outputs for reports
        (``shapes``: the decoded meshes, ``nearest``: each sample's nearest held-out shape). ``progress``: a bar
        over the generated shapes."""
        t0 = time.perf_counter()
        ec, task = self.ec, self.task
        out, details = {}, {}
        if not self.is_flow:
            outputs, iou = task.reconstruct(params, frozen, self.examples)
            shapes = task.to_meshes(outputs)
            pts, empty = shape_surface_points(shapes, ec.points, bound=self.bound, seed=ec.seed)
            rec = reconstruction_report(pts, empty, self.ref_points, iou=iou)
            out.update({f"eval/recon_{k}": v for k, v in rec.items()})
            details.update(shapes=shapes, iou=np.asarray(iou).tolist())
        else:
            batch = self._batch(task.encoder_fields + task.cond_fields)
            losses = np.asarray(self._buckets(params, frozen, batch, jax.random.key(ec.seed)))
            for t, v in zip(ec.t_buckets, losses):
                out[f"eval/mse@t{t:g}"] = float(v)
            out["eval/mse_mean"] = float(losses.mean())
            if with_samples and ec.num_samples > 0:
                out.update(self.sample_metrics(params, frozen, details, progress))
        out["eval/time_s"] = time.perf_counter() - t0
        return {k.replace("@", "_"): v for k, v in out.items()}, details

    def sample_metrics(self, params, frozen, details: dict, progress: bool = False) -> dict:
        """Generate ``eval.num_samples`` shapes for the first held-out shapes' conditions and score them."""
        ec, task = self.ec, self.task
        s = min(ec.num_samples, self.n)
        inputs = {k: self.examples[k][:s] for k in task.cond_fields}
        per_example = task.config.cond.kind != "class" and s >= 2  # an image or features of one held-out shape
        shuffle = per_example and ec.shuffled_condition
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=s * (2 if shuffle else 1), desc=f"generate {task.stage}", unit="shape",
                       dynamic_ncols=True)
        shapes = self._generate(params, frozen, inputs, s, bar)
        pts, empty = shape_surface_points(shapes, ec.set_points, bound=self.bound, seed=ec.seed)
        refs = self.ref_points[:, :ec.set_points]
        kw = {}
        if "class_label" in inputs:
            kw = dict(requested=inputs["class_label"], pool=refs, pool_labels=self.examples["class_label"])
        rep = generation_report(pts, empty, refs[:s], **kw)
        if self.ceiling is not None:
            rep["class_consistency_of_heldout"] = self.ceiling
        if per_example:
            perm = derangement(s, ec.seed)
            shuffled = None
            if shuffle:  # the same noise per slot, the conditions of other shapes
                other = self._generate(params, frozen, {k: v[perm] for k, v in inputs.items()}, s, bar)
                shuffled, _ = shape_surface_points(other, ec.set_points, bound=self.bound, seed=ec.seed)
            labels = self.examples.get("class_label")
            rep.update(condition_report(pts, empty, refs[:s], shuffled=shuffled, perm=perm,
                                        labels=None if labels is None else labels[:s]))
        if bar is not None:
            bar.close()
        details.update(shapes=shapes, nearest=rep.pop("nearest"), inputs=inputs)
        return {f"eval/sample_{k}": v for k, v in rep.items()}

    def _generate(self, params, frozen, inputs: dict, s: int, bar=None) -> list:
        """Meshes generated for the first ``s`` ``inputs``, ``eval.batch_size`` at a time; slot ``lo + j``'s noise
        comes from ``fold_in(eval.seed, lo)``, whatever the conditions."""
        ec, task = self.ec, self.task
        outputs = []
        for lo in range(0, s, ec.batch_size):
            chunk = {k: jnp.asarray(v[lo:lo + ec.batch_size]) for k, v in inputs.items()}
            outputs += task.sample(params, frozen, jax.random.fold_in(jax.random.key(ec.seed), lo), chunk)
            if bar is not None:
                bar.update(len(next(iter(chunk.values()))))
        return task.to_meshes(outputs)
