"""Record format: one msgpack map per mesh (numpy arrays as {dtype, shape, bytes}) inside ArrayRecord shards.

Dataset directory layout (written by ``jaxshape.data.prepare``)::

    OUT/config.json          target config + seed (a re-run with another config refuses to mix)
    OUT/manifest.jsonl       one row per input: id, source, status (ok|error), reason, stats
    OUT/shards.jsonl         one row per finished shard: {"shard": name, "ids": [...]}
    OUT/shard-XXXXX.array_record
    OUT/pending/<id>.rec     finished examples not yet packed into a shard (durable; packed on the next flush)
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import msgpack
import numpy as np

__all__ = ["encode_example", "decode_example", "write_shard", "read_shard_index", "RecordSource", "list_shards",
           "PROBLEM"]

PROBLEM = "_problem"  # the key of an example that cannot be used: {PROBLEM: reason, "id": id}


def _enc(x):
    if isinstance(x, np.ndarray):
        return {"__nd__": True, "dtype": x.dtype.str, "shape": list(x.shape), "data": x.tobytes()}
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot encode {type(x)}")


def _dec(obj):
    if "__nd__" in obj:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def encode_example(ex: dict) -> bytes:
    return msgpack.packb(ex, default=_enc, use_bin_type=True)


def decode_example(b: bytes) -> dict:
    return msgpack.unpackb(b, object_hook=_dec, raw=False)


def write_shard(path: str, records: Iterable[bytes]):
    """Write an ArrayRecord shard atomically (tmp file + rename); random access with group_size 1."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path + ".tmp"
    w = ArrayRecordWriter(tmp, "group_size:1")
    for r in records:
        w.write(r)
    w.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_shard_index(root: str):
    """``[(shard_name, [ids...]), ...]`` of complete shards (a torn last line is ignored)."""
    p = os.path.join(root, "shards.jsonl")
    out = []
    if not os.path.exists(p):
        return out
    with open(p) as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if os.path.exists(os.path.join(root, row["shard"])):
                out.append((row["shard"], row["ids"]))
    return out


def list_shards(root: str):
    return [os.path.join(root, s) for s, _ in read_shard_index(root)]


SPLITS = ("all", "train", "holdout")


def holdout_mask(ids, fraction: float) -> np.ndarray:
    """Which examples are held out for evaluation: ``crc32(id) / 2³² < fraction`` (bool ``[len(ids)]``).

    A stable hash of the id, so the split does not depend on record order, sharding or which other meshes a folder
    holds: a mesh stays on its side when the dataset grows."""
    import zlib

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    return np.array([zlib.crc32(str(i).encode()) / 2.0 ** 32 < fraction for i in ids], bool).reshape(-1)


class RecordSource:
    """grain ``RandomAccessDataSource`` over a prepared directory (or several); examples ordered by id, so the order
    does not depend on worker scheduling.  ``__getitem__`` returns the decoded dict of numpy arrays.

    ``split``: ``"all"``, or ``"train"`` / ``"holdout"``: the examples outside / inside :func:`holdout_mask` of
    ``holdout`` (the fraction held out for evaluation). ``mark_bad``: a record that fails to read or decode gives
    ``{PROBLEM: reason, "id": id}`` instead of raising (the training pipeline replaces it)."""

    def __init__(self, roots, keys=None, split: str = "all", holdout: float = 0.0, mark_bad: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        self._paths = []
        entries = []
        for root in roots:
            for shard, ids in read_shard_index(os.fspath(root)):
                si = len(self._paths)
                self._paths.append(os.path.join(os.fspath(root), shard))
                entries += [(i, si, k) for k, i in enumerate(ids)]
        entries.sort()
        if split != "all":
            held = holdout_mask([e[0] for e in entries], holdout)
            entries = [e for e, h in zip(entries, held) if h == (split == "holdout")]
        self._ids = [e[0] for e in entries]
        self._loc = np.array([(e[1], e[2]) for e in entries], np.int64).reshape(-1, 2)
        self._readers = {}
        self._keys = None if keys is None else set(keys) | {"id"}
        self._mark_bad = mark_bad

    def __len__(self):
        return len(self._ids)

    @property
    def ids(self):
        return list(self._ids)

    def _reader(self, si):
        r = self._readers.get(si)
        if r is None:
            from array_record.python.array_record_module import ArrayRecordReader

            r = ArrayRecordReader(self._paths[si], "readahead_buffer_size:0")
            self._readers[si] = r
        return r

    def __getitem__(self, i):
        if not self._mark_bad:
            return self._read(i)
        try:
            return self._read(i)
        except Exception as e:  # noqa: BLE001 -- a broken record must not stop a training run
            return {PROBLEM: f"record {self._paths[int(self._loc[int(i)][0])]}#{int(self._loc[int(i)][1])} does "
                             f"not decode ({type(e).__name__}: {str(e)[:200]})", "id": self._ids[int(i)]}

    def _read(self, i):
        si, k = self._loc[int(i)]
        ex = decode_example(self._reader(int(si)).read([int(k)])[0])
        if "voxel_indices" in ex:
            from .voxelize import occupancy_grid

            ex["occupancy"] = occupancy_grid(ex["voxel_indices"].astype(np.int64), int(ex["resolution"]))
        if self._keys is not None:
            ex = {k2: v for k2, v in ex.items() if k2 in self._keys}
        return ex

    def __getstate__(self):  # readers are not picklable (grain worker processes)
        d = dict(self.__dict__)
        d["_readers"] = {}
        return d

    def __repr__(self):
        return f"RecordSource({len(self)} examples, {len(self._paths)} shards)"
