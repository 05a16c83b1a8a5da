"""``python -m jaxshape.train --config=configs/trellis_like.py[:variant[,data=DIR]] --workdir=DIR [--config.x=y ...]``

Trains one stage, or a pipeline of stages (a config with ``order`` and ``stages``: each stage trains in
``DIR/<stage>``; a flow stage with an empty ``vae_checkpoint`` uses the VAE stage trained before it). Re-running
the same command resumes from the newest checkpoints. Shapes from a trained stage: ``python -m jaxshape.sample``.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file[:variant]", lock_config=True)
flags.DEFINE_string("workdir", None, "output directory (checkpoints, metrics, samples)")
flags.mark_flags_as_required(["config", "workdir"])



def _maybe_init_distributed(config) -> None:
    """``jax.distributed.initialize()`` when ``config.distributed``: cluster auto-detection (TPU pods, Slurm,
    Open MPI, Kubernetes), or explicit ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``
    environment variables (e.g. several processes on one machine, or a hand-rolled GPU cluster)."""
    import jax

    if not config.distributed or jax.distributed.is_initialized():
        return
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)


def run_pipeline(config, workdir: str) -> dict:
    """Train ``config`` (one stage, or the stages of a pipeline in ``config.order``) under ``workdir``."""
    from jaxshape.families import family_of_stage
    from jaxshape.trainer.loop import run

    if "order" not in config:
        _maybe_init_distributed(config)
        return {config.stage: run(config, workdir)}
    results, trained = {}, {}
    for name in config.order:
        stage_cfg = config.stages[name]
        _maybe_init_distributed(stage_cfg)
        fam = family_of_stage(stage_cfg.stage)
        vae_stage = fam.vae_stage if stage_cfg.stage == fam.flow_stage else None
        if vae_stage and not stage_cfg.vae_checkpoint:
            if vae_stage not in trained:
                raise ValueError(f"stage {name} needs vae_checkpoint (no {vae_stage} stage runs before it)")
            with stage_cfg.unlocked():
                stage_cfg.vae_checkpoint = trained[vae_stage]
        stage_dir = os.path.abspath(os.path.join(workdir, name))  # absolute: config.json stays valid anywhere
        logging.getLogger("jaxshape.train").info("stage %s -> %s", name, stage_dir)
        results[name] = run(stage_cfg, stage_dir)
        if results[name]["preempted"]:
            break  # the later stages start when the command is re-run
        trained[stage_cfg.stage] = stage_dir
    return results


def _setup_logging() -> None:
    """jaxshape's own messages at INFO; absl / Orbax chatter only from WARNING up."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("jaxshape")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def main(argv) -> None:
    del argv
    _setup_logging()
    from jaxshape import cpu_allocator

    logging.getLogger("jaxshape.train").info("host allocator: %s", cpu_allocator.describe())
    from jaxshape.trainer.checkpoint import CheckpointMismatch, CheckpointWriteError, NoGoodCheckpoint
    from jaxshape.trainer.loop import TooManyBadExamples

    try:
        results = run_pipeline(FLAGS.config, FLAGS.workdir)
    except (CheckpointWriteError, CheckpointMismatch, NoGoodCheckpoint, TooManyBadExamples) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if isinstance(e, CheckpointWriteError):  # a full or broken disk: writers' exit handlers would fail (and
            sys.stdout.flush()  # tensorboardX's can block); everything of ours is closed already
            os._exit(1)
        sys.exit(1)
    for name, r in results.items():
        losses = r["losses"]
        first = f"{losses[0]:.4f}" if losses else "-"
        last = f"{losses[-1]:.4f}" if losses else "-"
        print(f"[{name}] steps {r['step']}, loss {first} -> {last}, params {r['num_params']:,}")
        for s in r["samples"]:
            print(f"[{name}] sample: {s}")
        if r["preempted"]:
            print(f"[{name}] stopped by a signal at step {r['step']} (checkpointed); run the same command again "
                  f"to resume", flush=True)


if __name__ == "__main__":
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables

    reexec_with_cpu_malloc_tunables()  # CPU runs; JAXSHAPE_CPU_MALLOC=0 turns it off (see the module)
    sys.exit(app.run(main))
