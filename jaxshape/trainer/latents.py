"""Pre-encoded latents for the flow stages: encode the dataset once with the frozen VAE (posterior means), keep
the latents (and conditioning fields) in memory and on disk, and iterate over them.

One pass of the VAE encoder per example instead of one per step: for the CPU demo this makes the flow stage
several times faster; at scale it is TRELLIS's own recipe (``encode_ss_latent.py`` writes posterior means).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger("jaxshape.train")


class ArrayIterator:
    """Batches of in-memory arrays (leading axis = examples), reshuffled each epoch from ``seed``; this process's
    slice of every global batch; grain's checkpoint protocol (``get_state``/``set_state`` bytes)."""

    def __init__(self, arrays: dict, batch_size: int, *, seed: int = 0, shuffle: bool = True, process_index: int = 0,
                 process_count: int = 1):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} must be divisible by the process count {process_count}")
        if self.n < batch_size // process_count:
            raise ValueError(f"{self.n} pre-encoded examples < the per-process batch {batch_size // process_count}")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        local = self.batch_size // self.process_count
        start = self.step * self.batch_size + self.process_index * local
        idx = []
        for g in range(start, start + local):
            epoch, pos = divmod(g, self.n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
            idx.append(perm[pos])
        self.step += 1
        return {k: v[np.asarray(idx)] for k, v in self.arrays.items()}

    def get_state(self) -> bytes:
        return json.dumps({"step": self.step}).encode()

    def set_state(self, state) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = json.loads(state.decode())
        self.step = int(state["step"])

    def start_prefetch(self) -> None:
        pass


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
