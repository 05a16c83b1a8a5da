"""Orbax checkpoints of the train state and the data iterator (one wrapper, so the v1 API can be swapped in).

Layout: ``<workdir>/checkpoints/<step>/{state, data}``. Saves are asynchronous; every ``every`` steps and at the
end; the last ``keep_last`` and the ``keep_best`` lowest-loss checkpoints are kept. Restores go straight into the
target shardings (so a run can resume on a mesh of another size). The data iterator is saved with grain's handler
(one file per process): grain iterators, and any iterator with ``get_state() -> bytes``, ``set_state(bytes)`` and
``start_prefetch()`` (jaxshape's ``DeviceIterator`` and ``SyntheticIterator``). Reading parameters back without a
train state: ``jaxshape.models.store.read_train_params`` (and ``jaxshape.models.load`` for whole modules);
:func:`load_frozen_models` reads a flow stage's frozen VAE.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, *, every: int, keep_last: int = 2, keep_best: int = 1,
                 async_save: bool = True):
        policies = [ocp.checkpoint_managers.LatestN(keep_last)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["loss"], reverse=True,
                                                          n=keep_best))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _data_args(self, data_iter, restore: bool):
        if data_iter is None:
            return {}
        import grain

        return {"data": (grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave)(
            data_iter)}

    def save(self, step: int, state: Any, data_iter=None, *, loss: Optional[float] = None, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), **self._data_args(data_iter, False))
        metrics = {"loss": float(loss)} if loss is not None and np.isfinite(loss) else None
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` (without ``force``) writes a checkpoint."""
        return self.manager.should_save(step)

    def restore(self, step: int, target: Any, data_iter=None) -> Any:
        """Restore ``state`` into ``target`` (a pytree of ``jax.ShapeDtypeStruct`` with shardings); the data
        iterator's position is restored in place."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), **self._data_args(data_iter, True))
        return self.manager.restore(step, args=args)["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _split_paths(spec) -> list[str]:
    if isinstance(spec, str):
        return [p.strip() for p in spec.split(",") if p.strip()]
    return [str(p) for p in spec if str(p).strip()]


def load_frozen_models(spec, parts: dict, stage: str) -> dict:
    """The frozen models a stage needs, ``{role: (module, variables)}``, from ``spec`` (a flow stage's
    ``vae_checkpoint``): one path or several (a sequence, or one string joined by ","), each anything
    ``jaxshape.models.load`` reads (a training workdir, a saved / converted model, a folder of those).

    ``parts`` = ``{role: model class name}``; every class must be found exactly once among the paths' components
    (e.g. an ``ss_vae`` workdir's ``encoder`` and ``decoder``, or converted ``ss_enc`` and ``ss_dec`` folders)."""
    from jaxshape.models import components, load

    paths = _split_paths(spec)
    want = " and ".join(f"a {cls}" for cls in parts.values())
    if not paths:
        raise FileNotFoundError(f"{stage}: vae_checkpoint is empty; it needs {want}: give the workdir of the "
                                f"trained VAE stage, or the output of `python -m jaxshape.convert`")
    found = {}  # class name -> [(path, component)]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{stage}: vae_checkpoint {p!r} does not exist")
        for name, cls in components(p).items():
            found.setdefault(cls, []).append((p, name))
    out = {}
    for role, cls in parts.items():
        hits = found.get(cls, [])
        if len(hits) != 1:
            held = {f"{p}:{n}": c for c, hs in found.items() for p, n in hs}
            raise ValueError(f"{stage}: vae_checkpoint {spec!r} must hold exactly one {cls} (it needs {want}); "
                             f"found {len(hits)} among its models {held or '(none)'}")
        p, name = hits[0]
        out[role] = load(p, name)
    return out
