"""TRELLIS image -> sparse structure (jaxshape.pipelines.trellis) against the PyTorch glue of
tests/torch_reference/trellis_pipeline.py on tiny random models: a real HF DINOv2-with-registers (transformers) at
518 px and our mirrors of the SS flow and decoder, the same noise. Occupied coords identical, latents <= 1e-4 x
scale."""
import jax
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.convert.dino import dino_args_from_hf_config, to_hub_names
from jaxshape.models import DinoViT, SparseStructureDecoder, SparseStructureFlowModel
from jaxshape.pipelines import TrellisSparseStructurePipeline, save_sparse_structure, sparse_structure_coords
from tests.torch_reference import trellis_pipeline as TP
from tests.torch_reference import trellis_ss as T
from tests.utils import max_rel_err, randomize_state_dict

transformers = pytest.importorskip("transformers")
WIDTH = 32
FLOW = dict(resolution=4, in_channels=4, model_channels=32, cond_channels=WIDTH, out_channels=4, num_blocks=2,
            num_heads=2, patch_size=1, pe_mode="ape", qk_rms_norm=True)
DEC = dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8])


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _rgba(h=300, w=240):
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    inside = ((yy - 150) / 90.0) ** 2 + ((xx - 110) / 60.0) ** 2 <= 1
    img[inside] = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90), np.full_like(xx, 255)], -1)[inside]
    return img


@pytest.fixture(scope="module")
def models():
    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                                                 image_size=518, patch_size=14, num_register_tokens=4,
                                                 layerscale_value=0.5)
    torch.manual_seed(0)
    dino = transformers.Dinov2WithRegistersModel(cfg).eval()
    dino_sd = {k: v.numpy() for k, v in dino.state_dict().items()}
    dino.layernorm = torch.nn.Identity()  # TRELLIS's tap: the pre-final-norm stream
    encoder = DinoViT(**dino_args_from_hf_config(cfg.to_dict()))
    enc_vars = from_torch(encoder, to_hub_names(dino_sd))
    tflow = T.SparseStructureFlowModel(**FLOW).eval()
    tdec = T.SparseStructureDecoder(**DEC).eval()
    flow_model, decoder = SparseStructureFlowModel(**FLOW), SparseStructureDecoder(**DEC)
    pipe = TrellisSparseStructurePipeline(encoder, enc_vars, flow_model,
                                          from_torch(flow_model, randomize_state_dict(tflow, seed=1)),
                                          decoder, from_torch(decoder, randomize_state_dict(tdec, scale=0.3,
                                                                                            seed=2)))
    return pipe, dino, tflow, tdec


def test_stage1_matches_the_pytorch_pipeline(models, tmp_path):
    pipe, dino, tflow, tdec = models
    image = _rgba()
    pre = pipe.preprocess(image)
    assert pre.shape == (518, 518, 3) and float(pre[0, 0].max()) == 0.0  # TRELLIS's crop, on black
    cond_ref = TP.encode_image(dino, pre[None])
    noise = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(7))  # TRELLIS: NCDHW
    params = dict(steps=6, cfg_strength=7.5, cfg_interval=(0.5, 1.0), rescale_t=3.0)
    z_ref = TP.sample_guidance_interval(tflow, noise, cond_ref, **params)
    logits_ref, coords_ref = TP.decode_coords(tdec, z_ref)

    out = pipe(image, num_samples=2, noise=noise.numpy().transpose(0, 2, 3, 4, 1), **params)
    assert out["cond"].shape == (1, 1 + 4 + 37 * 37, WIDTH)
    assert max_rel_err(out["cond"], cond_ref.numpy()) <= 1e-5
    assert max_rel_err(out["latent"], z_ref.numpy().transpose(0, 2, 3, 4, 1)) <= 1e-4
    assert max_rel_err(out["logits"], logits_ref[:, 0]) <= 1e-4
    assert 0 < len(coords_ref) < 2 * 16 ** 3  # a non-trivial structure
    assert out["coords"].dtype == np.int32
    np.testing.assert_array_equal(out["coords"], coords_ref)
    # what is written: coords for TRELLIS's stage 2, and a preview per sample
    paths = save_sparse_structure(out, tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "coords.npy"), coords_ref)
    assert len(paths) == 2 and (tmp_path / "sample_0.png").is_file()


def test_defaults_seed_and_errors(models):
    pipe = models[0]
    cond = pipe.get_cond([_rgba()])
    a = pipe.sample_latents(cond, num_samples=1, seed=3, steps=2)
    b = pipe.sample_latents(cond, num_samples=1, seed=3, steps=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # seeded
    coords = sparse_structure_coords(np.array([[[[1.0, -1.0], [0.0, 2.0]], [[-1.0, -1.0], [-1.0, 3.0]]]]))
    np.testing.assert_array_equal(coords, [[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="unknown sampler parameters"):
        pipe.sample_latents(cond, cfg=3.0)
    with pytest.raises(ValueError, match="noise must have shape"):
        pipe.sample_latents(cond, noise=np.zeros((1, 8, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="must be RGBA"):
        pipe.preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="cond_channels"):
        TrellisSparseStructurePipeline(pipe.encoder, pipe.encoder_variables,
                                       SparseStructureFlowModel(**{**FLOW, "cond_channels": 64}), {},
                                       pipe.decoder, pipe.decoder_variables)


@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
def test_multi_image_matches_the_pytorch_pipeline(models, mode):
    pipe, dino, tflow, tdec = models
    images = [_rgba(), _rgba(260, 300), _rgba(200, 200)]
    pre = np.stack([pipe.preprocess(im) for im in images])
    cond_ref = TP.encode_image(dino, pre)
    noise = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(11))
    params = dict(steps=5, cfg_strength=7.5, cfg_interval=(0.5, 1.0), rescale_t=3.0)
    z_ref = TP.sample_multi_image(tflow, noise, cond_ref, mode=mode, **params)
    logits_ref, coords_ref = TP.decode_coords(tdec, z_ref)
    out = pipe.run_multi_image(images, mode=mode, num_samples=2, noise=noise.numpy().transpose(0, 2, 3, 4, 1),
                               **params)
    assert out["cond"].shape[0] == 3
    assert max_rel_err(out["latent"], z_ref.numpy().transpose(0, 2, 3, 4, 1)) <= 1e-4
    np.testing.assert_array_equal(out["coords"], coords_ref)
    one = pipe(images[0], num_samples=2, noise=noise.numpy().transpose(0, 2, 3, 4, 1), **params)
    assert max_rel_err(out["latent"], one["latent"]) > 1e-3  # the other views matter
    with pytest.raises(ValueError, match="mode must be"):
        pipe.run_multi_image(images, mode="average")
