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


def pre_encoded_iterator(config, task, frozen, workdir: Path) -> ArrayIterator:
    """Encode this process's shard once with the frozen VAE (``frozen``: the task's loaded frozen inputs; cached
    in the workdir) and iterate over the latents and conditioning fields, shuffled per epoch."""
    pi, pc = jax.process_index(), jax.process_count()
    # (image conditioning: the views are drawn once per example here, not per step)
    epoch = make_data_iterator(config.data, task.encoder_fields + task.cond_fields, task.family,
                               process_index=pi, process_count=pc, one_epoch=True, views=task.view_config())
    arrays = encode_dataset(task, jax.device_put(frozen), epoch, task.cond_fields,
                            workdir / f"latents_process{pi}-of-{pc}.npz")
    return ArrayIterator(arrays, config.data.batch_size // pc, seed=config.data.seed)
