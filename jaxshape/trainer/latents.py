"""Pre-encoded latents for the flow stages: encode the dataset once with the frozen VAE (posterior means), keep
the latents (and conditioning fields) in memory and on disk, and iterate over them.

One pass of the VAE encoder per example instead of one per step: for the CPU demo this makes the flow stage
several times faster; at scale it is TRELLIS's own recipe (``encode_ss_latent.py`` writes posterior means).
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from jaxshape.data.iterators import ArrayIterator
from jaxshape.data.sources import make_data_iterator

log = logging.getLogger("jaxshape.train")


def encode_dataset(task, frozen, epoch_iter, keep: tuple, cache: Path) -> dict:
    """``{"latent": [N, ...], <keep fields>}`` from one pass over ``epoch_iter`` (host batches), using
    ``task.latents(frozen, batch)``; written to / read from ``cache`` (an ``.npz``) so a resumed run reuses it."""
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    encode = jax.jit(task.latents)
    out = {k: [] for k in ("latent",) + keep}
    n = 0
    for batch in epoch_iter:
        enc_in = {k: np.asarray(v) for k, v in batch.items() if k in task.encoder_fields}
        out["latent"].append(np.asarray(encode(frozen, enc_in)))
        for k in keep:
            out[k].append(np.asarray(batch[k]))
        n += len(out["latent"][-1])
    if n == 0:
        raise ValueError("pre-encoding saw no examples")
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cache)
    log.info("pre-encoded %d examples -> %s", n, cache)
    return arrays


class ViewDrawingIterator(ArrayIterator):
    """Pre-encoded latents with their conditioning views drawn per step from the records (as the un-encoded path
    draws them: a fresh random view of each example every time it is read), not once at encoding time. The draw of
    slot ``j`` of step ``s`` is seeded by ``(seed, s, j)``, so a resumed iterator (state: the step) repeats it."""

    def __init__(self, arrays: dict, batch_size: int, records, views, *, seed: int = 0, **kwargs):
        from jaxshape.data.records import RecordSource

        arrays = dict(arrays)
        ids = arrays.pop("id")
        self.source = RecordSource(records, keys=("cond_views",))
        where = {m: i for i, m in enumerate(self.source.ids)}
        arrays["record"] = np.asarray([where[str(m)] for m in ids], np.int64)
        self.views = views
        super().__init__(arrays, batch_size, seed=seed, **kwargs)

    def make_batch(self, indices):
        from jaxshape.data.pipeline import draw_views

        out = {k: v[indices] for k, v in self.arrays.items() if k != "record"}
        out["cond_image"] = np.stack([
            draw_views(self.source[int(r)], self.views, np.random.default_rng([self.seed, 0x71E5, self.step, j]))
            for j, r in enumerate(self.arrays["record"][indices])])
        return out


def pre_encoded_iterator(config, task, frozen, workdir: Path) -> ArrayIterator:
    """Encode this process's shard once with the frozen VAE (``frozen``: the task's loaded frozen inputs; cached
    in the workdir) and iterate over the latents and conditioning fields, shuffled per epoch. Image conditioning:
    the latents are kept with their record ids and the views drawn per step (:class:`ViewDrawingIterator`)."""
    from jaxshape.data.sources import records_path

    pi, pc = jax.process_index(), jax.process_count()
    views = task.view_config()
    keep = ("id",) if views is not None else task.cond_fields
    epoch = make_data_iterator(config.data, task.encoder_fields + keep, task.family,
                               process_index=pi, process_count=pc, one_epoch=True)
    arrays = encode_dataset(task, jax.device_put(frozen), epoch, keep, workdir / f"latents_process{pi}-of-{pc}.npz")
    if views is not None:
        return ViewDrawingIterator(arrays, config.data.batch_size // pc, records_path(config.data, task.family),
                                   views, seed=config.data.seed)
    return ArrayIterator(arrays, config.data.batch_size // pc, seed=config.data.seed)
