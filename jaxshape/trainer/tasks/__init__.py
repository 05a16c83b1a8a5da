"""Training tasks: what a stage trains, what it reads from a batch, its loss, its samples and their meshes.

:class:`Task` is the protocol the loop (``jaxshape.trainer.loop.run``) and the sampler CLI (``jaxshape.sample``)
rely on; :class:`FlowTask` adds the hooks every flow stage defines. Stages:

* ``ss_vae``: TRELLIS's sparse-structure VAE (dice + KL);
* ``ss_flow``: TRELLIS's flow DiT on the frozen encoder's posterior means;
* ``vecset_vae``: PartPacker's VAE (MSE + L1 + KL on TSDF queries, the progressive FPS cut-off);
* ``vecset_flow``: PartPacker's DiT on the frozen VAE's posterior means.

Flow stages condition on a class label (a learned table whose last row is the learned null label), on
precomputed feature tokens (``cond_features``; the unconditional value is zeros, as TRELLIS-image) or on
rendered views read by a frozen image encoder inside the step (``cond_image``; zeros after its LayerNorm as
unconditional). A task builds
its modules from the config and reads nothing from disk until :meth:`Task.load_frozen`, which the loop calls once.

To add a stage: subclass :class:`Task` (or :class:`FlowTask`, in ``base.py``), define the abstract methods, add it
to :data:`TASKS` and its name to ``jaxshape.families``, and give it a schema in ``jaxshape/trainer/defaults.py``.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxshape.families import STAGES
from jaxshape.trainer.tasks.base import VECSET_INPUT_KEYS, FlowTask, Task, input_infos
from jaxshape.trainer.tasks.sparse_structure import SSFlowTask, SSVAETask, occupancy_shapes
from jaxshape.trainer.tasks.vecset import VecSetFlowTask, VecSetVAETask, tsdf_shapes

# each family's reference shapes for evaluation, by family name (the stages' `reference_points`)
REFERENCE_POINTS = {t.family: t.reference_points for t in (SSVAETask, VecSetVAETask)}

__all__ = ["STAGES", "TASKS", "VECSET_INPUT_KEYS", "FlowTask", "SSFlowTask", "SSVAETask", "Task", "VecSetFlowTask",
           "VecSetVAETask", "abstract", "input_infos", "make_task", "occupancy_shapes", "tsdf_shapes"]

TASKS: dict[str, type[Task]] = {t.stage: t for t in (SSVAETask, SSFlowTask, VecSetVAETask, VecSetFlowTask)}
assert tuple(TASKS) == STAGES


def make_task(config) -> Task:
    if config.stage not in TASKS:
        raise ValueError(f"stage must be one of {STAGES}, got {config.stage!r}")
    return TASKS[config.stage](config)


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves of a pytree of arrays."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), getattr(a, "dtype", None) or np.asarray(a).dtype),
                        tree)

