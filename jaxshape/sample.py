"""``python -m jaxshape.sample --workdir DIR [--stage S] [--num N] [--cfg W] [--steps K] [--seed S] [--out D]``

Shapes from a trained stage without training: generations of a flow stage (for class labels ``0, 1, ...`` or for
the first ``N`` examples' condition features, as the stage was trained) or reconstructions of a VAE stage (of the
first ``N`` examples of its data). Writes ``sample_<i>.glb`` (y-up) + a ``.png`` preview per shape, the decoded
grid arrays, and ``samples.jsonl`` (what each shape was sampled for) into ``--out``
(default ``<stage dir>/samples/cli_step_<step>_seed_<seed>``).

``DIR`` is a stage's workdir, or a pipeline's (``python -m jaxshape.train`` with a ``demo`` config): then
``--stage`` picks the stage folder (default: the flow stage). The EMA parameters of the newest checkpoint are used
unless ``--step`` / ``--raw`` say otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("jaxshape.sample")


def find_stage_dir(workdir: str | Path, stage: Optional[str] = None) -> Path:
    """The stage workdir under ``workdir``: ``workdir`` itself if it is one, else its subfolder ``stage`` (folder or
    stage name), else its only flow stage, else its only stage."""
    from jaxshape.families import FAMILIES

    root = Path(workdir).absolute()
    if (root / "config.json").is_file():
        found = {json.loads((root / "config.json").read_text())["stage"]: root}
    else:
        found = {}
        for sub in sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []:
            found[json.loads((sub / "config.json").read_text())["stage"]] = sub
            found.setdefault(sub.name, sub)
    if not found:
        raise FileNotFoundError(f"{root} is not a training workdir (no config.json in it or its subfolders)")
    if stage is not None:
        if stage not in found:
            raise ValueError(f"--stage {stage!r}: {root} holds {sorted(found)}")
        return found[stage]
    stage_dirs = set(found.values())
    if len(stage_dirs) == 1:
        return stage_dirs.pop()
    flows = {found[f.flow_stage] for f in FAMILIES.values() if f.flow_stage in found}
    if len(flows) == 1:
        return flows.pop()
    raise ValueError(f"{root} holds several stages {sorted(found)}; pick one with --stage")


def stage_config(stage_dir: Path, *, cfg: Optional[float] = None, steps: Optional[int] = None):
    """A stage workdir's ``config.json`` as a ConfigDict, with a flow stage's guidance strength (``cfg``) and Euler
    steps (``steps``) overridden where given."""
    from jaxshape.trainer.defaults import with_defaults

    config = with_defaults(json.loads((Path(stage_dir) / "config.json").read_text()))
    if cfg is not None or steps is not None:
        if "cfg_strength" not in config.get("sampler", {}):
            raise ValueError(f"--cfg / --steps apply to flow stages; {stage_dir} trained {config.stage}")
        if cfg is not None:
            config.sampler.cfg_strength = float(cfg)
        if steps is not None:
            if steps < 1:
                raise ValueError(f"--steps must be >= 1, got {steps}")
            config.sampler.steps = int(steps)
    return config


def newest_or(stage_dir: Path, step: Optional[int] = None) -> int:
    """``step``, or the newest checkpoint of a stage workdir (an error if it holds none)."""
    from jaxshape.models.store import checkpoint_steps

    saved = checkpoint_steps(Path(stage_dir) / "checkpoints")
    if not saved:
        raise FileNotFoundError(f"{Path(stage_dir) / 'checkpoints'} holds no checkpoint: train the stage first")
    return saved[-1] if step is None else int(step)


def _lazy_batches(config, task) -> Iterator[dict]:
    """An ordered pass over the stage's data (built on first use: class-conditioned flows never read data)."""
    from jaxshape.data.sources import make_data_iterator

    yield from make_data_iterator(config.data, task.sample_fields, task.family, process_index=0, process_count=1,
                                  one_epoch=True, views=task.view_config())


def sample(workdir: str | Path, *, stage: Optional[str] = None, num: int = 8, cfg: Optional[float] = None,
           steps: Optional[int] = None, seed: int = 0, out: Optional[str | Path] = None,
           checkpoint_step: Optional[int] = None, ema: bool = True, batch_size: int = 8,
           progress: bool = True) -> list[str]:
    """Library entry point of the CLI: sample ``num`` shapes from a trained stage and write them to ``out``.
    Returns the ``.glb`` paths written (a shape whose surface is empty gets arrays but no mesh)."""
    import jax
    import jax.numpy as jnp

    from jaxshape.geometry import save_shapes
    from jaxshape.models.store import read_train_params
    from jaxshape.trainer.tasks import FlowTask, input_infos, make_task

    if num < 1 or batch_size < 1:
        raise ValueError(f"--num ({num}) and --batch-size ({batch_size}) must be >= 1")
    stage_dir = find_stage_dir(workdir, stage)
    config = stage_config(stage_dir, cfg=cfg, steps=steps)
    task = make_task(config)
    newest_or(stage_dir, checkpoint_step)  # a clear error when the stage holds no checkpoint
    step, params = read_train_params(stage_dir / "checkpoints", step=checkpoint_step, ema=ema, return_step=True)
    out = Path(out) if out is not None else stage_dir / "samples" / f"cli_step_{step:07d}_seed_{seed}"
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out (nothing is overwritten)")

    params = jax.device_put(params)
    frozen = jax.device_put(task.trained_frozen(stage_dir))
    inputs = task.sample_inputs(_lazy_batches(config, task), num)
    n = len(next(iter(inputs.values())))
    if n < num:
        log.warning("the data holds %d examples; sampling %d shapes, not %d", n, n, num)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"sample {config.stage}", unit="shape", dynamic_ncols=True)
    outputs = []
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = {k: jnp.asarray(v[start:start + batch_size]) for k, v in inputs.items()}
        b = len(next(iter(chunk.values())))
        tick = None
        if bar is not None and isinstance(task, FlowTask):
            tick = lambda k, b=b: bar.update(k * b / config.sampler.steps)  # noqa: E731 - per Euler step
        outputs += task.sample(params, frozen, jax.random.fold_in(jax.random.key(seed), i), chunk, progress=tick)
        if bar is not None:
            bar.n = start + b
            bar.refresh()
    if bar is not None:
        bar.close()
    infos = [{"step": step, "seed": seed, "ema": ema, **info} for info in input_infos(inputs, n)]
    written = save_shapes(task.to_meshes(outputs), out, infos)
    log.info("wrote %d meshes (%d shapes) to %s", len(written), n, out)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.sample", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a stage's or a pipeline's training workdir")
    p.add_argument("--stage", default=None, help="stage (folder or stage name) of a pipeline workdir")
    p.add_argument("--num", type=int, default=8, help="shapes to sample (default 8)")
    p.add_argument("--cfg", type=float, default=None, help="flow stages: guidance strength (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="flow stages: Euler steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <stage dir>/samples/cli_step_<n>_seed_<s>)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--raw", action="store_true", help="the raw parameters instead of the EMA")
    p.add_argument("--batch-size", type=int, default=8, help="shapes sampled together")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    written = sample(a.workdir, stage=a.stage, num=a.num, cfg=a.cfg, steps=a.steps, seed=a.seed, out=a.out,
                     checkpoint_step=a.step, ema=not a.raw, batch_size=a.batch_size, progress=not a.no_progress)
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
