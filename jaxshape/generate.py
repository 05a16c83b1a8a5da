"""``python -m jaxshape.generate --model DIR --image in.png [--image ...] --out OUT [--seed --steps --cfg --dtype]``

Image -> 3D with a released model folder (``jaxshape.pipelines.from_pretrained``): TRELLIS stage 1 (sparse
structure: ``coords.npy`` for TRELLIS's PyTorch stage 2, a voxel preview ``.glb`` + ``.png`` per sample) or
PartPacker (a ``.glb`` scene of coloured parts, each part and each volume's mesh, a ``.png`` preview). Each image
gets ``OUT/<image name>/``, a progress bar over the sampling steps and one summary line (time, voxels or parts,
faces). Images are sampled in groups of as many as there are devices, the group's batch sharded over them (one
device: one image at a time), and PartPacker's decode splits each chunk of query points over them; every image uses
the same ``--seed``, as upstream's scripts do, so its result does
not depend on the others. ``--image`` takes files or folders (their ``.png`` / ``.jpg`` / ``.webp`` files); an image
that fails is reported and the others carry on.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("jaxshape.generate")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_paths(items) -> list[Path]:
    """Files, and the image files of folders, in order (folders sorted); a missing path is an error."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--image {item}: no such file or folder")
    if not out:
        raise ValueError("no images: --image named no image files")
    return out


def _read_image(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P", "PA") else im.convert("RGB"))


def _data_mesh():
    import jax
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices()), ("data",))


def _shard(arrays, mesh):
    """Put ``arrays`` (leading batch axis, padded to a multiple of the device count) on the 1-D data mesh."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    n = mesh.devices.size
    out = []
    for a in arrays:
        a = jnp.asarray(a)
        pad = -a.shape[0] % n
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        out.append(jax.device_put(a, NamedSharding(mesh, PartitionSpec("data"))))
    return out


def _replicate(tree, mesh):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def generate(pipe, paths, out: Path, *, seed: int = 42, num_samples: int = 1, sampler: dict | None = None,
             decode_chunk: int | None = None, resolution: int | None = None, progress: bool = True) -> list[dict]:
    """Run ``pipe`` on every image of ``paths`` and write the results under ``out``; returns one summary per image
    (``{"image", "ok", "seconds", ...}``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    from jaxshape.pipelines import PartPackerPipeline, save_parts, save_sparse_structure

    partpacker = isinstance(pipe, PartPackerPipeline)
    sampler = dict(sampler or {})
    steps = sampler.get("steps", pipe.sampler["steps"])
    group = max(1, len(jax.devices()))
    mesh = _data_mesh() if group > 1 else None
    if mesh is not None:  # a copy of the pipeline whose sampled model's variables are on every device
        if partpacker:  # and the decode's query points split over the devices
            pipe = dataclasses.replace(pipe, dit_variables=_replicate(pipe.dit_variables, mesh),
                                       vae_variables=_replicate(pipe.vae_variables, mesh), decode_mesh=mesh)
        else:
            pipe = dataclasses.replace(pipe, flow_variables=_replicate(pipe.flow_variables, mesh))
    summaries = []
    paths = list(paths)
    for start in range(0, len(paths), group):
        chunk = paths[start:start + group]
        t0 = time.perf_counter()
        images, names = [], []
        for p in chunk:
            try:
                images.append(_read_image(p))
                names.append(p)
            except Exception as e:  # noqa: BLE001 - an unreadable image is reported, the rest carry on
                log.error("%s: cannot read the image (%s: %s)", p, type(e).__name__, e)
                summaries.append({"image": str(p), "ok": False, "error": f"{type(e).__name__}: {e}"})
        if not images:
            continue
        try:
            cond = pipe.get_cond(images)
        except Exception as e:  # noqa: BLE001
            for p in names:
                log.error("%s: preprocessing / encoding failed (%s: %s)", p, type(e).__name__, e)
                summaries.append({"image": str(p), "ok": False, "error": f"{type(e).__name__}: {e}"})
            continue
        shape = (num_samples,) + pipe.latent_shape()
        noise = jax.random.normal(jax.random.key(seed), shape, jnp.float32)  # the same noise for every image
        batch = len(names) * num_samples
        conds = jnp.repeat(cond, num_samples, axis=0)
        noises = jnp.tile(noise, (len(names),) + (1,) * (noise.ndim - 1))
        if mesh is not None:
            conds, noises = _shard([conds, noises], mesh)
        desc = names[0].name if len(names) == 1 else f"{len(names)} images"
        with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
            z = pipe.sample_latents(conds, num_samples=conds.shape[0], noise=noises, progress=bar.update,
                                    **sampler)
        z = np.asarray(z)[:batch]
        sample_s = (time.perf_counter() - t0) / len(names)
        for i, p in enumerate(names):
            t1 = time.perf_counter()
            zi = z[i * num_samples:(i + 1) * num_samples]
            target = out / p.stem
            try:
                if partpacker:
                    decode = {"chunk": decode_chunk} if decode_chunk else {}
                    if resolution:  # below 64 the grid is queried densely
                        decode.update(resolution=resolution, min_resolution=min(64, resolution))
                    result = pipe.decode_latents(jnp.asarray(zi), decode=decode)
                    save_parts(result, target, info={"image": str(p), "seed": seed})
                    n_parts = [len(parts) for parts in result["parts"]]
                    faces = [sum(len(q["faces"]) for q in parts) for parts in result["parts"]]
                    what = {"parts": n_parts, "faces": faces}
                    line = f"{sum(n_parts)} parts, {sum(faces):,} faces"
                else:
                    logits = pipe.decode(jnp.asarray(zi), decode_chunk or 1)
                    result = {"coords": pipe.coords(logits), "logits": logits, "latent": zi,
                              "coords_resolution": pipe.coords_resolution(logits)}
                    save_sparse_structure(result, target, info={"image": str(p), "seed": seed})
                    voxels = [int((result["coords"][:, 0] == b).sum()) for b in range(num_samples)]
                    what = {"voxels": voxels}
                    line = f"{sum(voxels):,} voxels"
            except Exception as e:  # noqa: BLE001
                log.error("%s: decoding / writing failed (%s: %s)", p, type(e).__name__, e)
                summaries.append({"image": str(p), "ok": False, "error": f"{type(e).__name__}: {e}"})
                continue
            seconds = sample_s + time.perf_counter() - t1
            print(f"{p.name}: {seconds:.1f} s, {num_samples} sample(s), {line} -> {target}", flush=True)
            summaries.append({"image": str(p), "ok": True, "seconds": seconds, "out": str(target), **what})
    return summaries


def generate_multi_image(pipe, paths, out: Path, *, mode: str = "stochastic", seed: int = 42, num_samples: int = 1,
                         sampler: dict | None = None, decode_chunk: int | None = None, progress: bool = True) -> dict:
    """TRELLIS's ``run_multi_image``: every image of ``paths`` is a view of one object; writes
    ``out/<first image name>_multi/``."""
    from tqdm import tqdm

    from jaxshape.pipelines import TrellisSparseStructurePipeline, save_sparse_structure

    if not isinstance(pipe, TrellisSparseStructurePipeline):
        raise ValueError("--multi-image is TRELLIS's (run_multi_image); PartPacker conditions on one image")
    paths = list(paths)
    t0 = time.perf_counter()
    images = [_read_image(p) for p in paths]
    sampler = dict(sampler or {})
    with tqdm(total=sampler.get("steps", pipe.sampler["steps"]), desc=f"{len(paths)} views ({mode})",
              disable=not progress, leave=False) as bar:
        result = pipe.run_multi_image(images, mode=mode, num_samples=num_samples, seed=seed,
                                      decode_chunk=decode_chunk or 1, progress=bar.update, **sampler)
    target = out / f"{paths[0].stem}_multi"
    save_sparse_structure(result, target, info={"images": [str(p) for p in paths], "mode": mode, "seed": seed})
    voxels = [int((result["coords"][:, 0] == b).sum()) for b in range(num_samples)]
    seconds = time.perf_counter() - t0
    print(f"{len(paths)} views ({mode}): {seconds:.1f} s, {num_samples} sample(s), {sum(voxels):,} voxels -> "
          f"{target}", flush=True)
    return {"image": ",".join(str(p) for p in paths), "ok": True, "seconds": seconds, "out": str(target),
            "voxels": voxels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxshape.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="released model folder (TRELLIS pipeline.json, PartPacker "
                                                   "flow.pt + vae.pt)")
    p.add_argument("--image", action="append", required=True, help="an image file or a folder of them (repeatable)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per image)")
    p.add_argument("--encoder", help="the DINO weights (hub .pth, HF folder or converted model); default: looked "
                                     "for in --model and the torch-hub / Hugging Face caches")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-samples", type=int, default=1, help="samples per image")
    p.add_argument("--steps", type=int, help="Euler steps (default: the release's)")
    p.add_argument("--cfg", type=float, help="guidance strength (default: the release's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--decode-chunk", type=int, help="memory knob: latents (TRELLIS) / query points (PartPacker) per "
                                                    "decoder call")
    p.add_argument("--resolution", type=int, help="PartPacker: the decode grid (default 384)")
    p.add_argument("--cache-dir", help="where converted weights are cached (default $JAXSHAPE_CACHE or "
                                       "~/.cache/jaxshape)")
    p.add_argument("--multi-image", choices=["stochastic", "multidiffusion"],
                   help="TRELLIS: all the images are views of one object (run_multi_image's modes)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.num_samples < 1:
        p.error(f"--num-samples must be >= 1, got {a.num_samples}")
    from jaxshape.pipelines import from_pretrained

    paths = image_paths(a.image)
    pipe = from_pretrained(a.model, encoder=a.encoder, cache_dir=a.cache_dir, dtype=a.dtype)
    cfg_key = "guidance_strength" if "guidance_strength" in pipe.sampler else "cfg_strength"  # TRELLIS.2's name
    sampler = {k: v for k, v in (("steps", a.steps), (cfg_key, a.cfg)) if v is not None}
    if a.multi_image:
        summaries = [generate_multi_image(pipe, paths, Path(a.out), mode=a.multi_image, seed=a.seed,
                                          num_samples=a.num_samples, sampler=sampler, decode_chunk=a.decode_chunk,
                                          progress=not a.no_progress)]
    else:
        summaries = generate(pipe, paths, Path(a.out), seed=a.seed, num_samples=a.num_samples, sampler=sampler,
                             decode_chunk=a.decode_chunk, resolution=a.resolution, progress=not a.no_progress)
    failed = [s for s in summaries if not s["ok"]]
    if failed:
        print(f"{len(failed)} of {len(summaries)} images failed: " + ", ".join(s["image"] for s in failed))
    return 1 if len(failed) == len(summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
