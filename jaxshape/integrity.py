"""What storage gives back, checked: checksums of pytrees that do not depend on the sharding
(:func:`tree_checksums`; the integrity record of every training checkpoint, ``jaxshape.trainer.checkpoint``, and
``jaxshape.models.store.read_train_params`` compare them), and the quieting of Orbax's leftovers after a failed read
(:func:`quiet_failed_reads`)."""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def leaf_path(path) -> str:
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
    paths = [leaf_path(p) for p, _ in flat]
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
def quiet_failed_reads():
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


def first_line(e: BaseException, directory=None) -> str:
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
