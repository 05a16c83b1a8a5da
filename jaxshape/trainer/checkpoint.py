"""Orbax checkpoints of the train state and the data iterator (one wrapper, so the v1 API can be swapped in).

Layout: ``<workdir>/checkpoints/<step>/{state, data}``. Saves are asynchronous; every ``every`` steps and at the
end; the last ``keep_last`` and the ``keep_best`` lowest-loss checkpoints are kept. Restores go straight into the
target shardings (so a run can resume on a mesh of another size). The data iterator is saved with grain's handler
(one file per process): grain iterators, and any iterator with ``get_state() -> bytes``, ``set_state(bytes)`` and
``start_prefetch()`` (jaxshape's ``DeviceIterator`` and ``SyntheticIterator``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import jax
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


def restore_params(directory: str | Path, use_ema: bool = True, step: Optional[int] = None):
    """Params (EMA by default) of a training checkpoint directory as host numpy arrays, without a target."""
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    params = state["ema_params"] if use_ema else state["params"]
    return jax.tree.map(np.asarray, params)
