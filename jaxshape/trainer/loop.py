"""The training loop of one stage: mesh · task · data · state · restore · step loop (logs, checkpoints, samples).

``run(config, workdir)`` trains the stage ``config.stage``; everything stage-specific is the task's
(``jaxshape.trainer.tasks``). A run resumes automatically from the newest checkpoint in ``<workdir>/checkpoints``
(state, optimiser, EMA, rng and the data iterator position), so a killed run continues with the exact next batch.

Metrics stay on the device between log steps (fetching them every step would stall the host on every step). They
are fetched, and every loss since the last fetch checked, on log steps and before anything is written: a
non-finite loss stops the run with ``FloatingPointError`` before a checkpoint or a sample of the bad state exists,
so the last good checkpoint stays intact.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxshape.geometry import save_shapes
from jaxshape.models.store import write_workdir_models
from jaxshape.trainer import sharding as shd
from jaxshape.trainer.checkpoint import Checkpointer
from jaxshape.trainer.metrics import MetricWriter
from jaxshape.trainer.optim import ema_update, learning_rate_schedule, make_optimizer
from jaxshape.trainer.preemption import PreemptionWatcher
from jaxshape.trainer.tasks import Task, abstract, input_infos, make_task

log = logging.getLogger("jaxshape.train")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def validate_config(config, mesh) -> None:
    """Checks that need no compilation; each error names the field and the rule."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    bs = config.data.batch_size
    if bs < 1 or bs % n:
        raise ValueError(f"data.batch_size ({bs}) must be a positive multiple of the mesh size data x fsdp = {n}")
    accum = config.grad_accum_steps
    if accum < 1 or bs % accum or (bs // accum) % n:
        raise ValueError(f"grad_accum_steps ({accum}) must divide data.batch_size ({bs}) into micro-batches that "
                         f"are multiples of the mesh size {n}")
    if bs % jax.process_count():
        raise ValueError(f"data.batch_size ({bs}) must be divisible by the process count {jax.process_count()}")
    for field in ("steps", "log_every", "ckpt_every"):
        if config[field] < 1:
            raise ValueError(f"{field} must be >= 1, got {config[field]}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")


def _peek(it) -> dict:
    """The next batch without consuming it (the iterator position is restored)."""
    state = it.get_state()
    batch = next(it)
    it.set_state(state)
    return batch


def build_train_step(task: Task, tx, config) -> Callable:
    """The pure, jittable ``(state, frozen, batch) -> (state, metrics)``: loss and gradients (accumulated over
    ``grad_accum_steps`` micro-batches in a ``lax.scan``), the optimiser update and the EMA. Per-step randomness is
    ``fold_in(state.rng, state.step)``, so a resumed run draws exactly what an uninterrupted one would."""
    accum = config.grad_accum_steps
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


def init_from(path: str, task: Task, state: TrainState, state_sh, tx) -> TrainState:
    """Fine-tuning: the state with its trained modules' parameters (and EMA) read from ``path``
    (``jaxshape.models.load``: a converted / saved model, or a training workdir), a fresh optimizer state, step 0.
    The architecture must match exactly: one error lists every differing parameter path."""
    from jaxshape.models import components, load

    if not Path(path).exists():
        raise FileNotFoundError(f"init_from {path}: no such folder; give a converted model (python -m "
                                f"jaxshape.convert --config <name>.json --weights <name>.safetensors --out {path}) "
                                f"or a training workdir")
    modules = task.modules()
    found = components(path)
    params = dict(state.params)
    for name in params:
        if name not in modules:  # e.g. a flow stage's learned class-label table: not in a released checkpoint
            log.info("init_from: %s keeps its random init", name)
            continue
        which = None if len(found) == 1 else (name if name in found else type(modules[name]).__name__)
        _, variables = load(path, which)
        new = variables["params"]
        want = jax.tree_util.tree_flatten_with_path(params[name])[0]
        have = dict(jax.tree_util.tree_flatten_with_path(new)[0])
        bad = [f"{jax.tree_util.keystr(k)}: {tuple(v.shape)} here, "
               f"{tuple(have[k].shape) if k in have else 'missing'} in {path}" for k, v in want
               if k not in have or tuple(have[k].shape) != tuple(v.shape)]
        extra = sorted(set(map(jax.tree_util.keystr, have)) - set(jax.tree_util.keystr(k) for k, _ in want))
        if bad or extra:
            raise ValueError(f"init_from {path}: the {name} parameters do not match the configured model:\n  "
                             + "\n  ".join(bad + [f"{k}: not in the configured model" for k in extra]))
        params[name] = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), params[name], new)
        log.info("init_from: %s <- %s", name, path)
    params = jax.device_put(params, state_sh.params)
    opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
    ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=state_sh.ema_params)(params)  # own buffers:
    return state.replace(params=params, ema_params=ema, opt_state=opt_state)  # the step donates both


def gather_to_host(tree):
    """Host copies of (possibly multi-host sharded) arrays, identical on every process (a collective: every
    process must call it)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


class _MetricBuffer:
    """Per-step metrics kept on the device until :meth:`fetch`, which checks every loss since the last fetch."""

    def __init__(self, checkpoints: Path):
        self.checkpoints = checkpoints
        self.pending: list = []  # (step, device metrics)
        self.losses: list[float] = []
        self.last_good: Optional[int] = None  # the newest checkpoint written

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def fetch(self) -> Optional[dict]:
        """Host values of the newest step's metrics (``None`` if nothing is pending); raises
        ``FloatingPointError`` at the first non-finite loss."""
        if not self.pending:
            return None
        host = jax.device_get([m for _, m in self.pending])
        for (step, _), m in zip(self.pending, host):
            loss = float(m["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint "
                    f"(step {self.last_good}) in {self.checkpoints} is untouched; lower optimizer.lr or check "
                    f"the data.")
            self.losses.append(loss)
        self.pending.clear()
        return {k: float(v) for k, v in host[-1].items()}


class TooManyBadExamples(RuntimeError):
    """More than ``data.skip_limit`` of the examples read were bad."""


def check_skipped(skipped: int, read: int, data) -> int:
    """The bad examples replaced on all processes so far (``skipped`` of ``read`` on this one); raises when more
    than ``data.skip_limit`` of them were bad (and at least ``data.skip_limit_min``). A collective when
    multi-process."""
    total, seen = skipped, read
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        both = np.asarray(multihost_utils.process_allgather(np.asarray([skipped, read], np.int64)))
        total, seen = (int(v) for v in both.reshape(-1, 2).sum(0))
    if total >= data.skip_limit_min and total > data.skip_limit * (total + seen):
        raise TooManyBadExamples(f"{total} of the {total + seen} examples read were bad (more than data.skip_limit = "
                           f"{data.skip_limit:g}); the log names each one (\"skipped example\"). Fix or remove "
                           f"them, or raise data.skip_limit")
    return total


def write_samples(task: Task, params, frozen, rng, inputs, directory: Path) -> list[str]:
    """Sample with ``params`` and write the shapes (``.glb``, ``.png``, arrays, ``samples.jsonl``)."""
    outputs = task.sample(params, frozen, rng, {k: jnp.asarray(v) for k, v in inputs.items()})
    return save_shapes(task.to_meshes(outputs), directory, input_infos(inputs, len(outputs)))


def run(config, workdir: str | Path, *, data_iter=None, mesh=None, max_steps: Optional[int] = None) -> dict:
    """Train one stage. Returns ``{"losses": [...], "step", "samples": [...], "num_params", "state",
    "evaluations": [{"step", "eval/...": value}, ...], "preempted"}`` (evaluations on held-out shapes:
    ``config.eval``; ``preempted``: a SIGTERM / SIGINT stopped the run after checkpointing ``step``).

    ``data_iter`` overrides the configured data source (tests); ``max_steps`` stops early (simulated kill).
    """
    with PreemptionWatcher() as watcher:
        return _run(config, workdir, watcher, data_iter=data_iter, mesh=mesh, max_steps=max_steps)


def _run(config, workdir, watcher: PreemptionWatcher, *, data_iter, mesh, max_steps) -> dict:
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0

    # ---- mesh: (data, fsdp) over the devices; the rules table maps parameter axes onto it
    mesh = mesh or shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    validate_config(config, mesh)
    rules = shd.logical_rules(config.mesh.rules)

    # ---- task: modules from the config (no I/O), then the frozen inputs it reads from disk (a trained VAE)
    task = make_task(config)
    external = task.load_frozen()
    external = {**external, **task.workdir_frozen(external, workdir, compute=True)}

    # ---- data: this process's share of every global batch; the first batch fixes the shapes
    it = data_iter if data_iter is not None else task.data_iterator(workdir, external, shd.batch_sharding(mesh))
    raw = _peek(it)
    task.validate({k: np.shape(v) for k, v in raw.items()})
    example = task.host_batch(raw, 0)
    example_global = {k: jax.ShapeDtypeStruct((config.data.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
                      for k, v in example.items()}
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(config_dict(config), indent=2))
        write_workdir_models(workdir, task.modules())

    # ---- state: shapes first (nothing allocated), then an init jitted straight into the target shardings
    tx = make_optimizer(config.optimizer)
    external_shapes = abstract(external)

    def init_boxed(rng):
        k_init, k_train = jax.random.split(rng)
        zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in example_global.items()}
        params = task.init(k_init, zeros, external_shapes)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          opt_state=tx.init(params), rng=k_train)

    abstract_state = jax.eval_shape(init_boxed, jax.random.key(config.seed))
    state_sh = shd.shardings_from_boxed(abstract_state, mesh, rules)
    state = jax.jit(lambda r: nn.meta.unbox(init_boxed(r)), out_shardings=state_sh)(jax.random.key(config.seed))
    # frozen inputs (buffers, a trained VAE) travel beside the state, replicated; an image encoder is sharded
    # with the model rules (task.sharded_frozen)
    frozen = {**task.frozen_variables(), **external}
    boxes = task.sharded_frozen()
    frozen = jax.device_put(frozen, {k: shd.shardings_from_boxed(boxes[k], mesh, rules) if k in boxes else
                                     jax.tree.map(lambda _: shd.replicated(mesh), v) for k, v in frozen.items()})
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    # ---- restore: the newest checkpoint, straight into the target shardings (any mesh size)
    ckpt = Checkpointer(workdir / "checkpoints", every=config.ckpt_every, keep_last=config.keep_last,
                        keep_best=config.keep_best, async_save=config.async_checkpointing)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sh)
    start, restored = ckpt.restore_newest(target, it)  # checked; bad steps moved to checkpoints/bad
    if start is not None:
        state = restored
        log.info("resumed from step %d", start)
    elif config.get("init_from"):
        state = init_from(config.init_from, task, state, state_sh, tx)
    start = int(start or 0)

    # ---- step loop: jitted step with the state donated; metrics fetched on log steps and before any write
    step_fn = jax.jit(build_train_step(task, tx, config), donate_argnums=0,
                      out_shardings=(state_sh, shd.replicated(mesh)))
    writer = MetricWriter(workdir, enabled=is_main)
    total = config.steps if max_steps is None else min(config.steps, max_steps)
    sample_inputs = task.sample_inputs([raw], config.num_samples)
    metrics_buf = _MetricBuffer(workdir / "checkpoints")
    metrics_buf.last_good = ckpt.latest_step()
    samples: list[str] = []
    evaluator = None
    if config.data.holdout > 0 and (config.eval.every or config.eval.at_end):
        from jaxshape.trainer.evaluation import Evaluator

        evaluator = Evaluator(task, config) if is_main else None
    evaluations: list[dict] = []
    progress = None
    if is_main and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=start, desc=config.stage, dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), start
    preempted = jax.process_count() == 1 and watcher.requested  # a signal during setup: stop before training
    try:
        for step in range(start, total if not preempted else start):
            batch = shd.put_batch(task.host_batch(next(it), step), mesh)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = step_fn(state, frozen, batch)
            done = step + 1
            metrics_buf.add(done, metrics)
            if progress is not None:
                progress.update(1)
            preempted = watcher.should_stop(done)  # every process, every step
            log_now = done % config.log_every == 0 or done == total or preempted
            save_now = ckpt.should_save(done) or done == total or preempted
            sample_now = not preempted and ((config.sample_every and done % config.sample_every == 0)
                                            or (done == config.steps and config.sample_at_end))
            eval_now = not preempted and config.data.holdout > 0 and (
                (config.eval.every and done % config.eval.every == 0) or (done == config.steps and config.eval.at_end))
            if not (log_now or save_now or sample_now or eval_now):
                continue
            last = metrics_buf.fetch()
            if log_now:
                now = time.perf_counter()
                scalars = dict(last, step_time_s=(now - t_last) / max(done - n_last, 1))
                if hasattr(it, "skipped"):
                    scalars["data/skipped"] = check_skipped(it.skipped, (done - start) * config.data.batch_size
                                                            // jax.process_count(), config.data)
                scalars["examples_per_s"] = config.data.batch_size / max(scalars["step_time_s"], 1e-9)
                writer.write(done, scalars)
                if progress is not None:
                    progress.set_postfix(loss=f"{last['loss']:.4f}")
                t_last, n_last = now, done
            if save_now and ckpt.save(done, state, it, loss=last["loss"]):
                metrics_buf.last_good = done

            # ---- samples: EMA params, gathered to the host (a collective), written by the main process
            if sample_now:
                params, frz = gather_to_host((state.ema_params, frozen))
                if is_main:
                    out_dir = workdir / "samples" / f"step_{done:07d}"
                    samples = write_samples(task, params, frz, jax.random.key(config.seed + done), sample_inputs,
                                            out_dir)
                    log.info("step %d: wrote %d samples to %s", done, len(samples), out_dir)

            # ---- evaluation on held-out shapes (main process, EMA params on the host)
            if eval_now:
                t_eval = time.perf_counter()
                params, frz = gather_to_host((state.ema_params, frozen))
                if is_main:
                    with_samples = done == config.steps or bool(
                        config.eval.sample_every and done % config.eval.sample_every == 0)
                    scalars, _ = evaluator(params, frz, with_samples=with_samples)
                    writer.write(done, scalars)
                    evaluations.append({"step": done, **scalars})
                    log.info("step %d: %s", done, ", ".join(f"{k[5:]} {v:.4g}" for k, v in scalars.items()))
                t_last += time.perf_counter() - t_eval  # the evaluation's time is not a training step's
            if preempted:
                ckpt.wait()
                log.warning("stopped by a signal at step %d; checkpoint written to %s", done, workdir / "checkpoints")
                break
    finally:
        ckpt.close(quiet=sys.exc_info()[0] is not None)  # an error in flight is the one to report
        writer.close()
        if progress is not None:
            progress.close()
    return {"losses": metrics_buf.losses, "step": start + len(metrics_buf.losses), "samples": samples,
            "num_params": n_params, "state": state, "evaluations": evaluations, "preempted": preempted}
