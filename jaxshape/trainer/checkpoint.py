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

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxshape.integrity import first_line as _first_line
from jaxshape.integrity import leaf_path as _leaf_path
from jaxshape.integrity import quiet_failed_reads, tree_checksums

log = logging.getLogger("jaxshape.train")

INTEGRITY_FORMAT = 1
BAD_DIR = "bad"  # checkpoints/bad/<step>-<reason>: steps that failed their checks, kept for inspection


class CheckpointMismatch(ValueError):
    """The newest checkpoint holds a state of another structure than the configured one (the config changed)."""


class NoGoodCheckpoint(RuntimeError):
    """Every checkpoint of the directory failed its checks (each was moved to ``checkpoints/bad``)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, permissions, a vanished directory); earlier steps are intact."""


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
            with quiet_failed_reads():
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
