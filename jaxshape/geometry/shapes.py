"""Generated or reconstructed shapes as files: a ``.glb`` mesh (y-up), a three-view ``.png`` preview and any
arrays that go with it (``.npy``), one set per shape, plus an index of what was written."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jaxshape.geometry.mesh import export_mesh
from jaxshape.geometry.preview import save_preview

log = logging.getLogger("jaxshape")


@dataclasses.dataclass
class Shape:
    """One output shape in the model frame (z-up): ``vertices [V, 3]`` float32, ``faces [F, 3]`` int64 (outward),
    ``arrays``: saved beside the mesh (e.g. the decoded ``occupancy`` grid), ``info``: JSON-able facts (e.g. the
    class label it was sampled for)."""

    vertices: np.ndarray
    faces: np.ndarray
    arrays: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)


def save_shapes(shapes: Sequence[Shape], directory: str | Path, infos: Optional[Sequence[dict]] = None) -> list[str]:
    """Write ``sample_<i>.glb`` + ``sample_<i>.png`` (and ``sample_<i>_<name>.npy`` for each array) per shape and
    ``samples.jsonl`` (one row per shape: files, vertex/face counts, ``info``). A shape with an empty surface gets
    its arrays and its row but no mesh (a warning says so). Returns the ``.glb`` paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for i, shape in enumerate(shapes):
        row = {"index": i, **shape.info, **(infos[i] if infos is not None else {}),
               "vertices": int(len(shape.vertices)), "faces": int(len(shape.faces))}
        for name, arr in shape.arrays.items():
            np.save(directory / f"sample_{i}_{name}.npy", arr)
            row[name] = f"sample_{i}_{name}.npy"
        if len(shape.faces) == 0:
            log.warning("sample %d has an empty surface; no mesh written", i)
        else:
            glb = directory / f"sample_{i}.glb"
            export_mesh(shape.vertices, shape.faces, glb, glb_up=True)
            save_preview(shape.vertices, shape.faces, directory / f"sample_{i}.png")
            row.update(mesh=glb.name, preview=f"sample_{i}.png")
            written.append(str(glb))
        rows.append(row)
    (directory / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return written


def occupancy_shapes(logits: Sequence) -> list[Shape]:
    """Meshes of decoded sparse-structure logit grids ``[R, R, R]`` (occupied iff > 0; TRELLIS frame), each with
    its occupancy grid beside it (saved as ``sample_<i>_occupancy.npy``)."""
    from jaxshape.geometry.voxels import voxel_field_mesh

    out = []
    for grid in logits:
        v, f = voxel_field_mesh(grid)
        out.append(Shape(v, f, arrays={"occupancy": np.asarray(grid) > 0}))
    return out
