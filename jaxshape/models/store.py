"""The front door for weights: ``save(path, module, variables)`` and ``load(path) -> (module, variables)``.

``load`` reads every layout jaxshape writes:

* a **saved model** (``save``, or ``python -m jaxshape.convert`` of an official checkpoint): ``model.json``
  (``{"name": class, "args": constructor args}``) and an Orbax ``variables/`` folder;
* a **training workdir** (``python -m jaxshape.train``): ``models.json`` (the stage's modules, each with the key of
  its parameters in the train state) and Orbax ``checkpoints/<step>/state``; the EMA or the raw parameters of any
  step (default: the EMA of the newest). Non-trainable collections (TRELLIS's ``pos_emb`` buffer) are rebuilt
  from the module, as at training time;
* a **folder of those** (e.g. converted ``ss_enc/`` and ``ss_dec/``, or a pipeline workdir with ``ss_vae/`` and
  ``ss_flow/``): its components are named after the subfolders (``ss_enc``, ``ss_vae/encoder``, ...).

``which`` picks a component by name or class name when a path holds several.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxshape.models.registry import build, model_spec

log = logging.getLogger("jaxshape.models")

MODEL_FILE = "model.json"  # a saved model: its spec
VARIABLES_DIR = "variables"  # a saved model: Orbax tree of {"params": ..., other collections}
WORKDIR_MODELS_FILE = "models.json"  # a training workdir: {component: {"name", "args", "params"}}
CHECKPOINTS_DIR = "checkpoints"  # a training workdir: Orbax CheckpointManager root (<step>/state)


def save(path: str | Path, module: nn.Module, variables: Any) -> Path:
    """Write ``module`` and ``variables`` (``{"params": ..., ...}``) to the new folder ``path``; refuses to
    overwrite. ``load(path)`` returns an equal module and the same variables."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite a saved model")
    spec = model_spec(module)
    path.mkdir(parents=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / VARIABLES_DIR, nn.meta.unbox(variables))
        ckptr.wait_until_finished()
    (path / MODEL_FILE).write_text(json.dumps(spec, indent=2))
    return path


def write_workdir_models(workdir: str | Path, modules: dict) -> None:
    """Record a training stage's modules (``{params key: module}``) in its workdir, for :func:`load`."""
    specs = {k: dict(model_spec(m), params=k) for k, m in modules.items()}
    Path(workdir, WORKDIR_MODELS_FILE).write_text(json.dumps(specs, indent=2))


def non_param_collections(module: nn.Module) -> dict:
    """The module's non-trainable collections (e.g. ``buffers``), computed as ``init`` does; parameters are not
    materialised (XLA drops their initialisers)."""
    from jaxshape.convert.state_dict import abstract_variables

    if set(abstract_variables(module)) <= {"params"}:
        return {}
    inputs = module.example_inputs()
    method = getattr(module, "init_method", None)

    def others():
        zeros = [jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s for s in inputs]
        kw = {} if method is None else {"method": method}
        v = module.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, *zeros, **kw)
        return {k: c for k, c in nn.meta.unbox(v).items() if k != "params"}

    return jax.device_get(jax.jit(others)())


def checkpoint_steps(checkpoints: str | Path) -> list[int]:
    """The steps saved in a training checkpoint directory, oldest first."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(Path(checkpoints).absolute()) as mngr:
        return sorted(mngr.all_steps())


def read_train_params(checkpoints: str | Path, *, step: Optional[int] = None, ema: bool = True,
                      return_step: bool = False) -> Any:
    """The EMA (or raw) parameters of one step of a training checkpoint directory, as host arrays; only that
    subtree is read (not the optimiser state), and checked against the step's integrity record (the checksums
    ``jaxshape.trainer.checkpoint`` writes; older checkpoints have none). ``step=None``: the newest step that reads
    back as written (a newer one that does not is skipped with a warning naming it and why, and left in place); a
    given step that does not is an error. ``return_step``: ``(step, params)``."""
    checkpoints = Path(checkpoints).absolute()
    steps = checkpoint_steps(checkpoints)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoints}")
    if step is not None and int(step) not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {checkpoints}; steps: {steps}")
    key = "ema_params" if ema else "params"
    quiet = _DropMessages("Metadata file does not exist")  # the state item has no checkpoint-level metadata file
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(quiet)
    try:
        for s in [int(step)] if step is not None else steps[::-1]:
            problem, params = _checked_subtree(checkpoints / str(s), key)
            if problem is None:
                return (s, params) if return_step else params
            if step is not None:
                raise ValueError(f"checkpoint step {s} in {checkpoints}: its {key} {problem}")
            log.warning("checkpoint step %d in %s: its %s %s; reading the step before", s, checkpoints, key, problem)
    finally:
        absl_logger.removeFilter(quiet)
    raise FileNotFoundError(f"no checkpoint in {checkpoints} whose {key} read back as written (steps: {steps})")


def _checked_subtree(step_dir: Path, key: str) -> tuple[Optional[str], Any]:
    """``(None, state[key])`` of one step when it reads back as its integrity record says, else ``(why, None)``."""
    from jaxshape.integrity import first_line, quiet_failed_reads, tree_checksums

    with quiet_failed_reads():
        try:
            params = _read_subtree(step_dir / "state", key)
        except Exception as e:  # noqa: BLE001 -- any read failure makes the step unusable
            return f"cannot be read ({first_line(e, step_dir.parent)})", None
    record_file = step_dir / "integrity" / "metadata"
    if not record_file.exists():
        return None, params  # written before integrity records existed
    try:
        want = {r["path"]: (r["sum"], r["wsum"], r["nonfinite"])
                for r in json.loads(record_file.read_text())["leaves"] if r["path"].startswith(key + "/")}
    except (ValueError, KeyError, TypeError) as e:
        return f"cannot be checked: its integrity record is unreadable ({type(e).__name__}: {e})", None
    got = {f"{key}/{r['path']}": (r["sum"], r["wsum"], r["nonfinite"]) for r in tree_checksums(params, on_host=True)}
    diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if diff:
        return f"read back unlike what was written ({diff[0]}" + (f" and {len(diff) - 1} more)" if len(diff) > 1
                                                                   else ")"), None
    return None, params


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _read_subtree(state_dir: Path, key: str) -> Any:
    """``state[key]`` of an Orbax PyTree checkpoint as numpy arrays, reading only that subtree."""
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
        item = {key: jax.tree.map(lambda m: np.zeros((), m.dtype), tree[key])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        out = ckptr.restore(state_dir,
                            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    return out[key]


def _cast(variables: Any, param_dtype: Optional[str]) -> Any:
    if param_dtype is None:
        return variables
    return {k: (jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(param_dtype)), v) if k == "params" else v)
            for k, v in variables.items()}


def _saved_model(path: Path) -> tuple[str, Callable]:
    spec = json.loads((path / MODEL_FILE).read_text())

    def loader(ema, step, overrides):
        import orbax.checkpoint as ocp

        module = build(spec["name"], spec["args"], **overrides)
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(path / VARIABLES_DIR)
        return module, variables

    return spec["name"], loader


def _workdir_models(path: Path) -> dict[str, tuple[str, Callable]]:
    specs = json.loads((path / WORKDIR_MODELS_FILE).read_text())
    out = {}
    for component, spec in specs.items():
        def loader(ema, step, overrides, spec=spec):
            module = build(spec["name"], spec["args"], **overrides)
            params = read_train_params(path / CHECKPOINTS_DIR, step=step, ema=ema)[spec["params"]]
            return module, {"params": params, **non_param_collections(module)}

        out[component] = (spec["name"], loader)
    return out


def _components(path: Path, depth: int = 1) -> dict[str, tuple[str, Callable]]:
    """``{name: (class name, loader)}`` of everything loadable at ``path`` (itself or its subfolders)."""
    if (path / MODEL_FILE).is_file():
        return {"model": _saved_model(path)}
    if (path / WORKDIR_MODELS_FILE).is_file():
        return _workdir_models(path)
    out = {}
    if depth > 0 and path.is_dir():
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            found = _components(sub, depth - 1)
            if list(found) == ["model"]:
                out[sub.name] = found["model"]
            else:
                out.update({f"{sub.name}/{k}": v for k, v in found.items()})
    return out


def components(path: str | Path) -> dict[str, str]:
    """``{component name: class name}`` of what :func:`load` can read at ``path``."""
    return {k: cls for k, (cls, _) in _components(Path(path).absolute()).items()}


def load(path: str | Path, which: Optional[str] = None, *, step: Optional[int] = None, ema: bool = True,
         param_dtype: Optional[str] = None, **overrides) -> tuple[nn.Module, dict]:
    """``(module, variables)`` of a saved / converted model, a training workdir, or a folder of those.

    Args:
      path: see the module docstring.
      which: the component when ``path`` holds several: its name (``"decoder"``, ``"ss_vae/encoder"``) or its
        class name (``"SparseStructureDecoder"``) if that is unique.
      step, ema: training workdirs only: the checkpoint step (``None``: newest) and EMA (default) or raw params.
      param_dtype: cast the parameters (e.g. ``"bfloat16"``).
      **overrides: constructor overrides of the module (e.g. ``dtype=jnp.bfloat16``, ``attention_impl="xla"``).

    Returns:
      The module and its variables (``{"params": ..., "buffers": ...}``), ready for ``module.apply``.
    """
    path = Path(path).absolute()
    found = _components(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no jaxshape model: expected {MODEL_FILE} (a saved or converted "
                                f"model), {WORKDIR_MODELS_FILE} + {CHECKPOINTS_DIR}/ (a training workdir), or "
                                f"subfolders holding those")
    if which is None:
        if len(found) > 1:
            raise ValueError(f"{path} holds several models {components(path)}; pick one with which=")
        which = next(iter(found))
    if which not in found:
        by_class = [k for k, (cls, _) in found.items() if cls == which]
        if len(by_class) != 1:
            raise ValueError(f"{path} has no single component {which!r}; it holds {components(path)}")
        which = by_class[0]
    module, variables = found[which][1](ema, step, overrides)
    return module, _cast(variables, param_dtype)


def load_all(path: str | Path, **kwargs) -> dict[str, tuple[nn.Module, dict]]:
    """Every component of ``path``: ``{name: (module, variables)}`` (keyword arguments as :func:`load`)."""
    return {k: load(path, k, **kwargs) for k in components(path)}
