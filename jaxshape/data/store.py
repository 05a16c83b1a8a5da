"""The resumable record store of ``python -m jaxshape.data.prepare``: nothing already written is lost.

A finished example is written durably to ``pending/<id>.rec`` and then its manifest row is appended (fsync'ed);
pending examples are packed into ArrayRecord shards. On open, torn files of a killed run are removed, ok rows whose
example was lost are redone, and pending files already packed into a shard are cleaned up.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from .records import read_shard_index, write_shard


class RecordStore:
    def __init__(self, out, shard_size):
        self.out = out
        self.shard_size = shard_size
        self.pending_dir = os.path.join(out, "pending")
        os.makedirs(self.pending_dir, exist_ok=True)
        for fn in os.listdir(out):
            if fn.endswith(".tmp"):
                os.remove(os.path.join(out, fn))
        for fn in os.listdir(self.pending_dir):
            if fn.endswith(".tmp"):
                os.remove(os.path.join(self.pending_dir, fn))
        self.shards = read_shard_index(out)
        self.in_shards = {i for _, ids in self.shards for i in ids}
        self.pending = {}
        for fn in sorted(os.listdir(self.pending_dir)):
            mid = fn[:-4]
            if mid in self.in_shards:  # crash between shard commit and cleanup
                os.remove(os.path.join(self.pending_dir, fn))
            else:
                self.pending[mid] = os.path.join(self.pending_dir, fn)
        self.rows = {}
        mp_ = os.path.join(out, "manifest.jsonl")
        if os.path.exists(mp_):
            with open(mp_) as fh:
                for line in fh:
                    try:
                        r = json.loads(line)
                        self.rows[r["id"]] = r
                    except (json.JSONDecodeError, KeyError):
                        continue  # torn last line of a killed run
        # ok rows whose example was lost, and orphan pending files, are redone
        for mid, r in list(self.rows.items()):
            if r["status"] == "ok" and mid not in self.in_shards and mid not in self.pending:
                del self.rows[mid]
        for mid in list(self.pending):
            if mid not in self.rows:
                os.remove(self.pending.pop(mid))
        self._rewrite_manifest()
        self.manifest = open(mp_, "a")

    def _rewrite_manifest(self):
        p = os.path.join(self.out, "manifest.jsonl")
        with open(p + ".tmp", "w") as fh:
            for r in self.rows.values():
                fh.write(json.dumps(r) + "\n")
        os.replace(p + ".tmp", p)

    def add(self, row, data: Optional[bytes]):
        if data is not None:
            p = os.path.join(self.pending_dir, row["id"] + ".rec")
            with open(p + ".tmp", "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(p + ".tmp", p)
            self.pending[row["id"]] = p
        self.rows[row["id"]] = row
        self.manifest.write(json.dumps(row) + "\n")
        self.manifest.flush()
        os.fsync(self.manifest.fileno())
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        ids = sorted(self.pending)
        n = 0
        while os.path.exists(os.path.join(self.out, f"shard-{n:05d}.array_record")):
            n += 1
        name = f"shard-{n:05d}.array_record"

        def gen():
            for i in ids:
                with open(self.pending[i], "rb") as fh:
                    yield fh.read()

        write_shard(os.path.join(self.out, name), gen())
        with open(os.path.join(self.out, "shards.jsonl"), "a") as fh:
            fh.write(json.dumps({"shard": name, "ids": ids}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for i in ids:
            os.remove(self.pending.pop(i))
        self.shards.append((name, ids))
        self.in_shards.update(ids)

    def close(self):
        self.flush()
        self.manifest.close()
        self._rewrite_manifest()
