"""Crash-tolerant parallel workers of ``python -m jaxshape.data.prepare``: one mesh per worker process at a time.

Each mesh runs in a spawned process, so a crash of a native library (segfault) or a hang (``timeout``) costs only
that mesh: the worker is replaced and the mesh is reported as failed ("worker_crashed" / "timeout").
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
import traceback
from multiprocessing.connection import wait
from typing import Optional, Tuple

import numpy as np

from .mesh_io import MeshError
from .records import encode_example
from .targets import TargetConfig, config_from_json, mesh_example

PrepJob = Tuple[str, str, int]  # (mesh id, path, class label): one mesh to prepare


@dataclasses.dataclass(frozen=True)
class Attachments:
    """Conditioning stored with each record: ``features_dir/<id or stem>.npy`` as ``cond_features``;
    ``views_dir/<id or stem>/*.png`` (sorted by name, with alpha) as ``cond_views`` (the PNG bytes); or
    ``num_views`` views rendered from the mesh (``cond_views`` + ``cond_view_cameras`` ``[V, 4]``: yaw, pitch,
    radius, fov in radians), the cameras seeded by ``(seed, mesh id)``."""
    features_dir: Optional[str] = None
    views_dir: Optional[str] = None
    num_views: int = 0  # render this many views per mesh (jaxshape.data.render; TRELLIS's conditioning cameras)
    view_size: int = 518  # their side in pixels


def _names(mid, path):
    return (mid, os.path.splitext(os.path.basename(path))[0])


def _load_features(features_dir, mid, path):
    for name in _names(mid, path):
        fp = os.path.join(features_dir, name + ".npy")
        if os.path.exists(fp):
            return {"cond_features": np.load(fp)}
    return {}


def load_views_dir(views_dir: str, mid: str, path: str) -> dict:
    """``{"cond_views": [PNG bytes, ...]}`` from ``views_dir/<id or stem>/*.png``; a missing folder or an unreadable
    or alpha-less image is a ``MeshError`` naming the file (the mesh is reported, the job carries on)."""
    from PIL import Image

    for name in _names(mid, path):
        folder = os.path.join(views_dir, name)
        if os.path.isdir(folder):
            break
    else:
        raise MeshError("missing_views", f"no folder {os.path.join(views_dir, mid)}")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png"))
    if not files:
        raise MeshError("missing_views", f"no .png in {folder}")
    views = []
    for f in files:
        fp = os.path.join(folder, f)
        try:
            with Image.open(fp) as im:
                im.load()
                mode = im.mode
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
            raise MeshError("bad_view", f"{fp}: {type(e).__name__}: {e}") from None
        if mode not in ("RGBA", "LA", "PA") and not (mode == "P" and "transparency" in im.info):
            raise MeshError("bad_view", f"{fp}: mode {mode} has no alpha (conditioning views need a transparent "
                                        f"background)")
        with open(fp, "rb") as fh:
            views.append(fh.read())
    return {"cond_views": views}


def render_mesh_views(path: str, mid: str, num_views: int, size: int, seed: int) -> dict:
    """``num_views`` rendered views of the mesh file (``jaxshape.data.render``) as record fields; a mesh the
    renderer cannot draw is a ``MeshError`` (reason ``render_failed`` unless the renderer gave one)."""
    from .render import conditioning_cameras, encode_png, render_views
    from .targets import example_seed

    cams = conditioning_cameras(num_views, np.random.default_rng([*example_seed(seed, mid).entropy, 0x7E]))
    try:
        views = render_views(path, cams, resolution=size, name=mid)
    except (MeshError, ImportError):
        raise
    except Exception as e:  # noqa: BLE001 - a driver or loader failure is this mesh's, not the job's
        raise MeshError("render_failed", f"{type(e).__name__}: {e}") from None
    return {"cond_views": [encode_png(v) for v in views],
            "cond_view_cameras": np.array([[c["yaw"], c["pitch"], c["radius"], c["fov"]] for c in cams], np.float32)}


def attachments_of(attach: Attachments, mid: str, path: str, seed: int = 0) -> dict:
    out = {}
    if attach.features_dir:
        out.update(_load_features(attach.features_dir, mid, path))
    if attach.views_dir:
        out.update(load_views_dir(attach.views_dir, mid, path))
    elif attach.num_views:
        out.update(render_mesh_views(path, mid, attach.num_views, attach.view_size, seed))
    return out


def run_job(job: PrepJob, cfg: TargetConfig, seed: int, attach: Attachments = Attachments()):
    """One mesh -> ``("ok", id, record bytes, stats)`` or ``("error", id, reason, detail)``; never raises."""
    mid, path, label = job
    try:
        ex, stats = mesh_example(path, cfg, seed, mid, label, attachments_of(attach, mid, path, seed))
        ex["source"] = os.path.abspath(path)
        return ("ok", mid, encode_example(ex), stats)
    except MeshError as e:
        return ("error", mid, e.reason, e.detail[:500])
    except MemoryError:
        return ("error", mid, "out_of_memory", "")
    except Exception as e:  # any other failure is still one row, not a crash
        return ("error", mid, "exception", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-800:]}")


def _worker_main(conn, cfg_json, seed, attach):
    cfg = config_from_json(cfg_json)
    import warnings

    warnings.filterwarnings("ignore")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(run_job(tuple(job), cfg, seed, attach))


class WorkerPool:
    """Minimal crash-tolerant process pool: one job per worker at a time; a dead/hung worker is replaced and its
    job reported as failed."""

    def __init__(self, n, cfg_json, seed, attach, timeout):
        self.ctx = mp.get_context("spawn")
        self.args = (cfg_json, seed, attach)
        self.timeout = timeout
        self.workers = [self._spawn() for _ in range(n)]

    def _spawn(self):
        a, b = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(b, *self.args), daemon=True)
        p.start()
        b.close()
        return {"proc": p, "conn": a, "job": None, "t0": 0.0}

    def run(self, jobs):
        """Yields result tuples (see :func:`run_job`) as they finish."""
        todo = list(jobs)[::-1]
        while todo or any(w["job"] for w in self.workers):
            for w in self.workers:
                if w["job"] is None and todo:
                    w["job"] = todo.pop()
                    w["t0"] = time.time()
                    w["conn"].send(w["job"])
            busy = [w for w in self.workers if w["job"] is not None]
            ready = wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout=1.0)
            for i, w in enumerate(self.workers):
                if w["job"] is None:
                    continue
                res = None
                if w["conn"] in ready:
                    try:
                        res = w["conn"].recv()
                    except (EOFError, OSError):
                        res = None
                if res is not None:
                    w["job"] = None
                    yield res
                    continue
                dead = not w["proc"].is_alive()
                hung = self.timeout and time.time() - w["t0"] > self.timeout
                if dead or hung or w["conn"] in ready:
                    mid = w["job"][0]
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
