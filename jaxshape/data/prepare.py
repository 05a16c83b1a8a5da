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
import os
import sys
from typing import List, Optional, Tuple

from jaxshape.families import FAMILIES, SPARSE_STRUCTURE, VECSET

from .mesh_io import MESH_SUFFIXES, LoadLimits
from .procedural import CLASSES, cache_dir, embedded_jobs
from .store import RecordStore
from .targets import TargetConfig, config_to_json
from .vecset import VecsetConfig
from .workers import Attachments, PrepJob, WorkerPool, run_job

__all__ = ["collect_inputs", "prepare", "embedded_records", "main"]


def _safe_id(s: str) -> str:
    s = s.replace(os.sep, "__").replace("/", "__")
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in s)


def collect_inputs(inputs: List[str], class_from_dir: bool = False) -> Tuple[List[PrepJob], List[str]]:
    """Folders (recursive, mesh suffixes), globs, ``.txt``/``.lst`` lists (``path`` or ``path<TAB>label`` per line)
    or single files -> ``(jobs, class_names)``.  Ids: path relative to the folder (or stem + path hash)."""
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
    jobs, seen = [], set()
    for mid, p, lab, cname in items:
        if mid is None:
            h = hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]
            mid = _safe_id(os.path.splitext(os.path.basename(p))[0]) + "-" + h
        if mid in seen:
            continue
        seen.add(mid)
        label = lab if lab is not None else (cidx[cname] if cname is not None else -1)
        jobs.append((mid, p, label))
    return jobs, classes


def prepare(inputs: List[str], output: str, cfg: TargetConfig = TargetConfig(), seed: int = 0, workers: int = 1,
            shard_size: int = 256, timeout: float = 600.0, retry_errors: bool = False, class_from_dir: bool = False,
            features_dir: Optional[str] = None, progress: bool = True, jobs: Optional[List[PrepJob]] = None,
            views_dir: Optional[str] = None, num_views: int = 0, view_size: int = 518,
            classes: Optional[List[str]] = None) -> dict:
    """Library entry point of the CLI; returns the summary also written to ``OUT/dataset.json``."""
    os.makedirs(output, exist_ok=True)
    cfg_json = config_to_json(cfg)
    meta = {"config": cfg_json, "seed": int(seed)}
    if num_views and not views_dir:  # rendered views are part of what a resumed job must match
        meta["views"] = {"count": int(num_views), "size": int(view_size)}
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
    if jobs is None:
        jobs, classes = collect_inputs(inputs, class_from_dir)
    attach = Attachments(features_dir=features_dir, views_dir=views_dir, num_views=num_views, view_size=view_size)
    if num_views and not views_dir:
        from .render import require_renderer

        require_renderer()  # a missing renderer is one clear error, not one per mesh
    store = RecordStore(output, shard_size)
    done = {mid for mid, r in store.rows.items() if r["status"] == "ok" or not retry_errors}
    todo = [j for j in jobs if j[0] not in done]
    src = {j[0]: j for j in jobs}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="prepare", unit="mesh", file=sys.stderr)

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
            for j in todo:
                handle(run_job(j, cfg, seed, attach))
        else:
            pool = WorkerPool(min(workers, max(1, len(todo))), cfg_json, seed, attach, timeout)
            try:
                for res in pool.run(todo):
                    handle(res)
            finally:
                pool.close()
    finally:
        store.close()
        if bar is not None:
            bar.close()
    rows = [store.rows[j[0]] for j in jobs if j[0] in store.rows]
    reasons = {}
    for r in rows:
        if r["status"] != "ok":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {"num_inputs": len(jobs), "num_ok": sum(r["status"] == "ok" for r in rows),
               "num_error": sum(r["status"] != "ok" for r in rows), "error_reasons": reasons,
               "classes": list(classes or []), "shards": [s for s, _ in store.shards], **meta}
    with open(os.path.join(output, "dataset.json.tmp"), "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(os.path.join(output, "dataset.json.tmp"), os.path.join(output, "dataset.json"))
    return summary


def embedded_records(n: int = 1000, targets=(SPARSE_STRUCTURE, VECSET), resolution: int = 32, points: int = 4096,
                     seed: int = 0, workers: int = 0, root: str = None, views: int = 0, view_size: int = 128,
                     parts: bool = False) -> str:
    """Prepared records of the first ``n`` embedded shapes (CPU-size targets, ``TargetConfig.small``), built on
    first use under the cache (``jaxshape.data.procedural.cache_dir``) and reused; returns the folder for
    ``jaxshape.data.pipeline``. Resumable like the CLI (an interrupted build continues where it stopped).
    ``views``: also render that many conditioning views of ``view_size`` px per shape (``prepare --views``).
    ``parts``: the shapes as separate parts, with PartPacker's two volumes (``prepare --parts``)."""
    base = TargetConfig.small(resolution, points)
    cfg = TargetConfig(targets=tuple(targets), resolution=resolution, vecset=base.vecset, parts=parts)
    tag = (f"-v{views}x{view_size}" if views else "") + ("-parts" if parts else "")
    out = os.path.join(root or cache_dir(),
                       f"records-{'+'.join(targets)}-r{resolution}-p{points}-n{n}-s{seed}{tag}")
    summary = os.path.join(out, "dataset.json")
    if os.path.exists(summary):
        with open(summary) as fh:
            s = json.load(fh)
        if s.get("num_inputs") == n and s.get("num_ok", 0) + s.get("num_error", 0) == n:
            return out
    prepare([], out, cfg, seed=seed, workers=workers or (os.cpu_count() or 1), jobs=embedded_jobs(n, seed, parts=parts),
            classes=list(CLASSES), num_views=views, view_size=view_size)
    return out


def build_config(args) -> TargetConfig:
    base = TargetConfig.small(args.resolution or 32, args.points or 4096) if args.small else TargetConfig()
    vs = base.vecset
    if args.points and not args.small:
        vs = VecsetConfig(num_points=args.points)
    over = {k: getattr(args, k) for k in ("num_surface", "num_salient", "num_fps", "num_volume", "num_near",
                                           "num_sharp", "tau") if getattr(args, k) is not None}
    vs = VecsetConfig(**{**{f: getattr(vs, f) for f in vs.__dataclass_fields__}, **over})
    return TargetConfig(targets=tuple(args.targets.split(",")), resolution=args.resolution or base.resolution,
                        vecset=vs, up_axis=args.up_axis, parts=args.parts,
                        limits=LoadLimits(max_faces=args.max_faces, max_file_bytes=args.max_file_bytes))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jaxshape.data.prepare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", "-i", action="append", default=[], help="folder, glob, list file (.txt) or file")
    ap.add_argument("--output", "-o", required=True)
    ap.add_argument("--embedded", type=int, default=0, metavar="N",
                    help="also include N procedural shapes of the embedded dataset (0: none)")
    ap.add_argument("--targets", default=f"{SPARSE_STRUCTURE},{VECSET}",
                    help=f"comma-separated families whose targets are computed ({', '.join(FAMILIES)})")
    ap.add_argument("--small", action="store_true", help="CPU-demo sizes (32^3, 4096 points)")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--points", type=int, default=None, help="uniform FPS pool size (pointcloud)")
    for k in ("num_surface", "num_salient", "num_fps", "num_volume", "num_near", "num_sharp"):
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=int, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--up-axis", default="auto", choices=["auto", "z", "y"])
    ap.add_argument("--parts", action="store_true",
                    help="vecset: also PartPacker's two volumes of each mesh's parts (its connected components; "
                         "jaxshape.data.parts), for fine-tuning the released DiT (use_parts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 0))
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mesh before the worker is killed")
    ap.add_argument("--max-faces", type=int, default=5_000_000)
    ap.add_argument("--max-file-bytes", type=int, default=1 << 30)
    ap.add_argument("--retry-errors", action="store_true")
    ap.add_argument("--class-from-dir", action="store_true", help="class label = name of the parent folder")
    ap.add_argument("--features-dir", default=None, help="attach <id>.npy / <stem>.npy as cond_features")
    ap.add_argument("--views-dir", default=None,
                    help="attach <id or stem>/*.png (RGBA, transparent background) as the conditioning views")
    ap.add_argument("--views", type=int, default=0,
                    help="render N conditioning views per mesh (TRELLIS's cameras; needs pip install -e '.[render]')")
    ap.add_argument("--view-size", type=int, default=518, help="side of the rendered views in pixels")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.input and not args.embedded:
        ap.error("give --input and/or --embedded N")
    cfg = build_config(args)
    jobs, classes = collect_inputs(args.input, args.class_from_dir)
    if args.embedded:
        if classes:
            ap.error("--embedded cannot be combined with --class-from-dir inputs (label spaces would clash)")
        jobs += embedded_jobs(args.embedded, parts=args.parts)
        classes = list(CLASSES)
    summary = prepare([], args.output, cfg, args.seed, args.workers, args.shard_size, args.timeout,
                      args.retry_errors, features_dir=args.features_dir, views_dir=args.views_dir,
                      num_views=args.views, view_size=args.view_size,
                      progress=not args.no_progress,
                      jobs=jobs, classes=classes)
    print(json.dumps({k: summary[k] for k in ("num_inputs", "num_ok", "num_error", "error_reasons")}))
    if summary["num_inputs"] and summary["num_ok"] == 0:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
