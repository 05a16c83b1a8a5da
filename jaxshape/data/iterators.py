"""In-memory/indexed batch iterators with grain's checkpoint protocol (``get_state() -> bytes``, ``set_state``,
``start_prefetch``), so the trainer saves them with grain's Orbax handler like any grain iterator."""
from __future__ import annotations

import json

import numpy as np


class EpochShuffledIterator:
    """Global batches over ``num_examples`` indexed examples: every epoch is a fresh permutation drawn from
    ``(seed, epoch)``; this process gets its contiguous slice of each global batch. Subclasses define
    :meth:`make_batch` (indices -> dict of stacked arrays)."""

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} must be divisible by the process count {process_count}")
        if num_examples < batch_size // process_count:
            raise ValueError(f"{num_examples} examples < the per-process batch {batch_size // process_count}")
        self.num_examples, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.step = 0

    def make_batch(self, indices: np.ndarray) -> dict:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        local = self.batch_size // self.process_count
        start = self.step * self.batch_size + self.process_index * local
        idx = []
        for g in range(start, start + local):
            epoch, pos = divmod(g, self.num_examples)
            if self.shuffle:
                idx.append(np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)[pos])
            else:
                idx.append(pos)
        self.step += 1
        return self.make_batch(np.asarray(idx))

    def get_state(self) -> bytes:
        return json.dumps({"step": self.step}).encode()

    def set_state(self, state) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = json.loads(state.decode())
        self.step = int(state["step"])

    def start_prefetch(self) -> None:
        pass


class ArrayIterator(EpochShuffledIterator):
    """Batches of in-memory arrays (leading axis = examples)."""

    def __init__(self, arrays: dict, batch_size: int, **kwargs):
        self.arrays = arrays
        super().__init__(len(next(iter(arrays.values()))), batch_size, **kwargs)

    def make_batch(self, indices):
        return {k: v[indices] for k, v in self.arrays.items()}
