"""Orbax checkpoints of the train state and the data iterator (one wrapper, so the v1 API can be swapped in).

Layout: ``<workdir>/checkpoints/<step>/{state, data, integrity}``. Saves are asynchronous; every ``every`` steps, at
the end and on preemption; the last ``keep_last`` and the ``keep_best`` lowest-loss checkpoints are kept. Restores go
straight into the target shardings (so a run can resume on a mesh of another size). The data iterator is saved with
grain's handler (one file per process): grain iterators, and any iterator with ``get_state() -> bytes``,
``set_state(bytes)`` and ``start_prefetch()`` (jaxshape's ``DeviceIterator`` and ``SyntheticIterator``).

**Integrity.** Each checkpoint carries an ``integrity`` record (JSON): per leaf of the state its path, shape, dtype,
two position-weighted 32-bit sums of its bits (:func:`tree_checksums`; independent of the sharding) and its count of
non-finite values, and a SHA-256 of every process's data-iterator state. :meth:`Checkpointer.restore_newest` reads
the newest step, checks what was read against the record, and on any failure (a file missing, truncated or flipped,
a sum or a data digest that differs) moves the step to ``checkpoints/bad/<step>-<reason>`` (never deleted), logs
one line naming the step and the reason, and tries the step before; every process agrees on each verdict.

Reading parameters back without a train state: ``jaxshape.models.store.read_train_params`` (and
``jaxshape.models.load`` for whole modules); :func:`load_frozen_models` reads a flow stage's frozen VAE.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxshape.train")

INTEGRITY_FORMAT = 1
BAD_DIR = "bad"  # checkpoints/bad/<step>-<reason>: steps that failed their checks, kept for inspection


class CheckpointMismatch(ValueError):
    """The newest checkpoint holds a state of another structure than the configured one (the config changed)."""


class NoGoodCheckpoint(RuntimeError):
    """Every checkpoint of the directory failed its checks (each was moved to ``checkpoints/bad``)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, permissions, a vanished directory); earlier steps are intact."""


# ---- checksums: two position-weighted 32-bit sums of each leaf's bits, equal on the host and on the devices

def _leaf_path(path) -> str:
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _np_words(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return x.astype(np.uint32).ravel()
    size = x.dtype.itemsize
    if size in (1, 2):
        return x.view(np.uint8 if size == 1 else np.uint16).astype(np.uint32).ravel()
    return x.view(np.uint32).ravel()  # 4 bytes: one word; 8 bytes: two words per element, low word first


def _jnp_words(x) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    size = x.dtype.itemsize
    if size in (1, 2):
        return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32).ravel()
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()


def _np_leaf_sums(x: np.ndarray) -> tuple[int, int, int]:
    w = _np_words(x)
    pos = np.arange(1, w.size + 1, dtype=np.uint64).astype(np.uint32)
    nonfinite = int(np.sum(~np.isfinite(x))) if np.issubdtype(x.dtype, np.inexact) or x.dtype.kind == "V" else 0
    return int(np.sum(w, dtype=np.uint32)), int(np.sum(w * pos, dtype=np.uint32)), nonfinite


@jax.jit
def _device_sums(leaves):
    out = []
    for x in leaves:
        w = _jnp_words(x)
        pos = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
        bad = jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.int32(0)
        out.append((jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * pos, dtype=jnp.uint32), bad))
    return out


def tree_checksums(tree, *, on_host: Optional[bool] = None) -> list[dict]:
    """``[{"path", "shape", "dtype", "sum", "wsum", "nonfinite"}]`` per leaf of ``tree``: ``sum`` = the leaf's
    32-bit words summed mod 2^32, ``wsum`` = the words weighted by their 1-based flat position, summed mod 2^32
    (a changed bit changes ``sum``; swapped elements change ``wsum``). PRNG keys are summed as their key data.

    ``on_host`` (default: single-process CPU) sums NumPy copies; otherwise one jitted program sums on the devices
    (no host copy of a sharded state). Both give the same numbers for any sharding."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [_leaf_path(p) for p, _ in flat]
    leaves = [jax.random.key_data(x) if _is_key(x) else x for _, x in flat]
    if on_host is None:
        on_host = jax.process_count() == 1 and all(
            not isinstance(x, jax.Array) or all(d.platform == "cpu" for d in x.devices()) for x in leaves)
    if on_host:
        sums = [_np_leaf_sums(np.asarray(x)) for x in leaves]
    else:
        sums = [tuple(int(np.asarray(v.addressable_data(0)) if isinstance(v, jax.Array) else v) for v in s)
                for s in _device_sums(leaves)]
    return [{"path": p, "shape": list(np.shape(x)), "dtype": str(x.dtype), "sum": s, "wsum": w, "nonfinite": n}
            for p, (_, x), (s, w, n) in zip(paths, flat, sums)]


def _structure(tree) -> list[tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(_leaf_path(p), list(x.shape), str(x.dtype)) for p, x in flat]


# ---- agreement between processes

def all_processes(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a collective in multi-process runs)."""
    if jax.process_count() == 1:
        return bool(ok)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _data_digest(data_iter) -> str:
    state = data_iter.get_state()
    raw = state if isinstance(state, (bytes, bytearray)) else json.dumps(state, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


def _all_digests(digest: str) -> list[str]:
    if jax.process_count() == 1:
        return [digest]
    from jax.experimental import multihost_utils

    got = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(digest), np.uint8))
    return [bytes(np.asarray(row, np.uint8)).hex() for row in np.asarray(got).reshape(jax.process_count(), -1)]


def _first_line(e: BaseException, directory=None) -> str:
    """The innermost cause of ``e`` in one line, without tensorstore's JSON spec (paths under ``directory``
    relative to it)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\s*\[source locations=.*", "", text)
    text = re.sub(r"\s*\{.*\}\s*$", "", text)
    text = re.sub(r'Error opening "\w+" driver: ', "", text)  # tensorstore's chain of drivers
    if directory is not None:
        text = text.replace(f"{directory}/", "").replace(str(directory), ".")
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 500 else f"{text[:250]} ... {text[-240:]}"  # the OS error is at the end


_NOISE = ("Event loop is closed", "exception was never retrieved", "was never awaited",
          "Encountered error while reading array index")


class _DropNoise(logging.Filter):
    def filter(self, record):
        return not any(n in record.getMessage() for n in _NOISE)


def _quiet_unraisable(unraisable, _prev=sys.unraisablehook):
    text = f"{unraisable.exc_value!r} {unraisable.err_msg}"
    abandoned = getattr(getattr(unraisable.object, "cr_code", None), "co_filename", "")
    if not (any(n in text for n in _NOISE) or "orbax" in abandoned or "tensorstore" in abandoned):
        _prev(unraisable)


@contextlib.contextmanager
def _quiet_failed_reads():
    """Orbax and tensorstore leave coroutines and closed event loops behind a failed read; their thousands of
    "Event loop is closed" / "Task exception was never retrieved" / abandoned-coroutine lines are dropped (from
    then on: they surface whenever the garbage collector finds the leftovers)."""
    if sys.unraisablehook is not _quiet_unraisable:
        _quiet_unraisable.__defaults__ = (sys.unraisablehook,)
        sys.unraisablehook = _quiet_unraisable
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropNoise())
    yield


class Checkpointer:
    def __init__(self, directory: str | Path, *, every: int, keep_last: int = 2, keep_best: int = 1,
                 async_save: bool = True):
        policies = [ocp.checkpoint_managers.LatestN(keep_last)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["loss"], reverse=True,
                                                          n=keep_best))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
        )
        self.every = every
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _data_args(self, data_iter, restore: bool):
        if data_iter is None:
            return {}
        import grain

        return {"data": (grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave)(
            data_iter)}

    def integrity_record(self, step: int, state: Any, data_iter=None) -> dict:
        return {"format": INTEGRITY_FORMAT, "step": int(step), "leaves": tree_checksums(state),
                "data": _all_digests(_data_digest(data_iter)) if data_iter is not None else None}

    def save(self, step: int, state: Any, data_iter=None, *, loss: Optional[float] = None) -> bool:
        """Write step ``step`` (asynchronously); a failure raises :class:`CheckpointWriteError`."""
        record = self.integrity_record(step, state, data_iter)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), integrity=ocp.args.JsonSave(record),
                                  **self._data_args(data_iter, False))
        metrics = {"loss": float(loss)} if loss is not None and np.isfinite(loss) else None
        self.wait()  # the previous asynchronous save: its failure is reported as its own step's
        try:
            saved = self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:
            raise self._write_error(step, e) from e
        self._pending = step
        return saved

    _pending: Optional[int] = None  # the step of the asynchronous save in flight

    def _write_error(self, step, e) -> CheckpointWriteError:
        try:
            intact = sorted(s for s in self.manager.all_steps() if s != step)
        except Exception:  # noqa: BLE001 -- the listing itself may fail on a broken disk
            intact = "unknown"
        return CheckpointWriteError(f"writing checkpoint step {step} under {self.directory} failed "
                                    f"({_first_line(e, self.directory)}); the checkpoints written before it are "
                                    f"intact (steps: {intact})")

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is on the ``every``-step interval."""
        return step % self.every == 0

    def restore(self, step: int, target: Any, data_iter=None) -> Any:
        """Restore ``state`` of ``step`` into ``target`` (a pytree of ``jax.ShapeDtypeStruct`` with shardings),
        unchecked; the data iterator's position is restored in place. Resuming uses :meth:`restore_newest`."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), **self._data_args(data_iter, True))
        return self.manager.restore(step, args=args)["state"]

    # ---- the checked restore

    def _read_record(self, step: int) -> Optional[dict]:
        if not (self.directory / str(step) / "integrity").exists():
            return None  # written before integrity records existed
        return self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))["integrity"]

    def _check(self, step: int, target: Any, data_iter) -> tuple[Optional[tuple[str, str]], Any]:
        """``(None, state)`` when step ``step`` reads back as it was written, else ``((kind, reason), None)``; raises
        :class:`CheckpointMismatch` when it holds another structure than ``target``."""
        try:
            record = self._read_record(step)
        except Exception as e:  # noqa: BLE001
            return ("record-unreadable", f"integrity record unreadable: {_first_line(e, self.directory)}"), None
        if record is not None:
            want = _structure(target)
            have = [(r["path"], list(r["shape"]), r["dtype"]) for r in record["leaves"]]
            if want != have:
                diff = [f"{w} here, {h} in the checkpoint" for w, h in zip(want, have) if w != h][:5]
                if len(want) != len(have):
                    diff.append(f"{len(want)} leaves here, {len(have)} in the checkpoint")
                raise CheckpointMismatch(
                    f"checkpoint step {step} in {self.directory} holds a state of another structure than the "
                    f"configured model (the config changed?): " + "; ".join(diff) + ". Train in a new workdir, "
                    "or start from it with init_from.")
        try:
            state = self.restore(step, target, data_iter)
        except Exception as e:  # noqa: BLE001 -- any read failure makes the step unusable
            return ("read-failed", f"read failed: {_first_line(e, self.directory)}"), None
        got = tree_checksums(state)
        if record is None:
            bad = [g["path"] for g in got if g["nonfinite"]]
            return (("nonfinite", f"non-finite values in {bad[0]}") if bad else None), (None if bad else state)
        for r, g in zip(record["leaves"], got):
            if (r["sum"], r["wsum"], r["nonfinite"]) != (g["sum"], g["wsum"], g["nonfinite"]):
                return ("checksum", f"{r['path']} reads back unlike what was written (checksum)"), None
        if data_iter is not None and record.get("data") is not None:
            digests = record["data"]
            i = jax.process_index()
            if len(digests) != jax.process_count():
                return ("data-state", f"data-iterator state saved by {len(digests)} processes, resumed with "
                        f"{jax.process_count()}"), None
            if digests[i] != _data_digest(data_iter):
                return ("data-state", f"data-iterator state of process {i} reads back unlike what was written"), None
        return None, state

    def _set_aside(self, step: int, kind: str) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")[:48] or "bad"
        dest = self.directory / BAD_DIR / f"{step}-{slug}"
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            n = 1
            while dest.exists():
                n += 1
                dest = dest.with_name(f"{step}-{slug}-{n}")
            (self.directory / str(step)).rename(dest)
        _barrier(f"jaxshape:set_aside:{step}")
        self.manager.reload()
        return dest

    def restore_newest(self, target: Any, data_iter=None) -> tuple[Optional[int], Any]:
        """``(step, state)`` of the newest checkpoint that reads back exactly as written, or ``(None, None)``
        when the directory holds none. Unusable steps are moved to ``checkpoints/bad/`` with a log line each;
        :class:`NoGoodCheckpoint` when none is left, :class:`CheckpointMismatch` when the config changed."""
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        folders = sorted(self.directory.glob("[0-9]*")) if self.directory.exists() else []
        _barrier("jaxshape:restore_newest")  # every process listed the same steps before any is moved
        for p in folders:
            if p.name.isdigit() and int(p.name) not in steps:  # a step folder Orbax does not list as finished
                dest = self._set_aside(int(p.name), "unfinished")
                log.warning("checkpoint step %s is not a finished checkpoint; moved it to %s", p.name, dest)
        for i, step in enumerate(steps):
            with _quiet_failed_reads():
                reason, state = self._check(step, target, data_iter)
            if all_processes(reason is None):
                return step, state
            kind, reason = reason or ("other-process", "another process found it unusable")
            dest = self._set_aside(step, kind)
            after = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no checkpoint is left"
            log.warning("checkpoint step %d is unusable (%s); moved it to %s; %s", step, reason, dest, after)
        if steps:
            raise NoGoodCheckpoint(f"no usable checkpoint in {self.directory}: every step ({sorted(steps)}) failed "
                                   f"its checks and was moved to {self.directory / BAD_DIR}; to start over, use a "
                                   f"new workdir (the bad steps are kept for inspection)")
        return None, None

    def wait(self) -> None:
        """Block until the pending asynchronous save is written; a failure raises :class:`CheckpointWriteError`."""
        pending, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(pending, e) from e

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the pending save and close; ``quiet``: an error is logged, not raised (another one is being
        raised already)."""
        try:
            self.wait()
            self.manager.close()
        except Exception as e:
            if not quiet:
                raise
            log.warning("closing the checkpoint manager of %s: %s", self.directory, _first_line(e, self.directory))


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
