"""The stand-in image encoder: NT-Xent against a loop reference, contrastive training that makes a ViT tell
instances apart, and the cached folder that ``cond.encoder_checkpoint="standin"`` loads."""
import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxshape.models import build, encode_condition, load
from jaxshape.trainer import standin_encoder as se
from jaxshape.trainer.tasks.base import load_image_encoder


def _nt_xent_loop(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        logits = [z[i] @ z[j] / t for j in range(n) if j != i]
        total += -(z[i] @ z[pos] / t) + np.log(np.sum(np.exp(logits)))
    return total / n


def test_nt_xent_matches_the_definition():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 5, 7))
    z1 /= np.linalg.norm(z1, axis=-1, keepdims=True)
    z2 /= np.linalg.norm(z2, axis=-1, keepdims=True)
    for t in (0.1, 0.5):
        got = float(se.nt_xent(jnp.asarray(z1), jnp.asarray(z2), t))
        np.testing.assert_allclose(got, _nt_xent_loop(z1, z2, t), rtol=1e-5)
    # perfectly separated pairs at a low temperature: the loss goes to 0
    e = np.eye(6)[:3]
    assert float(se.nt_xent(jnp.asarray(e), jnp.asarray(e), 0.01)) < 1e-6


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="views must be >= 2"):
        se.StandinConfig(views=1)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        se.StandinConfig(preprocess="tripo")
    with pytest.raises(ValueError, match="holdout"):
        se.StandinConfig(num_shapes=10, holdout=10)
    with pytest.raises(ValueError, match="batch_shapes"):
        se.StandinConfig(num_shapes=10, holdout=4, batch_shapes=8)
    with pytest.raises(ValueError, match="warmup_steps"):
        se.StandinConfig(steps=10, warmup_steps=10)
    assert se.StandinConfig().key() != se.StandinConfig(steps=10, warmup_steps=0).key()


def _synthetic_views(n, v, size, seed):
    """``n`` "shapes", each a random 2x2 colour layout; its ``v`` views shift the brightness, jitter the colours
    and add noise (nuisances a random-init ViT's features follow and training teaches it to ignore)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(n, 2, 2, 3))
    cells = (base[:, None] + rng.normal(0, 0.06, size=(n, v, 2, 2, 3))
             + rng.uniform(-0.3, 0.3, size=(n, v, 1, 1, 1)))
    img = np.repeat(np.repeat(cells, size // 2, axis=2), size // 2, axis=3)
    img = img + rng.normal(0, 0.1, size=img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_contrastive_training_tells_held_out_instances_apart():
    cfg = se.StandinConfig(image_size=28, num_shapes=64, holdout=16, views=4, steps=120, batch_shapes=16,
                           lr=2e-3, warmup_steps=10, class_weight=0.0)
    views = _synthetic_views(cfg.num_shapes, cfg.views, cfg.image_size, seed=1)
    labels = np.zeros(cfg.num_shapes, np.int32)
    train, held = slice(0, 48), slice(48, None)
    enc, init = se.init_encoder(cfg)
    before = se.retrieval_accuracy(enc, init, views[held], labels[held])
    enc, variables, history = se.pretrain(cfg, views[train], labels[train], log_every=40)
    after = se.retrieval_accuracy(enc, variables, views[held], labels[held])
    assert [s for s, _ in history] == [40, 80, 120]
    assert history[-1][1] < history[0][1] - 0.3, history
    assert after["chance_instance"] == pytest.approx(1 / 16)
    assert after["instance"] >= 0.3 and after["instance"] >= before["instance"] + 0.15, (before, after)  # 0.19 -> 0.38
    assert set(variables) == {"params"} and "head" not in variables["params"]


@pytest.mark.slow
def test_standin_is_built_once_and_loads_as_the_cond_encoder(gl, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHAPE_CACHE", str(tmp_path))
    small = dict(image_size=28, num_shapes=12, holdout=4, views=2, view_size=32, steps=4, warmup_steps=1,
                 batch_shapes=4)
    cfg = se.StandinConfig(**small)
    path = se.ensure_standin(cfg)
    report = json.loads((path / se.REPORT_FILE).read_text())
    assert report["config"]["num_shapes"] == 12 and len(report["history"]) == 1
    for k in ("heldout_random_init", "heldout_trained"):
        assert report[k]["chance_instance"] == pytest.approx(1 / 4)
    # the views were preprocessed as the demo's: white background (PartPacker's rule) around the shape
    views, labels = se.render_corpus(cfg)
    assert views.shape == (12, 2, 28, 28, 3) and list(labels[:10]) == list(range(10))
    assert (views[:, :, 0, 0] == 255).all()
    stamp = (path / se.REPORT_FILE).stat().st_mtime_ns
    assert se.ensure_standin(cfg) == path and (path / se.REPORT_FILE).stat().st_mtime_ns == stamp  # cached

    module, variables = load(path)
    assert module == build("dinov2_tiny")
    # cond.encoder_checkpoint = the folder, or "standin" (resolved to the cached folder of the cond's encoder, size
    # and preprocessing; the corpus and schedule shrunk here): the same variables the train step will run
    real = se.StandinConfig
    monkeypatch.setattr(se, "StandinConfig", lambda **kw: real(**{**small, **kw}))
    x = views[:3, 0].astype(np.float32) / 255
    want = np.asarray(encode_condition(module, variables, x))
    for ckpt in (str(path), "standin"):
        cond = ml_collections.ConfigDict(dict(encoder="dinov2_tiny", encoder_checkpoint=ckpt, image_size=28,
                                              preprocess="partpacker", encoder_dtype="float32"))
        got = load_image_encoder(build("dinov2_tiny"), cond, seed=0)
        np.testing.assert_array_equal(np.asarray(encode_condition(module, got, x)), want)
    assert (path / se.REPORT_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        se.build_standin(cfg, path)
