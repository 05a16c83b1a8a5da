"""The training loop: mesh -> data -> task -> sharded state -> jitted step -> logs, checkpoints, samples.

``run(config, workdir)`` trains one stage; it resumes automatically from the newest checkpoint in
``<workdir>/checkpoints`` (state, optimiser, EMA, rng and the data iterator position), so a killed run continues
with the exact next batch. A non-finite loss stops the run with ``FloatingPointError`` before anything is saved
from the bad step: the last good checkpoint stays intact.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxshape.trainer import sharding as shd
from jaxshape.trainer.checkpoint import Checkpointer
from jaxshape.trainer.metrics import MetricWriter
from jaxshape.trainer.optim import ema_update, learning_rate_schedule, make_optimizer
from jaxshape.trainer.tasks import make_task

log = logging.getLogger("jaxshape.train")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def _config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def validate_config(config, mesh) -> None:
    """Checks that need no compilation; each error names the field and the rule."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    bs = config.data.batch_size
    if bs < 1 or bs % n:
        raise ValueError(f"data.batch_size ({bs}) must be a positive multiple of the mesh size data x fsdp = {n}")
    accum = config.get("grad_accum_steps", 1)
    if accum < 1 or bs % accum or (bs // accum) % n:
        raise ValueError(f"grad_accum_steps ({accum}) must divide data.batch_size ({bs}) into micro-batches that "
                         f"are multiples of the mesh size {n}")
    if bs % jax.process_count():
        raise ValueError(f"data.batch_size ({bs}) must be divisible by the process count {jax.process_count()}")
    for field in ("steps", "log_every", "ckpt_every"):
        if config.get(field, 1) < 1:
            raise ValueError(f"{field} must be >= 1, got {config.get(field)}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")


def _records_path(d, targets) -> str:
    if d.source == "embedded":
        from jaxshape.data.procedural import embedded_records

        return embedded_records(d.num_shapes, targets=targets, resolution=d.resolution,
                                points=d.get("points", 4096), seed=d.get("seed", 0))
    if not d.path:
        raise ValueError("data.path must name a folder written by `python -m jaxshape.data.prepare` "
                         "when data.source='records'")
    return d.path


def make_data_iterator(config, task, process_index: int, process_count: int, *, fields=None,
                       one_epoch: bool = False, mesh=None):
    """This process's data iterator (global batch / process count examples per step). ``one_epoch``: a single
    ordered pass over this process's shard (for pre-encoding), the last batch possibly short. With ``mesh``,
    record batches are prefetched into device memory already batch-sharded."""
    d = config.data
    fields = tuple(fields or task.fields)
    if d.source == "synthetic":
        from jaxshape.trainer.synthetic import SyntheticIterator, make_example

        kwargs = dict(d.get("synthetic", {}))
        if one_epoch:
            idx = list(range(process_index, d.num_examples, process_count))
            local = d.batch_size // process_count

            def epoch():
                for i in range(0, len(idx), local):
                    exs = [make_example(j, d.get("seed", 0), **kwargs) for j in idx[i:i + local]]
                    yield {k: np.stack([e[k] for e in exs]) for k in fields}

            return epoch()
        return SyntheticIterator(d.batch_size, num_examples=d.get("num_examples", 64), seed=d.get("seed", 0),
                                 process_index=process_index, process_count=process_count, fields=set(fields),
                                 **kwargs)
    if d.source in ("records", "embedded"):
        from jaxshape.data.pipeline import AugmentConfig, DeviceIterator, make_dataset

        path = _records_path(d, task.targets)
        nq = d.get("num_queries", None)
        a = d.augment
        aug = AugmentConfig(mirror_p=a.mirror_p, rotate=a.rotate or None, occupancy_flips=a.occupancy_flips)
        ds = make_dataset(path, d.batch_size // process_count, keys=fields, seed=d.get("seed", 0),
                          shuffle=d.get("shuffle", True) and not one_epoch, process_index=process_index,
                          process_count=process_count, num_queries=None if not nq else tuple(nq),
                          augment=None if one_epoch else aug, worker_count=d.get("worker_count", 0),
                          num_epochs=1 if one_epoch else None, drop_remainder=not one_epoch)
        if one_epoch:
            return iter(ds)
        sharding = None if mesh is None else shd.batch_sharding(mesh)
        return DeviceIterator(ds, sharding=sharding, buffer_size=d.get("prefetch", 2))
    raise ValueError(f"data.source must be 'synthetic', 'records' or 'embedded', got {d.source!r}")


def pre_encoded_iterator(config, task, workdir: Path):
    """Encode this process's shard once with the frozen VAE (cached in the workdir) and iterate over it."""
    from jaxshape.trainer.iterators import ArrayIterator
    from jaxshape.trainer.latents import encode_dataset

    pi, pc = jax.process_index(), jax.process_count()
    epoch = make_data_iterator(config, task, pi, pc, fields=task.encoder_fields + task.cond_fields, one_epoch=True)
    arrays = encode_dataset(task, jax.device_put(task.external_frozen()), epoch, task.cond_fields,
                            workdir / f"latents_process{pi}-of-{pc}.npz")
    return ArrayIterator(arrays, config.data.batch_size // pc, seed=config.data.get("seed", 0))


def _peek(it) -> dict:
    """The next batch without consuming it (the iterator position is restored)."""
    state = it.get_state()
    batch = next(it)
    it.set_state(state)
    return batch


def build_train_step(task, tx, config) -> Callable:
    accum = config.get("grad_accum_steps", 1)
    schedule = learning_rate_schedule(config.optimizer)

    def train_step(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(lambda p, b, r: task.loss(p, frozen, b, r), has_aux=True)
        if accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                mb, i = xs
                out = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, out), None

            first = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
            total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
            (loss, metrics), grads = jax.tree.map(lambda x: x / accum, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_update(state.ema_params, params, config.ema_decay))
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        return new_state, metrics

    return train_step


def _gather_to_host(tree):
    """Host copies of (possibly multi-host sharded) arrays, identical on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _save_samples(task, outputs, directory: Path) -> list[str]:
    from jaxshape.geometry import export_mesh, extract_mesh
    from jaxshape.geometry.preview import save_preview
    from jaxshape.geometry.voxels import voxel_field_mesh

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, grid in enumerate(outputs):
        if task.stage.startswith("ss_"):
            v, f = voxel_field_mesh(grid)
            np.save(directory / f"sample_{i}_occupancy.npy", (grid > 0))
        else:
            v, f = extract_mesh(grid)
        if len(f) == 0:
            log.warning("sample %d has an empty surface", i)
            continue
        export_mesh(v, f, directory / f"sample_{i}.glb", glb_up=True)
        save_preview(v, f, directory / f"sample_{i}.png")
        written.append(str(directory / f"sample_{i}.glb"))
    return written


def run(config, workdir: str | Path, *, data_iter=None, mesh=None, max_steps: Optional[int] = None) -> dict:
    """Train one stage. Returns ``{"losses": [...], "step": final step, "samples": [...]}``.

    ``data_iter`` overrides the configured data source (tests); ``max_steps`` stops early (simulated kill).
    """
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    mesh = mesh or shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    validate_config(config, mesh)
    task = make_task(config)
    if data_iter is not None:
        it = data_iter
    elif config.get("pre_encode", False):
        it = pre_encoded_iterator(config, task, workdir)
    else:
        it = make_data_iterator(config, task, jax.process_index(), jax.process_count(), mesh=mesh)
    raw = _peek(it)
    task.validate({k: np.shape(v) for k, v in raw.items()})
    example = task.host_batch(raw, 0)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(_config_dict(config), indent=2))

    tx = make_optimizer(config.optimizer)
    example_global = {k: jax.ShapeDtypeStruct((config.data.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
                      for k, v in example.items()}

    def init_boxed(rng):
        k_init, k_train = jax.random.split(rng)
        params, frozen = task.init(k_init, {k: jnp.zeros(s.shape, s.dtype) for k, s in example_global.items()})
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          opt_state=tx.init(params), rng=k_train), frozen

    abstract_state, abstract_frozen = jax.eval_shape(init_boxed, jax.random.key(config.seed))
    state_sh = shd.shardings_from_boxed(abstract_state, mesh)
    frozen_sh = shd.shardings_from_boxed(abstract_frozen, mesh)
    init = jax.jit(lambda r: nn.meta.unbox(init_boxed(r)), out_shardings=(state_sh, frozen_sh))
    state, frozen = init(jax.random.key(config.seed))
    frozen = {**frozen, **jax.device_put(task.external_frozen(), shd.replicated(mesh))}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    ckpt = Checkpointer(workdir / "checkpoints", every=config.ckpt_every, keep_last=config.get("keep_last", 2),
                        keep_best=config.get("keep_best", 1), async_save=config.get("async_checkpointing", True))
    start = ckpt.latest_step()
    if start is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sh)
        state = ckpt.restore(start, target, it)
        log.info("resumed from step %d", start)
    start = int(start or 0)

    step_fn = jax.jit(build_train_step(task, tx, config), donate_argnums=0,
                      out_shardings=(state_sh, shd.replicated(mesh)))
    writer = MetricWriter(workdir, enabled=is_main)
    total = config.steps if max_steps is None else min(config.steps, max_steps)
    sample_batch = {k: np.asarray(v)[: config.get("num_samples", 2)] for k, v in example.items()}
    if "class_label" in sample_batch and config.get("cond", None) is not None and config.cond.kind == "class":
        sample_batch["class_label"] = (np.arange(len(sample_batch["class_label"])) % config.cond.num_classes
                                       ).astype(np.int32)

    losses, samples = [], []
    progress = None
    if is_main and config.get("progress", True):
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=start, desc=config.stage, dynamic_ncols=True)
    last_good = start if ckpt.latest_step() is not None else None
    t_last, n_last = time.perf_counter(), start
    try:
        for step in range(start, total):
            batch = shd.put_batch(task.host_batch(next(it), step), mesh)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = step_fn(state, frozen, batch)
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({loss}) at step {step + 1}; stopping. The last good checkpoint "
                    f"(step {last_good}) in {workdir / 'checkpoints'} is untouched; lower optimizer.lr or check "
                    f"the data.")
            losses.append(loss)
            done = step + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}")
            if done % config.log_every == 0 or done == total:
                now = time.perf_counter()
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                scalars["step_time_s"] = (now - t_last) / max(done - n_last, 1)
                scalars["examples_per_s"] = config.data.batch_size / max(scalars["step_time_s"], 1e-9)
                writer.write(done, scalars)
                t_last, n_last = now, done
            if ckpt.save(done, state, it, loss=loss, force=(done == total)):
                last_good = done
            sample_every = config.get("sample_every", 0)
            at_end = done == config.steps and config.get("sample_at_end", True)
            if (sample_every and done % sample_every == 0) or at_end:
                params, frz = _gather_to_host((state.ema_params, frozen))  # collective: every process calls it
                if is_main:
                    outputs = task.sample(params, frz, jax.random.key(config.seed + done),
                                          {k: jnp.asarray(v) for k, v in sample_batch.items()})
                    samples = _save_samples(task, outputs, workdir / "samples" / f"step_{done:07d}")
                    log.info("step %d: wrote %d samples to %s", done, len(samples),
                             workdir / "samples" / f"step_{done:07d}")
    finally:
        ckpt.close()
        writer.close()
        if progress is not None:
            progress.close()
    return {"losses": losses, "step": start + len(losses), "samples": samples, "num_params": n_params,
            "state": state}
