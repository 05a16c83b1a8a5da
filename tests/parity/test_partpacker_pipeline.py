"""PartPacker image -> parts (jaxshape.pipelines.partpacker) against the PyTorch glue of
tests/torch_reference/partpacker_pipeline.py on tiny random models: a real HF ``Dinov2Model`` (transformers) at 518 px
with its final layernorm removed, our mirrors of the DiT and the VAE, PyMCubes for the reference meshes, the same
noise. Condition <= 1e-5, latents <= 1e-4 x scale, hierarchical SDF grids <= 1e-4 (the same cells queried), the
meshes' vertex sets equal before post-processing."""
import json

import jax
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.convert.dino import dino_args_from_hf_config, to_hub_names
from jaxshape.geometry import extract_mesh
from jaxshape.models import DinoViT, VecSetDiT, VecSetVAE
from jaxshape.pipelines.partpacker import PART_PALETTE, PartPackerPipeline, clean_mesh, save_parts, split_parts
from tests.torch_reference import partpacker as pp
from tests.torch_reference import partpacker_pipeline as PP
from tests.utils import max_rel_err

transformers = pytest.importorskip("transformers")
mcubes = pytest.importorskip("mcubes")
WIDTH = 32
DIT = dict(hidden_dim=WIDTH, num_heads=2, latent_size=16, latent_dim=8, num_layers=2, qknorm=True,
           qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
VAE = dict(hidden_dim=32, num_heads=2, num_dec_layers=1, dec_hidden_dim=32, dec_num_heads=2, point_fourier_dim=24,
           query_hidden_dim=32, query_num_heads=2, latent_dim=8, qknorm_type="RMSNorm")
DECODE = dict(resolution=32, min_resolution=8, chunk=1024)


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _randomize(module, seed: int, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        std = scale / np.sqrt(v.shape[-1]) if v.ndim >= 2 else 0.5
        sd[k] = torch.randn(v.shape, generator=g) * std
    module.load_state_dict(sd)
    module.eval()
    return {k: v.numpy() for k, v in sd.items()}


def _rgba(h=260, w=300):
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    inside = ((yy - 120) / 80.0) ** 2 + ((xx - 160) / 110.0) ** 2 <= 1
    img[inside] = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 60), np.full_like(xx, 255)],
                           -1)[inside]
    return img


@pytest.fixture(scope="module")
def models():
    cfg = transformers.Dinov2Config(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, image_size=518,
                                    patch_size=14, layerscale_value=0.5)
    torch.manual_seed(0)
    dino = transformers.Dinov2Model(cfg).eval()
    dino_sd = {k: v.numpy() for k, v in dino.state_dict().items()}
    dino.layernorm = torch.nn.Identity()  # PartPacker's tap: the pre-final-norm stream
    encoder = DinoViT(**dino_args_from_hf_config(cfg.to_dict()))
    tdit = pp.DiT(gradient_checkpointing=False, **DIT)
    tvae = pp.Model(pp.ModelConfig(**VAE))
    dit, vae = VecSetDiT(gradient_checkpointing=False, **DIT), VecSetVAE(**VAE)
    vae_sd = _randomize(tvae, 2)
    with torch.no_grad():  # shift the random field so that its zero level set crosses the volume, and scale it so
        tvae.proj_out.bias.add_(0.6).mul_(5)  # that it is far from 0 away from the surface (as a TSDF): the
        tvae.proj_out.weight.mul_(5)  # hierarchical decode then skips cells
    vae_sd["proj_out.bias"] = tvae.proj_out.bias.detach().numpy().copy()
    vae_sd["proj_out.weight"] = tvae.proj_out.weight.detach().numpy().copy()
    pipe = PartPackerPipeline(encoder, from_torch(encoder, to_hub_names(dino_sd)),
                              dit, from_torch(dit, _randomize(tdit, 1, 0.5)),
                              vae, from_torch(vae, vae_sd), dtype="float32")
    return pipe, dino, tdit, tvae


def _same_vertex_set(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-5):
    from scipy.spatial import cKDTree

    assert ours.shape == ref.shape
    assert cKDTree(ref).query(ours)[0].max() <= atol
    assert cKDTree(ours).query(ref)[0].max() <= atol


def test_parts_pipeline_matches_the_pytorch_pipeline(models, tmp_path):
    pipe, dino, tdit, tvae = models
    image = _rgba()
    pre = pipe.preprocess(image)
    assert pre.shape == (518, 518, 3) and np.all(pre[0, 0] == 1.0)  # PartPacker's framing, on white
    cond_ref = PP.encode_image(dino, pre[None])
    noise = torch.randn(1, 32, 8, generator=torch.Generator().manual_seed(3))  # 2 volumes x 16 tokens
    z_ref = PP.sample(tdit, noise, cond_ref, steps=6, cfg_scale=7.0, shift=3.0)
    out = pipe(image, noise=noise.numpy(), steps=6, decode=DECODE)

    assert out["cond"].shape == (1, 1 + 37 * 37, WIDTH)
    assert max_rel_err(out["cond"], cond_ref.numpy()) <= 1e-5
    assert max_rel_err(out["latent"], z_ref.numpy()) <= 1e-4
    for k, vol in enumerate((z_ref[:, :16], z_ref[:, 16:])):
        g_ref = PP.decode_hierarchical(tvae, vol, DECODE["resolution"], DECODE["min_resolution"])
        g = out["grids"][0][k]
        np.testing.assert_array_equal(np.isnan(g), np.isnan(g_ref))  # the same cells queried
        assert 0.05 < np.isfinite(g).mean() < 1  # hierarchical: not every cell
        assert max_rel_err(np.nan_to_num(g), np.nan_to_num(g_ref)) <= 1e-4
        v_ref, f_ref = PP.extract_mesh(g_ref)
        assert len(f_ref) > 100  # a real surface
        import trimesh

        ours = trimesh.Trimesh(*out["meshes"][0][k])  # the same default processing as infer.py
        assert len(ours.faces) == len(f_ref)
        _same_vertex_set(np.asarray(ours.vertices), v_ref, atol=1e-4)  # from grids equal to <= 1e-4
        v_same, f_same = PP.extract_mesh(g)  # PyMCubes on our grid: our marching cubes exactly
        assert len(f_same) == len(ours.faces)
        _same_vertex_set(np.asarray(ours.vertices), v_same, atol=1e-6)

    # parts: every part is one connected component of a cleaned volume, coloured in palette order
    parts = out["parts"][0]
    assert parts and all(len(p["faces"]) > 10 for p in parts)
    np.testing.assert_array_equal([p["color"][:3] for p in parts], PART_PALETTE[np.arange(len(parts)) % 29])
    cleaned = [clean_mesh(*m) for m in out["meshes"][0]]
    every = split_parts(cleaned, min_faces=1)
    assert [len(p["faces"]) for p in parts] == [len(p["faces"]) for p in every if len(p["faces"]) > 10]
    scenes = save_parts(out, tmp_path)
    assert scenes == [str(tmp_path / "sample_0.glb")]
    row = json.loads((tmp_path / "samples.jsonl").read_text())
    assert len(row["parts"]) == len(parts) and (tmp_path / "sample_0.png").exists()
    assert {p["volume"] for p in row["parts"]} <= {0, 1}
    import trimesh

    scene = trimesh.load(scenes[0])
    assert len(scene.geometry) == len(parts)


def test_seeded_noise_is_reproducible_and_bfloat16_tracks_float32(models):
    pipe = models[0]
    a = pipe(_rgba(), steps=4, seed=5, decode=DECODE, postprocess=False)
    b = pipe(_rgba(), steps=4, seed=5, decode=DECODE, postprocess=False)
    np.testing.assert_array_equal(a["latent"], b["latent"])
    bf = PartPackerPipeline(pipe.encoder, pipe.encoder_variables, pipe.dit, pipe.dit_variables, pipe.vae,
                            pipe.vae_variables, dtype="bfloat16")
    c = bf(_rgba(), steps=4, seed=5, decode=DECODE, postprocess=False)
    assert c["latent"].dtype == np.float32
    assert 0 < max_rel_err(c["latent"], a["latent"]) <= 0.1
    inside_a, inside_c = np.nan_to_num(a["grids"][0][0], nan=-1) > 0, np.nan_to_num(c["grids"][0][0], nan=-1) > 0
    iou = (inside_a & inside_c).sum() / max((inside_a | inside_c).sum(), 1)
    assert iou > 0.8


def test_clean_mesh_drops_small_components_and_degenerate_faces():
    big_v, big_f = extract_mesh(_ball(32, 0.6))
    small_v, small_f = extract_mesh(_ball(32, 0.6))
    small_v = small_v * 0.02 + 0.9  # a tiny far-away copy: diameter well under 5 % of the bbox diagonal
    v = np.concatenate([big_v, small_v, big_v[big_f[0, :1]]])  # + an equal copy of one vertex
    dup = [len(v) - 1, big_f[0, 1], big_f[0, 2]]  # face 0 again, through the copy: merged, then a duplicate
    f = np.concatenate([big_f, small_f + len(big_v), [[0, 0, 1]], [dup]])
    cv, cf = clean_mesh(v, f)
    assert len(cf) == len(big_f)
    _same_vertex_set(cv, big_v)
    with pytest.raises(ValueError, match="dtype"):
        PartPackerPipeline(None, {}, None, {}, None, {}, dtype="fp16")


def _ball(r, radius):
    a = np.linspace(-1, 1, r + 1)
    x, y, z = np.meshgrid(a, a, a, indexing="ij")
    return (radius - np.sqrt(x ** 2 + y ** 2 + z ** 2)).astype(np.float32)
