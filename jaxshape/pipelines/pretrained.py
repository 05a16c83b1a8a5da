"""``from_pretrained(path)``: a pipeline from the released files as users download them.

* **TRELLIS** (``microsoft/TRELLIS-image-large``): ``pipeline.json`` (``"name": "TrellisImageTo3DPipeline"``) and
  the ``ckpts/<name>.{json,safetensors}`` it names for ``sparse_structure_flow_model`` and
  ``sparse_structure_decoder``; its ``sparse_structure_sampler.params`` become the pipeline's sampler defaults;
  ``image_cond_model`` (``dinov2_vitl14_reg``) names the encoder.
* **TRELLIS.2** (``microsoft/TRELLIS.2-4B``): ``pipeline.json`` (``"Trellis2ImageTo3DPipeline"``), stage 1 only: its
  ``ckpts/ss_flow_img_dit_1_3B_64_bf16`` and TRELLIS's decoder, which it names as a Hub path
  (``microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16``: looked for beside the folder and in the
  Hugging Face cache); the encoder DINOv3 ViT-L/16.
* **PartPacker** (``nvidia/PartPacker``): ``flow.pt`` (the DiT, keys ``dit.*``, optionally under ``"model"``) and
  ``vae.pt``; the released constructor args (``partpacker_dit``, ``partpacker_vae``), the encoder
  ``dinov2_vitg14``.

Neither release ships the DINO weights (TRELLIS fetches them with ``torch.hub``, PartPacker with
``transformers``); ``encoder=`` gives them (a hub ``.pth``, an HF folder, or a converted jaxshape model), else they
are looked for in ``path`` and then in the torch-hub and Hugging Face caches (:func:`find_encoder`).

Every official file is converted once (strictly; ``.pt`` read weights-only, nothing unpickled) and cached as a
jaxshape model (``model.json`` + Orbax ``variables/``) under ``cache_dir`` (default ``$JAXSHAPE_CACHE`` or
``~/.cache/jaxshape``, then ``converted/``), keyed by the file's absolute path, size and modification time and the
constructor args; later calls load the cache. A conversion is written to a temporary folder and renamed into
place, so an interrupted one is never taken for a cached model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

log = logging.getLogger("jaxshape")

TRELLIS_PIPELINES = ("TrellisImageTo3DPipeline", "Trellis2ImageTo3DPipeline")
# torch-hub file names of the DINOv2 releases, and the HF repositories of the same weights
HUB_FILES = {"dinov2_vitl14_reg": "dinov2_vitl14_reg4_pretrain.pth", "dinov2_vitl14": "dinov2_vitl14_pretrain.pth",
             "dinov2_vitg14": "dinov2_vitg14_pretrain.pth", "dinov2_vitg14_reg": "dinov2_vitg14_reg4_pretrain.pth"}
HF_REPOS = {"dinov2_vitl14_reg": "facebook/dinov2-with-registers-large", "dinov2_vitl14": "facebook/dinov2-large",
            "dinov2_vitg14": "facebook/dinov2-giant", "dinov2_vitg14_reg": "facebook/dinov2-with-registers-giant",
            "dinov3_vitl16": "facebook/dinov3-vitl16-pretrain-lvd1689m"}


def hf_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE", home / "hub"))


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("JAXSHAPE_CACHE", Path.home() / ".cache" / "jaxshape"))


def _file_key(weights: Path, name: Optional[str], args: dict, prefix: str) -> str:
    files = sorted(weights.rglob("*")) if weights.is_dir() else [weights]
    ident = [str(weights.absolute()), name, json.dumps(args, sort_keys=True, default=str), prefix]
    for f in files:
        if f.is_file():
            st = f.stat()
            ident += [f.name, st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def converted(weights: str | Path, name: Optional[str], args: Optional[dict] = None, *, prefix: str = "",
              cache_dir: Optional[str | Path] = None, **load_overrides):
    """``(module, variables)`` of an official weights file (or HF folder) converted to ``name(**args)``, from the
    cache when it is there (see the module docstring)."""
    from jaxshape.convert.cli import convert
    from jaxshape.models import load

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"weights not found: {weights}")
    args = dict(args or {})
    out = cache_root(cache_dir) / "converted" / f"{weights.stem}-{_file_key(weights, name, args, prefix)}"
    if not (out / "model.json").is_file():
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        log.info("converting %s -> %s (once)", weights, out)
        convert(name, args, weights, tmp, prefix=prefix)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same conversion first
            if not (out / "model.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return load(out, **load_overrides)


def find_encoder(name: str, search: tuple = ()) -> Path:
    """The DINO weights of the hub model ``name``: in each folder of ``search`` (the hub file, or an HF folder
    named like the repository, e.g. ``dinov2-giant/``), then the torch-hub cache (``$TORCH_HOME/hub/checkpoints``)
    and the Hugging Face cache (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``: ``models--facebook--<repo>/snapshots/*``).
    A clear error lists where it looked."""
    hub_file = HUB_FILES.get(name)
    repo = HF_REPOS.get(name)
    looked = []
    for d in map(Path, search):
        if hub_file:
            looked.append(d / hub_file)
            if looked[-1].is_file():
                return looked[-1]
        if repo:
            looked.append(d / repo.split("/")[1])
            if (looked[-1] / "config.json").is_file():
                return looked[-1]
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    if hub_file:
        looked.append(torch_home / "hub" / "checkpoints" / hub_file)
        if looked[-1].is_file():
            return looked[-1]
    if repo:
        snaps = hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
        looked.append(snaps / "*")
        for snap in sorted(snaps.glob("*")) if snaps.is_dir() else []:
            if (snap / "config.json").is_file():
                return snap
    raise FileNotFoundError(
        f"the image encoder {name!r} was not found; give encoder= (a torch-hub .pth, an HF folder or a converted "
        f"jaxshape model). Looked for: " + ", ".join(str(p) for p in looked))


def _encoder(encoder, name: str, search: tuple, cache_dir):
    from jaxshape.models import load

    path = Path(encoder) if encoder is not None else find_encoder(name, search)
    if not path.exists():
        raise FileNotFoundError(f"encoder weights not found: {path}")
    if (path / "model.json").is_file():  # already a jaxshape model
        return load(path)
    if path.is_dir():  # an HF folder: its config.json says which ViT
        return converted(path, None, cache_dir=cache_dir)
    return converted(path, name, cache_dir=cache_dir)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {what}")
    return path


def _model_base(path: Path, ref: str) -> Path:
    """Where ``pipeline.json``'s model reference ``ref`` lives: ``path/ref`` (upstream tries it first), else, for a
    Hub reference ``org/repo/ckpts/name`` (TRELLIS.2 names TRELLIS's decoder so), the repository beside ``path``
    (``path/../repo/ckpts/name``) or in the Hugging Face cache."""
    tried = [path / ref]
    parts = ref.split("/")
    if len(parts) > 2:
        org, repo, rest = parts[0], parts[1], "/".join(parts[2:])
        tried.append(path.parent / repo / rest)
        snaps = hf_cache() / f"models--{org}--{repo}" / "snapshots"
        tried += sorted(snaps.glob("*/" + rest)) if snaps.is_dir() else [snaps / "*" / rest]
    for base in tried:
        if base.with_name(base.name + ".json").is_file():
            return base
    raise FileNotFoundError(f"pipeline.json's model {ref!r} was not found; looked for <name>.json + "
                            f".safetensors at: " + ", ".join(str(b) for b in tried))


def _trellis(path: Path, spec: dict, encoder, cache_dir, dtype, overrides):
    from jaxshape.convert.readers import read_model_json
    from jaxshape.pipelines.trellis import TrellisSparseStructurePipeline
    from jaxshape.pipelines.trellis2 import Trellis2SparseStructurePipeline

    v2 = spec["name"] == "Trellis2ImageTo3DPipeline"
    cls = Trellis2SparseStructurePipeline if v2 else TrellisSparseStructurePipeline
    args = spec.get("args", {})
    models = args.get("models", {})
    loaded = {}
    for key in ("sparse_structure_flow_model", "sparse_structure_decoder"):
        if key not in models:
            raise ValueError(f"{path / 'pipeline.json'}: args.models has no {key!r} (stage 1 needs it)")
        base = _model_base(path, models[key])
        cfg = base.with_name(base.name + ".json")
        weights = _require(base.with_name(base.name + ".safetensors"), f"the weights of {key} named by pipeline.json")
        name, margs = read_model_json(cfg)
        if v2 and key == "sparse_structure_flow_model":
            margs["upstream"] = "trellis2"
            margs.pop("dtype", None)  # the compute dtype is the pipeline's (dtype=)
        margs.update(overrides.get(key, {}))
        loaded[key] = converted(weights, name, margs, cache_dir=cache_dir)
    enc_spec = args.get("image_cond_model", "dinov2_vitl14_reg")
    if isinstance(enc_spec, dict):  # TRELLIS.2: {"name": "DinoV3FeatureExtractor", "args": {"model_name": <HF id>}}
        hf_id = enc_spec.get("args", {}).get("model_name", HF_REPOS["dinov3_vitl16"])
        by_repo = {v: k for k, v in HF_REPOS.items()}
        if hf_id not in by_repo:
            raise ValueError(f"{path / 'pipeline.json'}: image_cond_model {hf_id!r} is not a known encoder "
                             f"({sorted(by_repo)})")
        enc_spec = by_repo[hf_id]
    enc, enc_vars = _encoder(encoder, enc_spec, (path, path / "ckpts"), cache_dir)
    params = args.get("sparse_structure_sampler", {}).get("params", {})
    sampler = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in cls.SAMPLER_DEFAULTS}
    (flow, flow_vars), (dec, dec_vars) = loaded["sparse_structure_flow_model"], loaded["sparse_structure_decoder"]
    extra = {"pipeline_type": args.get("default_pipeline_type", "1024_cascade")} if v2 else {}
    return cls(enc, enc_vars, flow, flow_vars, dec, dec_vars, dtype=dtype, sampler=sampler, **extra)


def _partpacker(path: Path, encoder, cache_dir, dtype, overrides):
    from jaxshape.models.released import released_args
    from jaxshape.pipelines.partpacker import PartPackerPipeline

    flow_pt = _require(path / "flow.pt", "PartPacker's DiT weights (nvidia/PartPacker flow.pt)")
    vae_pt = _require(path / "vae.pt", "PartPacker's VAE weights (nvidia/PartPacker vae.pt)")
    _, dit_args = released_args("partpacker_dit")
    _, vae_args = released_args("partpacker_vae")
    dit_args.update(overrides.get("dit", {}))
    vae_args.update(overrides.get("vae", {}))
    dit, dit_vars = converted(flow_pt, "VecSetDiT", dit_args, prefix="dit.", cache_dir=cache_dir)
    vae, vae_vars = converted(vae_pt, "VecSetVAE", vae_args, cache_dir=cache_dir)
    enc, enc_vars = _encoder(encoder, "dinov2_vitg14", (path,), cache_dir)
    return PartPackerPipeline(enc, enc_vars, dit, dit_vars, vae, vae_vars, dtype=dtype or "bfloat16")


def from_pretrained(path: str | Path, *, encoder: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None,
                    dtype: Optional[str] = None, overrides: Optional[dict] = None):
    """The pipeline of a released model folder: a :class:`~jaxshape.pipelines.TrellisSparseStructurePipeline` for
    a TRELLIS folder (``pipeline.json``), a :class:`~jaxshape.pipelines.PartPackerPipeline` for a PartPacker one
    (``flow.pt`` + ``vae.pt``).

    Args:
      path: the downloaded folder (e.g. ``huggingface_hub.snapshot_download("microsoft/TRELLIS-image-large")``).
      encoder: the DINO weights (hub ``.pth``, HF folder or converted model); default: :func:`find_encoder`.
      cache_dir: where conversions are cached (see the module docstring).
      dtype: compute dtype, ``"float32"`` / ``"bfloat16"`` (``None``: TRELLIS's modules keep their ``use_fp16``
        rule, PartPacker runs in bf16 as upstream).
      overrides: constructor args per component, for checkpoints of other sizes than the release:
        ``{"sparse_structure_flow_model": {...}, "sparse_structure_decoder": {...}}`` (TRELLIS; on top of the
        JSON) or ``{"dit": {...}, "vae": {...}}`` (PartPacker; on top of the released args).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give the downloaded model folder")
    overrides = dict(overrides or {})
    pj = path / "pipeline.json"
    if pj.is_file():
        try:
            spec = json.loads(pj.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{pj}: not valid JSON ({e})") from None
        name = spec.get("name")
        if name not in TRELLIS_PIPELINES:
            raise ValueError(f"{pj}: pipeline {name!r} is not supported; supported: {list(TRELLIS_PIPELINES)}")
        return _trellis(path, spec, encoder, cache_dir, dtype, overrides)
    if (path / "flow.pt").exists() or (path / "vae.pt").exists():
        return _partpacker(path, encoder, cache_dir, dtype, overrides)
    raise FileNotFoundError(f"{path} is neither a TRELLIS folder (pipeline.json + ckpts/) nor a PartPacker folder "
                            f"(flow.pt + vae.pt)")
