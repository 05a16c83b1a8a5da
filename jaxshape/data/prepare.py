"""``python -m jaxshape.data.prepare``: meshes -> sharded ArrayRecord examples + a JSONL manifest.

    python -m jaxshape.data.prepare --input meshes/ --input 'more/*.glb' --input list.txt --output data/run1 \
        --workers 2 --seed 0 [--small] [--resolution 64] [--embedded 1000] [--class-from-dir]

* Every input becomes exactly one manifest row: ``{"id", "source", "status": "ok"|"error", "reason", "detail",
  "class_label", "stats"}``; a bad file never stops the job.  Each mesh runs in a worker process (spawned), so a
  crash of a native library (segfault) or a hang (``--timeout``) only costs that mesh ("worker_crashed"/"timeout").
* Resumable: a finished example is written durably to ``pending/<id>.rec`` and then its manifest row is appended
  (fsync'ed); pending examples are packed into ArrayRecord shards of ``--shard-size``.  Re-running skips every id
  with a row (``--retry-errors`` retries failures); a kill loses at most the meshes in flight.
* Deterministic: the per-mesh RNG is seeded from ``(--seed, id)`` only, so the records do not depend on worker
  count or scheduling; the reader orders examples by id.
* Exit code 0 unless every input failed (2), or bad usage/config mismatch (1).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from multiprocessing.connection import wait
from typing import List, Optional, Tuple

import numpy as np

from .mesh_io import MESH_SUFFIXES, LoadLimits, MeshError
from .records import encode_example, read_shard_index, write_shard
from .targets import TargetConfig, config_from_json, config_to_json, make_example
from .vecset import VecsetConfig

__all__ = ["collect_inputs", "prepare", "main"]

Task = Tuple[str, str, int]  # (id, path, class_label)


def _safe_id(s: str) -> str:
    s = s.replace(os.sep, "__").replace("/", "__")
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in s)


def collect_inputs(inputs: List[str], class_from_dir: bool = False) -> Tuple[List[Task], List[str]]:
    """Folders (recursive, mesh suffixes), globs, ``.txt``/``.lst`` lists (``path`` or ``path<TAB>label`` per line)
    or single files -> ``(tasks, class_names)``.  Ids: path relative to the folder (or stem + path hash)."""
    items = []  # (id, path, label or None, classname or None)
    for inp in inputs:
        if os.path.isdir(inp):
            for dp, _, fns in sorted(os.walk(inp)):
                for fn in sorted(fns):
                    if fn.lower().endswith(MESH_SUFFIXES):
                        p = os.path.join(dp, fn)
                        rel = os.path.relpath(p, inp)
                        cname = os.path.basename(os.path.dirname(p)) if class_from_dir and os.path.dirname(rel) \
                            else None
                        items.append((_safe_id(os.path.splitext(rel)[0] + os.path.splitext(rel)[1].replace(".", "_")
                                               ), p, None, cname))
        elif inp.endswith((".txt", ".lst")) and os.path.isfile(inp):
            with open(inp) as fh:
                for line in fh:
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    parts = line.split("\t")
                    p = parts[0]
                    lab = int(parts[1]) if len(parts) > 1 else None
                    items.append((None, p, lab, None))
        else:
            paths = sorted(glob.glob(inp)) if any(c in inp for c in "*?[") else [inp]
            items += [(None, p, None, None) for p in paths]
    classes = sorted({c for _, _, _, c in items if c is not None})
    cidx = {c: i for i, c in enumerate(classes)}
    tasks, seen = [], set()
    for mid, p, lab, cname in items:
        if mid is None:
            h = hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]
            mid = _safe_id(os.path.splitext(os.path.basename(p))[0]) + "-" + h
        if mid in seen:
            continue
        seen.add(mid)
        label = lab if lab is not None else (cidx[cname] if cname is not None else -1)
        tasks.append((mid, p, label))
    return tasks, classes


def _load_features(features_dir, mid, path):
    if not features_dir:
        return None
    for name in (mid, os.path.splitext(os.path.basename(path))[0]):
        fp = os.path.join(features_dir, name + ".npy")
        if os.path.exists(fp):
            return {"cond_features": np.load(fp)}
    return None


def _run_one(task: Task, cfg: TargetConfig, seed: int, features_dir: Optional[str]):
    mid, path, label = task
    try:
        ex, stats = make_example(path, cfg, seed, mid, label, _load_features(features_dir, mid, path))
        ex["source"] = os.path.abspath(path)
        return ("ok", mid, encode_example(ex), stats)
    except MeshError as e:
        return ("error", mid, e.reason, e.detail[:500])
    except MemoryError:
        return ("error", mid, "out_of_memory", "")
    except Exception as e:  # any other failure is still one row, not a crash
        return ("error", mid, "exception", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-800:]}")


def _worker_main(conn, cfg_json, seed, features_dir):
    cfg = config_from_json(cfg_json)
    import warnings

    warnings.filterwarnings("ignore")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_run_one(tuple(task), cfg, seed, features_dir))


class _Pool:
    """Minimal crash-tolerant process pool: one task per worker at a time; a dead/hung worker is replaced and its
    task reported as failed."""

    def __init__(self, n, cfg_json, seed, features_dir, timeout):
        self.ctx = mp.get_context("spawn")
        self.args = (cfg_json, seed, features_dir)
        self.timeout = timeout
        self.workers = [self._spawn() for _ in range(n)]

    def _spawn(self):
        a, b = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(b, *self.args), daemon=True)
        p.start()
        b.close()
        return {"proc": p, "conn": a, "task": None, "t0": 0.0}

    def run(self, tasks):
        """Yields result tuples (see ``_run_one``) as they finish."""
        todo = list(tasks)[::-1]
        while todo or any(w["task"] for w in self.workers):
            for w in self.workers:
                if w["task"] is None and todo:
                    w["task"] = todo.pop()
                    w["t0"] = time.time()
                    w["conn"].send(w["task"])
            busy = [w for w in self.workers if w["task"] is not None]
            ready = wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout=1.0)
            for i, w in enumerate(self.workers):
                if w["task"] is None:
                    continue
                res = None
                if w["conn"] in ready:
                    try:
                        res = w["conn"].recv()
                    except (EOFError, OSError):
                        res = None
                if res is not None:
                    w["task"] = None
                    yield res
                    continue
                dead = not w["proc"].is_alive()
                hung = self.timeout and time.time() - w["t0"] > self.timeout
                if dead or hung or w["conn"] in ready:
                    mid = w["task"][0]
                    if hung and not dead:
                        w["proc"].kill()
                    w["proc"].join(5)
                    reason = "timeout" if (hung and not dead) else "worker_crashed"
                    detail = f"exit code {w['proc'].exitcode}" if reason == "worker_crashed" else \
                        f"> {self.timeout} s"
                    self.workers[i] = self._spawn()
                    yield ("error", mid, reason, detail)

    def close(self):
        for w in self.workers:
            try:
                w["conn"].send(None)
            except Exception:
                pass
        for w in self.workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()


class _Store:
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


def prepare(inputs: List[str], output: str, cfg: TargetConfig = TargetConfig(), seed: int = 0, workers: int = 1,
            shard_size: int = 256, timeout: float = 600.0, retry_errors: bool = False, class_from_dir: bool = False,
            features_dir: Optional[str] = None, progress: bool = True, tasks: Optional[List[Task]] = None,
            classes: Optional[List[str]] = None) -> dict:
    """Library entry point of the CLI; returns the summary also written to ``OUT/dataset.json``."""
    os.makedirs(output, exist_ok=True)
    cfg_json = config_to_json(cfg)
    meta = {"config": cfg_json, "seed": int(seed)}
    cpath = os.path.join(output, "config.json")
    if os.path.exists(cpath):
        with open(cpath) as fh:
            old = json.load(fh)
        if old != meta:
            raise SystemExit(f"{output} was prepared with another config/seed; use a new --output")
    else:
        with open(cpath + ".tmp", "w") as fh:
            json.dump(meta, fh, indent=1)
        os.replace(cpath + ".tmp", cpath)
    if tasks is None:
        tasks, classes = collect_inputs(inputs, class_from_dir)
    store = _Store(output, shard_size)
    done = {mid for mid, r in store.rows.items() if r["status"] == "ok" or not retry_errors}
    todo = [t for t in tasks if t[0] not in done]
    src = {t[0]: t for t in tasks}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="prepare", unit="mesh", file=sys.stderr)

    def handle(res):
        status, mid = res[0], res[1]
        row = {"id": mid, "source": os.path.abspath(src[mid][1]), "status": status, "class_label": src[mid][2]}
        if status == "ok":
            row.update(reason=None, detail=None, stats=res[3])
            store.add(row, res[2])
        else:
            row.update(reason=res[2], detail=res[3], stats=None)
            store.add(row, None)
        if bar is not None:
            bar.update(1)

    try:
        if workers <= 0:
            for t in todo:
                handle(_run_one(t, cfg, seed, features_dir))
        else:
            pool = _Pool(min(workers, max(1, len(todo))), cfg_json, seed, features_dir, timeout)
            try:
                for res in pool.run(todo):
                    handle(res)
            finally:
                pool.close()
    finally:
        store.close()
        if bar is not None:
            bar.close()
    rows = [store.rows[t[0]] for t in tasks if t[0] in store.rows]
    reasons = {}
    for r in rows:
        if r["status"] != "ok":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {"num_inputs": len(tasks), "num_ok": sum(r["status"] == "ok" for r in rows),
               "num_error": sum(r["status"] != "ok" for r in rows), "error_reasons": reasons,
               "classes": list(classes or []), "shards": [s for s, _ in store.shards], **meta}
    with open(os.path.join(output, "dataset.json.tmp"), "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(os.path.join(output, "dataset.json.tmp"), os.path.join(output, "dataset.json"))
    return summary


def build_config(args) -> TargetConfig:
    base = TargetConfig.small(args.resolution or 32, args.points or 4096) if args.small else TargetConfig()
    vs = base.vecset
    if args.points and not args.small:
        vs = VecsetConfig(num_points=args.points)
    over = {k: getattr(args, k) for k in ("num_surface", "num_salient", "num_fps", "num_volume", "num_near",
                                           "num_sharp", "tau") if getattr(args, k) is not None}
    vs = VecsetConfig(**{**{f: getattr(vs, f) for f in vs.__dataclass_fields__}, **over})
    return TargetConfig(targets=tuple(args.targets.split(",")), resolution=args.resolution or base.resolution,
                        vecset=vs, up_axis=args.up_axis,
                        limits=LoadLimits(max_faces=args.max_faces, max_file_bytes=args.max_file_bytes))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jaxshape.data.prepare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", "-i", action="append", default=[], help="folder, glob, list file (.txt) or file")
    ap.add_argument("--output", "-o", required=True)
    ap.add_argument("--embedded", type=int, default=0, metavar="N",
                    help="also include N procedural shapes of the embedded dataset (0: none)")
    ap.add_argument("--targets", default="occupancy,vecset")
    ap.add_argument("--small", action="store_true", help="CPU-demo sizes (32^3, 4096 points)")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--points", type=int, default=None, help="uniform FPS pool size (pointcloud)")
    for k in ("num_surface", "num_salient", "num_fps", "num_volume", "num_near", "num_sharp"):
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=int, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--up-axis", default="auto", choices=["auto", "z", "y"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 0))
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mesh before the worker is killed")
    ap.add_argument("--max-faces", type=int, default=5_000_000)
    ap.add_argument("--max-file-bytes", type=int, default=1 << 30)
    ap.add_argument("--retry-errors", action="store_true")
    ap.add_argument("--class-from-dir", action="store_true", help="class label = name of the parent folder")
    ap.add_argument("--features-dir", default=None, help="attach <id>.npy / <stem>.npy as cond_features")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.input and not args.embedded:
        ap.error("give --input and/or --embedded N")
    cfg = build_config(args)
    tasks, classes = collect_inputs(args.input, args.class_from_dir)
    if args.embedded:
        from .procedural import CLASSES, embedded_tasks

        if classes:
            ap.error("--embedded cannot be combined with --class-from-dir inputs (label spaces would clash)")
        tasks += embedded_tasks(args.embedded)
        classes = list(CLASSES)
    summary = prepare([], args.output, cfg, args.seed, args.workers, args.shard_size, args.timeout,
                      args.retry_errors, features_dir=args.features_dir, progress=not args.no_progress,
                      tasks=tasks, classes=classes)
    print(json.dumps({k: summary[k] for k in ("num_inputs", "num_ok", "num_error", "error_reasons")}))
    if summary["num_inputs"] and summary["num_ok"] == 0:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
