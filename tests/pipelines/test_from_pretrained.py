"""from_pretrained on tiny random-weight folders written in the official layouts: TRELLIS's pipeline.json +
ckpts/*.{json,safetensors} (fp16 tensors, as released) and PartPacker's flow.pt ({"model": {"dit.*"}}) + vae.pt,
with the DINO weights as HF folders (found in the Hugging Face cache layout, or given). The loaded pipeline gives
the same result as one built from the same state dicts by hand; the second call reads the conversion cache."""
import json

import jax
import numpy as np
import pytest
import torch

import jaxshape.convert.cli
from jaxshape.convert import from_torch
from jaxshape.convert.dino import dino_args_from_hf_config, to_hub_names
from jaxshape.models import DinoViT, SparseStructureDecoder, SparseStructureFlowModel, VecSetDiT, VecSetVAE
from jaxshape.pipelines import PartPackerPipeline, TrellisSparseStructurePipeline, find_encoder, from_pretrained
from tests.torch_reference import partpacker as pp
from tests.torch_reference import trellis_ss as T
from tests.utils import randomize_state_dict

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
FLOW = dict(resolution=4, in_channels=4, model_channels=32, cond_channels=32, out_channels=4, num_blocks=2,
            num_heads=2, patch_size=1, pe_mode="ape", qk_rms_norm=True)
DEC = dict(out_channels=1, latent_channels=4, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8])
DIT = dict(hidden_dim=32, num_heads=2, latent_size=8, latent_dim=8, num_layers=1)
VAE = dict(hidden_dim=32, num_heads=2, num_dec_layers=1, dec_hidden_dim=32, dec_num_heads=2, point_fourier_dim=24,
           query_hidden_dim=32, query_num_heads=2, latent_dim=8, qknorm_type="RMSNorm")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHAPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with jax.default_matmul_precision("highest"):
        yield


def _rgba(h=200, w=180):
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    inside = ((yy - 100) / 70.0) ** 2 + ((xx - 90) / 50.0) ** 2 <= 1
    img[inside] = (200, 120, 60, 255)
    return img


def _hf_dino(folder, registers: bool):
    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=518, patch_size=14,
              layerscale_value=0.5)
    torch.manual_seed(0)
    if registers:
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=4,
                                                                                             **kw))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    model.save_pretrained(folder)
    config = model.config.to_dict()
    encoder = DinoViT(**dino_args_from_hf_config(config))
    return encoder, from_torch(encoder, to_hub_names({k: v.numpy() for k, v in model.state_dict().items()}))


def _trellis_folder(root):
    ckpts = root / "ckpts"
    ckpts.mkdir(parents=True)
    sds = {}
    for name, cls, tcls, args in (("ss_flow_img_dit_L_16l8_fp16", "SparseStructureFlowModel",
                                   T.SparseStructureFlowModel, FLOW),
                                  ("ss_dec_conv3d_16l8_fp16", "SparseStructureDecoder", T.SparseStructureDecoder,
                                   DEC)):
        sd = randomize_state_dict(tcls(**args), scale=0.3, seed=len(sds) + 1)
        sd = {k: torch.from_numpy(v).half() for k, v in sd.items()}  # released tensors are fp16
        safetensors_torch.save_file(sd, str(ckpts / f"{name}.safetensors"))
        (ckpts / f"{name}.json").write_text(json.dumps({"name": cls, "args": dict(args, use_fp16=True)}))
        sds[name] = {k: v.float().numpy() for k, v in sd.items()}
    (root / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16",
                   "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
                   "slat_flow_model": "ckpts/slat_flow_img_dit_L_64l8p2_fp16"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": 4, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0],
                                                "rescale_t": 3.0}},
        "image_cond_model": "dinov2_vitl14_reg"}}))
    return sds


def test_trellis_folder(tmp_path, monkeypatch):
    sds = _trellis_folder(tmp_path / "TRELLIS-image-large")
    # the DINO weights where transformers would have put them
    snap = tmp_path / "hf" / "models--facebook--dinov2-with-registers-large" / "snapshots" / "0123abc"
    encoder, enc_vars = _hf_dino(snap, registers=True)
    assert find_encoder("dinov2_vitl14_reg") == snap

    pipe = from_pretrained(tmp_path / "TRELLIS-image-large", dtype="float32")
    assert isinstance(pipe, TrellisSparseStructurePipeline)
    assert pipe.sampler["steps"] == 4 and pipe.sampler["cfg_interval"] == (0.5, 1.0)  # from pipeline.json
    flow = SparseStructureFlowModel(**FLOW, use_fp16=True)
    dec = SparseStructureDecoder(**dict(DEC, channels=tuple(DEC["channels"])), use_fp16=True)
    ref = TrellisSparseStructurePipeline(encoder, enc_vars, flow, from_torch(flow, sds["ss_flow_img_dit_L_16l8_fp16"]),
                                         dec, from_torch(dec, sds["ss_dec_conv3d_16l8_fp16"]), dtype="float32",
                                         sampler={"steps": 4})
    a, b = pipe(_rgba(), num_samples=2, seed=1), ref(_rgba(), num_samples=2, seed=1)
    np.testing.assert_array_equal(a["latent"], b["latent"])
    np.testing.assert_array_equal(a["coords"], b["coords"])

    # the second call converts nothing
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(jaxshape.convert.cli, "convert", no_conversion)
    again = from_pretrained(tmp_path / "TRELLIS-image-large", dtype="float32")
    np.testing.assert_array_equal(again(_rgba(), num_samples=2, seed=1)["latent"], a["latent"])
    assert not list((tmp_path / "cache" / "converted").glob("*.tmp-*"))


def _partpacker_folder(root, vae_shift: float = 0.0):
    """``flow.pt`` ({"model": {"dit.*"}}, as released) and ``vae.pt`` of tiny random mirrors; their state dicts."""
    root.mkdir()
    tdit = pp.DiT(gradient_checkpointing=False, **DIT, qknorm=True, qknorm_type="RMSNorm", use_parts=True)
    tvae = pp.Model(pp.ModelConfig(**VAE))
    dit_sd = randomize_state_dict(tdit, scale=0.2, seed=3)
    vae_sd = randomize_state_dict(tvae, scale=0.2, seed=4)
    vae_sd["proj_out.bias"] = vae_sd["proj_out.bias"] + vae_shift  # where the field's zero level set lies
    torch.save({"model": {"dit." + k: torch.from_numpy(v) for k, v in dit_sd.items()}}, root / "flow.pt")
    torch.save({k: torch.from_numpy(v) for k, v in vae_sd.items()}, root / "vae.pt")
    return dit_sd, vae_sd


def test_partpacker_folder(tmp_path):
    root = tmp_path / "PartPacker"
    dit_sd, vae_sd = _partpacker_folder(root)
    with pytest.raises(FileNotFoundError, match="dinov2_vitg14.*Looked for"):
        from_pretrained(root, overrides={"dit": DIT, "vae": VAE})
    encoder, enc_vars = _hf_dino(tmp_path / "giant", registers=False)

    pipe = from_pretrained(root, encoder=tmp_path / "giant", dtype="float32", overrides={"dit": DIT, "vae": VAE})
    assert isinstance(pipe, PartPackerPipeline) and pipe.dit.use_parts and pipe.sampler["steps"] == 50
    dit = VecSetDiT(**DIT, qknorm=True, qknorm_type="RMSNorm", use_parts=True)
    vae = VecSetVAE(**VAE)
    ref = PartPackerPipeline(encoder, enc_vars, dit, from_torch(dit, dit_sd), vae, from_torch(vae, vae_sd),
                             dtype="float32")
    decode = dict(resolution=16, min_resolution=8, chunk=512)
    a = pipe(_rgba(), steps=3, seed=2, decode=decode, postprocess=False)
    b = ref(_rgba(), steps=3, seed=2, decode=decode, postprocess=False)
    np.testing.assert_array_equal(a["latent"], b["latent"])
    np.testing.assert_array_equal(a["grids"][0][1], b["grids"][0][1])
    assert a["latent"].shape == (1, 16, 8)


def test_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a TRELLIS folder"):
        from_pretrained(tmp_path)
    (tmp_path / "flow.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="vae.pt is missing"):
        from_pretrained(tmp_path)
    other = tmp_path / "t2"
    other.mkdir()
    (other / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline", "args": {}}))
    with pytest.raises(ValueError, match="TrellisTextTo3DPipeline.*not supported"):
        from_pretrained(other)
    (other / "pipeline.json").write_text(json.dumps({"name": "Trellis2ImageTo3DPipeline", "args": {"models": {}}}))
    with pytest.raises(ValueError, match="no 'sparse_structure_flow_model'"):
        from_pretrained(other)
    sds_root = tmp_path / "tr"
    _trellis_folder(sds_root)
    (sds_root / "ckpts" / "ss_dec_conv3d_16l8_fp16.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ss_dec_conv3d_16l8_fp16.safetensors is missing"):
        from_pretrained(sds_root)


@pytest.mark.slow
def test_trellis2_folder(tmp_path):
    from tests.torch_reference import trellis2_ss_flow as T2
    from tests.utils import max_rel_err

    flow_args = dict(resolution=8, in_channels=4, out_channels=4, model_channels=32, cond_channels=32, num_blocks=1,
                     num_heads=2, pe_mode="rope", share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True,
                     initialization="scaled")
    root = tmp_path / "TRELLIS.2-4B"
    (root / "ckpts").mkdir(parents=True)
    tflow = T2.SparseStructureFlowModel(**flow_args)
    # random weights; rope_phases left out of the file (upstream loads strict=False and builds the buffer)
    g = torch.Generator().manual_seed(5)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.2 + (1.0 if k.endswith(("gamma", "norm2.weight")) else 0.0))
          .numpy() for k, v in tflow.state_dict().items() if k != "rope_phases"}
    safetensors_torch.save_file({k: torch.from_numpy(v).bfloat16() for k, v in sd.items()},
                                str(root / "ckpts" / "ss_flow_img_dit_1_3B_64_bf16.safetensors"))
    (root / "ckpts" / "ss_flow_img_dit_1_3B_64_bf16.json").write_text(json.dumps(
        {"name": "SparseStructureFlowModel", "args": dict(flow_args, dtype="bfloat16")}))
    v1 = _trellis_folder(tmp_path / "TRELLIS-image-large")  # the decoder, named as a Hub path, found beside
    (root / "pipeline.json").write_text(json.dumps({"name": "Trellis2ImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow_img_dit_1_3B_64_bf16",
                   "sparse_structure_decoder": "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16"},
        "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": 3, "guidance_strength": 7.5, "guidance_rescale": 0.7,
                                                "guidance_interval": [0.6, 1.0], "rescale_t": 5.0}},
        "image_cond_model": {"name": "DinoV3FeatureExtractor",
                             "args": {"model_name": "facebook/dinov3-vitl16-pretrain-lvd1689m"}},
        "default_pipeline_type": "512"}}))
    snap = tmp_path / "hf" / "models--facebook--dinov3-vitl16-pretrain-lvd1689m" / "snapshots" / "s"
    torch.manual_seed(0)
    dino = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_register_tokens=4,
        patch_size=16, image_size=512))
    dino.save_pretrained(snap)

    pipe = from_pretrained(root, dtype="float32")
    from jaxshape.pipelines.trellis2 import Trellis2SparseStructurePipeline

    assert isinstance(pipe, Trellis2SparseStructurePipeline) and pipe.pipeline_type == "512"
    assert pipe.sampler["steps"] == 3 and pipe.flow_model.upstream == "trellis2" and pipe.encoder.img_size == 512
    encoder = DinoViT(**dino_args_from_hf_config(dino.config.to_dict()))
    enc_vars = from_torch(encoder, to_hub_names({k: v.numpy() for k, v in dino.state_dict().items()}))
    flow = SparseStructureFlowModel(**flow_args, upstream="trellis2")
    bf16 = {k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in sd.items()}
    dec = SparseStructureDecoder(**dict(DEC, channels=tuple(DEC["channels"])), use_fp16=True)
    ref = Trellis2SparseStructurePipeline(
        encoder, enc_vars, flow, from_torch(flow, {**bf16, "rope_phases": tflow.rope_phases.numpy()}), dec,
        from_torch(dec, v1["ss_dec_conv3d_16l8_fp16"]), dtype="float32", sampler={"steps": 3}, pipeline_type="512")
    image = _rgba(200, 180)
    image[..., 3] = np.where(image[..., 3] > 0, 230, 0)
    a, b = pipe(image, seed=1), ref(image, seed=1)
    assert max_rel_err(a["latent"], b["latent"]) <= 1e-4  # the rebuilt buffer equals torch's to fp32 rounding
    assert a["coords_resolution"] == 32 and a["logits"].shape[1] == 32  # 8³ latents decode to 32³: "512" keeps it
    np.testing.assert_array_equal(a["coords"], b["coords"])
