"""TRELLIS.2 image -> sparse structure (jaxshape.pipelines.trellis2) against the PyTorch + Pillow glue of
tests/torch_reference/trellis2_pipeline.py on tiny random models: a real HF DINOv3 (transformers) at 512 px, our
mirrors of TRELLIS.2's SS flow (RoPE, shared modulation) and TRELLIS's decoder, the same noise. Preprocessed
image equal, condition <= 1e-5, latents <= 1e-4 x scale, pooled coords identical."""
import jax
import numpy as np
import pytest
import torch

from jaxshape.convert import from_torch
from jaxshape.convert.dino import dino_args_from_hf_config, to_hub_names
from jaxshape.flow import euler_sample
from jaxshape.models import DinoViT, SparseStructureDecoder, SparseStructureFlowModel
from jaxshape.pipelines.trellis2 import T2_SAMPLER_DEFAULTS, Trellis2SparseStructurePipeline, pooled_coords
from tests.torch_reference import trellis2_pipeline as TP2
from tests.torch_reference import trellis2_ss_flow as T2
from tests.torch_reference import trellis_ss as T
from tests.utils import max_rel_err, randomize_state_dict

transformers = pytest.importorskip("transformers")
WIDTH = 32
FLOW = dict(resolution=16, in_channels=4, out_channels=4, model_channels=32, cond_channels=WIDTH, num_blocks=2,
            num_heads=2, pe_mode="rope", share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True, mlp_ratio=5.3334)
DEC = dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 8, 4])


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _rgba(h=700, w=1300):  # wider than 1024: the downscale runs
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    inside = ((yy - 330) / 250.0) ** 2 + ((xx - 700) / 400.0) ** 2 <= 1
    img[inside] = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90), np.full_like(xx, 230)],
                           -1)[inside]
    return img


@pytest.fixture(scope="module")
def models():
    cfg = transformers.DINOv3ViTConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, num_register_tokens=4, patch_size=16, image_size=512)
    torch.manual_seed(0)
    dino = transformers.DINOv3ViTModel(cfg).eval()
    encoder = DinoViT(**dino_args_from_hf_config(cfg.to_dict()))
    enc_vars = from_torch(encoder, to_hub_names({k: v.numpy() for k, v in dino.state_dict().items()}))
    dino.norm = torch.nn.Identity()  # TRELLIS.2's extract_features stops before the final norm
    tflow = T2.SparseStructureFlowModel(**FLOW).eval()
    sd = {k: v.numpy() for k, v in tflow.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for k in sd:
        if k != "rope_phases":
            sd[k] = (torch.randn(sd[k].shape, generator=g) * 0.2).numpy() + (1.0 if k.endswith(
                ("gamma", "norm2.weight")) else 0.0)
    tflow.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    tdec = T.SparseStructureDecoder(**DEC).eval()
    flow_model = SparseStructureFlowModel(**FLOW, upstream="trellis2")
    decoder = SparseStructureDecoder(**DEC)
    pipe = Trellis2SparseStructurePipeline(encoder, enc_vars, flow_model, from_torch(flow_model, sd), decoder,
                                           from_torch(decoder, randomize_state_dict(tdec, scale=0.3, seed=2)),
                                           pipeline_type="1024_cascade")
    return pipe, dino, tflow, tdec


def test_stage1_matches_the_pytorch_pipeline(models, tmp_path):
    pipe, dino, tflow, tdec = models
    image = _rgba()
    pre = pipe.preprocess(image)
    np.testing.assert_array_equal(pre, TP2.preprocess(image, 512))
    assert pre.shape == (512, 512, 3) and float(pre[0, 0].max()) == 0.0
    cond_ref = TP2.encode_image(dino, pre[None])
    noise = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    params = dict(T2_SAMPLER_DEFAULTS, steps=4)
    z_ref = TP2.sample(tflow, noise, cond_ref, **params)
    coords_ref = TP2.decode_coords(tdec, z_ref, 32)

    out = pipe(image, num_samples=2, noise=noise.numpy().transpose(0, 2, 3, 4, 1), steps=4)
    assert out["cond"].shape == (1, 1 + 4 + 32 * 32, WIDTH)
    assert max_rel_err(out["cond"], cond_ref.numpy()) <= 1e-5
    assert max_rel_err(out["latent"], z_ref.numpy().transpose(0, 2, 3, 4, 1)) <= 1e-4
    assert out["logits"].shape == (2, 64, 64, 64) and out["coords_resolution"] == 32
    assert 0 < len(coords_ref) < 2 * 32 ** 3 and coords_ref[:, 1:].max() < 32
    np.testing.assert_array_equal(out["coords"], coords_ref)


def test_guidance_rule_and_rescale_against_closed_form():
    """One guided step of the trellis2 convention on a linear 'model' equals the formula written out in NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    a_c, a_u = np.float32(0.7), np.float32(-0.4)

    def velocity(p, xx, t, c):  # v = x * c[:, :1, :1]: the condition scales the state
        return xx * c[:, :1, :1]

    cond, uncond = np.full((2, 1, 1), a_c, np.float32), np.full((2, 1, 1), a_u, np.float32)
    t0, t1 = 0.8, 0.5
    out = np.asarray(euler_sample(velocity, x, cond, uncond, [t0, t1], guidance=3.0, convention="trellis2",
                                  guidance_interval=(0.6, 1.0), guidance_rescale=0.7, params={}))
    vc, vu = x * a_c, x * a_u
    v = 3.0 * vc + (1 - 3.0) * vu
    s = 1e-5
    a = s + (1 - s) * t0
    x0p, x0c = (1 - s) * x - a * vc, (1 - s) * x - a * v
    sd = lambda y: y.reshape(2, -1).std(axis=1, ddof=1)[:, None, None]  # noqa: E731
    x0 = 0.7 * x0c * sd(x0p) / sd(x0c) + 0.3 * x0c
    expected = x - np.float32(t0 - t1) * (((1 - s) * x - x0) / a)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_pooled_coords_and_errors(models):
    logits = np.full((1, 4, 4, 4), -1.0)
    logits[0, 3, 0, 1] = 2.0
    np.testing.assert_array_equal(pooled_coords(logits, 2), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(pooled_coords(logits, 4), [[0, 3, 0, 1]])
    pipe = models[0]
    with pytest.raises(ValueError, match="pipeline_type must be"):
        Trellis2SparseStructurePipeline(pipe.encoder, pipe.encoder_variables, pipe.flow_model, pipe.flow_variables,
                                        pipe.decoder, pipe.decoder_variables, pipeline_type="2048")
    with pytest.raises(ValueError, match="unknown sampler parameters"):
        pipe.sample_latents(pipe.get_cond([_rgba()]), cfg_strength=3.0)
    with pytest.raises(ValueError, match="BiRefNet"):
        pipe.preprocess(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="no multi-image mode"):
        pipe.run_multi_image([_rgba(), _rgba()])
