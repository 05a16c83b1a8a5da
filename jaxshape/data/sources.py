"""A training stage's data source, built from its ``config.data`` block (``jaxshape/trainer/defaults.py``).

``data.source``:

* ``"embedded"``: the procedural set (``jaxshape.data.procedural``), prepared on first use into the cache at the
  sizes ``data.resolution`` / ``data.points`` / ``data.num_shapes``, then read like records;
* ``"records"``: a folder written by ``python -m jaxshape.data.prepare`` (``data.path``), read with grain
  (``jaxshape.data.pipeline``), augmented, batched and prefetched into device memory;
* ``"synthetic"``: exact spheres and boxes (``jaxshape.data.synthetic``), for tests and smoke runs.

Every source yields this process's share of the global batch (``data.batch_size / process_count`` examples) and
follows grain's checkpoint protocol, so the trainer saves its position with the state.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

SOURCES = ("embedded", "records", "synthetic")


def records_path(data, family: str) -> str:
    """The prepared-records folder of ``data``: ``data.path``, or the embedded set's cache (built on first use)."""
    if data.source == "embedded":
        from .prepare import embedded_records

        return embedded_records(data.num_shapes, targets=(family,), resolution=data.resolution, points=data.points,
                                seed=data.seed, views=data.views, view_size=data.view_size,
                                parts=data.parts)
    if not data.path:
        raise ValueError("data.path must name a folder written by `python -m jaxshape.data.prepare` when "
                         "data.source='records'")
    return data.path


def augment_config(data):
    """``data.augment`` as the pipeline's :class:`jaxshape.data.pipeline.AugmentConfig`."""
    from .pipeline import AugmentConfig

    a = data.augment
    return AugmentConfig(mirror_p=a.mirror_p, rotate=a.rotate or None, occupancy_flips=a.occupancy_flips)


def synthetic_holdout_count(data) -> int:
    """Held-out synthetic examples: indices ``num_examples ..`` (never trained on), ``holdout`` of the set."""
    return max(1, round(data.holdout * data.num_examples))


def _synthetic_epoch(data, fields, process_index: int, process_count: int, split: str) -> Iterator[dict]:
    from .synthetic import synthetic_example

    lo, hi = (data.num_examples, data.num_examples + synthetic_holdout_count(data)) if split == "holdout" \
        else (0, data.num_examples)
    idx = list(range(lo + process_index, hi, process_count))
    local = data.batch_size // process_count
    for i in range(0, len(idx), local):
        exs = [synthetic_example(j, data.seed, **dict(data.synthetic)) for j in idx[i:i + local]]
        yield {k: np.stack([e[k] for e in exs]) for k in fields}


def make_data_iterator(data, fields: Sequence[str], family: str, *, process_index: int, process_count: int,
                       one_epoch: bool = False, sharding=None, split: str = "train", num_queries=None, views=None):
    """This process's iterator over the stage's data.

    Args:
      data: the stage's ``config.data`` block.
      fields: the batch fields to read.
      family: the stage's family (``jaxshape.families``): which targets an embedded set is prepared with.
      process_index, process_count: this process's slice of every global batch.
      one_epoch: a single ordered pass over this process's shard, no augmentation, the last batch possibly short
        (for pre-encoding or sampling); otherwise an endless shuffled, augmented, checkpointable iterator.
      sharding: with records, batches are prefetched into device memory with this (global-batch) sharding.
      split: ``"train"`` (everything outside the held-out split ``data.holdout``) or ``"holdout"`` (evaluation:
        the shapes whose id hashes into the held-out fraction; synthetic: fresh indices past ``num_examples``).
      num_queries: overrides ``data.num_queries`` (vecset ``(volume, near, sharp)`` queries per example).
      views: how the records' rendered views become ``cond_image`` (``jaxshape.data.pipeline.ViewConfig``).

    Returns:
      An iterator of ``{field: array [local batch, ...]}``; the endless one has ``get_state`` / ``set_state``.
    """
    if data.source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    fields = tuple(fields)
    if split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    if split == "holdout" and not data.holdout > 0:
        raise ValueError("evaluating on held-out shapes needs data.holdout > 0 (the fraction of shapes kept out of "
                         "training)")
    if data.source == "synthetic":
        if "cond_image" in fields:
            raise ValueError("data.source='synthetic' has no rendered views for cond.kind='image': use records "
                             "prepared with views (python -m jaxshape.data.prepare --views N)")
        if one_epoch:
            return _synthetic_epoch(data, fields, process_index, process_count, split)
        if split == "holdout":
            raise ValueError("the held-out split is read one epoch at a time (one_epoch=True)")
        from .synthetic import SyntheticIterator

        return SyntheticIterator(data.batch_size, num_examples=data.num_examples, seed=data.seed,
                                 process_index=process_index, process_count=process_count, fields=set(fields),
                                 **dict(data.synthetic))
    if "cond_image" in fields and data.source == "embedded" and not data.views:
        raise ValueError("cond.kind='image' on the embedded set needs data.views > 0 (conditioning views rendered "
                         "per shape)")
    from .pipeline import DeviceIterator, make_dataset

    nq = num_queries if num_queries is not None else data.num_queries
    nq: Optional[tuple] = tuple(nq) if nq else None
    ds = make_dataset(records_path(data, family), data.batch_size // process_count, keys=fields, seed=data.seed,
                      shuffle=data.shuffle and not one_epoch, process_index=process_index,
                      process_count=process_count, num_queries=nq, augment=None if one_epoch else augment_config(data),
                      worker_count=data.worker_count, num_epochs=1 if one_epoch else None,
                      drop_remainder=not one_epoch, split="all" if not data.holdout else split,
                      holdout=data.holdout, views=views, count_skipped=not one_epoch)
    if one_epoch:
        return iter(ds)
    return DeviceIterator(ds, sharding=sharding, buffer_size=data.prefetch)
