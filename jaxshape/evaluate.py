"""``python -m jaxshape.evaluate --workdir DIR [--stage S] [--reference RECORDS] [--num N] [--out REPORT]``
``python -m jaxshape.evaluate --meshes DIR --reference RECORDS [--family F] [--out REPORT]``

Scores shapes against reference shapes on one protocol (``docs/evaluation.md``) and writes a report:
``report.md`` (the numbers), ``report.json`` (the same, plus per-shape details), ``curves.png`` (training loss and
every evaluation metric over training, for a workdir) and ``samples.png`` (each shape beside its nearest reference;
for image conditioning, the view, the sample and the shape of the view).

* ``--workdir``: a trained stage (or a pipeline's workdir and ``--stage``). A flow stage generates ``--num`` shapes
  for the conditions of the first reference shapes and is scored by MMD / COV / 1-NNA (and class consistency for
  class labels; for an image or features of each reference shape, the condition report: each sample against its
  own shape, the other shapes and samples made with the conditions shuffled) plus the fixed-time flow losses; a VAE
  stage reconstructs ``--num`` reference shapes (IoU, Chamfer, F-score). The references are the stage's held-out
  shapes (``data.holdout``) or the records of ``--reference``.
* ``--meshes``: any model's outputs (``.glb`` / ``.obj`` / ``.ply`` / ``.stl``, PyTorch's included; glTF files are
  y-up by the spec and turned back to z-up, other formats are read as z-up), each normalised to the unit cube by
  its bounding box (``--normalize none``: already in it); a ``samples.jsonl`` beside them (as
  ``python -m jaxshape.sample`` writes) gives the requested class of each for class consistency.

Deterministic for a ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger("jaxshape.evaluate")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def reference_examples(task, config, n: int, reference: Optional[str] = None) -> dict:
    """``n`` reference examples for ``task``, spread evenly over the records folder ``reference`` or over the
    stage's held-out split."""
    from jaxshape.data.pipeline import read_spread
    from jaxshape.trainer.evaluation import heldout_examples

    if reference is None:
        if not config.data.holdout > 0:
            raise ValueError("the stage was trained without a held-out split (data.holdout = 0): pass --reference "
                             "RECORDS (a folder written by `python -m jaxshape.data.prepare`)")
        return heldout_examples(task, config, n)
    return read_spread(str(reference), n, task.eval_fields, num_queries=task.eval_num_queries(config.eval.num_queries),
                       seed=config.eval.seed, views=task.view_config())


def _normalize_bbox(v: np.ndarray) -> np.ndarray:
    """Centre the bounding box at 0 and scale its longest side to 1 (the unit-cube frame of the references)."""
    lo, hi = v.min(0), v.max(0)
    return (v - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-12)


def load_meshes(folder: str | Path, normalize: str = "bbox") -> tuple[list, list[dict], list[str]]:
    """The meshes of ``folder`` (sorted by name) as ``Shape``s in the unit-cube frame, their ``samples.jsonl``
    rows (``{}`` where there is none) and their file names. A file that does not load is an error naming it."""
    import trimesh

    from jaxshape.geometry import Shape
    from jaxshape.geometry.mesh import TRIMESH_GLB_EXPORT

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MESH_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"--meshes {folder}: no mesh files ({', '.join(MESH_SUFFIXES)}) in it")
    if normalize not in ("bbox", "none"):
        raise ValueError(f"--normalize must be 'bbox' or 'none', got {normalize!r}")
    rows = {}
    if (folder / "samples.jsonl").is_file():
        for line in (folder / "samples.jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[Path(r.get("mesh") or r.get("file") or "").stem] = r
    shapes, infos = [], []
    for p in files:
        try:
            m = trimesh.load(p, force="mesh", process=False)
        except Exception as e:  # noqa: BLE001 - any loader failure names the file
            raise ValueError(f"--meshes: {p} does not load as a mesh: {e}") from e
        v = np.asarray(m.vertices, np.float64)
        if p.suffix.lower() in (".glb", ".gltf"):  # glTF is y-up: back to the z-up frame of the references
            v = v @ TRIMESH_GLB_EXPORT
        if len(v) and normalize == "bbox":
            v = _normalize_bbox(v)
        shapes.append(Shape(v.astype(np.float32), np.asarray(m.faces, np.int64)))
        infos.append(rows.get(p.stem, {}))
    return shapes, infos, [p.name for p in files]


def _records_family(reference: str, family: Optional[str]) -> str:
    from jaxshape.families import FAMILIES

    if family is not None:
        if family not in FAMILIES:
            raise ValueError(f"--family must be one of {tuple(FAMILIES)}, got {family!r}")
        return family
    cfg = Path(reference) / "config.json"
    targets = json.loads(cfg.read_text()).get("config", {}).get("targets", []) if cfg.is_file() else []
    if len(targets) != 1:
        raise ValueError(f"--reference {reference} holds targets {targets}: pick the family with --family")
    return targets[0]


def evaluate_meshes(meshes: str | Path, reference: str, *, family: Optional[str] = None, num_reference: int = 64,
                    seed: int = 0, set_points: int = 512, normalize: str = "bbox") -> dict:
    """Set metrics (and class consistency where ``samples.jsonl`` gives requested classes) of a folder of meshes
    against the first ``num_reference`` shapes of a records folder. Returns the report dict."""
    from jaxshape.data.pipeline import make_dataset
    from jaxshape.eval.protocol import generation_report, shape_surface_points
    from jaxshape.families import FAMILIES, SPARSE_STRUCTURE
    from jaxshape.trainer.evaluation import REFERENCE_SEED_OFFSET
    from jaxshape.trainer.tasks import REFERENCE_POINTS

    family = _records_family(reference, family)
    shapes, infos, names = load_meshes(meshes, normalize)
    fields = ("occupancy", "class_label") if family == SPARSE_STRUCTURE else ("pointcloud", "class_label")
    ds = make_dataset(reference, min(num_reference, 64), keys=fields, shuffle=False, num_epochs=1,
                      process_index=0, process_count=1, drop_remainder=False)
    parts = []
    for b in ds:
        parts.append(b)
        if sum(len(p["class_label"]) for p in parts) >= num_reference:
            break
    examples = {k: np.concatenate([p[k] for p in parts])[:num_reference] for k in fields}
    refs = REFERENCE_POINTS[family](examples, set_points, REFERENCE_SEED_OFFSET + seed)
    pts, empty = shape_surface_points(shapes, set_points, bound=0.5, seed=seed)  # already unit cube
    requested = [i.get("class_label") for i in infos]
    kw = {}
    if all(r is not None for r in requested):
        kw = dict(requested=np.asarray(requested), pool=refs, pool_labels=examples["class_label"])
    s = min(len(shapes), len(refs))
    rep = generation_report(pts, empty, refs[:s], **kw)
    nearest = rep.pop("nearest")
    return {"mode": "meshes", "meshes": str(meshes), "reference": str(reference), "family": family,
            "num_shapes": len(shapes), "num_reference": len(refs), "seed": seed,
            "bound": FAMILIES[family].mesh_bound, "metrics": rep, "names": names, "nearest": nearest,
            "requested": kw["requested"].tolist() if kw else None,
            "_shapes": shapes, "_ref_examples": examples}


def evaluate_workdir(workdir: str | Path, *, stage: Optional[str] = None, reference: Optional[str] = None,
                     num: int = 16, seed: int = 0, step: Optional[int] = None, ema: bool = True,
                     progress: bool = False, cfg: Optional[float] = None, steps: Optional[int] = None,
                     points: Optional[int] = None, set_points: Optional[int] = None) -> dict:
    """Evaluate a trained stage (``config.eval`` protocol, ``num`` shapes; flows: ``cfg`` / ``steps`` override the
    sampler's guidance strength and Euler steps; ``points`` / ``set_points`` the surface samples per shape of the
    point metrics / set metrics). Returns the report dict."""
    import jax

    from jaxshape.models.store import read_train_params
    from jaxshape.sample import find_stage_dir, newest_or, stage_config
    from jaxshape.trainer.evaluation import Evaluator
    from jaxshape.trainer.tasks import FlowTask, make_task

    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    stage_dir = find_stage_dir(workdir, stage)
    config = stage_config(stage_dir, cfg=cfg, steps=steps)
    config.eval.num_samples, config.eval.seed = num, seed
    config.eval.num_shapes = max(num, config.eval.num_shapes)
    if points is not None:
        config.eval.points = int(points)
    if set_points is not None:
        config.eval.set_points = int(set_points)
    task = make_task(config)
    newest_or(stage_dir, step)  # a clear error when the stage holds no checkpoint
    step, params = read_train_params(stage_dir / "checkpoints", step=step, ema=ema, return_step=True)
    frozen = jax.device_put(task.trained_frozen(stage_dir))
    params = jax.device_put(params)
    examples = reference_examples(task, config, config.eval.num_shapes, reference)
    if not isinstance(task, FlowTask):  # a VAE reconstructs `num` shapes
        examples = {k: v[:num] for k, v in examples.items()}
    scalars, details = Evaluator(task, config, examples)(params, frozen, with_samples=True, progress=progress)
    return {"mode": "workdir", "workdir": str(stage_dir), "stage": config.stage, "step": step, "ema": ema,
            "reference": reference or "held-out split", "num": num, "seed": seed,
            "sampler": dict(config.sampler) if "sampler" in config else None,
            "metrics": {k.removeprefix("eval/"): v for k, v in scalars.items()},
            "nearest": details.get("nearest"), "iou": details.get("iou"),
            "requested": None if "class_label" not in details.get("inputs", {}) else
            np.asarray(details["inputs"]["class_label"]).tolist(),
            "_shapes": details.get("shapes", []), "_ref_examples": examples, "_task": task,
            "_cond_images": None if "cond_image" not in details.get("inputs", {}) else
            np.asarray(details["inputs"]["cond_image"])[:, 0],
            "_metrics_file": stage_dir / "metrics.jsonl"}


# ------------------------------------------------------------------------------------------------ the report


def _reference_image(report: dict, i: int, size: int) -> np.ndarray:
    from jaxshape.geometry.preview import render_points, render_view
    from jaxshape.geometry.voxels import voxel_field_mesh

    ex = report["_ref_examples"]
    if "occupancy" in ex:
        v, f = voxel_field_mesh(np.asarray(ex["occupancy"][i])[..., 0] - 0.5)
        return render_view(v, f, size)
    return render_points(ex["pointcloud"][i], size)


def write_samples_png(report: dict, path: Path, size: int = 128, max_rows: int = 16) -> Optional[Path]:
    """Each shape (rendered) beside its nearest reference shape (generation) or its input (reconstruction)."""
    from PIL import Image, ImageDraw

    from jaxshape.geometry.preview import render_view

    shapes = report["_shapes"]
    if not shapes:
        return None
    views = report.get("_cond_images")  # image conditioning: [view | sample | the shape of the view]
    pairs = list(range(len(shapes))) if views is not None or report.get("nearest") is None else report["nearest"]
    requested = report.get("requested")
    ref_labels = report["_ref_examples"].get("class_label")
    n = min(len(shapes), max_rows)
    per = 2 if views is None else 3
    cols = per * min(n, 4)
    rows = -(-n // 4)
    canvas = Image.new("L", (cols * size, rows * (size + 14)), 255)
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        r, c = divmod(k, 4)
        x, y = per * c * size, r * (size + 14)
        if views is not None:
            view = Image.fromarray((np.clip(views[k], 0, 1) * 255).round().astype(np.uint8)).convert("L")
            canvas.paste(view.resize((size, size), Image.BILINEAR), (x, y + 14))
            draw.text((x + 2, y), f"view {k}", fill=0)
            x += size
        canvas.paste(Image.fromarray(render_view(shapes[k].vertices, shapes[k].faces, size)), (x, y + 14))
        canvas.paste(Image.fromarray(_reference_image(report, int(pairs[k]), size)), (x + size, y + 14))
        want = "" if requested is None else f" class {int(requested[k])}"
        have = "" if ref_labels is None else f" class {int(ref_labels[int(pairs[k])])}"
        draw.text((x + 2, y), f"#{k}{want}", fill=0)
        draw.text((x + size + 2, y), f"ref {int(pairs[k])}{have}", fill=0)
    canvas.save(path)
    return path


def write_curves_png(metrics_file: Path, path: Path) -> Optional[Path]:
    """Training loss and each ``eval/`` metric against the step, from a stage's ``metrics.jsonl``."""
    if not metrics_file.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/time_s"})
    panels = [("loss", train)] + [(k, [(r["step"], r[k]) for r in rows if k in r]) for k in keys]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, panels):
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 30 else None)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, out: str | Path) -> Path:
    """``report.md``, ``report.json``, ``samples.png`` and (workdirs) ``curves.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {}
    p = write_samples_png(report, out / "samples.png")
    if p:
        pictures["samples"] = p.name
    if report.get("_metrics_file"):
        p = write_curves_png(report["_metrics_file"], out / "curves.png")
        if p:
            pictures["curves"] = p.name
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["pictures"] = pictures
    (out / "report.json").write_text(json.dumps(public, indent=2, default=str))
    what = (f"stage `{report['stage']}` of `{report['workdir']}`, step {report['step']}"
            f"{' (EMA)' if report['ema'] else ''}" if report["mode"] == "workdir"
            else f"{report['num_shapes']} meshes of `{report['meshes']}` ({report['family']})")
    lines = [f"# Evaluation: {what}", "", f"Reference: {report['reference']}; seed {report['seed']}; protocol: "
             "docs/evaluation.md (unit-cube frame).", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in report["metrics"].items()]
    lines += [""] + [f"![{k}]({v})" for k, v in pictures.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.evaluate", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a stage's or a pipeline's training workdir")
    src.add_argument("--meshes", help="a folder of generated meshes (any model's)")
    p.add_argument("--stage", default=None, help="stage (folder or stage name) of a pipeline workdir")
    p.add_argument("--reference", default=None, help="records folder of reference shapes (default for a workdir: "
                   "its held-out split)")
    p.add_argument("--family", default=None, help="--meshes: the family of --reference's targets")
    p.add_argument("--num", type=int, default=16, help="shapes generated or reconstructed (workdir; default 16)")
    p.add_argument("--num-reference", type=int, default=64, help="--meshes: reference shapes (default 64)")
    p.add_argument("--normalize", default="bbox", choices=("bbox", "none"), help="--meshes: unit-cube mapping")
    p.add_argument("--cfg", type=float, default=None, help="flow stages: guidance strength (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="flow stages: Euler steps (default: the config's)")
    p.add_argument("--points", type=int, default=None, help="surface samples per shape, point metrics (default: "
                   "the stage's eval.points)")
    p.add_argument("--set-points", type=int, default=None, help="surface samples per shape, set metrics (default: "
                   "eval.set_points; --meshes: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--raw", action="store_true", help="the raw parameters instead of the EMA")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="report folder (default: <stage dir>/eval/step_<n>_seed_<s>, or "
                   "<meshes>/eval)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.workdir:
        report = evaluate_workdir(a.workdir, stage=a.stage, reference=a.reference, num=a.num, seed=a.seed,
                                  step=a.step, ema=not a.raw, progress=not a.no_progress, cfg=a.cfg,
                                  steps=a.steps, points=a.points, set_points=a.set_points)
        out = a.out or Path(report["workdir"]) / "eval" / f"step_{report['step']:07d}_seed_{a.seed}"
    else:
        if not a.reference:
            p.error("--meshes needs --reference RECORDS")
        report = evaluate_meshes(a.meshes, a.reference, family=a.family, num_reference=a.num_reference,
                                 seed=a.seed, normalize=a.normalize, set_points=a.set_points or 512)
        out = a.out or Path(a.meshes) / "eval"
    out = write_report(report, out)
    print(json.dumps(report["metrics"], indent=2))
    log.info("report: %s", out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
