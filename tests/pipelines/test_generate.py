"""python -m jaxshape.generate on tiny official-layout folders (tests/pipelines/test_from_pretrained.py), with the
session's 8 simulated devices: a group of images sampled as one batch sharded over the devices gives what the
pipeline gives for each image alone; outputs per image; a broken image is reported and the others carry on."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxshape import generate as G
from jaxshape.pipelines import from_pretrained
from tests.pipelines.test_from_pretrained import (  # noqa: F401
    DIT,
    VAE,
    _env,
    _hf_dino,
    _partpacker_folder,
    _rgba,
    _trellis_folder,
)
from tests.utils import max_rel_err


def _images(folder):
    folder.mkdir()
    for i, (h, w) in enumerate(((200, 180), (160, 220))):
        img = _rgba(h, w)
        img[..., 0] = 40 + 100 * i
        Image.fromarray(img).save(folder / f"view_{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_trellis_generate_cli(tmp_path, capsys):
    model = tmp_path / "TRELLIS-image-large"
    _trellis_folder(model)
    _hf_dino(tmp_path / "hf" / "models--facebook--dinov2-with-registers-large" / "snapshots" / "r", registers=True)
    imgs = _images(tmp_path / "imgs")
    single = tmp_path / "single.png"
    Image.fromarray(_rgba(190, 170)).save(single)
    assert len(jax.devices()) == 8
    rc = G.main(["--model", str(model), "--image", str(imgs), "--image", str(single), "--out", str(tmp_path / "out"),
                 "--num-samples", "2", "--seed", "3", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 of 4 images failed" in printed and "broken.png" in printed
    assert printed.count(" voxels -> ") == 3

    pipe = from_pretrained(model, dtype="float32")
    for name, path in (("view_0", imgs / "view_0.png"), ("view_1", imgs / "view_1.png"), ("single", single)):
        out = tmp_path / "out" / name
        alone = pipe(np.asarray(Image.open(path)), num_samples=2, seed=3)
        coords = np.load(out / "coords.npy")
        np.testing.assert_array_equal(coords, alone["coords"])  # the sharded batch == the image alone
        assert max_rel_err(np.load(out / "sample_0_occupancy.npy"), alone["logits"][0] > 0) == 0
        rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert [r["image"] for r in rows] == [str(path)] * 2 and rows[0]["seed"] == 3


def test_partpacker_generate(tmp_path):
    root = tmp_path / "PartPacker"
    _partpacker_folder(root, vae_shift=0.1)  # a zero level set inside the volume
    _hf_dino(root / "dinov2-giant", registers=False)  # beside the weights: found there
    pipe = from_pretrained(root, dtype="float32", overrides={"dit": DIT, "vae": VAE})
    imgs = _images(tmp_path / "imgs")
    summaries = G.generate(pipe, G.image_paths([imgs]), tmp_path / "out", sampler={"steps": 3}, resolution=16,
                           decode_chunk=512, progress=False)
    assert [s["ok"] for s in summaries] == [False, True, True]  # broken.png sorts first
    for s in summaries[1:]:
        out = tmp_path / "out" / s["image"].split("/")[-1][:-4]
        row = json.loads((out / "samples.jsonl").read_text())
        assert len(row["parts"]) == s["parts"][0] and s["faces"][0] == sum(p["faces"] for p in row["parts"])
        alone = pipe(np.asarray(Image.open(s["image"])), steps=3, seed=42,
                     decode=dict(resolution=16, min_resolution=16, chunk=512), postprocess=False)
        assert max_rel_err(np.load(out / "sample_0_latent.npy"), alone["latent"][0]) <= 1e-5


def test_partpacker_decode_split_over_devices_equals_one_device(tmp_path):
    """``decode_mesh``: each chunk of query points split over the 8 devices (a chunk that is not a multiple of 8
    rounded up) gives the one-device hierarchical grid."""
    import dataclasses

    from jaxshape.generate import _data_mesh

    root = tmp_path / "PartPacker"
    _partpacker_folder(root, vae_shift=0.1)
    _hf_dino(root / "dinov2-giant", registers=False)
    pipe = from_pretrained(root, dtype="float32", overrides={"dit": DIT, "vae": VAE})
    mesh = _data_mesh()
    split = dataclasses.replace(pipe, decode_mesh=mesh)
    z = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    one = pipe.decode_volume(z, resolution=32, min_resolution=16, chunk=1001)
    many = split.decode_volume(z, resolution=32, min_resolution=16, chunk=1001)
    assert (one > 0).any() and (one < 0).any()  # a grid with a surface
    np.testing.assert_array_equal(np.isnan(one), np.isnan(many))
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=0, equal_nan=True)
    with pytest.raises(ValueError, match="decode_mesh must be a 1-D mesh with the axis 'data'"):
        from jax.sharding import Mesh

        dataclasses.replace(pipe, decode_mesh=Mesh(np.asarray(jax.devices()).reshape(2, 4), ("a", "b")))


def test_image_paths_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--image .*nope"):
        G.image_paths([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        G.image_paths([tmp_path / "empty"])


def test_multi_image_cli(tmp_path, capsys):
    model = tmp_path / "TRELLIS-image-large"
    _trellis_folder(model)
    _hf_dino(tmp_path / "hf" / "models--facebook--dinov2-with-registers-large" / "snapshots" / "r", registers=True)
    imgs = _images(tmp_path / "imgs")
    (imgs / "broken.png").unlink()
    assert G.main(["--model", str(model), "--image", str(imgs), "--out", str(tmp_path / "out"), "--multi-image",
                   "multidiffusion", "--no-progress"]) == 0
    assert "2 views (multidiffusion)" in capsys.readouterr().out
    pipe = from_pretrained(model, dtype="float32")
    ref = pipe.run_multi_image([np.asarray(Image.open(p)) for p in sorted(imgs.iterdir())], mode="multidiffusion")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "view_0_multi" / "coords.npy"), ref["coords"])
